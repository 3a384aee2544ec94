"""Segments: audiences picked by a rule, counted, described against the base, exported."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from cdp_cli.errors import RuleError, UsageError
from cdp_cli.exports import RULE_PREFIX, SEGMENT, Export, Members, write_logged_rows
from cdp_cli.files import row_format
from cdp_cli.predict.fields import predicted_categories
from cdp_cli.rules.book import RuleBook
from cdp_cli.rules.compiler import CompiledRule
from cdp_cli.rules.vocabulary import BASE_FROM, RuleContext, unknown_tag_values
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import rows_as_dicts
from cdp_cli.tags import stored_tags
from cdp_cli.yamlfile import did_you_mean

IDENTIFIER_FIELDS = (
    "phone", "email", "member_no", "user_id", "wechat_unionid", "wechat_openid", "device_id",
    "id_number",
)  # fmt: skip
SAMPLE_FIELDS = ("one_id", "name", "city", "phone", "order_count", "total_spent")
# A sample walks the one_id index when at least this many customers match per one shown: the
# walk then reads a twentieth of the profiles or less, were the matches spread evenly; with
# fewer, the one pass that counts them finds them all (see _few_matches()).
SAMPLE_WALK_MATCHES = 20


@dataclass(frozen=True)
class Audience:
    """A compiled segment: the rule as written and the SQL that selects its customers, with
    the tags the store held then (read once per command: what else the command compiles, a
    portrait or export fields, may name them too)."""

    rule: str
    compiled: CompiledRule
    name: str | None = None
    known_tags: frozenset[str] = frozenset()
    predicted: frozenset[str] = frozenset()  # categories with a propensity (RuleContext)

    def context(self, book: RuleBook, as_of: date) -> RuleContext:
        """The vocabulary of what else a command reads over the audience (a portrait's `by`)."""
        return RuleContext(
            book, as_of, set(self.known_tags), whole_base=True, predicted=self.predicted
        )

    @property
    def where(self) -> str:
        return self.compiled.sql

    @property
    def label(self) -> str:
        """The segment's name, or the rule: what the export log says the audience was."""
        return self.name or f"{RULE_PREFIX}{self.rule}"


def audience(
    db: sqlite_utils.Database,
    book: RuleBook,
    as_of: date,
    rule: str | None,
    name: str | None,
    known_tags: frozenset[str] | None = None,
    whole_base: bool = True,
) -> Audience:
    """The audience of an ad-hoc rule or of a named segment; `known_tags` are the stored
    tags, when the caller has read them already. Compiled to be counted over the whole base
    (RuleContext.whole_base), unless it is to be tested on one customer."""
    if name is not None:
        if name not in book.segments:
            raise UsageError(f"no segment named {name!r}{did_you_mean(name, book.segments)}")
        rule = book.segments[name].rule
    assert rule is not None
    known = stored_tags(db) if known_tags is None else known_tags
    predicted = predicted_categories(db.conn)
    try:
        context = RuleContext(book, as_of, set(known), whole_base=whole_base, predicted=predicted)
        compiled = context.compile(rule, condition=True)
    except RuleError as exc:
        where = f"segment {name}: " if name else ""
        raise RuleError(f"{where}{exc.message}") from None
    return Audience(rule, compiled, name, known, predicted)


def _require_features(db: sqlite_utils.Database) -> None:
    if "profile_features" not in db.table_names():
        raise UsageError("no features yet: run `cdp tag` first")


def count(db: sqlite_utils.Database, chosen: Audience) -> tuple[int, int]:
    """Customers in the audience, and in the whole base."""
    _require_features(db)
    members = db.conn.execute(
        f"SELECT count(*) FROM {BASE_FROM} WHERE {chosen.where}", chosen.compiled.params
    ).fetchone()[0]
    return members, _base(db)


def _base(db: sqlite_utils.Database) -> int:
    return int(db.conn.execute("SELECT count(*) FROM profile_features").fetchone()[0])


def _few_matches(db: sqlite_utils.Database, chosen: Audience, cap: int) -> list[str] | None:
    """Every one_id in the audience if fewer than `cap` match, else None.

    A small audience is then counted and sampled in one pass over the base, where a count
    and a sample would each scan it; a large one stops this pass after `cap` matches."""
    _require_features(db)
    rows = db.conn.execute(
        f"SELECT p.one_id FROM {BASE_FROM} WHERE {chosen.where} LIMIT {int(cap)}",
        chosen.compiled.params,
    ).fetchall()
    return [row[0] for row in rows] if len(rows) < cap else None


@dataclass
class SegmentReport:
    """What `cdp segment` says of an audience: its size against the whole base, its portrait
    over a field, tag or expression (`by`), a sample of its customers, and the file it was
    exported to (`layout`: the ad platform's, for a hashed export)."""

    segment: str | None
    rule: str
    customers: int
    base: int
    by: str | None = None
    portrait: list[dict[str, Any]] | None = None
    sample: list[dict[str, Any]] | None = None
    exported: int | None = None
    file: str | None = None
    layout: str | None = None
    warnings: list[str] | None = None

    @property
    def share(self) -> float:
        return self.customers / self.base if self.base else 0

    def as_dict(self) -> dict[str, Any]:
        """`cdp segment --json`: what the report holds, without the parts it does not."""
        data: dict[str, Any] = {
            "segment": self.segment, "rule": self.rule, "customers": self.customers,
            "base": self.base,
        }  # fmt: skip
        if self.layout is not None:
            data["layout"] = self.layout
        if self.file is not None:
            data |= {"exported": self.exported, "file": self.file}
        if self.by is not None:
            data |= {"by": self.by, "portrait": self.portrait}
        if self.sample is not None:
            data["sample"] = self.sample
        if self.warnings:
            data["warnings"] = self.warnings
        return data


def describe(
    db: sqlite_utils.Database,
    book: RuleBook,
    as_of: date,
    chosen: Audience,
    by: str | None = None,
    sample_size: int | None = None,
) -> SegmentReport:
    """An audience counted against the base; with `by` its portrait, with `sample_size` its
    first customers (SAMPLE_FIELDS, by one_id), personal fields as stored."""
    few = _few_matches(db, chosen, SAMPLE_WALK_MATCHES * sample_size) if sample_size else None
    size, base = (len(few), _base(db)) if few is not None else count(db, chosen)
    report = SegmentReport(chosen.name, chosen.rule, size, base)
    report.warnings = audience_tag_value_warnings(book, chosen)
    if by:
        report.by, report.portrait = by, portrait(db, book, as_of, chosen, by)
    if sample_size is not None:
        report.sample = sample(db, book, as_of, chosen, sample_size, few) if size else []
    return report


def audience_tag_value_warnings(book: RuleBook, chosen: Audience) -> list[str]:
    """A warning for each tag value the audience's rule compares with that its tag never
    takes: `tag('lifecycle') in ('active', 'at-risk')` counts the active ones alone, without
    an error. A named segment's warnings name its file and line."""
    problems = unknown_tag_values(book, chosen.rule)
    segment = book.segments.get(chosen.name) if chosen.name else None
    if segment is None:
        return problems
    return [f"{segment.path}:{segment.line}: segment {segment.name}: {p}" for p in problems]


def sample(
    db: sqlite_utils.Database,
    book: RuleBook,
    as_of: date,
    chosen: Audience,
    size: int,
    few: list[str] | None,
) -> list[dict[str, Any]]:
    """The audience's first `size` customers by one_id (SAMPLE_FIELDS).

    `few` holds every one_id of a small audience (_few_matches): the first are chosen from
    it. A large one has at least SAMPLE_WALK_MATCHES per customer shown, so walking the
    one_id index stops early at the size-th match. Only the chosen one_ids are then looked
    up for their fields."""
    if not size:
        return []
    columns, params = _select(list(SAMPLE_FIELDS), chosen.context(book, as_of))
    if few is not None:
        first = "SELECT value FROM json_each(?)"
        first_params: list[Any] = [json.dumps(sorted(few)[:size])]
    else:
        first = (
            f"SELECT p.one_id FROM {BASE_FROM} WHERE {chosen.where} "
            f"ORDER BY p.one_id LIMIT {int(size)}"
        )
        first_params = list(chosen.compiled.params)
    cursor = db.conn.execute(
        f"SELECT {', '.join(columns)} FROM {BASE_FROM} WHERE p.one_id IN ({first}) "
        "ORDER BY p.one_id",
        [*params, *first_params],
    )
    return [dict(zip(SAMPLE_FIELDS, row, strict=True)) for row in cursor]


def _select(fields: list[str], book_context: RuleContext) -> tuple[list[str], list[Any]]:
    """SQL for each export field: identifier, golden attribute, feature or tag."""
    schema = book_context.schema()
    tags = set(book_context.book.tags) | book_context.known_tags
    columns, params = [], []
    for field in fields:
        if field in IDENTIFIER_FIELDS:
            columns.append(  # +type: by one_id, not a scan of every identifier of the type
                "(SELECT i.value FROM identifiers i WHERE i.one_id = p.one_id AND +i.type = ? "
                "AND i.status = 'linked' ORDER BY i.value LIMIT 1)"
            )
            params.append(field)
        elif field in schema.fields:
            columns.append(schema.fields[field])
        elif field in tags:
            columns.append(
                "(SELECT t.value FROM profile_tags t WHERE t.one_id = p.one_id AND t.tag = ?)"
            )
            params.append(field)
        else:
            known = [*IDENTIFIER_FIELDS, *schema.fields, *tags]
            raise UsageError(f"unknown field {field!r}{did_you_mean(field, known)}")
    return [f'{c} AS "{f}"' for c, f in zip(columns, fields, strict=True)], params


def members(
    db: sqlite_utils.Database,
    book: RuleBook,
    as_of: date,
    chosen: Audience,
    fields: list[str],
    limit: int | None = None,
) -> tuple[list[str], Any]:
    """A cursor over the audience's customers with the chosen fields."""
    _require_features(db)
    columns, params = _select(fields, chosen.context(book, as_of))
    sql = f"SELECT {', '.join(columns)} FROM {BASE_FROM} WHERE {chosen.where} ORDER BY p.one_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return fields, db.conn.execute(sql, [*params, *chosen.compiled.params])


def portrait(
    db: sqlite_utils.Database, book: RuleBook, as_of: date, chosen: Audience, by: str
) -> list[dict[str, Any]]:
    """The audience's distribution over a field, tag or expression, against the whole base:
    share of the audience, share of the base, and index (100 = like the base)."""
    _require_features(db)
    try:
        value = chosen.context(book, as_of).compile(by)
    except RuleError as exc:
        raise RuleError(f"--by: {exc.message}") from None
    rows = rows_as_dicts(
        db,
        f"""SELECT value, sum(chosen) AS audience, count(*) AS base FROM (
  SELECT CAST(({value.sql}) AS TEXT) AS value, CASE WHEN {chosen.where} THEN 1 ELSE 0 END AS chosen
  FROM {BASE_FROM}) GROUP BY value ORDER BY audience DESC, base DESC, value""",
        [*value.params, *chosen.compiled.params],
    )
    total = sum(r["audience"] for r in rows) or 1
    base = sum(r["base"] for r in rows) or 1
    for row in rows:
        row["audience_share"] = round(row["audience"] / total, 4)
        row["base_share"] = round(row["base"] / base, 4)
        row["index"] = (
            round(100 * row["audience_share"] / row["base_share"]) if row["base"] else None
        )
    return rows


def export(
    db: sqlite_utils.Database,
    book: RuleBook,
    as_of: date,
    chosen: Audience,
    path: Path,
    fields: list[str],
) -> int:
    """Write the audience to .csv or .jsonl, through a temporary file renamed when complete,
    and log it with its customers (exports.py), whatever fields it carries.

    CSV cells a spreadsheet would run as a formula are neutralised (csvsafe)."""
    row_format(path)  # before the query: a wrong suffix is the user's mistake, said at once
    logged = Members(db.conn)
    _, cursor = members(db, book, as_of, chosen, ["one_id", *fields])  # one_id: for the log
    what = Export(SEGMENT, chosen.label)
    return write_logged_rows(db, path, fields, cursor, what, logged, one_id_at=0, hidden=True)


def segments_of(db: sqlite_utils.Database, book: RuleBook, as_of: date, one_id: str) -> list[str]:
    """The named segments one customer is in, for `cdp profile`."""
    if "profile_features" not in db.table_names():
        return []
    found = []
    known = stored_tags(db)
    for name in book.segments:
        chosen = audience(db, book, as_of, None, name, known, whole_base=False)
        hit = db.conn.execute(
            f"SELECT 1 FROM {BASE_FROM} WHERE p.one_id = ? AND {chosen.where}",
            [one_id, *chosen.compiled.params],
        ).fetchone()
        if hit:
            found.append(name)
    return found
