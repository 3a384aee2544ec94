"""The identity graph: keys and identifiers as integer nodes, joined by a union-find that
enforces the guards (`max_per_profile`, `max_profiles_per_value`, `join: false`); resolve.py
fills it from the store and writes what it decides."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from cdp_cli.identity.settings import IdentifierType

# The key nodes' entry in Graph.keys_of: one empty list for all of them, never appended to.
_NO_KEYS: list[int] = []


class Graph:
    """Keys and identifiers as integer nodes, joined by a union-find that enforces the guards."""

    def __init__(self, types: tuple[IdentifierType, ...]) -> None:
        self.types = {t.name: t for t in types}
        self.key_node: dict[int, int] = {}  # identity key -> node
        self.ident_node: dict[tuple[str, str], int] = {}
        self.label: list[Any] = []  # node -> its identity key, or its identifier (type, value)
        # node -> the key nodes carrying it (an identifier); a key node's is _NO_KEYS
        self.keys_of: list[list[int]] = []
        self.details: dict[tuple[str, str], str] = {}  # a phone's type
        self.parent: list[int] = []
        self.size: list[int] = []
        # component root -> the limited types it holds, by count; a lone identifier holds one
        # of its own type without an entry here (see _held)
        self.counts: dict[int, dict[str, int]] = {}
        self.refused: list[tuple[int, tuple[str, str], str]] = []  # key, identifier, reason
        self.refused_values: dict[tuple[str, str], str] = {}
        self.limits = {n: t.max_per_profile for n, t in self.types.items() if t.max_per_profile}
        # identifier node -> key nodes, for types with `join: false`: such a value makes its
        # record a customer but links it to no other record.
        self.nonjoining: dict[int, list[int]] = {}
        # The identifier nodes in (type, value) order, and by type in the order resolve()
        # takes their links (each to the key nodes of keys_of, in key order): both set by
        # resolve(). Nodes, not tuples: at 1M customers, 3M tuples held 400 MB.
        self.ordered: list[int] = []
        self.links_by_type: list[tuple[str, list[int]]] = []
        # Key nodes that are a customer by themselves though they hold no identifier: the
        # records probabilistic matching is for (identity/match.py).
        self.standalone: set[int] = set()

    def _node(self, label: Any, keys: list[int] = _NO_KEYS) -> int:
        node = len(self.parent)
        self.parent.append(node)
        self.size.append(1)
        self.label.append(label)
        self.keys_of.append(keys)
        return node

    def add_key(self, key: int, identifiers: Iterable[tuple[str, str, str | None]]) -> None:
        """A key and the (type, value, detail) of the identifiers it carries."""
        node = self.key_node.get(key)
        if node is None:
            node = self.key_node[key] = self._node(key)
        ident_node, keys_of = self.ident_node, self.keys_of
        for type_name, value, detail in identifiers:
            ident = (type_name, value)
            inode = ident_node.get(ident)
            if inode is None:
                ident_node[ident] = self._node(ident, [node])
            else:
                keys_of[inode].append(node)
            if detail is not None:  # a value's detail follows from the value itself
                self.details[ident] = detail

    def find(self, node: int) -> int:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def _held(self, root: int) -> dict[str, int] | None:
        held = self.counts.get(root)
        if held is None and self.size[root] == 1:
            label = self.label[root]
            if type(label) is tuple and label[0] in self.limits:
                return {label[0]: 1}
        return held

    def union(self, a: int, b: int) -> str | None:
        """Join the components of two nodes; the reason instead when a guard refuses."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        ca, cb = self._held(ra), self._held(rb)
        if ca and cb:
            for type_name, count in ca.items():
                if count + cb.get(type_name, 0) > self.limits[type_name]:
                    return f"a customer holds at most {self.limits[type_name]} {type_name}"
        if self.size[ra] < self.size[rb]:
            ra, rb, ca, cb = rb, ra, cb, ca
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.counts.pop(rb, None)
        if cb:
            if ca:
                for type_name, count in cb.items():
                    ca[type_name] = ca.get(type_name, 0) + count
            else:
                ca = cb
        if ca:
            self.counts[ra] = ca
        return None

    def _attach(self, inode: int, knode: int, type_name: str, limit: int | None) -> str | None:
        """union(knode, inode) for the first link of an identifier, still alone: only its own
        type can break a limit (no component holds more than a limit), and the key's side is
        never the smaller, so it joins the key's component."""
        root = self.find(knode)
        if limit is not None:
            held = self.counts.get(root)  # a component of more than one node has its entry
            if held is None:
                self.counts[root] = {type_name: 1}
            else:
                count = held.get(type_name, 0)
                if count + 1 > limit:
                    return f"a customer holds at most {limit} {type_name}"
                held[type_name] = count + 1
        self.parent[inode] = root
        self.size[root] += 1
        return None

    def resolve(self) -> None:
        """Take the links in order, joining what the guards allow."""
        self._order_links()
        label, keys_of = self.label, self.keys_of
        guarded = {n for n, t in self.types.items() if t.max_profiles_per_value}
        by_ident: list[int] = []
        for type_name, inodes in self.links_by_type:
            if not self.types[type_name].joins:
                self.nonjoining.update((inode, keys_of[inode]) for inode in inodes)
                continue
            if type_name in guarded:
                by_ident += inodes
                continue
            limit = self.limits.get(type_name)
            for inode in inodes:
                knodes = keys_of[inode]
                reason = self._attach(inode, knodes[0], type_name, limit)
                if reason:
                    self.refused.append((label[knodes[0]], label[inode], reason))
                if len(knodes) > 1:
                    for knode in knodes[1:]:
                        reason = self.union(knode, inode)
                        if reason:
                            self.refused.append((label[knode], label[inode], reason))
        if by_ident:
            self._resolve_guarded(by_ident, guarded)

    def _order_links(self) -> None:
        """The identifiers in (type, value) order, and the links in a fixed order (type
        priority, identifier, key), not node numbers: which of two competing links a guard
        keeps must not depend on what was loaded first, so an incremental run decides as a
        full run would."""
        by_type: dict[str, list[int]] = defaultdict(list)
        for (type_name, _), inode in self.ident_node.items():
            by_type[type_name].append(inode)
        label, keys_of = self.label, self.keys_of
        for inodes in by_type.values():
            inodes.sort(key=lambda inode: label[inode][1])  # by value: no two are equal
        self.ordered = [inode for t in sorted(by_type) for inode in by_type[t]]
        for type_name in self.types:  # strongest first
            inodes = by_type.get(type_name, [])
            for inode in inodes:
                knodes = keys_of[inode]
                if len(knodes) > 1:  # in key order, each once
                    keys_of[inode] = sorted(set(knodes), key=label.__getitem__)
            self.links_by_type.append((type_name, inodes))

    @property
    def links(self) -> Iterator[tuple[int, list[int]]]:
        """(identifier node, its key nodes) of every identifier, in link order."""
        keys_of = self.keys_of
        for _, inodes in self.links_by_type:
            for inode in inodes:
                yield inode, keys_of[inode]

    def _resolve_guarded(self, by_ident: list[int], guarded: set[str]) -> None:
        """Link the values of guarded types last, each only when it is seen with few enough
        customers (components that hold an identifier of a type not guarded)."""
        label, find = self.label, self.find
        known = {
            find(k)
            for inode, knodes in self.links
            if label[inode][0] not in guarded
            for k in knodes
        }
        for inode in by_ident:  # in link order: strongest type first
            knodes = self.keys_of[inode]
            ident = label[inode]
            customers = {find(k) for k in knodes} & known
            limit = self.types[ident[0]].max_profiles_per_value or 0
            if len(customers) > limit:
                why = f"seen with {len(customers)} customers (max_profiles_per_value {limit})"
                self.refused_values[ident] = why
                self.refused += [(label[k], ident, why) for k in knodes]
                continue
            for knode in knodes:
                reason = self.union(knode, inode)
                if reason:
                    self.refused.append((label[knode], ident, reason))

    def components(self) -> dict[int, list[int]]:
        """root -> key nodes, for keys that hold a linked or a non-joining identifier.

        A key joins others only through a link of its own, so a key in a component of more
        than one node holds a linked identifier. Key nodes come in node order."""
        nonjoining = {k for knodes in self.nonjoining.values() for k in knodes}
        nonjoining |= self.standalone
        find, size = self.find, self.size
        groups: dict[int, list[int]] = defaultdict(list)
        for knode in self.key_node.values():  # made in node order
            root = find(knode)
            if size[root] > 1 or knode in nonjoining:
                groups[root].append(knode)
        return groups
