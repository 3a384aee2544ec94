"""What the last feature run saw, and which customers changed since (features.py).

A tag run after another reads again only the customers whose rows can have changed: new or
updated rows, identity links that moved, a row dated after the last date coming into range.
This module keeps what the last run saw (feature_state, feature_keys) and finds those
customers; features.py computes their rows.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from cdp_cli.sqlitelib import sqlite_utils

# The tables whose new rows change someone's features, each read from the id the last run saw.
SOURCE_TABLES = ("orders", "events", "customers")


def count_rows(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def saved_state(conn: sqlite3.Connection) -> dict[str, Any] | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"feature_state", "profile_features", "feature_recount"} <= tables:
        return None
    cursor = conn.execute("SELECT * FROM feature_state")
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def resolve_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM resolve_runs").fetchone()[0])


def stale_note(db: sqlite_utils.Database) -> str | None:
    """What a command that reads customers' features and tags (a segment, a journey run) says
    when they lag the data: ingested batches wait for `cdp resolve`, or a resolve ran after
    the last `cdp tag`."""
    from cdp_cli.identity.resolve import unresolved_note

    pending = unresolved_note(db)
    if pending:
        return pending
    state = saved_state(db.conn)
    if state is not None and state["resolve_id"] < resolve_id(db.conn):
        return "customers were resolved after the last `cdp tag`: run `cdp tag` for their features"
    return None


def _tombstones(conn: sqlite3.Connection) -> int:
    return count_rows(conn, "tombstones")


def _max_ids(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        table: int(conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0])
        for table in SOURCE_TABLES
    }


def can_follow(conn: sqlite3.Connection, state: dict[str, Any], day: str, definitions: str) -> bool:
    """Whether the last run's rows can be brought to this one by reading the changed
    customers: not after an erasure (rows deleted), an earlier as-of date (rows leave the
    range) or a change of definitions (`definitions`: features.definitions() of this code).
    Rows updated in place are followed (mark_changed)."""
    if state["definitions"] != definitions or day < state["as_of"]:
        return False
    if _tombstones(conn) != state["tombstones"]:
        return False
    ids = _max_ids(conn)
    return all(ids[t] >= state[f"{t}_id"] for t in SOURCE_TABLES)  # else rows deleted


def _updated_tables(conn: sqlite3.Connection, state: dict[str, Any]) -> list[str]:
    """The tables of SOURCE_TABLES that batches since the last run updated rows of."""
    return [
        kind
        for (kind,) in conn.execute(
            f"SELECT DISTINCT kind FROM batches WHERE id > ? AND rows_updated > 0 "
            f"AND kind IN ({', '.join('?' for _ in SOURCE_TABLES)})",
            (state["batch_id"], *SOURCE_TABLES),
        )
    ]


# What mark_changed compares with the identity links the last run saw (feature_keys): every
# key, after a full resolve run (it rewrites and drops keys); else only the keys incremental
# runs wrote (temp.written_keys).
EVERY_KEY = "identity_keys"
WRITTEN_KEYS = "temp.written_keys"


def keys_to_compare(conn: sqlite3.Connection, state: dict[str, Any]) -> str:
    """EVERY_KEY or WRITTEN_KEYS, filled: the keys written since the earlier of the first
    resolve run since and the last feature run (an incremental resolve stamps each key it
    writes; times are compared as instants, whatever offset they were written with)."""
    runs = conn.execute(
        "SELECT count(*), sum(mode NOT IN ('incremental', 'unchanged')), "
        "min(julianday(started_at)) FROM resolve_runs WHERE id > ?",
        (state["resolve_id"],),
    ).fetchone()
    last = conn.execute(
        "SELECT julianday(computed_at) FROM feature_runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if not runs[0] or runs[1] or last is None:
        return EVERY_KEY
    conn.execute("DROP TABLE IF EXISTS temp.written_keys")
    conn.execute(
        "CREATE TEMP TABLE written_keys AS SELECT key, one_id FROM identity_keys "
        "WHERE julianday(resolved_at) >= ?",
        (min(runs[2], last[0]),),
    )
    return WRITTEN_KEYS


def mark_changed(
    conn: sqlite3.Connection, state: dict[str, Any], day: str, keys: str | None
) -> int:
    """temp.dirty: the customers to read again (`keys`: the identity keys to compare with
    the last run's, None when no resolve ran since), and temp.new_events_only: the others
    with new events. Returns how many customers are read again."""
    _customer_set(conn, "dirty")
    for table in ("orders", "customers"):  # new rows
        _add_customers_of(conn, "dirty", table, "t.id > ?", [state[f"{table}_id"]])
    for table in _updated_tables(conn, state):  # rows updated in place (an update stamps
        # the row with its batch): their customer now, and the one a row left, by the key
        # it left (feature_left_keys, kept by the tables' triggers) as the last run saw it
        _add_customers_of(
            conn, "dirty", table, "t.batch_id > ? AND t.id <= ?",
            [state["batch_id"], state[f"{table}_id"]],
        )  # fmt: skip
    conn.execute(
        "INSERT OR IGNORE INTO dirty SELECT o.one_id FROM feature_left_keys l "
        "JOIN feature_keys o ON o.key = l.key WHERE o.one_id IS NOT NULL"
    )
    if keys:  # keys that moved, on both sides: the one walked by its key, the other looked
        # up by key (both keyed by it), with no copy of either to sort. A key new to the
        # features whose rows are all new brings only those, counted as new rows are.
        earlier_rows = " OR ".join(
            f"EXISTS (SELECT 1 FROM {table} t WHERE t.identity_key = n.key AND t.id <= ?)"
            for table in SOURCE_TABLES
        )
        conn.execute(
            f"INSERT OR IGNORE INTO dirty SELECT n.one_id FROM {keys} n "
            "LEFT JOIN feature_keys o ON o.key = n.key "
            "WHERE n.one_id IS NOT NULL AND n.one_id IS NOT o.one_id "
            f"AND (o.key IS NOT NULL OR {earlier_rows})",
            [state[f"{table}_id"] for table in SOURCE_TABLES],
        )
        old_side = (
            "SELECT o.one_id FROM feature_keys o LEFT JOIN identity_keys n ON n.key = o.key"
            if keys == EVERY_KEY  # a full resolve can have dropped a key: walk the copy
            else f"SELECT o.one_id FROM {keys} n JOIN feature_keys o ON o.key = n.key"
        )
        conn.execute(
            f"INSERT OR IGNORE INTO dirty {old_side} "
            "WHERE o.one_id IS NOT NULL AND o.one_id IS NOT n.one_id"
        )
        # and new customers: every one of them has a key written
        customers = "profiles" if keys == EVERY_KEY else keys
        conn.execute(
            f"INSERT OR IGNORE INTO dirty SELECT p.one_id FROM {customers} p "
            "WHERE p.one_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM profile_features f WHERE f.one_id = p.one_id)"
        )
    conn.execute(  # a row dated after the last run's day comes into range
        "INSERT OR IGNORE INTO dirty SELECT one_id FROM feature_recount WHERE on_day <= ?", (day,)
    )
    _customer_set(conn, "new_events_only")  # new events alone: added up
    _add_customers_of(
        conn, "new_events_only", "events",
        "t.id > ? AND k.one_id NOT IN (SELECT one_id FROM temp.dirty)", [state["events_id"]],
    )  # fmt: skip
    return count_rows(conn, "dirty")


def _customer_set(conn: sqlite3.Connection, name: str) -> None:
    """An empty temp table of one_ids, `name`."""
    conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
    conn.execute(f"CREATE TEMP TABLE {name} (one_id TEXT PRIMARY KEY) WITHOUT ROWID")


def _add_customers_of(
    conn: sqlite3.Connection, into: str, table: str, rows: str, params: list[Any]
) -> None:
    """Into temp table `into`: the customers of `table`'s rows (t) where `rows` holds."""
    conn.execute(
        f"INSERT OR IGNORE INTO {into} SELECT k.one_id FROM {table} t "
        f"JOIN identity_keys k ON k.key = t.identity_key WHERE {rows} AND k.one_id IS NOT NULL",
        params,
    )


def forget_changed(conn: sqlite3.Connection, keys: str | None) -> None:
    """The changed customers' rows out, to be computed again, among them (on the old side of
    their keys) the customers who are no more; after a full resolve, every row of a customer
    with no profile, too."""
    for table in ("profile_features", "profile_event_counts", "feature_recount"):
        conn.execute(f"DELETE FROM {table} WHERE one_id IN (SELECT one_id FROM temp.dirty)")
        if keys == EVERY_KEY:
            conn.execute(f"DELETE FROM {table} WHERE one_id NOT IN (SELECT one_id FROM profiles)")


def save_state(conn: sqlite3.Connection, day: str, keys: str | None, definitions: str) -> None:
    """What this run saw, for the next one (the same after a kill and a rerun: feature_runs,
    a run log, counts the customers each run read); `keys`: those compared, to keep."""
    ids = _max_ids(conn)
    batch = conn.execute("SELECT coalesce(max(id), 0) FROM batches").fetchone()[0]
    conn.execute("DELETE FROM feature_state")
    conn.execute(
        "INSERT INTO feature_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (day, definitions, ids["orders"], ids["events"], ids["customers"], batch,
         resolve_id(conn), _tombstones(conn)),
    )  # fmt: skip
    left = "" if keys == EVERY_KEY else "key IN (SELECT key FROM feature_left_keys) AND "
    conn.execute(  # keys gone (after a full run's _create_tables, feature_keys is empty)
        f"DELETE FROM feature_keys WHERE {left}NOT EXISTS "
        "(SELECT 1 FROM identity_keys i WHERE i.key = feature_keys.key)"
    )
    conn.execute("DELETE FROM feature_left_keys")  # read
    if keys:  # the identity links these features were computed with: the keys that moved
        # written, not every key
        conn.execute(
            f"INSERT INTO feature_keys SELECT i.key, i.one_id FROM {keys} i "
            "LEFT JOIN feature_keys f ON f.key = i.key "
            "WHERE f.key IS NULL OR i.one_id IS NOT f.one_id ORDER BY i.key "
            "ON CONFLICT (key) DO UPDATE SET one_id = excluded.one_id"
        )
