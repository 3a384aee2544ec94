"""Golden profiles: one row per customer, and finding one customer (profile360.py shows them).

Survivorship for name, gender, birthday and city: the value from the source listed first in
`identity.source_priority`, then the most recently ingested non-empty value. Every value
keeps its origin (source and key) in `lineage`, and every source value stays on its record.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from cdp_cli.config import Config
from cdp_cli.errors import NotFound, UsageError
from cdp_cli.identity.normalize import email_key, normalize_phone
from cdp_cli.privacy import mask_email, mask_phone, masked_lookup
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import key_walk

GOLDEN_FIELDS = ("name", "gender", "birthday", "city")
SEEN_COLUMNS = {
    "customers": "registered_at",
    "orders": "ordered_at",
    "events": "occurred_at",
    "consents": "consented_at",
    "coupons": "issued_at",
}
ANONYMOUS_TYPES = ("device_id",)


def build_profiles(
    db: sqlite_utils.Database,
    one_ids: list[str],
    at: str,
    source_priority: tuple[str, ...] = (),
    everyone: bool = False,
) -> None:
    """(Re)build the golden rows of these one_ids from their records and identifiers.

    `everyone` builds them for every one_id the identity keys hold instead (a full resolve):
    the records are then read in one scan of each table, not through each one_id's keys,
    which is what a few one_ids want."""
    conn = db.conn
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS targets (one_id TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM targets")
    if everyone:
        conn.execute(
            "INSERT INTO targets SELECT DISTINCT one_id FROM identity_keys "
            "WHERE one_id IS NOT NULL ORDER BY one_id"
        )
    else:
        conn.executemany("INSERT INTO targets VALUES (?)", [(o,) for o in sorted(one_ids)])
    by_key = _read_by_key(db) if everyone else {}
    conn.execute(_profiles_sql(source_priority, everyone, by_key), [*source_priority, at, at])


def _read_by_key(db: sqlite_utils.Database) -> dict[str, tuple[str, str]]:
    """Kind tables whose records a full build reads per identity key: table -> (its one
    source, an index on identity_key that holds the table's time column).

    Such a table (events: 10M rows, 600k keys at 1M customers) gives each key's first row,
    first and last time and count from a walk of that index, 4 s at 1M where joining every
    row to its key and grouping them by customer took 28 s. What a profile shows from it is
    the same: its sources are one, in the place the table's first row puts them."""
    found = {}
    for table, column in SEEN_COLUMNS.items():
        walk = key_walk(db.conn, table, covering=[column])
        if walk is not None:
            found[table] = walk
    return found


def _seen_in(
    n: int, table: str, column: str, everyone: bool, by_key: tuple[str, str] | None
) -> str:
    """A kind table's (one_id, kind, row, source, first, last, records) for `seen`."""
    if by_key is None:
        return (
            f"SELECT k.one_id, {n} AS kind, t.rowid AS row, t.source, t.{column} AS first, "
            f"t.{column} AS last, 1 AS n {_records_of(table, everyone)}"
        )
    source, index = by_key
    quoted = source.replace("'", "''")
    return (
        f"SELECT k.one_id, {n} AS kind, a.row, '{quoted}' AS source, a.first, a.last, a.n "
        f"FROM (SELECT identity_key, min(rowid) AS row, min({column}) AS first, "
        f"max({column}) AS last, count(*) AS n FROM {table} INDEXED BY {index} "
        "WHERE identity_key IS NOT NULL GROUP BY identity_key) a "
        "CROSS JOIN identity_keys k ON k.key = a.identity_key"
    )


def _records_of(table: str, everyone: bool) -> str:
    """FROM and WHERE for a kind table's records with the one_id of their key, `t` and `k`."""
    if everyone:  # a scan of the table, not a walk of its identity_key index
        return f"FROM {table} t NOT INDEXED JOIN identity_keys k ON k.key = t.identity_key"
    # CROSS JOIN keeps this join order: from the few targets through the indexes.
    return (
        "FROM targets g CROSS JOIN identity_keys k ON k.one_id = g.one_id "
        f"CROSS JOIN {table} t ON t.identity_key = k.key"
    )


# The order a golden field's first record is found in, as fixed-width digits: a rank of up
# to 3 digits, then the batch and line counted down from this.
_LARGEST = 10**11
_ORDER_WIDTH = 3 + 12 + 12


def _first(column: str, at: int) -> str:
    """The value (0) or origin (1) of a golden field as `best` found it."""
    return f"json_extract(substr({column}, {_ORDER_WIDTH + 1}), '$[{at}]')"


def _profiles_sql(
    source_priority: tuple[str, ...], everyone: bool, by_key: dict[str, tuple[str, str]]
) -> str:
    """The upsert of the targets' golden rows; its parameters are the source priority, then
    the time twice."""
    rank = "0"
    if source_priority:
        cases = " ".join(f"WHEN ? THEN {i}" for i in range(len(source_priority)))
        rank = f"CASE t.source {cases} ELSE {len(source_priority)} END"
    # Each golden field from the first record that has it, in one order for all four fields:
    # the source's rank, then the newest batch and line. One grouping finds all four, each
    # as the least of (that order written as fixed-width digits, then [value, origin]).
    order = (
        f"printf('%03d%012d%012d', {rank}, {_LARGEST} - t.batch_id, "
        f"{_LARGEST} - coalesce(t.line, -1))"
    )
    firsts = ", ".join(
        f"min(CASE WHEN {f} IS NOT NULL THEN o || json_array({f}, origin) END) AS {f}"
        for f in GOLDEN_FIELDS
    )
    # A customer's sources in the order of their first record: kind tables in this order,
    # each in rowid order. The grouping keeps the order rows come in: a scan of every table
    # brings them so; through the targets' keys they are put in that order first. (SQLite's
    # sorter keeps rows that tie in the order they come only without helper threads: see
    # store.apply_size_settings.)
    seen = " UNION ALL ".join(
        _seen_in(n, table, column, everyone, by_key.get(table))
        for n, (table, column) in enumerate(SEEN_COLUMNS.items())
    )
    seen_in_order = "seen" if everyone else "(SELECT * FROM seen ORDER BY one_id, kind, row)"
    in_targets = "" if everyone else "AND i.one_id IN (SELECT one_id FROM targets)"
    lineage = ", ".join(f"'{f}', {_first('best.' + f, 1)}" for f in GOLDEN_FIELDS)
    anonymous = ", ".join(f"'{t}'" for t in ANONYMOUS_TYPES)
    return f"""
WITH best AS (
  SELECT one_id, {firsts} FROM (
    SELECT k.one_id, {order} AS o, t.source || ':' || t.key AS origin,
           {", ".join(f"t.{f}" for f in GOLDEN_FIELDS)}
    {_records_of("customers", everyone)})
  GROUP BY one_id),
seen AS ({seen}),
seen_by AS (
  SELECT one_id, min(first) AS first_seen, max(last) AS last_seen, sum(n) AS records,
         json_group_array(DISTINCT source) AS sources
  FROM {seen_in_order} GROUP BY one_id),
idents AS (
  SELECT one_id, type, json_group_array(value) AS vals FROM (
    SELECT one_id, type, value FROM identifiers i WHERE i.status = 'linked' {in_targets}
    ORDER BY one_id, type, value)
  GROUP BY one_id, type),
ident_by AS (
  SELECT one_id, json_group_object(type, json(vals)) AS identifiers,
         max(type NOT IN ({anonymous})) AS known,
         max(CASE WHEN type = 'phone' THEN vals END) AS phones,
         max(CASE WHEN type = 'email' THEN vals END) AS emails
  FROM idents GROUP BY one_id)
INSERT INTO profiles (one_id, created_at, updated_at, known, {", ".join(GOLDEN_FIELDS)},
  phones, emails, identifiers, first_seen, last_seen, sources, records, lineage)
SELECT g.one_id, ?, ?, coalesce(ident_by.known, 0),
  {", ".join(_first(f"best.{f}", 0) for f in GOLDEN_FIELDS)},
  coalesce(ident_by.phones, '[]'), coalesce(ident_by.emails, '[]'),
  coalesce(ident_by.identifiers, '{{}}'), seen_by.first_seen, seen_by.last_seen,
  coalesce(seen_by.sources, '[]'), coalesce(seen_by.records, 0),
  json_patch('{{}}', json_object({lineage}))
FROM targets g LEFT JOIN best ON best.one_id = g.one_id
LEFT JOIN seen_by ON seen_by.one_id = g.one_id
LEFT JOIN ident_by ON ident_by.one_id = g.one_id
WHERE true
ON CONFLICT(one_id) DO UPDATE SET updated_at = excluded.updated_at, known = excluded.known,
  {", ".join(f"{f} = excluded.{f}" for f in GOLDEN_FIELDS)},
  phones = excluded.phones, emails = excluded.emails, identifiers = excluded.identifiers,
  first_seen = excluded.first_seen, last_seen = excluded.last_seen,
  sources = excluded.sources, records = excluded.records, lineage = excluded.lineage
"""


# ---------------------------------------------------------------------------------------------
# Finding and showing one customer


@dataclass
class Lookup:
    """How a profile was asked for: a one_id, or one of its identifiers."""

    one_id: str | None = None
    phone: str | None = None
    email: str | None = None
    device: str | None = None


def find_one_id(db: sqlite_utils.Database, config: Config, lookup: Lookup) -> tuple[str, list[str]]:
    """The current one_id, and the merge path that led to it from an older one. A phone or
    email that is not one is a usage error (`check_lookup`), for every command that looks up."""
    if lookup.one_id:
        return follow_merges(db, lookup.one_id)
    check_lookup(config, lookup)
    if lookup.phone:
        ident = ("phone", normalize_phone(lookup.phone, config.region) or "")
    elif lookup.email:
        ident = ("email", email_key(lookup.email) or "")
    else:
        ident = ("device_id", (lookup.device or "").strip().upper())
    row = db.conn.execute(
        "SELECT one_id FROM identifiers WHERE type = ? AND value = ? AND one_id IS NOT NULL", ident
    ).fetchone()
    if row is None:
        raise NotFound(f"no customer has the {masked_lookup(**asdict(lookup))}")
    return row[0], []


def check_lookup(config: Config, lookup: Lookup) -> None:
    """A usage error for a phone or email that is not one, which no customer could have:
    saying so helps more than "no customer has it"."""
    if lookup.phone and normalize_phone(lookup.phone, config.region) is None:
        raise UsageError(f"{masked_lookup(phone=lookup.phone)}: not a valid phone number")
    if lookup.email and email_key(lookup.email) is None:
        raise UsageError(f"{masked_lookup(email=lookup.email)}: not a valid email address")


def follow_merges(db: sqlite_utils.Database, one_id: str) -> tuple[str, list[str]]:
    path = [one_id]
    current = one_id
    while not db.conn.execute("SELECT 1 FROM profiles WHERE one_id = ?", (current,)).fetchone():
        row = db.conn.execute(
            "SELECT other_one_id FROM id_history WHERE one_id = ? AND event = 'merged' "
            "ORDER BY id DESC LIMIT 1",
            (current,),
        ).fetchone()
        if row is None or row[0] in path:  # a merge chain cannot loop; stop if data says so
            raise _no_such_one_id(db, one_id)
        current = row[0]
        path.append(current)
    return current, path[:-1]


# A phone number given where a one_id goes: 7 digits or more, with + ( ) - . and spaces.
PHONE_LIKE = re.compile(r"\+?(?:[\s().-]*\d){7,}[\s().-]*")


def _no_such_one_id(db: sqlite_utils.Database, one_id: str) -> NotFound:
    """No customer has this one_id, saying what it is when it is a phone number or an email
    address (masked: it is one), or a one_id in the wrong case."""
    if "@" in one_id:
        shown = mask_email(one_id.strip())
        return NotFound(f"no customer has the one_id {shown}: that is an email address; "
                        "find the customer with --email (as in `cdp profile --email`)")  # fmt: skip
    if PHONE_LIKE.fullmatch(one_id.strip()):
        shown = mask_phone(one_id.strip())
        return NotFound(f"no customer has the one_id {shown}: that is a phone number; "
                        "find the customer with --phone (as in `cdp profile --phone`)")  # fmt: skip
    upper = one_id.strip().upper()
    if (
        upper != one_id
        and db.conn.execute(
            "SELECT 1 FROM profiles WHERE one_id = ? UNION ALL "
            "SELECT 1 FROM id_history WHERE one_id = ?",
            (upper, upper),
        ).fetchone()
    ):
        return NotFound(f"no customer has the one_id {one_id} (did you mean {upper}?)")
    return NotFound(f"no customer has the one_id {one_id}")
