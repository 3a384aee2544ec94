"""The identity graph: keys and identifiers as integer nodes, joined by a union-find that
enforces the guards (`max_per_profile`, `max_profiles_per_value`, `join: false`).

resolve.py stages each key's identifiers in a temp table (`stage`); `Graph.load` numbers keys
and identifiers there, in SQL, and the graph holds arrays of integers only. At 1M customers
a graph of Python objects (dicts of tuples, a list per identifier, an int object per node)
held 2 GB for 6.7M nodes; these arrays hold about 300 MB.

Nodes: the keys first, numbered in the order they were staged (which orders new one_ids),
then the identifiers in (type, value) order, which is the order a full run numbers the
`identifiers` table in: identifier `id` is node `base + id`.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Sequence

from cdp_cli.identity.settings import IdentifierType
from cdp_cli.store import sorting_cache

# (type, value, detail) of one identifier a key carries
Found = tuple[str, str, "str | None"]


# Where the staged rowids of the keys a second process read (keys_worker.py) start: after
# every key the first process read, in whatever order the two come, so that the keys number as
# they do in one process, which reads the second's after its own.
SECOND_PART = 1 << 40


def stage(conn: sqlite3.Connection, keys: Iterable[tuple[int, int, Sequence[Found]]]) -> None:
    """Stage keys, each (part, key, the identifiers it carries): part 0 in the order they
    come, part 1 (the second process's) after all of part 0. A key with none is still a
    node (a record that identifies no one keeps its key row)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS graph_staged "
        "(key INTEGER NOT NULL, type TEXT, value TEXT, detail TEXT)"
    )
    conn.execute("DELETE FROM graph_staged")

    def rows() -> Iterable[tuple[int, int, str | None, str | None, str | None]]:
        next_rowid = [1, SECOND_PART]
        for part, key, found in keys:
            rowid = next_rowid[part]
            if not found:
                yield rowid, key, None, None, None
                rowid += 1
            for type_name, value, detail in found:
                yield rowid, key, type_name, value, detail
                rowid += 1
            next_rowid[part] = rowid

    conn.executemany(
        "INSERT INTO graph_staged (rowid, key, type, value, detail) VALUES (?, ?, ?, ?, ?)", rows()
    )


_TABLES = (
    "DROP TABLE IF EXISTS temp.graph_keys",
    "CREATE TEMP TABLE graph_keys (node INTEGER PRIMARY KEY, key INTEGER NOT NULL)",
    "INSERT INTO graph_keys (node, key) SELECT row_number() OVER (ORDER BY min(rowid)) - 1, key "
    "FROM graph_staged GROUP BY key",
    "CREATE UNIQUE INDEX temp.graph_keys_key ON graph_keys (key)",
    "DROP TABLE IF EXISTS temp.graph_idents",
    "CREATE TEMP TABLE graph_idents "
    "(id INTEGER PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL, detail TEXT)",
    "DROP TABLE IF EXISTS temp.graph_links",
    "CREATE TEMP TABLE graph_links (key INTEGER NOT NULL, ident INTEGER NOT NULL)",
)


def clear(conn: sqlite3.Connection) -> None:
    """Empty the graph's temp tables once a run has written what it decided: their pages
    go back to the connection's temporary file."""
    for table in ("graph_staged", "graph_keys", "graph_idents", "graph_links"):
        conn.execute(f"DELETE FROM temp.{table}")


class _Numbering:
    """The identifiers of the staged links, numbered as they come sorted by (type, value,
    key): one pass over one sort, where SQLite took 50 s at 1M customers to number them and
    join 6M links to the numbers."""

    def __init__(self) -> None:
        self.starts = array("q", [0])
        self.linked = array("q")
        self.ranges: dict[str, tuple[int, int]] = {}

    def identifiers(self, links: Iterable[tuple[str, str, str | None, int]]) -> Iterator[Found]:
        """(type, value, detail) of each identifier, in order, from the links (type, value,
        detail, key node) sorted by type, value and key."""
        linked, starts, ranges = self.linked, self.starts, self.ranges
        type_name: str | None = None
        value = ""
        detail: str | None = None
        last_node: int | None = None
        for row_type, row_value, row_detail, node in links:
            if row_value != value or row_type != type_name:
                if type_name is not None:
                    yield type_name, value, detail
                    starts.append(len(linked))
                ident = len(starts)  # the id of the identifier this row starts
                first = ranges[row_type][0] if row_type == type_name else ident
                ranges[row_type] = (first, ident)
                type_name, value, detail, last_node = row_type, row_value, None, None
            if row_detail is not None and (detail is None or row_detail > detail):
                detail = row_detail  # a value's detail (a phone's type) follows from it
            if node != last_node:  # a key carries each identifier once
                linked.append(node)
                last_node = node
        if type_name is not None:
            yield type_name, value, detail
            starts.append(len(linked))


class Graph:
    """Keys and identifiers as integer nodes, joined by a union-find that enforces the guards."""

    def __init__(
        self,
        types: tuple[IdentifierType, ...],
        key_of: array[int],
        ranges: dict[str, tuple[int, int]],
        starts: array[int],
        linked: array[int],
    ) -> None:
        self.types = {t.name: t for t in types}
        self.key_of = key_of  # key node -> its identity key
        self.key_count = len(key_of)
        self.base = self.key_count - 1  # identifier id -> node: base + id
        self.ranges = ranges  # type -> (its first identifier id, its last)
        # The links, identifier by identifier: the key nodes of identifier id are
        # linked[starts[id - 1]:starts[id]], in key order.
        self.starts = starts
        self.linked = linked
        size = self.key_count + (len(starts) - 1)
        self.parent = array("q", range(size))
        self.size = array("q", [1]) * size
        # For each type with `max_per_profile`: how many of its identifiers a component
        # holds, at its root. A lone identifier holds one of its own type.
        self.limits = {n: t.max_per_profile for n, t in self.types.items() if t.max_per_profile}
        self.held: dict[str, array[int]] = {}
        for type_name in self.limits:
            if type_name in ranges:
                held = self.held[type_name] = array("i", [0]) * size
                first, last = ranges[type_name]
                held[self.base + first : self.base + last + 1] = array("i", [1]) * (
                    last - first + 1
                )
        self.refused: list[tuple[int, int, str]] = []  # key node, identifier node, reason
        self.refused_values: dict[int, str] = {}  # identifier node -> why it links no one
        self.nonjoining = {n for n, t in self.types.items() if not t.joins}
        # Key nodes that are a customer by themselves though they may link to no other: the
        # keys of `join: false` values, and records probabilistic matching is for.
        self.lone_customers = bytearray(self.key_count)
        self.standalone: set[int] = set()  # set by identity/match.py
        self.root_group = array("q")  # see group()
        self.group_min_key = array("q")
        self._key_node: dict[int, int] | None = None

    @classmethod
    def load(cls, conn: sqlite3.Connection, types: tuple[IdentifierType, ...]) -> Graph:
        """The graph of what `stage` staged: keys numbered by SQLite in the order they were
        staged, identifiers as they come sorted (its sorter spills to disk where a dict of 3M
        identifiers stayed in memory)."""
        with sorting_cache(conn):
            for statement in _TABLES:
                conn.execute(statement)
            numbering = _Numbering()
            # CROSS JOIN: the staged rows in the order staged, each key's node through the
            # index, in nearly the index's order.
            links = conn.execute(
                "SELECT s.type, s.value, s.detail, k.node FROM graph_staged s "
                "CROSS JOIN graph_keys k ON k.key = s.key WHERE s.type IS NOT NULL "
                "ORDER BY s.type, s.value, s.key"
            )
            conn.executemany(
                "INSERT INTO graph_idents (type, value, detail) VALUES (?, ?, ?)",
                numbering.identifiers(links),
            )
        conn.execute("DELETE FROM graph_staged")
        key_of = array("q", (key for (key,) in conn.execute("SELECT key FROM graph_keys")))
        return cls(types, key_of, numbering.ranges, numbering.starts, numbering.linked)

    @property
    def key_node(self) -> dict[int, int]:
        """identity key -> node; made when asked (probabilistic matching asks)."""
        if self._key_node is None:
            self._key_node = {key: node for node, key in enumerate(self.key_of)}
        return self._key_node

    def keys_of(self, inode: int) -> array[int]:
        """The key nodes an identifier node is linked to, in key order."""
        ident = inode - self.base
        return self.linked[self.starts[ident - 1] : self.starts[ident]]

    def _linked_keys(self, type_name: str) -> array[int]:
        """The key node of every link of a type's identifiers (a key once per identifier)."""
        first, last = self.ranges[type_name]
        return self.linked[self.starts[first - 1] : self.starts[last]]

    def find(self, node: int) -> int:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def union(self, a: int, b: int) -> str | None:
        """Join the components of two nodes; the reason instead when a guard refuses."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        for type_name, held in self.held.items():  # strongest type first
            limit = self.limits[type_name]
            if held[ra] + held[rb] > limit:
                return f"a customer holds at most {limit} {type_name}"
        size = self.size
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        size[ra] += size[rb]
        for held in self.held.values():
            held[ra] += held[rb]
        return None

    def _attach(self, inode: int, knode: int, type_name: str) -> str | None:
        """union(knode, inode) for the first link of an identifier, still alone: only its own
        type can break a limit, and it joins the key's component (never the smaller)."""
        root = self.find(knode)
        held = self.held.get(type_name)
        if held is not None:
            limit = self.limits[type_name]
            if held[root] + 1 > limit:
                return f"a customer holds at most {limit} {type_name}"
            held[root] += 1
        self.parent[inode] = root
        self.size[root] += 1
        return None

    def resolve(self) -> None:
        """Take the links in a fixed order (type priority, identifier, key), joining what the
        guards allow: which of two competing links a guard keeps must not depend on what was
        loaded first, so an incremental run decides as a full run would."""
        guarded = [n for n, t in self.types.items() if t.max_profiles_per_value]
        base, starts, linked, refused = self.base, self.starts, self.linked, self.refused
        for type_name in self.types:  # strongest first
            if type_name not in self.ranges:
                continue
            if type_name in self.nonjoining:
                for knode in self._linked_keys(type_name):
                    self.lone_customers[knode] = 1
                continue
            if type_name in guarded:
                continue
            first, last = self.ranges[type_name]
            for ident in range(first, last + 1):
                inode = base + ident
                start, end = starts[ident - 1], starts[ident]
                reason = self._attach(inode, linked[start], type_name)
                if reason:
                    refused.append((linked[start], inode, reason))
                for n in range(start + 1, end):
                    reason = self.union(linked[n], inode)
                    if reason:
                        refused.append((linked[n], inode, reason))
        if any(t in self.ranges and t not in self.nonjoining for t in guarded):
            self._resolve_guarded(guarded)

    def _resolve_guarded(self, guarded: list[str]) -> None:
        """Link the values of guarded types last, each only when it is seen with few enough
        customers (components that hold an identifier of a type not guarded)."""
        find = self.find
        known = bytearray(len(self.parent))
        for type_name in self.ranges:
            if type_name not in guarded:
                for knode in self._linked_keys(type_name):
                    known[find(knode)] = 1
        for type_name in guarded:  # strongest first
            if type_name not in self.ranges or type_name in self.nonjoining:
                continue
            first, last = self.ranges[type_name]
            limit = self.types[type_name].max_profiles_per_value or 0
            for ident in range(first, last + 1):
                inode = self.base + ident
                knodes = self.keys_of(inode)
                customers = {root for root in map(find, knodes) if known[root]}
                if len(customers) > limit:
                    why = f"seen with {len(customers)} customers (max_profiles_per_value {limit})"
                    self.refused_values[inode] = why
                    self.refused += [(k, inode, why) for k in knodes]
                    continue
                for knode in knodes:
                    reason = self.union(knode, inode)
                    if reason:
                        self.refused.append((knode, inode, reason))

    def group(self) -> int:
        """Number the customers (components that hold a linked or a non-joining identifier,
        or a standalone key) in the order of their first key node; their count.

        A key joins others only through a link of its own, so a key in a component of more
        than one node holds a linked identifier. After this, group_of(node) is a node's
        customer and group_min_key[group] the smallest identity key it holds."""
        find, size, key_of = self.find, self.size, self.key_of
        lone = self.lone_customers
        for knode in self.standalone:
            lone[knode] = 1
        root_group = self.root_group = array("q", [-1]) * len(self.parent)
        min_key = self.group_min_key = array("q")
        for knode in range(self.key_count):
            root = find(knode)
            if size[root] > 1 or lone[knode]:
                group = root_group[root]
                if group < 0:
                    root_group[root] = len(min_key)
                    min_key.append(key_of[knode])
                elif key_of[knode] < min_key[group]:
                    min_key[group] = key_of[knode]
        return len(min_key)

    def group_of(self, node: int) -> int:
        """A node's customer after group(); -1 for none."""
        return self.root_group[self.find(node)]
