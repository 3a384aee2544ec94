"""Probabilistic matching: link records that share no identifier but agree on enough fields.

A Fellegi-Sunter model (Splink, on DuckDB: the `match` extra) compares the records of the
sources `identity.match` names with every record that carries the match fields, pairs chosen
by blocking rules, and scores each pair: a match weight (log2 of the Bayes factor, the sum of
each field's weight) and a match probability. It is trained without labels (u by random
sampling, m by expectation maximisation) once per match settings, and stored, so that an
incremental run scores new records with the model a full run uses.

Guards win. A pair at or above `threshold` is joined through the resolve graph's own union,
after every deterministic link, so that `max_per_profile` refuses it as it would any link;
a pair a person rejected is a cannot-link no run crosses; a pair a person accepted is joined
whatever its score. Pairs from `review_threshold` up to `threshold` wait in match_reviews.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from cdp_cli.canonical import DATE, KINDS
from cdp_cli.config import Config, Source
from cdp_cli.errors import ConfigError, MissingExtra
from cdp_cli.identity.fields import FieldReader
from cdp_cli.identity.settings import MatchRules
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso


class Graph(Protocol):
    """What matching needs of resolve's graph (identity/graph.py): its key nodes, the
    keys that are a customer by themselves, and its guarded union-find."""

    standalone: set[int]

    @property
    def key_node(self) -> dict[int, int]: ...

    def find(self, node: int) -> int: ...

    def union(self, a: int, b: int) -> str | None: ...


INSTALL_HINT = "pip install 'cdp[match]'"
# Fields compared only whole: a city or a province is either the same or not.
EXACT_FIELDS = ("city", "province", "gender", "level", "store")
SEED = 20260101  # random sampling of u: the same store trains the same model
U_SAMPLE_PAIRS = 1_000_000
DUCKDB_MEMORY = "1GB"  # DuckDB's cap; with the rest of a full resolve, under 3 GB at 1M records


def check_available() -> None:
    """Refuse, in one line, a project that asks for matching without the extra installed."""
    try:
        import duckdb  # noqa: F401
        import pypinyin  # noqa: F401
        import splink  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(
            "identity.match in cdp.yaml needs probabilistic matching, which is not installed "
            f"({exc.name or 'a package'} is missing): {INSTALL_HINT}"
        ) from None


def available() -> bool:
    try:
        check_available()
    except MissingExtra:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# How a field is compared


def comparison_kind(config: Config, name: str) -> str:
    """name (pinyin-folded, jaro-winkler), date (edit distance on the digits: a transposed
    pair is one edit), exact, or text (jaro-winkler)."""
    if name == "name":
        return "name"
    if name in EXACT_FIELDS:
        return "exact"
    types = {f.name: f.type for kind in KINDS.values() for f in kind.all_fields}
    return "date" if types.get(name) == DATE else "text"


# The levels of each kind of comparison, best first, after the level for a missing value.
LEVELS = {
    "name": ("exact", "jaro-winkler >= 0.92", "jaro-winkler >= 0.8", "different"),
    "text": ("exact", "jaro-winkler >= 0.92", "jaro-winkler >= 0.8", "different"),
    "date": ("exact", "one edit (a typo, two digits swapped)", "two edits", "different"),
    "exact": ("exact", "different"),
}

_PUNCTUATION = re.compile(r"[\s\-_.,，。·•'’()（）/#]+")
# Written short or long in addresses: compared in one form.
_ABBREVIATIONS = {
    "road": "rd", "street": "st", "avenue": "ave", "lane": "ln", "building": "bldg",
    "number": "no", "apartment": "apt", "district": "dist", "room": "rm",
}  # fmt: skip
_WORDS = re.compile(r"[a-z]+")


@lru_cache(maxsize=1 << 16)
def _char_pinyin(char: str) -> str:
    """One character's pinyin without tones (its most common reading): asked once per
    character, as a name's characters are a few thousand."""
    from pypinyin import lazy_pinyin

    return "".join(lazy_pinyin(char))


def _pinyin(text: str) -> str:
    return "".join(_char_pinyin(c) if _is_cjk(c) else c for c in text)


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def _has_cjk(text: str) -> bool:
    return any(map(_is_cjk, text))


@lru_cache(maxsize=1 << 18)  # cities, birthdays and common names repeat
def compared_form(kind: str, value: str | None) -> str | None:
    """A value as the model compares it: full-width forms and case folded, spaces and
    punctuation gone; Chinese characters as pinyin in names and cities (张伟 and Zhang Wei,
    广州 and Guangzhou are one);
    common address words in one form (Road, Rd.); only the digits of a date."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", value).casefold().strip()
    if not text:
        return None
    if kind == "date":
        digits = text.replace("-", "")  # as ingest stores a date: YYYY-MM-DD
        return digits if digits.isdigit() else "".join(filter(str.isdigit, text)) or None
    if kind in ("name", "exact") and _has_cjk(text):  # 广州 and Guangzhou are one city
        text = _pinyin(text)
    elif kind == "text":
        text = _WORDS.sub(lambda m: _ABBREVIATIONS.get(m[0], m[0]), text)
    text = _PUNCTUATION.sub("", text)
    return text or None


# ---------------------------------------------------------------------------------------------
# The records compared


@dataclass(slots=True)
class MatchRecord:
    """One identity key with match fields, as compared, in the order of identity.match.fields
    (a full run holds a chunk of them at a time, on their way to the model's Arrow table; the
    fields as written go straight to match_records, for the review queue)."""

    key: int
    source: str
    in_scope: bool
    compared: tuple[str | None, ...]


def _sources_with_fields(config: Config, rules: MatchRules) -> list[Source]:
    return [
        s
        for s in config.sources.values()
        if any(f in s.fields or f in s.custom_fields for f in rules.fields)
    ]


Shown = tuple[str | None, ...]  # a record's match fields as written


def read_records(
    db: sqlite_utils.Database, config: Config, after_batch: int | None = None
) -> Iterator[tuple[MatchRecord, Shown]]:
    """The match records of rows written after `after_batch` (every row when None), one per
    identity key (the first row's values, keys already compared left out), each with its
    fields as written."""
    rules = config.identity.match
    assert rules is not None
    kinds = [comparison_kind(config, f) for f in rules.fields]
    seen: set[int] = set()
    for source in _sources_with_fields(config, rules):
        reader = FieldReader(source, rules.fields)
        table = source.kind.table
        present = {c.name for c in db[table].columns}
        columns = [f for f in rules.fields if f in source.fields and f in present]
        select = "".join(f", {c}" for c in columns)
        sql = (
            f"SELECT identity_key, attrs{select} FROM {table} "
            "WHERE source = ? AND identity_key IS NOT NULL"
        )
        params: list[Any] = [source.name]
        if after_batch is not None:
            sql += (
                " AND batch_id > ? AND NOT EXISTS "
                f"(SELECT 1 FROM match_records m WHERE m.key = {table}.identity_key)"
            )
            params.append(after_batch)
        in_scope = config.identity.matches(source.name)
        for row in db.conn.execute(sql + " ORDER BY identity_key", params):
            key = row[0]
            if key in seen:
                continue
            seen.add(key)
            values = reader.values(dict(zip(columns, row[2:], strict=True)), row[1])
            shown = tuple(map(values.get, rules.fields))
            compared = tuple(map(compared_form, kinds, shown))
            if len(compared) - compared.count(None) >= 2:
                yield MatchRecord(key, source.name, in_scope, compared), shown


def save_records(
    db: sqlite_utils.Database, rules: MatchRules, read: Iterable[tuple[MatchRecord, Shown]]
) -> Any:
    """Write each record (as written and as compared) to match_records and its blocks to
    match_blocks as it is read, a chunk at a time; the records, for the model, as one Arrow
    table (a million MatchRecords are 300 MB of Python objects; as Arrow, a tenth of it)."""
    batches: list[Any] = []
    chunk: list[tuple[MatchRecord, Shown]] = []
    for item in read:
        chunk.append(item)
        if len(chunk) == 10_000:
            batches.append(_batch(_save_chunk(db, rules, chunk), rules.fields, set()))
            chunk = []
    batches.append(_batch(_save_chunk(db, rules, chunk), rules.fields, set()))
    return _concat(batches, rules.fields)


def _save_chunk(
    db: sqlite_utils.Database, rules: MatchRules, chunk: list[tuple[MatchRecord, Shown]]
) -> list[MatchRecord]:
    fields = rules.fields
    db.conn.executemany(
        "INSERT OR REPLACE INTO match_records (key, source, in_scope, shown, compared) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (r.key, r.source, int(r.in_scope), _json(dict(zip(fields, shown, strict=True))),
             _json(dict(zip(fields, r.compared, strict=True))))
            for r, shown in chunk
        ],
    )  # fmt: skip
    records = [r for r, _ in chunk]
    db.conn.executemany(
        "INSERT OR IGNORE INTO match_blocks (rule, block, key) VALUES (?, ?, ?)",
        blocks(rules, records),
    )
    return records


def blocks(rules: MatchRules, records: Iterable[MatchRecord]) -> list[tuple[int, str, int]]:
    """(rule, block, key): each record's value for each blocking rule it can be blocked by
    (none of the rule's fields missing), in the order of match_blocks' key."""
    at = [[rules.fields.index(f) for f in rule] for rule in rules.blocking]
    rows = [
        (number, "\x1f".join(values), r.key)  # type: ignore[arg-type]
        for r in records
        for number, places in enumerate(at)
        if None not in (values := [r.compared[i] for i in places])
    ]
    rows.sort()
    return rows


def stale_keys(db: sqlite_utils.Database, config: Config) -> list[str]:
    """A note per matched source whose rows were ingested before `match:` was declared: their
    identity keys leave the match fields out, so matching cannot compare them one by one."""
    notes = []
    for source in config.sources.values():
        if not config.identity.matches(source.name):
            continue
        missing = db.conn.execute(
            f"SELECT count(*) FROM {source.kind.table} WHERE source = ? AND identity_key IS NULL",
            (source.name,),
        ).fetchone()[0]
        if missing:
            notes.append(
                f"{missing:,} rows of {source.name} were ingested before identity.match named "
                f"it: ingest them again with --force (cdp ingest --source {source.name} "
                "--force) so that matching compares them"
            )
    return notes


def met_by(db: sqlite_utils.Database, rules: MatchRules, new: list[MatchRecord]) -> set[int]:
    """The stored records that share a block with one of the new ones: all an incremental
    run compares them with."""
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS new_blocks (rule INTEGER, block TEXT)")
    db.conn.execute("DELETE FROM new_blocks")
    db.conn.executemany(
        "INSERT INTO new_blocks VALUES (?, ?)", [row[:2] for row in blocks(rules, new)]
    )
    return {
        key
        for (key,) in db.conn.execute(
            "SELECT DISTINCT b.key FROM new_blocks n "
            "JOIN match_blocks b ON b.rule = n.rule AND b.block = n.block"
        )
    }


def check_blocking(db: sqlite_utils.Database, config: Config, records: int) -> None:
    """Refuse blocking rules that would compare (almost) everything with everything: the
    estimated comparisons of each rule, counted from match_blocks (in its key's order, so
    SQLite holds one block at a time), against max_comparisons."""
    rules = config.identity.match
    assert rules is not None
    counted = dict(
        db.conn.execute(
            "SELECT rule, sum(n * (n - 1) / 2) FROM (SELECT rule, count(*) AS n "
            "FROM match_blocks GROUP BY rule, block) GROUP BY rule"
        )
    )
    for number, rule in enumerate(rules.blocking, 1):
        comparisons = counted.get(number - 1) or 0
        if comparisons > rules.max_comparisons:
            raise ConfigError(
                config.path,
                f"identity.match.blocking: rule {number} ({', '.join(rule)}) would make "
                f"{comparisons:,} comparisons of {records:,} records, more than "
                f"max_comparisons ({rules.max_comparisons:,}): block on more fields",
                config.match_line,
            )


# ---------------------------------------------------------------------------------------------
# The model


def match_fingerprint(config: Config) -> str:
    rules = config.identity.match
    data = json.dumps([asdict(rules) if rules else None, config.region], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _comparisons(config: Config, rules: MatchRules) -> list[Any]:
    import splink.comparison_library as cl

    made: list[Any] = []
    for name in rules.fields:
        kind = comparison_kind(config, name)
        if kind == "exact":
            made.append(cl.ExactMatch(name))
        elif kind == "date":
            made.append(cl.DamerauLevenshteinAtThresholds(name, [1, 2]))
        else:
            made.append(cl.JaroWinklerAtThresholds(name, [0.92, 0.8]))
    return made


def _rule_sql(fields: Iterable[str], new_only: bool = False) -> str:
    """A blocking rule as Splink's SQL: the fields equal, and one side needing matching."""
    equal = " AND ".join(f'l."{f}" = r."{f}"' for f in fields)
    sql = f"{equal} AND (l.in_scope = 1 OR r.in_scope = 1)"
    return sql + " AND (l.is_new = 1 OR r.is_new = 1)" if new_only else sql


def _schema(fields: tuple[str, ...]) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    return pa.schema(
        [("unique_id", pa.int64()), ("in_scope", pa.int8()), ("is_new", pa.int8())]
        + [(name, pa.string()) for name in fields]
    )


def _batch(records: list[MatchRecord], fields: tuple[str, ...], new: set[int]) -> Any:
    """Records as the model reads them: an Arrow record batch, `is_new` 1 for keys in `new`."""
    import pyarrow as pa

    columns: list[list[Any]] = [
        [r.key for r in records],
        [int(r.in_scope) for r in records],
        [int(r.key in new) for r in records],
    ]
    columns += [[r.compared[at] for r in records] for at in range(len(fields))]
    return pa.RecordBatch.from_arrays(columns, schema=_schema(fields))


def _concat(batches: list[Any], fields: tuple[str, ...]) -> Any:
    import pyarrow as pa

    return pa.Table.from_batches(batches, schema=_schema(fields)).combine_chunks()


def _table(records: list[MatchRecord], fields: tuple[str, ...], new: set[int]) -> Any:
    return _concat([_batch(records, fields, new)], fields)


def _in_scope_keys(table: Any) -> list[int]:
    """The keys of a model input that need matching."""
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    keys: list[int] = table.filter(pc.equal(table["in_scope"], 1))["unique_id"].to_pylist()
    return keys


@contextmanager
def _db_api() -> Iterator[Any]:
    """Splink's DuckDB, closed when done: its buffers are freed before resolve builds its
    graph."""
    import duckdb
    from splink import DuckDBAPI

    connection = duckdb.connect(config={"threads": 2, "memory_limit": DUCKDB_MEMORY})
    try:
        yield DuckDBAPI(connection)
    finally:
        connection.close()


@contextmanager
def _splink_quiet() -> Iterator[None]:
    """Splink logs its progress and its training notes (a level not observed, `max_pairs`);
    cdp prints its own lines and keeps stdout for data."""
    logger = logging.getLogger("splink")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


def train(config: Config, table: Any) -> dict[str, Any]:
    with _splink_quiet(), _db_api() as api:
        return _train(config, api, table)


def _train(config: Config, api: Any, table: Any) -> dict[str, Any]:
    """A model trained without labels on these records: the prior from pairs that agree on
    every field, u by random sampling, m by expectation maximisation over blocking rules."""
    from splink import Linker, SettingsCreator

    rules = config.identity.match
    assert rules is not None
    table = api.register(table)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=_comparisons(config, rules),
        blocking_rules_to_generate_predictions=[
            {"blocking_rule": _rule_sql(r), "sql_dialect": "duckdb"} for r in rules.blocking
        ],
        retain_intermediate_calculation_columns=True,
        retain_matching_columns=False,
    )
    linker = Linker(table, settings, log_level=None)
    training = linker.training
    # The prior from pairs that agree on all fields but one, taken as matches found with a
    # recall of 0.7 (a typo in one field is common; in two, rarer).
    deterministic: list[Any] = [
        " AND ".join(f'l."{f}" = r."{f}"' for f in rules.fields if f != left_out)
        for left_out in rules.fields
    ]
    with suppress(Exception):  # no pair agrees so (a small store): Splink's default prior
        training.estimate_probability_two_random_records_match(deterministic, recall=0.7)
    training.estimate_u_using_random_sampling(max_pairs=U_SAMPLE_PAIRS, seed=SEED)
    for rule in _training_rules(rules):
        before = linker.misc.save_model_to_json()
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(
                " AND ".join(f'l."{f}" = r."{f}"' for f in rule)
            )
        except Exception:  # too few pairs to estimate from (m underflows): the next rule,
            # from the model as it was (a failed session leaves comparisons out of it)
            before.pop("linker_uid", None)
            linker = Linker(table, before, log_level=None)
    return smoothed(linker.misc.save_model_to_json())


# No level is impossible: an m probability of 0 would make one disagreeing field veto any
# pair (a weight of minus infinity), which a small store's training easily learns from the
# few pairs it sees; a u of 0, make one agreeing field decide it. Each m and u is at least
# this, the rest scaled to sum to 1.
SMALLEST_PROBABILITY = {"m_probability": 0.005, "u_probability": 1e-6}


def smoothed(model: dict[str, Any]) -> dict[str, Any]:
    """The model with every level's m and u probability at least SMALLEST_PROBABILITY."""
    for comparison in model["comparisons"]:
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        for name, smallest in SMALLEST_PROBABILITY.items():
            values = [max(float(lv.get(name) or 0.0), smallest) for lv in levels]
            total = sum(values)
            for level, value in zip(levels, values, strict=True):
                level[name] = value / total
    return model


def _training_rules(rules: MatchRules) -> list[tuple[str, ...]]:
    """Blocking rules for expectation maximisation, until every field was left free by one
    (a rule's own fields cannot be estimated from the pairs it chose)."""
    chosen: list[tuple[str, ...]] = []
    free: set[str] = set()
    for rule in rules.blocking:
        if set(rules.fields) - set(rule) - free:
            chosen.append(rule)
            free |= set(rules.fields) - set(rule)
        if free == set(rules.fields):
            break
    return chosen


def load_or_train(
    db: sqlite_utils.Database, config: Config, table: Any, retrain: bool
) -> dict[str, Any]:
    """The stored model for these match settings; trained (and stored) when there is none,
    or on a full run when the records (the rows of `table`) have doubled since it was
    trained."""
    fingerprint = match_fingerprint(config)
    row = db.conn.execute(
        "SELECT model, records FROM match_models WHERE fingerprint = ?", (fingerprint,)
    ).fetchone()
    if row and not (retrain and table.num_rows >= 2 * row[1]):
        return json.loads(row[0])
    model = train(config, table)
    db.conn.execute(
        "INSERT OR REPLACE INTO match_models (fingerprint, model, trained_at, records) "
        "VALUES (?, ?, ?, ?)",
        (fingerprint, json.dumps(model), now_iso(), table.num_rows),
    )
    return model


# ---------------------------------------------------------------------------------------------
# Scoring pairs


@dataclass(slots=True)
class Pair:
    """Two identity keys the model scored, with each field's agreement and weight (as the
    JSON match_links stores: a quarter of a million pairs are held at once, and a string is
    a tenth of the dicts it stands for)."""

    key_a: int
    key_b: int
    probability: float
    weight: float
    fields_json: str

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        fields: dict[str, dict[str, Any]] = json.loads(self.fields_json)
        return fields

    @property
    def agreeing(self) -> list[str]:
        return [f for f, v in self.fields.items() if v["agrees"]]


def score(config: Config, model: dict[str, Any], table: Any, new_only: bool = False) -> list[Pair]:
    with _splink_quiet(), _db_api() as api:
        return _score(config, api, model, table, new_only)


def _score(
    config: Config, api: Any, model: dict[str, Any], table: Any, new_only: bool
) -> list[Pair]:
    """Pairs at or above review_threshold among the records of `table`; only those with a
    new record (`is_new`) when `new_only` (an incremental run: new records against everyone
    they block with)."""
    from splink import Linker

    rules = config.identity.match
    assert rules is not None
    if table.num_rows < 2:
        return []
    table = api.register(table)
    settings = dict(model)
    settings["blocking_rules_to_generate_predictions"] = [
        {"blocking_rule": _rule_sql(r, new_only=new_only), "sql_dialect": "duckdb"}
        for r in rules.blocking
    ]
    settings["retain_intermediate_calculation_columns"] = True
    settings["retain_matching_columns"] = True  # the gamma (agreement level) of each field
    settings.pop("linker_uid", None)
    linker = Linker(table, settings, log_level=None)
    predictions = linker.inference.predict(
        threshold_match_probability=rules.review_threshold, warning_mode="never"
    )
    kinds = [comparison_kind(config, f) for f in rules.fields]
    wanted = ["unique_id_l", "unique_id_r", "match_probability", "match_weight"]
    wanted += [f'"{p}{f}"' for f in rules.fields for p in ("gamma_", "mw_")]
    rows = predictions.as_duckdbpyrelation().select(", ".join(wanted))
    pairs: list[Pair] = []
    for batch in rows.to_arrow_reader(PAIRS_AT_ONCE):
        columns = (column.to_pylist() for column in batch.columns)
        pairs += [_pair(row, rules.fields, kinds) for row in zip(*columns, strict=True)]
    pairs.sort(key=lambda p: (-p.probability, p.key_a, p.key_b))
    return pairs


PAIRS_AT_ONCE = 50_000  # rows of predictions turned into Pairs at a time


def _pair(row: tuple[Any, ...], fields: tuple[str, ...], kinds: list[str]) -> Pair:
    """A row of Splink's predictions (ids, probability, weight, then each field's gamma and
    match weight) as a Pair, the two keys in order."""
    a, b = sorted((int(row[0]), int(row[1])))
    detail = {}
    for at, name in enumerate(fields):
        gamma, weight = int(row[4 + 2 * at]), float(row[5 + 2 * at])
        levels = LEVELS[kinds[at]]
        detail[name] = {
            "level": "missing" if gamma < 0 else levels[len(levels) - 1 - gamma],
            "agrees": gamma > 0,
            "weight": round(weight, 2),
        }
    return Pair(a, b, float(row[2]), round(float(row[3]), 2), _json(detail))


# ---------------------------------------------------------------------------------------------
# Linking, under the guards


@dataclass
class MatchRun:
    """What one resolve run's matching found, and (after link) what it did with it."""

    rules: MatchRules
    # Keys of records that need matching, compared this run (new ones, and those of the
    # customers reloaded, on an incremental run): each stays a customer by itself.
    in_scope: list[int]
    pairs: list[Pair]
    decisions: dict[tuple[int, int], str]  # a person's: accepted or rejected
    earlier: list[Pair] = field(default_factory=list)  # links of earlier runs, reapplied
    links: list[tuple[Pair, str, str, str | None]] = field(default_factory=list)
    reviews: list[Pair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def partner_keys(self) -> set[int]:
        """Keys an incremental run must load with their customers: those it may join."""
        keys = set()
        for pair in self.pairs:
            if pair.probability >= self.rules.threshold or self.decided(pair) == "accepted":
                keys |= {pair.key_a, pair.key_b}
        return keys

    def forget(self, keys: Iterable[int]) -> None:
        """Leave out the pairs of keys erased since they were scored (a full run scores
        before it erases records that carry a forgotten identifier)."""
        gone = set(keys)
        if gone:
            self.pairs = [p for p in self.pairs if p.key_a not in gone and p.key_b not in gone]

    def decided(self, pair: Pair) -> str | None:
        return self.decisions.get((pair.key_a, pair.key_b))

    def link(self, graph: Graph) -> None:
        """Join the pairs the threshold or a person allows, strongest first, after every
        deterministic link; refused when a guard or a rejection keeps them apart."""
        nodes = graph.key_node
        graph.standalone.update(nodes[key] for key in self.in_scope if key in nodes)
        cannot = [
            (nodes[a], nodes[b])
            for (a, b), decision in self.decisions.items()
            if decision == "rejected" and a in nodes and b in nodes
        ]
        accepted = [p for p in self.pairs + self.earlier if self.decided(p) == "accepted"]
        model = [p for p in self.pairs + self.earlier if self.decided(p) is None]
        model.sort(key=lambda p: (-p.probability, p.key_a, p.key_b))
        done: set[tuple[int, int]] = set()
        for pair, by in [(p, "person") for p in accepted] + [(p, "model") for p in model]:
            if (pair.key_a, pair.key_b) in done:
                continue
            done.add((pair.key_a, pair.key_b))
            if by == "model" and pair.probability < self.rules.threshold:
                self.reviews.append(pair)  # an incremental run may not have loaded both
                continue
            if pair.key_a not in nodes or pair.key_b not in nodes:
                continue
            a, b = nodes[pair.key_a], nodes[pair.key_b]
            reason = _cannot_link(graph, a, b, cannot) or graph.union(a, b)
            self.links.append((pair, by, "refused" if reason else "linked", reason))
        # A pair waiting for review whose keys are one customer now needs no one's word.
        self.reviews = [
            p
            for p in self.reviews
            if p.key_a not in nodes
            or p.key_b not in nodes
            or graph.find(nodes[p.key_a]) != graph.find(nodes[p.key_b])
        ]
        for pair in self.pairs + self.earlier:
            if self.decided(pair) == "rejected" and pair.key_a in nodes and pair.key_b in nodes:
                self.links.append((pair, "person", "refused", "rejected by a person"))


def _cannot_link(graph: Graph, a: int, b: int, cannot: list[tuple[int, int]]) -> str | None:
    ra, rb = graph.find(a), graph.find(b)
    if ra == rb:
        return None
    for x, y in cannot:
        if {graph.find(x), graph.find(y)} == {ra, rb}:
            return "a person rejected a pair between these customers"
    return None


def prepare(
    db: sqlite_utils.Database, config: Config, after_batch: int | None, full: bool
) -> MatchRun | None:
    """Read, check and score what this run compares: every match record on a full run, new
    ones against those they block with on an incremental one. None without identity.match."""
    rules = config.identity.match
    if rules is None:
        return None
    check_available()
    decisions = {
        (a, b): d
        for a, b, d in db.conn.execute("SELECT key_a, key_b, decision FROM match_decisions")
    }
    accepted = accepted_pairs(db)
    if full or after_batch is None:
        for table in ("match_records", "match_blocks"):
            db.conn.execute(f"DELETE FROM {table}")
        table = save_records(db, rules, read_records(db, config))
        compared_form.cache_clear()  # a read's cache: resolve's graph wants the room
        check_blocking(db, config, table.num_rows)
        pairs = []
        if table.num_rows >= 2:  # a model needs pairs to learn from
            model = load_or_train(db, config, table, retrain=True)
            pairs = score(config, model, table)
        run = MatchRun(rules, _in_scope_keys(table), pairs, decisions, earlier=accepted)
        run.notes += stale_keys(db, config)
        return run
    read = list(read_records(db, config, after_batch))
    if not read:
        return MatchRun(rules, [], [], decisions, earlier=accepted)
    new = [record for record, _ in read]
    met = records_of(db, rules, met_by(db, rules, new))
    save_records(db, rules, read)
    in_scope = [r.key for r in new if r.in_scope]
    if not met and len(new) < 2:
        return MatchRun(rules, in_scope, [], decisions, earlier=accepted)
    table = _table([*met, *new], rules.fields, {r.key for r in new})
    model = load_or_train(db, config, table, retrain=False)
    pairs = score(config, model, table, new_only=True)
    return MatchRun(rules, in_scope, pairs, decisions, earlier=accepted)


def accepted_pairs(db: sqlite_utils.Database) -> list[Pair]:
    """Every pair a person accepted, with what the model said of it when it did."""
    return [
        Pair(a, b, p or 0.0, w or 0.0, f or "{}")
        for a, b, p, w, f in db.conn.execute(
            "SELECT d.key_a, d.key_b, coalesce(r.probability, l.probability), "
            "coalesce(r.weight, l.weight), coalesce(r.fields, l.fields) FROM match_decisions d "
            "LEFT JOIN match_reviews r ON r.key_a = d.key_a AND r.key_b = d.key_b "
            "LEFT JOIN match_links l ON l.key_a = d.key_a AND l.key_b = d.key_b "
            "WHERE d.decision = 'accepted' ORDER BY d.key_a, d.key_b"
        )
    ]


def decided_since(db: sqlite_utils.Database, since: str) -> set[int]:
    """Keys of pairs a person decided after `since` (the last run's start): the next run
    resolves their customers again, though no batch came."""
    rows = db.conn.execute(
        "SELECT key_a, key_b FROM match_decisions WHERE decided_at >= ?", (since,)
    )
    return {k for pair in rows for k in pair}


def records_of(
    db: sqlite_utils.Database, rules: MatchRules, keys: Iterable[int]
) -> list[MatchRecord]:
    """The stored match records of these keys: those an incremental run's new records meet."""
    _fill_match_keys(db, keys)

    def ordered(text: str) -> tuple[str | None, ...]:
        return tuple(map(json.loads(text).get, rules.fields))

    return [
        MatchRecord(k, s, bool(i), ordered(c))
        for k, s, i, c in db.conn.execute(
            "SELECT key, source, in_scope, compared FROM match_records "
            "WHERE key IN (SELECT key FROM match_keys) ORDER BY key"
        )
    ]


def in_scope_keys(db: sqlite_utils.Database, keys: Iterable[int]) -> list[int]:
    """Of these keys (an incremental run's reloaded customers), those of records that need
    matching: each stays a customer by itself."""
    _fill_match_keys(db, keys)
    return [
        key
        for (key,) in db.conn.execute(
            "SELECT key FROM match_records WHERE in_scope = 1 "
            "AND key IN (SELECT key FROM match_keys) ORDER BY key"
        )
    ]


def _fill_match_keys(db: sqlite_utils.Database, keys: Iterable[int]) -> None:
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS match_keys (key INTEGER PRIMARY KEY)")
    db.conn.execute("DELETE FROM match_keys")
    db.conn.executemany("INSERT OR IGNORE INTO match_keys VALUES (?)", [(k,) for k in keys])


def earlier_links(db: sqlite_utils.Database, keys: Iterable[int]) -> list[Pair]:
    """Links earlier runs made among these keys (an incremental run reloads them)."""
    _fill_match_keys(db, keys)
    return [
        Pair(a, b, p, w, f)
        for a, b, p, w, f in db.conn.execute(
            "SELECT key_a, key_b, probability, weight, fields FROM match_links "
            "WHERE status = 'linked' AND key_a IN (SELECT key FROM match_keys) "
            "AND key_b IN (SELECT key FROM match_keys)"
        )
    ]


def store(db: sqlite_utils.Database, run: MatchRun, run_id: int, full: bool) -> dict[str, int]:
    """Write the records compared, the links and the review queue; counts for the result."""
    conn = db.conn
    if full:  # match_records and match_blocks were written anew as they were read (prepare)
        for table in ("match_links", "match_reviews"):
            conn.execute(f"DELETE FROM {table}")
    conn.executemany(
        "INSERT OR REPLACE INTO match_links (key_a, key_b, probability, weight, fields, "
        "decided_by, status, reason, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (p.key_a, p.key_b, p.probability, p.weight, p.fields_json, by, status, reason, run_id)
            for p, by, status, reason in run.links
        ],
    )
    # A review whose pair is linked now, or decided, leaves the queue.
    conn.execute(
        "DELETE FROM match_reviews WHERE EXISTS (SELECT 1 FROM match_links l WHERE "
        "l.key_a = match_reviews.key_a AND l.key_b = match_reviews.key_b) OR EXISTS "
        "(SELECT 1 FROM match_decisions d WHERE d.key_a = match_reviews.key_a "
        "AND d.key_b = match_reviews.key_b)"
    )
    conn.executemany(
        "INSERT OR IGNORE INTO match_reviews (key_a, key_b, probability, weight, fields, run_id) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(p.key_a, p.key_b, p.probability, p.weight, p.fields_json, run_id) for p in run.reviews],
    )
    # A pair whose records are one customer already (a run that did not load both) needs no
    # one's word.
    conn.execute(
        "DELETE FROM match_reviews WHERE (SELECT one_id FROM identity_keys WHERE key = key_a) "
        "= (SELECT one_id FROM identity_keys WHERE key = key_b)"
    )
    # Records no row carries any more (re-ingested with other values, or forgotten).
    conn.execute("DELETE FROM match_records WHERE key NOT IN (SELECT key FROM identity_keys)")
    if not full:
        conn.execute(
            "DELETE FROM match_blocks WHERE key IN (SELECT key FROM reached_keys) "
            "AND key NOT IN (SELECT key FROM identity_keys)"
        )
    linked = sum(1 for _, by, status, _ in run.links if status == "linked")
    refused = sum(1 for _, _, status, _ in run.links if status == "refused")
    return {"probable_links": linked, "probable_refused": refused, "to_review": len(run.reviews)}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
