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
component splits (a rule or blocklist changed), the part with most of its keys keeps it and
the others get new one_ids, recorded as split from it. After the first run, resolve reloads
only the components that keys from new batches reach.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from cdp_cli.canonical import IDENTITY_FIELDS, KINDS
from cdp_cli.config import Config, IdentifierType
from cdp_cli.exports import ID_MAPPING, Export, Members, write_logged_rows
from cdp_cli.files import row_format
from cdp_cli.identity.normalize import Normalizer, Rejected
from cdp_cli.identity.profiles import build_profiles, follow_merges
from cdp_cli.identity.tombstones import Tombstones, erase_records
from cdp_cli.store import insert_row, now_iso, rows_as_dicts, transaction

KIND_TABLES = [kind.table for kind in KINDS.values()]
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
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Every value the store's records carry that identifies no one, by type and reason.
    set_aside: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Reading what needs resolving


def rules_fingerprint(config: Config) -> str:
    data = json.dumps([asdict(config.identity), config.region], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _last_run(db: sqlite_utils.Database) -> tuple[int, str] | None:
    row = db.conn.execute(
        "SELECT through_batch, rules FROM resolve_runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1]) if row else None


def _identity_columns(db: sqlite_utils.Database, config: Config, table: str) -> list[str]:
    """The columns of `table` that any identifier type reads."""
    wanted = [f.name for f in IDENTITY_FIELDS]
    wanted += [f for t in config.identity.types for f in t.fields if f not in wanted]
    present = {c.name for c in db[table].columns}
    return [c for c in wanted if c in present]


def _new_keys(
    db: sqlite_utils.Database, config: Config, after_batch: int | None
) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(identity_key, identity fields) of rows written after `after_batch` whose key is not
    resolved yet; of every row when `after_batch` is None.

    A row gives only the fields its source declares as identifying it, so a composite
    identifier declared for one source never reads another source's columns.
    """
    fields_of = {name: set(s.identity_fields) for name, s in config.sources.items()}
    default = {f.name for f in IDENTITY_FIELDS}
    for table in KIND_TABLES:
        columns = _identity_columns(db, config, table)
        where = "t.identity_key IS NOT NULL"
        params: list[Any] = []
        if after_batch is not None:
            where += (
                " AND t.batch_id > ? AND NOT EXISTS "
                "(SELECT 1 FROM identity_keys k WHERE k.key = t.identity_key)"
            )
            params.append(after_batch)
        select = ", ".join(f"t.{c}" for c in columns)
        sql = (
            f"SELECT t.identity_key, t.source, {select} FROM {table} t WHERE {where} "
            "GROUP BY t.identity_key, t.source"
        )
        for key, source, *values in db.conn.execute(sql, params):
            allowed = fields_of.get(source, default)
            yield key, {c: v for c, v in zip(columns, values, strict=True) if c in allowed}


# ---------------------------------------------------------------------------------------------
# The graph


class Graph:
    """Keys and identifiers as integer nodes, joined by a union-find that enforces the guards."""

    def __init__(self, types: tuple[IdentifierType, ...]) -> None:
        self.types = {t.name: t for t in types}
        self.rank = {t.name: i for i, t in enumerate(types)}
        self.key_node: dict[int, int] = {}  # identity key -> node
        self.key_of_node: dict[int, int] = {}
        self.ident_node: dict[tuple[str, str], int] = {}
        self.ident_of_node: dict[int, tuple[str, str]] = {}
        self.links: list[tuple[int, int, int]] = []  # (type rank, identifier node, key node)
        self.parent: list[int] = []
        self.size: list[int] = []
        self.counts: dict[int, Counter[str]] = {}
        self.refused: list[tuple[int, tuple[str, str], str]] = []  # key, identifier, reason
        self.refused_values: dict[tuple[str, str], str] = {}
        self.limits = {n: t.max_per_profile for n, t in self.types.items() if t.max_per_profile}
        # identifier node -> key nodes, for types with `join: false`: such a value makes its
        # record a customer but links it to no other record.
        self.nonjoining: dict[int, list[int]] = defaultdict(list)

    def _node(self) -> int:
        node = len(self.parent)
        self.parent.append(node)
        self.size.append(1)
        return node

    def add_key(self, key: int, identifiers: Iterable[tuple[str, str]]) -> None:
        node = self.key_node.get(key)
        if node is None:
            node = self._node()
            self.key_node[key] = node
            self.key_of_node[node] = key
        for ident in identifiers:
            inode = self.ident_node.get(ident)
            if inode is None:
                inode = self._node()
                self.ident_node[ident] = inode
                self.ident_of_node[inode] = ident
                if ident[0] in self.limits:
                    self.counts[inode] = Counter({ident[0]: 1})
            self.links.append((self.rank[ident[0]], inode, node))

    def find(self, node: int) -> int:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def _limit_broken(self, a: int, b: int) -> str | None:
        ca, cb = self.counts.get(a), self.counts.get(b)
        if not ca or not cb:
            return None
        for type_name, count in ca.items():
            if count + cb.get(type_name, 0) > self.limits[type_name]:
                return f"a customer holds at most {self.limits[type_name]} {type_name}"
        return None

    def union(self, a: int, b: int) -> str | None:
        """Join the components of two nodes; the reason instead when a guard refuses."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        reason = self._limit_broken(ra, rb)
        if reason:
            return reason
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        cb = self.counts.pop(rb, None)
        if cb:
            self.counts.setdefault(ra, Counter()).update(cb)
        return None

    def resolve(self) -> None:
        # Links in a fixed order (type priority, identifier, key), not node numbers: which of
        # two competing links a guard keeps must not depend on what was loaded first, so an
        # incremental run decides as a full run would.
        position = {node: i for i, (_, node) in enumerate(sorted(self.ident_node.items()))}
        key_of = self.key_of_node
        self.links = sorted(
            set(self.links), key=lambda link: (link[0], position[link[1]], key_of[link[2]])
        )
        guarded = {n for n, t in self.types.items() if t.max_profiles_per_value}
        by_ident: dict[int, list[int]] = defaultdict(list)
        for _rank, inode, knode in self.links:
            type_name = self.ident_of_node[inode][0]
            if not self.types[type_name].joins:
                self.nonjoining[inode].append(knode)
                continue
            if type_name in guarded:
                by_ident[inode].append(knode)
                continue
            reason = self.union(knode, inode)
            if reason:
                self.refused.append((self.key_of_node[knode], self.ident_of_node[inode], reason))
        known = {self.find(k) for _, i, k in self.links if self.ident_of_node[i][0] not in guarded}
        for inode, knodes in by_ident.items():  # in link order: strongest type first
            ident = self.ident_of_node[inode]
            customers = {self.find(k) for k in knodes} & known
            limit = self.types[ident[0]].max_profiles_per_value or 0
            if len(customers) > limit:
                reason = f"seen with {len(customers)} customers (max_profiles_per_value {limit})"
                self.refused_values[ident] = reason
                self.refused += [(self.key_of_node[k], ident, reason) for k in knodes]
                continue
            for knode in knodes:
                reason = self.union(knode, inode)
                if reason:
                    self.refused.append((self.key_of_node[knode], ident, reason))

    def components(self) -> dict[int, list[int]]:
        """root -> key nodes, for keys that hold a linked or a non-joining identifier."""
        linked_keys = {k for knodes in self.nonjoining.values() for k in knodes}
        for _, inode, knode in self.links:
            if self.find(inode) == self.find(knode):
                linked_keys.add(knode)
        groups: dict[int, list[int]] = defaultdict(list)
        for knode in sorted(linked_keys):
            groups[self.find(knode)].append(knode)
        return groups


# ---------------------------------------------------------------------------------------------
# Assigning one_ids


def _next_one_ids(db: sqlite_utils.Database, count: int) -> list[str]:
    start = db.conn.execute("SELECT n FROM one_id_sequence").fetchone()[0]
    db.conn.execute("UPDATE one_id_sequence SET n = ?", (start + count,))
    return [f"C{n:09d}" for n in range(start + 1, start + count + 1)]


def _assign(
    db: sqlite_utils.Database, graph: Graph, previous: dict[int, str | None], run_id: int
) -> tuple[dict[int, str], dict[str, int]]:
    """one_id per component root, keeping old one_ids; history rows for merges and splits."""
    groups = graph.components()
    # Which component keeps each old one_id: the one holding most of its keys.
    share: dict[str, Counter[int]] = defaultdict(Counter)
    for root, knodes in groups.items():
        for knode in knodes:
            old = previous.get(graph.key_of_node[knode])
            if old:
                share[old][root] += 1
    claimed: dict[int, list[str]] = defaultdict(list)
    for old, roots in share.items():
        root = max(roots, key=lambda r: (roots[r], -r))
        claimed[root].append(old)
    marks = ",".join("?" * len(share))
    created_at = dict(
        db.conn.execute(
            f"SELECT one_id, created_at FROM profiles WHERE one_id IN ({marks})", list(share)
        )
    )
    stats: Counter[str] = Counter()
    need_new = [root for root in groups if not claimed.get(root)]
    fresh = iter(_next_one_ids(db, len(need_new)))
    one_ids: dict[int, str] = {}
    history: list[tuple[str, str, str | None]] = []
    for root in groups:
        olds = sorted(claimed.get(root, []), key=lambda o: (created_at.get(o, ""), o))
        if olds:
            one_ids[root] = olds[0]
            history += [(old, "merged", olds[0]) for old in olds[1:]]
            stats["merged"] += len(olds) - 1
        else:
            one_ids[root] = next(fresh)
            split_from = [old for old in share if root in share[old]]
            if split_from:
                history += [(one_ids[root], "split", old) for old in split_from]
                stats["split"] += 1
            else:
                history.append((one_ids[root], "created", None))
                stats["created"] += 1
    # A one_id that no part of the graph carries any more: its records identify no one now.
    unclaimed = {o for o in previous.values() if o} - set(share)
    history += [(old, "removed", None) for old in sorted(unclaimed)]
    stats["removed"] = len(unclaimed)
    at = now_iso()
    db.conn.executemany(
        "INSERT INTO id_history (one_id, event, other_one_id, run_id, at) VALUES (?, ?, ?, ?, ?)",
        [(one_id, event, other, run_id, at) for one_id, event, other in history],
    )
    return one_ids, stats


# ---------------------------------------------------------------------------------------------
# The run


def resolve(db: sqlite_utils.Database, config: Config, full: bool = False) -> ResolveResult:
    """Resolve what new batches brought (or everything, when `full` or the rules changed)."""
    started = time.monotonic()
    fingerprint = rules_fingerprint(config)
    through = db.conn.execute(
        "SELECT coalesce(max(id), 0) FROM batches WHERE status='done'"
    ).fetchone()[0]
    last = _last_run(db)
    result = ResolveResult(mode="full")
    if last and not full and last[1] == fingerprint and through == last[0]:
        replaced = db.conn.execute("SELECT count(*) FROM replaced_identity_keys").fetchone()[0]
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
    with transaction(db):
        run_id = insert_row(
            db.conn,
            "INSERT INTO resolve_runs (mode, through_batch, rules, started_at, finished_at, result)"
            " VALUES (?, ?, ?, ?, '', '')",
            (result.mode, through, fingerprint, now_iso()),
        )
        if last is not None and result.mode == "incremental":  # incremental follows a run
            _incremental(db, config, last[0], run_id, result)
        else:
            _full(db, config, run_id, result)
        result.profiles = db.conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
        result.set_aside = set_aside(db)
        result.seconds = round(time.monotonic() - started, 3)
        db.conn.execute(
            "UPDATE resolve_runs SET mode=?, finished_at=?, result=? WHERE id=?",
            (result.mode, now_iso(), json.dumps(result.as_dict()), run_id),
        )
    return result


def set_aside(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """How many distinct values of each type identify no one, and why (masked, invalid, which
    blocklist rule): so that a filter eating real data shows. As of the last `cdp resolve`."""
    return rows_as_dicts(
        db,
        'SELECT type, reason, count(DISTINCT raw) AS "values", count(*) AS identity_keys '
        "FROM unusable_values GROUP BY type, reason ORDER BY type, 3 DESC, reason",
    )


def _normalize_keys(
    normalizer: Normalizer,
    keys: Iterable[tuple[int, dict[str, str | None]]],
    tombstones: Tombstones | None = None,
    forgotten: list[int] | None = None,
) -> Iterator[tuple[int, list[tuple[str, str, str | None]], list[Rejected]]]:
    """Each key's identifiers; a key carrying a forgotten one goes to `forgotten` instead."""
    for key, fields in keys:
        found, rejected = normalizer.identifiers(fields)
        if tombstones is not None and tombstones.forgotten(found):
            forgotten.append(key)  # type: ignore[union-attr]
            continue
        yield key, found, rejected


def _erase_forgotten(
    db: sqlite_utils.Database, tombstones: Tombstones | None, keys: list[int], result: ResolveResult
) -> None:
    """Rows that reached the store past ingest's screen carrying a forgotten identifier (a
    caller of ingest_file without one): erased as `cdp forget` would, noted in rejects."""
    if tombstones is None or not keys:
        return
    erased = sum(erase_records(db.conn, keys, tombstones, reject=True).values())
    result.notes.append(
        f"{erased} records carried an identifier of a forgotten person: erased (rejects: forgotten)"
    )


def _full(db: sqlite_utils.Database, config: Config, run_id: int, result: ResolveResult) -> None:
    previous = dict(db.conn.execute("SELECT key, one_id FROM identity_keys"))
    _, successors = _replaced_keys(db)
    _inherit(previous, successors, dict(previous))
    normalizer = Normalizer(config.identity, config.region)
    graph = Graph(config.identity.types)
    details: dict[tuple[str, str], str | None] = {}
    unusable: list[tuple[int, str, str, str]] = []
    tombstones = Tombstones.load(db.conn, config.identity, config.region)
    forgotten: list[int] = []
    keys = _normalize_keys(normalizer, _new_keys(db, config, None), tombstones, forgotten)
    for key, found, rejected in keys:
        graph.add_key(key, [(t, v) for t, v, _ in found])
        details.update({(t, v): d for t, v, d in found})
        unusable += [(key, r.type, r.raw, r.reason) for r in rejected]
    _erase_forgotten(db, tombstones, forgotten, result)
    result.keys_new = len(set(graph.key_node) - set(previous))
    for table in RESOLVED_TABLES:
        db.conn.execute(f"DELETE FROM {table}")
    _write(db, config.identity.source_priority, graph, details, unusable, previous, run_id, result)


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
    previous: dict[int, str | None], successors: dict[int, int], old_one_ids: dict[int, str | None]
) -> None:
    """A key that replaced a vanished one claims the one_id the vanished key had."""
    for new, old in successors.items():
        if previous.get(new) is None and old_one_ids.get(old):
            previous[new] = old_one_ids[old]


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
        "INSERT OR IGNORE INTO reached_one_ids SELECT k.one_id FROM identity_keys k "
        "JOIN reached_keys r ON r.key = k.key WHERE k.one_id IS NOT NULL"
    )
    db.conn.execute(
        "INSERT OR IGNORE INTO reached_keys SELECT k.key FROM identity_keys k "
        "JOIN reached_one_ids o ON o.one_id = k.one_id"
    )


def _incremental(
    db: sqlite_utils.Database, config: Config, after_batch: int, run_id: int, result: ResolveResult
) -> None:
    normalizer = Normalizer(config.identity, config.region)
    tombstones = Tombstones.load(db.conn, config.identity, config.region)
    forgotten: list[int] = []
    keys = _new_keys(db, config, after_batch)
    new = list(_normalize_keys(normalizer, keys, tombstones, forgotten))
    _erase_forgotten(db, tombstones, forgotten, result)
    vanished, successors = _replaced_keys(db)
    if not new and not vanished:
        result.mode = "unchanged"
        return
    result.keys_new = len(new)
    # What new keys and vanished ones reach is resolved again; the rest of the graph stays.
    lost = _forget_keys(db, vanished)
    _reached_keys(
        db,
        {(t, v) for _, found, _ in new for t, v, _ in found},
        {one_id for one_id in lost.values() if one_id},
    )
    previous = dict(
        db.conn.execute(
            "SELECT k.key, k.one_id FROM identity_keys k JOIN reached_keys r ON r.key = k.key"
        )
    )
    graph = Graph(config.identity.types)
    old_links: dict[int, list[tuple[str, str]]] = defaultdict(list)
    details: dict[tuple[str, str], str | None] = {}
    for key, type_name, value, detail in db.conn.execute(
        "SELECT ki.key, i.type, i.value, i.detail FROM key_identifiers ki "
        "JOIN identifiers i ON i.id = ki.identifier_id JOIN reached_keys r ON r.key = ki.key"
    ):
        old_links[key].append((type_name, value))
        details[(type_name, value)] = detail
    for key in previous:
        graph.add_key(key, old_links.get(key, []))
    unusable = []
    for key, found, rejected in new:
        graph.add_key(key, [(t, v) for t, v, _ in found])
        details.update({(t, v): d for t, v, d in found})
        unusable += [(key, r.type, r.raw, r.reason) for r in rejected]
    db.conn.execute("DELETE FROM refused_links WHERE key IN (SELECT key FROM reached_keys)")
    _inherit(previous, successors, lost)
    previous.update({key: one_id for key, one_id in lost.items() if key not in previous})
    _write(db, config.identity.source_priority, graph, details, unusable, previous, run_id, result)


def _write(
    db: sqlite_utils.Database,
    source_priority: tuple[str, ...],
    graph: Graph,
    details: dict[tuple[str, str], str | None],
    unusable: list[tuple[int, str, str, str]],
    previous: dict[int, str | None],
    run_id: int,
    result: ResolveResult,
) -> None:
    graph.resolve()
    one_ids, stats = _assign(db, graph, previous, run_id)
    result.created, result.merged, result.split = stats["created"], stats["merged"], stats["split"]
    result.removed = stats["removed"]
    result.keys_resolved = len(graph.key_node)
    at = now_iso()
    key_rows = [(key, one_ids.get(graph.find(node)), at) for key, node in graph.key_node.items()]
    db.conn.executemany(
        "INSERT INTO identity_keys (key, one_id, resolved_at) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET one_id=excluded.one_id, resolved_at=excluded.resolved_at",
        key_rows,
    )
    ident_rows = []
    for ident, inode in graph.ident_node.items():
        refused = graph.refused_values.get(ident)
        if inode in graph.nonjoining:
            roots = {graph.find(k) for k in graph.nonjoining[inode]}
            one_id = one_ids.get(roots.pop()) if len(roots) == 1 else None
            refused = None if one_id else "join: false, and found on several customers"
        else:
            one_id = None if refused else one_ids.get(graph.find(inode))
        status = "linked" if one_id else "refused"
        ident_rows.append((ident[0], ident[1], details.get(ident), one_id, status, refused))
    db.conn.executemany(
        "INSERT INTO identifiers (type, value, detail, one_id, status, reason) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(type, value) DO UPDATE SET "
        "detail=excluded.detail, one_id=excluded.one_id, status=excluded.status, "
        "reason=excluded.reason",
        ident_rows,
    )
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS graph_idents (type TEXT, value TEXT)")
    db.conn.execute("DELETE FROM graph_idents")
    db.conn.executemany("INSERT INTO graph_idents VALUES (?, ?)", list(graph.ident_node))
    ids = {
        (t, v): id_
        for id_, t, v in db.conn.execute(
            "SELECT i.id, i.type, i.value FROM identifiers i "
            "JOIN graph_idents g ON g.type = i.type AND g.value = i.value"
        )
    }
    db.conn.executemany(
        "INSERT OR IGNORE INTO key_identifiers (key, identifier_id) VALUES (?, ?)",
        [(graph.key_of_node[k], ids[graph.ident_of_node[i]]) for _, i, k in graph.links],
    )
    db.conn.executemany(
        "INSERT INTO unusable_values (key, type, raw, reason) VALUES (?, ?, ?, ?)", unusable
    )
    db.conn.executemany(
        "INSERT INTO refused_links (key, identifier_id, reason) VALUES (?, ?, ?)",
        [(key, ids[ident], reason) for key, ident, reason in graph.refused],
    )
    result.refused_links = len(graph.refused)
    result.unusable_values = len(unusable)
    current = set(one_ids.values())  # a set: a membership test on .values() scans them all
    merged_away = [old for old in set(previous.values()) if old and old not in current]
    db.conn.executemany("DELETE FROM profiles WHERE one_id = ?", [(o,) for o in merged_away])
    build_profiles(db, sorted(current), at, source_priority)


# ---------------------------------------------------------------------------------------------
# Explaining and exporting


def explain(db: sqlite_utils.Database, one_id: str) -> dict[str, Any]:
    """Why a customer's records are together, and which links were refused."""
    current, merged_from = follow_merges(db, one_id)

    def rows(sql: str) -> list[dict[str, Any]]:
        return rows_as_dicts(db, sql, (current,))

    records = rows(
        "SELECT m.kind, m.source, m.key, t.key AS identity_key FROM identity_keys t "
        "JOIN (" + _RECORDS_BY_KEY + ") m ON m.identity_key = t.key "
        "WHERE t.one_id = ? ORDER BY m.kind, m.source, m.key LIMIT 500"
    )
    links = rows(
        "SELECT i.type, i.value, i.detail, count(DISTINCT ki.key) AS keys FROM identifiers i "
        "JOIN key_identifiers ki ON ki.identifier_id = i.id WHERE i.one_id = ? "
        "GROUP BY i.id ORDER BY i.type, i.value"
    )
    refused = rows(
        "SELECT i.type, i.value, r.reason, r.key AS identity_key, i.one_id AS belongs_to "
        "FROM refused_links r JOIN identifiers i ON i.id = r.identifier_id "
        "WHERE r.key IN (SELECT key FROM identity_keys WHERE one_id = ?) ORDER BY i.type"
    )
    unusable = rows(
        "SELECT DISTINCT u.type, u.raw, u.reason FROM unusable_values u "
        "WHERE u.key IN (SELECT key FROM identity_keys WHERE one_id = ?) ORDER BY u.type, u.raw"
    )
    return {
        "one_id": current,
        "asked_for": one_id,
        "merged_from": merged_from,
        "identifiers": links,
        "records": records,
        "refused_links": refused,
        "unusable_values": unusable,
    }


_RECORDS_BY_KEY = " UNION ALL ".join(
    f"SELECT '{kind.name}' AS kind, source, key, identity_key FROM {kind.table}"
    for kind in KINDS.values()
)


def export_mapping(db: sqlite_utils.Database, path: Path) -> int:
    """Write the ID-mapping table (kind, source, key, one_id), CSV or JSONL by extension.

    Written to a temporary file and renamed, so a reader never sees half of it, then logged
    with its customers (exports.py). CSV cells a spreadsheet would run as a formula are
    neutralised (csvsafe).
    """
    row_format(path)
    logged = Members(db.conn)
    cursor = db.conn.execute("SELECT kind, source, key, one_id FROM id_mapping")
    fields = ("kind", "source", "key", "one_id")
    return write_logged_rows(db, path, fields, cursor, Export(ID_MAPPING), logged, one_id_at=3)


def unresolved_batches(db: sqlite_utils.Database) -> int:
    """Finished batches that no resolve run has covered yet."""
    last = _last_run(db)
    through = last[0] if last else 0
    return db.conn.execute(
        "SELECT count(*) FROM batches WHERE status = 'done' AND id > ?", (through,)
    ).fetchone()[0]
