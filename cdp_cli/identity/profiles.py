"""Golden profiles: one row per customer, and finding one customer (profile360.py shows them).

Survivorship for name, gender, birthday and city: the value from the source listed first in
`identity.source_priority`, then the most recently ingested non-empty value. Every value
keeps its origin (source and key) in `lineage`, and every source value stays on its record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import sqlite_utils

from cdp_cli.config import Config
from cdp_cli.errors import NotFound, UsageError
from cdp_cli.identity.normalize import email_key, normalize_phone
from cdp_cli.privacy import masked_lookup

GOLDEN_FIELDS = ("name", "gender", "birthday", "city")
SEEN_COLUMNS = {
    "customers": "registered_at",
    "orders": "ordered_at",
    "events": "occurred_at",
    "consents": "consented_at",
    "coupons": "issued_at",
}
ANONYMOUS_TYPES = ("device_id",)


def _source_rank(source_priority: tuple[str, ...]) -> tuple[str, list[str]]:
    if not source_priority:
        return "0", []
    cases = " ".join(f"WHEN ? THEN {i}" for i in range(len(source_priority)))
    return f"CASE c.source {cases} ELSE {len(source_priority)} END", list(source_priority)


def build_profiles(
    db: sqlite_utils.Database, one_ids: list[str], at: str, source_priority: tuple[str, ...] = ()
) -> None:
    """(Re)build the golden rows of these one_ids from their records and identifiers."""
    conn = db.conn
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS targets (one_id TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM targets")
    conn.executemany("INSERT INTO targets VALUES (?)", [(o,) for o in one_ids])
    rank, rank_params = _source_rank(source_priority)
    best = "\n".join(
        f""", best_{f} AS (
  SELECT one_id, {f} AS value, origin FROM (
    SELECT one_id, {f}, source || ':' || key AS origin, row_number() OVER (
      PARTITION BY one_id ORDER BY src_rank, batch_id DESC, line DESC) AS rn
    FROM members WHERE {f} IS NOT NULL) WHERE rn = 1)"""
        for f in GOLDEN_FIELDS
    )
    seen = " UNION ALL ".join(
        f"SELECT k.one_id, t.source, t.{column} AS at FROM {table} t "
        "JOIN identity_keys k ON k.key = t.identity_key JOIN targets g ON g.one_id = k.one_id"
        for table, column in SEEN_COLUMNS.items()
    )
    joins = " ".join(f"LEFT JOIN best_{f} ON best_{f}.one_id = g.one_id" for f in GOLDEN_FIELDS)
    lineage = ", ".join(f"'{f}', best_{f}.origin" for f in GOLDEN_FIELDS)
    anonymous = ", ".join(f"'{t}'" for t in ANONYMOUS_TYPES)
    sql = f"""
WITH members AS (
  SELECT k.one_id, c.source, c.key, c.batch_id, c.line, {rank} AS src_rank,
         {", ".join(f"c.{f}" for f in GOLDEN_FIELDS)}
  FROM customers c JOIN identity_keys k ON k.key = c.identity_key
  JOIN targets g ON g.one_id = k.one_id
){best},
seen AS ({seen}),
seen_by AS (
  SELECT one_id, min(at) AS first_seen, max(at) AS last_seen, count(*) AS records,
         json_group_array(DISTINCT source) AS sources
  FROM seen GROUP BY one_id),
idents AS (
  SELECT one_id, type, json_group_array(value) AS vals FROM (
    SELECT one_id, type, value FROM identifiers i WHERE i.status = 'linked'
    AND i.one_id IN (SELECT one_id FROM targets) ORDER BY type, value)
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
  {", ".join(f"best_{f}.value" for f in GOLDEN_FIELDS)},
  coalesce(ident_by.phones, '[]'), coalesce(ident_by.emails, '[]'),
  coalesce(ident_by.identifiers, '{{}}'), seen_by.first_seen, seen_by.last_seen,
  coalesce(seen_by.sources, '[]'), coalesce(seen_by.records, 0),
  json_patch('{{}}', json_object({lineage}))
FROM targets g {joins}
LEFT JOIN seen_by ON seen_by.one_id = g.one_id
LEFT JOIN ident_by ON ident_by.one_id = g.one_id
WHERE true
ON CONFLICT(one_id) DO UPDATE SET updated_at = excluded.updated_at, known = excluded.known,
  {", ".join(f"{f} = excluded.{f}" for f in GOLDEN_FIELDS)},
  phones = excluded.phones, emails = excluded.emails, identifiers = excluded.identifiers,
  first_seen = excluded.first_seen, last_seen = excluded.last_seen,
  sources = excluded.sources, records = excluded.records, lineage = excluded.lineage
"""
    conn.execute(sql, [*rank_params, at, at])


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
            raise NotFound(f"no customer has the one_id {one_id}")
        current = row[0]
        path.append(current)
    return current, path[:-1]
