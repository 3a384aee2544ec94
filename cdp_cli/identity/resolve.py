"""Identity resolution: link records that share an identifier into one customer, a one_id.

The unit is an identity key (every row that carries the same raw identity fields shares one,
see identity.identity_key), so ten million events cost as much as their distinct devices and
accounts. Keys and identifiers are the nodes of a graph; a union-find joins them, strongest
identifier type first, and refuses a link that would break a guard:

- `max_per_profile`: a customer never holds more of a type than this (one ID number, three
  phones): the link that would add one more is refused, and stronger links, made first, win.
- `max_profiles_per_value`: a value seen with more known customers than this (a store
  tablet) joins none of them; anonymous keys that carry only it stay together.

one_ids are stable: a component keeps the one_id its keys had. When components merge, the
oldest one_id survives and the others are recorded in id_history as merged into it; when a
component splits (a rule or blocklist changed), the part with most of its keys keeps it (of
parts with as many, the one holding the smallest identity key) and the others get new one_ids,
recorded as split from it. After the first run, resolve reloads
only the components that keys from new batches reach.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sqlite3
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import chain, groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from cdp_cli.config import Config
from cdp_cli.identity.graph import Found, Graph, stage
from cdp_cli.identity.graph import clear as clear_graph
from cdp_cli.identity.keys import KIND_TABLES, WORKER_FROM_ROWS, new_keys, normalized_keys
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import (
    indexes_built_after,
    insert_row,
    now_iso,
    rows_as_dicts,
    sorting_cache,
    transaction,
)

# Normalizing (phonenumbers, the blocklists), tombstones and profiles are imported by the runs
# that read keys: a `cdp resolve` with nothing new, which cron makes often, needs none of them.
# Probabilistic matching (and the logging it loads) only by a project that declares it.
if TYPE_CHECKING:
    from cdp_cli.identity import match
    from cdp_cli.identity.normalize import Rejected
    from cdp_cli.identity.tombstones import Tombstones

RESOLVED_TABLES = (
    "identity_keys", "identifiers", "key_identifiers", "unusable_values", "refused_links",
)  # fmt: skip


@dataclass
class ResolveResult:
    """What one `cdp resolve` did."""

    mode: str  # full, incremental or unchanged
    keys_new: int = 0
    keys_resolved: int = 0
    profiles: int = 0
    created: int = 0
    merged: int = 0
    split: int = 0
    removed: int = 0
    refused_links: int = 0
    unusable_values: int = 0
    # Probabilistic matching (identity.match): pairs linked, refused by a guard or a person,
    # and waiting for review; None without it.
    matching: dict[str, int] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Every value the store's records carry that identifies no one, by type and reason.
    set_aside: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# The runs recorded


def rules_fingerprint(config: Config) -> str:
    data = json.dumps([asdict(config.identity), config.region], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _last_run(db: sqlite_utils.Database) -> tuple[int, str, str] | None:
    """(the batch it covered to, its rules fingerprint, when it started) of the last run."""
    row = db.conn.execute(
        "SELECT through_batch, rules, started_at FROM resolve_runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


# ---------------------------------------------------------------------------------------------
# Assigning one_ids


def _next_one_ids(db: sqlite_utils.Database, count: int) -> list[str]:
    start = db.conn.execute("SELECT n FROM one_id_sequence").fetchone()[0]
    db.conn.execute("UPDATE one_id_sequence SET n = ?", (start + count,))
    return [f"C{n:09d}" for n in range(start + 1, start + count + 1)]


def _assign(
    db: sqlite_utils.Database, graph: Graph, run_id: int
) -> tuple[list[str], Counter[str], list[str]]:
    """one_id per customer (graph.group()), keeping old one_ids; history rows for merges and
    splits. Also the old one_ids no customer keeps: merged into another, or removed."""
    claimed, olds_in, removed = _claims(db.conn, graph, graph.group())
    # Which of several old one_ids a merged customer keeps: the oldest profile's.
    created_at = _created_at(
        db, [old for olds in claimed if isinstance(olds, list) for old in olds]
    )
    fresh = iter(_next_one_ids(db, claimed.count(None)))
    one_ids: list[str] = []  # by customer
    gone = list(removed)
    stats: Counter[str] = Counter(removed=len(removed))

    def history() -> Iterator[tuple[str, str, str | None]]:
        for group, olds in enumerate(claimed):
            if olds is None:
                one_id = next(fresh)
                split_from = olds_in.get(group, [])
                if split_from:
                    yield from ((one_id, "split", old) for old in split_from)
                    stats["split"] += 1
                else:
                    yield one_id, "created", None
                    stats["created"] += 1
            elif isinstance(olds, list):
                one_id, *merged = sorted(olds, key=lambda o: (created_at.get(o, ""), o))
                yield from ((old, "merged", one_id) for old in merged)
                stats["merged"] += len(merged)
                gone.extend(merged)
            else:
                one_id = olds
            one_ids.append(one_id)
        # A one_id that no part of the graph carries any more: its records identify no one now.
        yield from ((old, "removed", None) for old in removed)

    at = now_iso()
    db.conn.executemany(
        "INSERT INTO id_history (one_id, event, other_one_id, run_id, at) VALUES (?, ?, ?, ?, ?)",
        ((one_id, event, other, run_id, at) for one_id, event, other in history()),
    )
    return one_ids, stats, gone


def _claims(
    conn: sqlite3.Connection, graph: Graph, customers: int
) -> tuple[list[str | list[str] | None], dict[int, list[str]], list[str]]:
    """Which customer each old one_id (temp table previous_one_ids) goes to: the one that
    holds most of its keys (of two as many, the one with the smallest key), counted by
    SQLite, not in dicts of a million one_ids. Per customer, the old one_ids it claims; the
    customers split from an old one_id they do not claim; the old one_ids no customer holds
    a key of, in order."""
    conn.execute("DROP TABLE IF EXISTS temp.key_groups")
    conn.execute("CREATE TEMP TABLE key_groups (key INTEGER PRIMARY KEY, grp INTEGER NOT NULL)")
    group_of = graph.group_of
    conn.executemany(
        "INSERT INTO key_groups VALUES (?, ?)",
        (
            (key, group)
            for key, node in conn.execute("SELECT key, node FROM graph_keys ORDER BY key")
            if (group := group_of(node)) >= 0
        ),
    )
    claimed: list[str | list[str] | None] = [None] * customers
    olds_in: dict[int, list[str]] = defaultdict(list)
    removed: list[str] = []
    min_key = graph.group_min_key
    rows = conn.execute(
        "SELECT p.one_id, g.grp, count(*) FROM previous_one_ids p "
        "LEFT JOIN key_groups g ON g.key = p.key WHERE p.one_id IS NOT NULL "
        "GROUP BY p.one_id, g.grp ORDER BY p.one_id, g.grp"
    )
    for old, counted in groupby(rows, key=itemgetter(0)):
        by_group = {group: n for _, group, n in counted if group is not None}
        if not by_group:
            removed.append(old)
            continue
        group = max(by_group, key=lambda g: (by_group[g], -min_key[g]))
        if len(by_group) > 1:
            for other in by_group:  # one that claims none of them was split from them
                olds_in[other].append(old)
        have = claimed[group]
        if have is None:
            claimed[group] = old
        elif isinstance(have, list):
            have.append(old)
        else:
            claimed[group] = [have, old]
    conn.execute("DELETE FROM temp.key_groups")
    return claimed, olds_in, removed


def _created_at(db: sqlite_utils.Database, one_ids: list[str]) -> dict[str, str]:
    """When the profiles of these one_ids were created (through a temp table: a rerun can
    ask about every customer, more than a statement takes parameters)."""
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS asked_one_ids (one_id TEXT PRIMARY KEY)")
    db.conn.execute("DELETE FROM asked_one_ids")
    db.conn.executemany(
        "INSERT OR IGNORE INTO asked_one_ids VALUES (?)", [(o,) for o in sorted(one_ids)]
    )
    return dict(
        db.conn.execute(
            "SELECT p.one_id, p.created_at FROM asked_one_ids a JOIN profiles p USING (one_id)"
        )
    )


# ---------------------------------------------------------------------------------------------
# The run


def resolve(
    db: sqlite_utils.Database,
    config: Config,
    full: bool = False,
    worker_from: int | None = WORKER_FROM_ROWS,
) -> ResolveResult:
    """Resolve what new batches brought (or everything, when `full` or the rules changed). A
    full run whose tables after the members hold `worker_from` rows or more reads part of its
    keys in a second process (None: never; keys_worker.py)."""
    started = time.monotonic()
    fingerprint = rules_fingerprint(config)
    through = db.conn.execute(
        "SELECT coalesce(max(id), 0) FROM batches WHERE status='done'"
    ).fetchone()[0]
    last = _last_run(db)
    result = ResolveResult(mode="full")
    if last and not full and last[1] == fingerprint and through == last[0]:
        replaced = db.conn.execute("SELECT count(*) FROM replaced_identity_keys").fetchone()[0]
        if _decided_since(db, config, last[2]):
            replaced += 1  # a person decided on a pair since: their customers again
        if not replaced:  # no batch since the last run: nothing to read, nothing to record
            result.mode = "unchanged"
            result.profiles = db.conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
            result.set_aside = set_aside(db)
            result.seconds = round(time.monotonic() - started, 3)
            return result
    if last and not full:
        if last[1] != fingerprint:
            result.notes.append(
                "the identity rules changed since the last run: resolving everything"
            )
        else:
            result.mode = "incremental"
    with transaction(db), _cycle_collector_paused():
        run_id = insert_row(
            db.conn,
            "INSERT INTO resolve_runs (mode, through_batch, rules, started_at, finished_at, result)"
            " VALUES (?, ?, ?, ?, '', '')",
            (result.mode, through, fingerprint, now_iso()),
        )
        if last is not None and result.mode == "incremental":  # incremental follows a run
            _incremental(db, config, last, run_id, result)
        else:
            _full(db, config, run_id, result, worker_from)
        result.profiles = db.conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
        result.set_aside = set_aside(db)
        result.seconds = round(time.monotonic() - started, 3)
        db.conn.execute(
            "UPDATE resolve_runs SET mode=?, finished_at=?, result=? WHERE id=?",
            (result.mode, now_iso(), json.dumps(result.as_dict()), run_id),
        )
    return result


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """A run makes millions of tuples and lists and no reference cycles; the cyclic garbage
    collector would walk them all again each time their number grew by a quarter (a sixth of
    a full run at 1M records). Reference counting still frees what is dropped."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def set_aside(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """How many distinct values of each type identify no one, and why (masked, invalid, which
    blocklist rule): so that a filter eating real data shows. As of the last `cdp resolve`."""
    return rows_as_dicts(
        db,
        'SELECT type, reason, count(DISTINCT raw) AS "values", count(*) AS identity_keys '
        "FROM unusable_values GROUP BY type, reason ORDER BY type, 3 DESC, reason",
    )


def _erase_forgotten(
    db: sqlite_utils.Database, tombstones: Tombstones | None, keys: list[int], result: ResolveResult
) -> None:
    """Rows that reached the store past ingest's screen carrying a forgotten identifier (a
    caller of ingest_file without one): erased as `cdp forget` would, noted in rejects."""
    if tombstones is None or not keys:
        return
    from cdp_cli.identity.tombstones import erase_records

    erased = sum(erase_records(db.conn, keys, tombstones, reject=True).values())
    result.notes.append(
        f"{erased} records carried an identifier of a forgotten person: erased (rejects: forgotten)"
    )


def _full(
    db: sqlite_utils.Database,
    config: Config,
    run_id: int,
    result: ResolveResult,
    worker_from: int | None,
) -> None:
    from cdp_cli.identity.keys_worker import full_run_keys
    from cdp_cli.identity.tombstones import Tombstones

    # Matching first: its model input and DuckDB are freed before the graph is built.
    matching = _prepare_matching(db, config, None, full=True)
    parts: tuple[list[tuple[int, str, str, str]], ...] = ([], [])  # unusable, by process
    tombstones = Tombstones.load(db.conn, config.identity, config.region)
    forgotten: list[int] = []
    # The normalizer's caches (every distinct raw value: 0.7 GB at 1M customers, the run's
    # peak) go with the keys' iterator, before the graph is numbered and the tables written.
    with full_run_keys(db, config, tombstones, forgotten, worker_from) as keys:
        stage(db.conn, _noting_unusable(keys, parts))
    unusable = parts[0] + parts[1]
    del parts
    graph = Graph.load(db.conn, config.identity.types)
    _previous_one_ids(db.conn, None)
    _, successors = _replaced_keys(db)
    _inherit(db.conn, successors, None)
    _erase_forgotten(db, tombstones, forgotten, result)
    if matching is not None:
        matching.forget(forgotten)
    result.keys_new = db.conn.execute(
        "SELECT count(*) FROM graph_keys WHERE key NOT IN (SELECT key FROM previous_one_ids)"
    ).fetchone()[0]
    written = _write(db, graph, unusable, run_id, result, True, matching)
    del graph, unusable
    _finish(db, config, written, run_id, result, True, matching)


def _noting_unusable(
    keys: Iterable[tuple[int, int, list[Found], list[Rejected]]],
    unusable: Sequence[list[tuple[int, str, str, str]]],
) -> Iterator[tuple[int, int, list[Found]]]:
    """Each key's part and identifiers (see graph.stage), with the values it carries that
    identify no one noted in `unusable[part]`."""
    for part, key, found, rejected in keys:
        if rejected:
            unusable[part].extend((key, r.type, r.raw, r.reason) for r in rejected)
        yield part, key, found


def _previous_one_ids(
    conn: sqlite3.Connection, one_ids: Iterable[tuple[int, str | None]] | None
) -> None:
    """Temp table previous_one_ids: the one_id each key had before this run. A full run's
    are all of identity_keys, copied by SQLite (a dict of 3.4M of them held 0.5 GB)."""
    conn.execute("DROP TABLE IF EXISTS temp.previous_one_ids")
    conn.execute("CREATE TEMP TABLE previous_one_ids (key INTEGER PRIMARY KEY, one_id TEXT)")
    if one_ids is None:
        conn.execute("INSERT INTO previous_one_ids SELECT key, one_id FROM identity_keys")
    else:
        conn.executemany("INSERT OR IGNORE INTO previous_one_ids VALUES (?, ?)", one_ids)


def _decided_since(db: sqlite_utils.Database, config: Config, since: str) -> set[int]:
    """match.decided_since for a project that matches; nothing for one that does not."""
    if config.identity.match is None:
        return set()
    from cdp_cli.identity import match

    return match.decided_since(db, since)


def _prepare_matching(
    db: sqlite_utils.Database, config: Config, after_batch: int | None, full: bool
) -> match.MatchRun | None:
    """match.prepare for a project that matches; None for one that does not."""
    if config.identity.match is None:
        return None
    from cdp_cli.identity import match

    return match.prepare(db, config, after_batch, full)


def _replaced_keys(db: sqlite_utils.Database) -> tuple[list[int], dict[int, int]]:
    """Keys that re-ingested rows replaced and no row carries any more; and, for each key that
    replaced one of them, the key it replaced (so the record keeps its one_id)."""
    pairs = db.conn.execute("SELECT old_key, new_key FROM replaced_identity_keys").fetchall()
    db.conn.execute("DELETE FROM replaced_identity_keys")
    probes = " OR ".join(
        f"EXISTS (SELECT 1 FROM {table} WHERE identity_key = ?)" for table in KIND_TABLES
    )
    vanished = [
        old
        for old in sorted({old for old, _ in pairs})
        if not db.conn.execute(f"SELECT {probes}", [old] * len(KIND_TABLES)).fetchone()[0]
    ]
    gone = set(vanished)
    return vanished, {new: old for old, new in pairs if old in gone and new is not None}


def _inherit(
    conn: sqlite3.Connection, successors: dict[int, int], lost: dict[int, str | None] | None
) -> None:
    """A key that replaced a vanished one claims the one_id the vanished key had: in `lost`,
    or, on a full run, still in previous_one_ids."""
    if lost is None:
        lost = {
            old: one_id
            for old in set(successors.values())
            for (one_id,) in conn.execute(
                "SELECT one_id FROM previous_one_ids WHERE key = ?", (old,)
            )
        }
    conn.executemany(
        "INSERT INTO previous_one_ids VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET one_id = excluded.one_id WHERE one_id IS NULL",
        [(new, lost[old]) for new, old in successors.items() if lost.get(old)],
    )


def _forget_keys(db: sqlite_utils.Database, keys: list[int]) -> dict[int, str | None]:
    """Take keys out of the graph, with identifiers no other key carries; their one_ids."""
    if not keys:
        return {}
    marks = ",".join("?" * len(keys))
    one_ids = dict(
        db.conn.execute(f"SELECT key, one_id FROM identity_keys WHERE key IN ({marks})", keys)
    )
    ident_ids = [
        i for (i,) in db.conn.execute(
            f"SELECT DISTINCT identifier_id FROM key_identifiers WHERE key IN ({marks})", keys
        )
    ]  # fmt: skip
    for table in ("identity_keys", "key_identifiers", "unusable_values", "refused_links"):
        db.conn.execute(f"DELETE FROM {table} WHERE key IN ({marks})", keys)
    db.conn.executemany(
        "DELETE FROM identifiers WHERE id = ? AND NOT EXISTS "
        "(SELECT 1 FROM key_identifiers WHERE identifier_id = identifiers.id)",
        [(i,) for i in ident_ids],
    )
    return one_ids


def _reached_keys(
    db: sqlite_utils.Database, identifiers: set[tuple[str, str]], one_ids: set[str]
) -> None:
    """Fill temp table reached_keys: every key carrying one of these identifiers (linked or
    refused), and every key of the customers those keys, or `one_ids`, belong to."""
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS reach (type TEXT, value TEXT)")
    db.conn.execute("DELETE FROM reach")
    db.conn.executemany("INSERT INTO reach VALUES (?, ?)", identifiers)
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS reached_keys (key INTEGER PRIMARY KEY)")
    db.conn.execute("DELETE FROM reached_keys")
    db.conn.execute(
        "INSERT OR IGNORE INTO reached_keys SELECT ki.key FROM key_identifiers ki "
        "JOIN identifiers i ON i.id = ki.identifier_id "
        "JOIN reach r ON r.type = i.type AND r.value = i.value"
    )
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS reached_one_ids (one_id TEXT PRIMARY KEY)")
    db.conn.execute("DELETE FROM reached_one_ids")
    db.conn.executemany("INSERT OR IGNORE INTO reached_one_ids VALUES (?)", [(o,) for o in one_ids])
    db.conn.execute(
        "INSERT OR IGNORE INTO reached_one_ids SELECT k.one_id FROM reached_keys r "
        "CROSS JOIN identity_keys k ON k.key = r.key WHERE k.one_id IS NOT NULL"
    )
    # CROSS JOIN: from the few reached rows into the big table's index. Left to itself, the
    # planner scanned all of identity_keys (or key_identifiers) and probed the temp table.
    db.conn.execute(
        "INSERT OR IGNORE INTO reached_keys SELECT k.key FROM reached_one_ids o "
        "CROSS JOIN identity_keys k ON k.one_id = o.one_id"
    )


def _incremental(
    db: sqlite_utils.Database,
    config: Config,
    last: tuple[int, str, str],
    run_id: int,
    result: ResolveResult,
) -> None:
    from cdp_cli.identity.normalize import Normalizer
    from cdp_cli.identity.tombstones import Tombstones

    after_batch = last[0]
    normalizer = Normalizer(config.identity, config.region)
    tombstones = Tombstones.load(db.conn, config.identity, config.region)
    forgotten: list[int] = []
    keys = new_keys(db, config, after_batch)
    new = list(normalized_keys(normalizer, keys, tombstones, forgotten))
    _erase_forgotten(db, tombstones, forgotten, result)
    vanished, successors = _replaced_keys(db)
    decided = _decided_since(db, config, last[2])
    if not new and not vanished and not decided:
        result.mode = "unchanged"
        return
    result.keys_new = len(new)
    matching = _prepare_matching(db, config, after_batch, full=False)
    # What new keys, vanished ones, and the records matching may join reach is resolved
    # again; the rest of the graph stays.
    lost = _forget_keys(db, vanished)
    partners = (matching.partner_keys() if matching else set()) | decided
    _reached_keys(
        db,
        {(t, v) for _, found, _ in new for t, v, _ in found},
        {one_id for one_id in lost.values() if one_id} | _one_ids_of(db, partners),
    )
    # Read from the reached keys (CROSS JOIN, as in _reached_keys), in the order the scans
    # of the whole tables these statements made gave: one_id, then key; identifier, then key.
    previous = dict(
        db.conn.execute(
            "SELECT k.key, k.one_id FROM reached_keys r CROSS JOIN identity_keys k "
            "ON k.key = r.key ORDER BY k.one_id, k.key"
        )
    )
    old_links: dict[int, list[Found]] = defaultdict(list)
    for key, type_name, value, detail in db.conn.execute(
        "SELECT ki.key, i.type, i.value, i.detail FROM reached_keys r "
        "CROSS JOIN key_identifiers ki ON ki.key = r.key "
        "JOIN identifiers i ON i.id = ki.identifier_id ORDER BY ki.identifier_id, ki.key"
    ):
        old_links[key].append((type_name, value, detail))
    unusable: list[tuple[int, str, str, str]] = []
    stage(
        db.conn,
        chain(
            ((0, key, old_links.get(key, [])) for key in previous),
            _noting_unusable(((0, *keyed) for keyed in new), [unusable]),
        ),
    )
    del old_links
    graph = Graph.load(db.conn, config.identity.types)
    db.conn.execute("DELETE FROM refused_links WHERE key IN (SELECT key FROM reached_keys)")
    _previous_one_ids(db.conn, previous.items())
    _inherit(db.conn, successors, lost)
    db.conn.executemany("INSERT OR IGNORE INTO previous_one_ids VALUES (?, ?)", lost.items())
    if matching is not None:  # the customers reloaded keep the probable links they had
        from cdp_cli.identity import match

        matching.earlier += match.earlier_links(db, graph.key_of)
        matching.in_scope += match.in_scope_keys(db, graph.key_of)
    written = _write(db, graph, unusable, run_id, result, False, matching)
    del graph, previous, unusable
    _finish(db, config, written, run_id, result, False, matching)


def _one_ids_of(db: sqlite_utils.Database, keys: set[int]) -> set[str]:
    if not keys:
        return set()
    marks = ",".join("?" * len(keys))
    return {
        one_id
        for (one_id,) in db.conn.execute(
            f"SELECT one_id FROM identity_keys WHERE key IN ({marks}) AND one_id IS NOT NULL",
            sorted(keys),
        )
    }


def _write(
    db: sqlite_utils.Database,
    graph: Graph,
    unusable: list[tuple[int, str, str, str]],
    run_id: int,
    result: ResolveResult,
    full: bool,
    matching: match.MatchRun | None = None,
) -> tuple[list[str], str]:
    """Resolve the graph and store it: on a full run in place of everything resolved before,
    on an incremental one over the part of it the graph holds. Probable links come after
    every deterministic one, under the same guards. The one_ids the graph holds now, and the
    time of the run."""
    graph.resolve()
    if matching is not None:
        matching.link(graph)
    one_ids, stats, gone = _assign(db, graph, run_id)
    result.created, result.merged, result.split = stats["created"], stats["merged"], stats["split"]
    result.removed = stats["removed"]
    result.keys_resolved = graph.key_count
    at = now_iso()
    conn = db.conn
    if full:
        for table in RESOLVED_TABLES:
            conn.execute(f"DELETE FROM {table}")
    _write_keys(conn, graph, one_ids, at, full)
    ids = _write_identifiers(conn, graph, one_ids, full)
    conn.executemany(
        "INSERT INTO unusable_values (key, type, raw, reason) VALUES (?, ?, ?, ?)", unusable
    )
    key_of, base = graph.key_of, graph.base
    conn.executemany(
        "INSERT INTO refused_links (key, identifier_id, reason) VALUES (?, ?, ?)",
        [
            (key_of[knode], ids[inode - base] if ids is not None else inode - base, reason)
            for knode, inode, reason in graph.refused
        ],
    )
    result.refused_links = len(graph.refused)
    result.unusable_values = len(unusable)
    conn.executemany("DELETE FROM profiles WHERE one_id = ?", [(o,) for o in gone])
    clear_graph(conn)
    conn.execute("DELETE FROM temp.previous_one_ids")
    return one_ids, at


def _finish(
    db: sqlite_utils.Database,
    config: Config,
    written: tuple[list[str], str],
    run_id: int,
    result: ResolveResult,
    full: bool,
    matching: match.MatchRun | None,
) -> None:
    """The golden profiles of what _write stored, and matching's links and review queue: done
    once the caller has let the graph go, as SQLite's sorters want the room."""
    from cdp_cli.identity.profiles import build_profiles

    current, at = written
    build_profiles(
        db, [] if full else sorted(current), at, config.identity.source_priority, everyone=full
    )
    if matching is not None:
        from cdp_cli.identity import match

        result.matching = match.store(db, matching, run_id, full)
        result.notes += matching.notes


def _write_keys(
    conn: sqlite3.Connection, graph: Graph, one_ids: list[str], at: str, full: bool
) -> None:
    """identity_keys' row of every key of the graph, in key order, made as they are
    written: at 1M customers a list of them held 300 MB."""
    group_of = graph.group_of

    def rows() -> Iterator[tuple[int, str | None, str]]:
        for key, node in conn.execute("SELECT key, node FROM graph_keys ORDER BY key"):
            group = group_of(node)
            yield key, one_ids[group] if group >= 0 else None, at

    if full:
        with indexes_built_after(conn, "identity_keys", bulk=True):
            conn.executemany(
                "INSERT INTO identity_keys (key, one_id, resolved_at) VALUES (?, ?, ?)", rows()
            )
        return
    conn.executemany(
        "INSERT INTO identity_keys (key, one_id, resolved_at) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET one_id=excluded.one_id, resolved_at=excluded.resolved_at",
        rows(),
    )


def _identifier_rows(
    conn: sqlite3.Connection, graph: Graph, one_ids: list[str]
) -> Iterator[tuple[int, str, str, str | None, str | None, str, str | None]]:
    """(graph id, type, value, detail, one_id, status, reason) of every identifier of the
    graph, in (type, value) order: the order of the table's unique index."""
    base, group_of = graph.base, graph.group_of
    for ident, type_name, value, detail in conn.execute(
        "SELECT id, type, value, detail FROM graph_idents ORDER BY id"
    ):
        inode = base + ident
        if type_name in graph.nonjoining:
            groups = set(map(group_of, graph.keys_of(inode)))
            group = groups.pop() if len(groups) == 1 else -1
            refused = None if group >= 0 else "join: false, and found on several customers"
        else:
            refused = graph.refused_values.get(inode)
            group = -1 if refused else group_of(inode)
        one_id = one_ids[group] if group >= 0 else None
        yield ident, type_name, value, detail, one_id, "linked" if one_id else "refused", refused


def _stage_links(conn: sqlite3.Connection, graph: Graph) -> None:
    """Temp table graph_links: (key, graph id) of every link, for SQLite to sort by key
    (sorting 6M pairs in Python at 1M customers took 12 s and 400 MB)."""
    key_of, linked, starts = graph.key_of, graph.linked, graph.starts
    conn.executemany(
        "INSERT INTO graph_links VALUES (?, ?)",
        (
            (key_of[linked[n]], ident)
            for ident in range(1, len(starts))
            for n in range(starts[ident - 1], starts[ident])
        ),
    )


def _write_identifiers(
    conn: sqlite3.Connection, graph: Graph, one_ids: list[str], full: bool
) -> array[int] | None:
    """identifiers' and key_identifiers' rows of the graph. A full run writes them anew, with
    the graph's numbering (every row is new: plain inserts in the order of each table's key,
    secondary indexes built once at the end); an incremental one over what the tables hold,
    and gives the stored id of each graph id."""
    rows = _identifier_rows(conn, graph, one_ids)
    _stage_links(conn, graph)
    if full:
        with indexes_built_after(conn, "identifiers", bulk=True):
            conn.executemany(
                "INSERT INTO identifiers (id, type, value, detail, one_id, status, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        with indexes_built_after(conn, "key_identifiers", bulk=True), sorting_cache(conn):
            conn.execute(
                "INSERT INTO key_identifiers (key, identifier_id) "
                "SELECT key, ident FROM graph_links ORDER BY key, ident"
            )
        return None
    conn.executemany(
        "INSERT INTO identifiers (type, value, detail, one_id, status, reason) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(type, value) DO UPDATE SET "
        "detail=excluded.detail, one_id=excluded.one_id, status=excluded.status, "
        "reason=excluded.reason",
        (row[1:] for row in rows),
    )
    # CROSS JOIN: from the graph's few identifiers into the big table's unique index.
    stored = "graph_idents g CROSS JOIN identifiers i ON i.type = g.type AND i.value = g.value"
    ids = array("q", [0]) * len(graph.starts)
    for ident, stored_id in conn.execute(f"SELECT g.id, i.id FROM {stored}"):
        ids[ident] = stored_id
    conn.execute(
        "INSERT OR IGNORE INTO key_identifiers (key, identifier_id) SELECT l.key, i.id "
        f"FROM graph_links l CROSS JOIN {stored} WHERE g.id = l.ident ORDER BY l.key, i.id"
    )
    return ids


def unresolved_batches(db: sqlite_utils.Database) -> int:
    """Finished batches that no resolve run has covered yet."""
    last = _last_run(db)
    through = last[0] if last else 0
    return db.conn.execute(
        "SELECT count(*) FROM batches WHERE status = 'done' AND id > ?", (through,)
    ).fetchone()[0]


def unresolved_note(db: sqlite_utils.Database) -> str | None:
    """What a command that reads customers says while ingested batches wait for a resolve:
    it reads them as the last resolve left them (none before the first)."""
    pending = unresolved_batches(db)
    if not pending:
        return None
    return f"{pending} ingested batches are not resolved yet: run `cdp resolve` first"
