"""Per-customer statistics, computed in SQL from orders and events as of a date.

Every definition is in docs/features.md. "Today" is the as-of date (`--as-of`, default the
current date in the project's timezone); orders and events after it are ignored, so a run can
be reproduced. Days are calendar days in the timezone each timestamp was written in. An order
counts unless its status is refunded, closed or cancelled.

Money is summed exactly: each amount is taken in whole minor units (MONEY_SCALE per unit, 4
decimals) and added as integers, so a total is the same whatever order SQLite adds the rows
in, and a customer at exactly 300.00 is `>= 300` on every run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cdp_cli.config import Config
from cdp_cli.feature_state import (
    EVERY_KEY,
    can_follow,
    count_rows,
    forget_changed,
    keys_to_compare,
    mark_changed,
    resolve_id,
    save_state,
    saved_state,
)
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso, transaction

WINDOWS = (30, 90, 365)
VOID_STATUSES = ("refunded", "closed", "cancelled", "canceled")
MONEY_SCALE = 10_000  # minor units per unit of money: amounts count to 4 decimals
ITEM_AMOUNT = "coalesce(i.value ->> '$.price', 0) * coalesce(i.value ->> '$.quantity', 1)"


def minor_units(amount_sql: str) -> str:
    """SQL: an amount as a whole number of minor units, which add up exactly."""
    return f"CAST(round(({amount_sql}) * {MONEY_SCALE}) AS INTEGER)"


def money(minor_sql: str) -> str:
    """SQL: minor units back to money (the nearest REAL to the exact decimal)."""
    return f"({minor_sql}) / {MONEY_SCALE}.0"


def money_mean(minor_sql: str, count_sql: str) -> str:
    """SQL: a mean of minor units, rounded half away from zero to a whole minor unit."""
    return money(f"round(CAST({minor_sql} AS REAL) / ({count_sql}))")


# name -> (SQL type, one-line definition): the columns of profile_features, for docs and rules.
FEATURES: dict[str, tuple[str, str]] = {
    "order_count": ("INTEGER", "orders up to today"),
    "total_spent": ("REAL", "sum of their amounts, exact to 4 decimals"),
    "avg_order_value": ("REAL", "total_spent / order_count, rounded to 4 decimals"),
    "first_order_at": ("TEXT", "time of the first order"),
    "last_order_at": ("TEXT", "time of the latest order"),
    "days_since_first_order": ("INTEGER", "days from the first order's day to today"),
    "days_since_last_order": ("INTEGER", "days from the latest order's day to today"),
    **{f"order_count_{n}d": ("INTEGER", f"orders in the last {n} days, today in") for n in WINDOWS},
    **{f"total_spent_{n}d": ("REAL", f"amount spent in the last {n} days") for n in WINDOWS},
    "order_days": ("INTEGER", "distinct days with an order"),
    "repurchase_cycle_days": (
        "REAL", "mean days between order days: (last day - first day) / (order_days - 1)",
    ),
    "top_category": ("TEXT", "category with the most spend (items, else the order's category)"),
    "top_store": ("TEXT", "store with the most orders"),
    "top_channel": ("TEXT", "channel with the most orders"),
    "event_count": ("INTEGER", "events up to today"),
    **{f"event_count_{n}d": ("INTEGER", f"events in the last {n} days") for n in WINDOWS},
    "last_event_at": ("TEXT", "time of the latest event"),
    "days_since_last_seen": ("INTEGER", "days since the latest order or event"),
    "registered_at": ("TEXT", "earliest registration on any customer record"),
    "days_since_registered": ("INTEGER", "days from registration to today"),
    "birthday_month": ("INTEGER", "month of the birthday, 1-12"),
    "birthday_this_month": ("INTEGER", "1 when the birthday's month is today's month, else 0"),
    "age": ("INTEGER", "whole years since the birthday"),
    "rfm_recency_days": ("INTEGER", "= days_since_last_order"),
    "rfm_frequency": ("INTEGER", "= order_count"),
    "rfm_monetary": ("REAL", "= total_spent"),
    "rfm_r_score": ("INTEGER", "1-5: recency quintile among customers with orders (5 = latest)"),
    "rfm_f_score": ("INTEGER", "1-5: quintile of frequency (5 = most orders)"),
    "rfm_m_score": ("INTEGER", "1-5: quintile of monetary (5 = most spent)"),
    "rfm_segment": ("TEXT", "champions, loyal, potential_loyalists, new_customers, promising, "
                    "need_attention, about_to_sleep, at_risk, cant_lose, hibernating"),
    "frequency": ("INTEGER", "lifetimes: repeat purchase days (order_days - 1)"),
    "recency": ("INTEGER", "lifetimes: days from the first to the last purchase day"),
    "T": ("INTEGER", "lifetimes: days from the first purchase day to today"),
    "monetary_value": (
        "REAL", "lifetimes: mean daily spend over the repeat purchase days, rounded to 4 decimals",
    ),
}  # fmt: skip

# The usual RFM segments on the recency and frequency scores (R first, then F).
RFM_SEGMENTS = """CASE
  WHEN r IS NULL THEN NULL
  WHEN r >= 5 AND f >= 4 THEN 'champions'
  WHEN r >= 3 AND f >= 4 THEN 'loyal'
  WHEN r >= 4 AND f >= 2 THEN 'potential_loyalists'
  WHEN r = 5 AND f = 1 THEN 'new_customers'
  WHEN r = 4 AND f = 1 THEN 'promising'
  WHEN r = 3 AND f = 3 THEN 'need_attention'
  WHEN r = 3 THEN 'about_to_sleep'
  WHEN f = 5 THEN 'cant_lose'
  WHEN f >= 3 THEN 'at_risk'
  ELSE 'hibernating' END"""


@dataclass
class FeatureResult:
    """What `compute_features` did: `recomputed` customers had their rows read again (all of
    them on a full run); the others only had their date-relative features moved to the day,
    `shifted` of them rows that left a window taken off their counts, and `events_added` of
    them their new events counted in."""

    as_of: str
    customers: int
    with_orders: int
    seconds: float
    full: bool = True
    recomputed: int = 0
    shifted: int = 0
    events_added: int = 0


def today(config: Config) -> date:
    return datetime.now(ZoneInfo(config.timezone)).date()


def features_as_of(db: sqlite_utils.Database, config: Config) -> date:
    """The day the stored features were computed as of (the last `cdp tag`), so that rules
    over them count days from that day; today, in the project's timezone, before any."""
    row = db.conn.execute("SELECT as_of FROM feature_runs ORDER BY id DESC LIMIT 1").fetchone()
    return date.fromisoformat(row[0]) if row else today(config)


# Above this share of customers to read again, one pass over every row costs less than
# looking each changed customer's rows up.
INCREMENTAL_LIMIT = 0.2


def compute_features(db: sqlite_utils.Database, as_of: date, full: bool = False) -> FeatureResult:
    """Bring profile_features and profile_event_counts to a date, for every customer.

    The first run, and any run after something it cannot follow (an erasure, an earlier
    date, other feature definitions), reads every order and event. Later runs read again
    only the customers whose rows can have changed (feature_state): new or updated rows, new
    identity links, a row dated after the last date coming into range (`feature_recount`).
    Every other customer keeps its row: its new events alone are added to it, the rows that
    leave a 30/90/365-day window on the new date are taken off its counts, and what counts
    days from today is recomputed from the stored dates. Both ways give the same table
    (tests/test_features_incremental.py)."""
    started = time.monotonic()
    day = as_of.isoformat()
    params = {"day": day, "month": as_of.month}
    with transaction(db) as conn:
        _size_temp_cache(conn)
        state = saved_state(conn)
        keys: str | None = None  # the identity keys to compare with the last run's
        fingerprint = definitions()
        if not full and state is not None and can_follow(conn, state, day, fingerprint):
            if state["resolve_id"] != resolve_id(conn):
                keys = keys_to_compare(conn, state)
            recomputed = mark_changed(conn, state, day, keys)
            full = recomputed > INCREMENTAL_LIMIT * count_rows(conn, "profiles")
        else:
            full = True
        if full:
            _create_tables(conn)
            conn.execute("DROP TABLE IF EXISTS temp.dirty")  # no scope: every customer
            recomputed = count_rows(conn, "profiles")
            shifted = events_added = 0
        else:
            forget_changed(conn, keys)
            assert state is not None  # an incremental run follows a saved one
            shifted = _shift_windows(conn, state, as_of)
            events_added = _add_new_events(conn, state["events_id"], as_of)
        scoped = not full
        _order_rows(conn, as_of, scoped)
        _order_aggregates(conn)
        _event_counts(conn, as_of, scoped)
        # A full run scores every customer from the orders it just read, and writes each
        # row once, whole; a later run scores everyone from the stored rows, after its own.
        _rfm_scores(conn, params, NEW_BUYERS if full else None)
        _customer_parts(conn, scoped)
        conn.execute(_features_sql(scoped), params)
        _recount_days(conn, scoped)
        if scoped:
            _date_relative(conn, params)
        save_state(conn, day, EVERY_KEY if full else keys, fingerprint)
        conn.execute(
            "INSERT INTO feature_runs (as_of, computed_at, recomputed) VALUES (?, ?, ?)",
            (day, now_iso(), recomputed),
        )
        customers = count_rows(conn, "profile_features")
        with_orders = count_rows(conn, "temp.rfm")  # every customer with orders has a score
    seconds = round(time.monotonic() - started, 3)
    return FeatureResult(
        day, customers, with_orders, seconds, full, recomputed, shifted, events_added
    )


def _size_temp_cache(conn: sqlite3.Connection) -> None:
    """Temp tables get the store's page cache (`store_cache_mb`), not SQLite's 2 MB: at a
    million customers the customers' orders and tags are walked several times."""
    size = conn.execute("PRAGMA main.cache_size").fetchone()[0]
    conn.execute(f"PRAGMA temp.cache_size = {int(size)}")


# ---------------------------------------------------------------------------------------------
# How features are computed, as a fingerprint (feature_state.py keeps what the last run saw)


def definitions() -> str:
    """A fingerprint of how features are computed: another one means a full run."""
    from cdp_cli import __version__

    text = json.dumps(
        [
            __version__,
            FEATURES,
            _features_sql(False),
            _parts_sql(False),
            EVENT_KEYS_SQL,
            EVENT_COUNTS_INSERT,
            SHIFTED_EVENTS,
            SHIFTED_ORDERS,
            _order_rows_sql(False),
            ORDER_ROWS_TABLE,
            ORDER_AGGREGATES,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Computing the rows


def _create_tables(conn: sqlite3.Connection) -> None:
    """The tables are derived, rebuilt by a full run: made from FEATURES, not migrated."""
    conn.execute("DROP TABLE IF EXISTS profile_features")
    columns = ",\n  ".join(f"{name} {sql_type}" for name, (sql_type, _) in FEATURES.items())
    conn.execute(f"CREATE TABLE profile_features (\n  one_id TEXT PRIMARY KEY,\n  {columns}\n)")
    conn.execute("DROP TABLE IF EXISTS profile_event_counts")
    windows = ", ".join(f"days_{n} INTEGER" for n in WINDOWS)
    conn.execute(
        f"CREATE TABLE profile_event_counts (one_id TEXT NOT NULL, event TEXT NOT NULL, "
        f"total INTEGER, {windows}, last_at TEXT, PRIMARY KEY (one_id, event)) WITHOUT ROWID"
    )
    # The day a customer's windowed counts change with no new row: a row leaves a window, or
    # a row dated after the as-of date comes into range.
    conn.execute("DROP TABLE IF EXISTS feature_recount")
    conn.execute(
        "CREATE TABLE feature_recount (one_id TEXT PRIMARY KEY, on_day TEXT NOT NULL) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX feature_recount_day ON feature_recount (on_day)")
    conn.execute("DROP TABLE IF EXISTS feature_keys")  # identity_keys as of the last run
    conn.execute("CREATE TABLE feature_keys (key INTEGER PRIMARY KEY, one_id TEXT)")
    conn.execute("DROP TABLE IF EXISTS feature_state")
    conn.execute(
        "CREATE TABLE feature_state (as_of TEXT, definitions TEXT, orders_id INTEGER, "
        "events_id INTEGER, customers_id INTEGER, batch_id INTEGER, resolve_id INTEGER, "
        "tombstones INTEGER)"
    )


def _in_scope(column: str, scoped: bool) -> str:
    """SQL: `AND column` is a changed customer's, on an incremental run."""
    return f" AND {column} IN (SELECT one_id FROM temp.dirty)" if scoped else ""


# Each customer's orders, by one_id: grouping by customer walks the key, with no sort and no
# lookup.
ORDER_ROWS_TABLE = """CREATE TEMP TABLE po (
  one_id TEXT, id INTEGER, ordered_at TEXT, day TEXT, amount REAL, minor INTEGER, store TEXT,
  channel TEXT, category TEXT, items TEXT, age INTEGER, counted INTEGER,
  PRIMARY KEY (one_id, id)) WITHOUT ROWID"""


# SQL over orders o: the order counts (its status is not a void one).
COUNTED_STATUS = (
    f"(o.status IS NULL OR lower(o.status) NOT IN ({', '.join(repr(s) for s in VOID_STATUSES)}))"
)


def _order_rows_sql(scoped: bool) -> str:
    return f"""INSERT INTO po
SELECT k.one_id, o.id, o.ordered_at, substr(o.ordered_at, 1, 10) AS day, o.amount,
       {minor_units("o.amount")} AS minor, o.store, o.channel, o.category, o.items,
       CAST(julianday(:day) - julianday(substr(o.ordered_at, 1, 10)) AS INTEGER) AS age,
       substr(o.ordered_at, 1, 10) <= :day AS counted
FROM orders o JOIN identity_keys k ON k.key = o.identity_key
WHERE k.one_id IS NOT NULL{_in_scope("k.one_id", scoped)}
  AND {COUNTED_STATUS}
ORDER BY k.one_id, o.id"""


def _order_rows(conn: sqlite3.Connection, as_of: date, scoped: bool) -> None:
    """Temp table po: each customer's counted orders up to the day, with the day's age.
    Orders after the day only leave their first day in temp.recount, then go."""
    conn.execute("DROP TABLE IF EXISTS temp.po")
    conn.execute(ORDER_ROWS_TABLE)
    conn.execute(_order_rows_sql(scoped), {"day": as_of.isoformat()})
    conn.execute("DROP TABLE IF EXISTS temp.recount")
    conn.execute("CREATE TEMP TABLE recount (one_id TEXT, on_day TEXT)")
    conn.execute(f"INSERT INTO recount SELECT one_id, {RECOUNT_ON} FROM po GROUP BY one_id")
    conn.execute("DELETE FROM po WHERE counted IS NOT 1")


# Each customer's order aggregates, keyed by one_id (po is in one_id order: no sort), read by
# the RFM scores of a full run and by the features.
ORDER_AGGREGATES_TABLE = f"""CREATE TEMP TABLE ord (
  one_id TEXT PRIMARY KEY, order_count INTEGER, spent_minor INTEGER, first_order_at TEXT,
  last_order_at TEXT, order_days INTEGER,
  {", ".join(f"order_count_{n}d INTEGER, spent_minor_{n}d INTEGER" for n in WINDOWS)}
) WITHOUT ROWID"""
ORDER_AGGREGATES = f"""INSERT INTO ord
SELECT one_id, count(*), sum(minor), min(ordered_at), max(ordered_at), count(DISTINCT day),
  {", ".join(
      f"sum(age < {n}), coalesce(sum(CASE WHEN age < {n} THEN minor END), 0)" for n in WINDOWS
  )}
FROM po GROUP BY one_id"""  # fmt: skip


def _order_aggregates(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS temp.ord")
    conn.execute(ORDER_AGGREGATES_TABLE)
    conn.execute(ORDER_AGGREGATES)


# Over rows (day, counted): the first day a row dated after the as-of date comes into range.
# A row leaving a window needs no reading again: _shift_windows() takes it off.
RECOUNT_ON = "min(CASE WHEN counted = 0 THEN day END)"


# Events per identity key and type, in one walk of the events_identity index (key, event,
# time): no sort, no row read. Keys are far fewer than events; customers are counted from them.
# Each row is compared as the timestamp it is, with the days as bounds (event_bounds): an ISO
# timestamp's day is on or before D exactly when the timestamp sorts before the next day, so
# no row pays for substr() (ten million rows, a dozen calls each).
COUNTED = "occurred_at < :after"
EVENT_KEYS_SQL = f"""CREATE TEMP TABLE ek AS
SELECT identity_key, event, sum({COUNTED}) AS total,
  {", ".join(f"sum(occurred_at >= :from_{n} AND {COUNTED}) AS days_{n}" for n in WINDOWS)},
  max(CASE WHEN {COUNTED} THEN occurred_at END) AS last_at,
  substr(min(CASE WHEN occurred_at >= :after THEN occurred_at END), 1, 10) AS on_day
FROM {{rows}} WHERE occurred_at IS NOT NULL{{keys}}
GROUP BY identity_key, event"""  # fmt: skip


def event_keys_sql(keys: str = "", rows: str = "events INDEXED BY events_identity") -> str:
    """EVENT_KEYS_SQL over `rows` (the events index, or the table for a range of new ids),
    `keys` an SQL condition to add."""
    return EVENT_KEYS_SQL.format(rows=rows, keys=keys)


def event_bounds(as_of: date) -> dict[str, str]:
    """The parameters EVENT_KEYS_SQL reads: the day after the as-of date, and each window's
    first day (a row counts in window n when its day is one of the last n, today in)."""
    return {
        "after": (as_of + timedelta(days=1)).isoformat(),
        **{f"from_{n}": (as_of - timedelta(days=n - 1)).isoformat() for n in WINDOWS},
    }


# profile_event_counts from temp.ek, by customer and event type (a WHERE and a GROUP BY to add)
EVENT_COUNTS_INSERT = f"""INSERT INTO profile_event_counts
  (one_id, event, total, {", ".join(f"days_{n}" for n in WINDOWS)}, last_at)
SELECT k.one_id, ek.event, sum(ek.total), {", ".join(f"sum(ek.days_{n})" for n in WINDOWS)},
  max(ek.last_at)
FROM ek JOIN identity_keys k ON k.key = ek.identity_key"""
# profile_features' event columns over a customer's profile_event_counts rows
EVENT_TOTALS = (
    "sum(total) AS event_count, "
    + ", ".join(f"sum(days_{n}) AS event_count_{n}d" for n in WINDOWS)
    + ", max(last_at) AS last_event_at"
)


def _event_counts(conn: sqlite3.Connection, as_of: date, scoped: bool) -> None:
    keys = ""
    if scoped:
        keys = (
            " AND identity_key IN (SELECT key FROM identity_keys "
            "WHERE one_id IN (SELECT one_id FROM temp.dirty))"
        )
    conn.execute("DROP TABLE IF EXISTS temp.ek")
    conn.execute(event_keys_sql(keys), event_bounds(as_of))
    conn.execute(
        f"""{EVENT_COUNTS_INSERT}
WHERE k.one_id IS NOT NULL{_in_scope("k.one_id", scoped)}
GROUP BY k.one_id, ek.event HAVING sum(ek.total) > 0"""
    )
    conn.execute(
        f"""INSERT INTO recount SELECT k.one_id, min(ek.on_day)
FROM ek JOIN identity_keys k ON k.key = ek.identity_key
WHERE k.one_id IS NOT NULL{_in_scope("k.one_id", scoped)} GROUP BY k.one_id"""
    )


def _recount_days(conn: sqlite3.Connection, scoped: bool) -> None:
    """feature_recount from temp.recount, for the customers this run computed."""
    conn.execute(
        "INSERT INTO feature_recount SELECT one_id, min(on_day) FROM recount "
        "WHERE one_id IN (SELECT one_id FROM profile_features) "
        "GROUP BY one_id HAVING min(on_day) IS NOT NULL"
    )


def shift_bounds(since: date, as_of: date) -> dict[str, str]:
    """The parameters left() reads, for a move from `since` to `as_of`: each window's first day
    on both dates, the later no later than the day after `since` (rows after it were not
    counted: they come into range through feature_recount)."""
    after = since + timedelta(days=1)
    return {
        **{f"old_{n}": (since - timedelta(days=n - 1)).isoformat() for n in WINDOWS},
        **{f"new_{n}": min(as_of - timedelta(days=n - 1), after).isoformat() for n in WINDOWS},
    }


def left(column: str, n: int) -> str:
    """SQL: a counted row in window n on the earlier date is out of it on the later one (its
    timestamp sorts between the two first days, as in event_bounds)."""
    return f"({column} >= :old_{n} AND {column} < :new_{n})"


def _left_any(column: str) -> str:
    return " OR ".join(left(column, n) for n in WINDOWS)


# The rows that leave a window, per customer (and event type), found by one walk of the
# events index and of the orders: a handful of days' rows, however long the history.
SHIFTED_EVENTS = f"""CREATE TEMP TABLE shifted_events AS
SELECT k.one_id, e.event,
  {", ".join(f"sum({left('e.occurred_at', n)}) AS left_{n}" for n in WINDOWS)}
FROM events e INDEXED BY events_identity CROSS JOIN identity_keys k ON k.key = e.identity_key
WHERE ({_left_any("e.occurred_at")}) AND e.id <= :events_id AND k.one_id IS NOT NULL
GROUP BY k.one_id, e.event"""  # fmt: skip
SHIFTED_ORDERS = f"""CREATE TEMP TABLE shifted_orders AS
SELECT k.one_id, {", ".join(
    f"sum({left('o.ordered_at', n)}) AS left_{n}, coalesce(sum(CASE WHEN "
    f"{left('o.ordered_at', n)} THEN {minor_units('o.amount')} END), 0) AS minor_{n}"
    for n in WINDOWS
)}
FROM orders o CROSS JOIN identity_keys k ON k.key = o.identity_key
WHERE ({_left_any("o.ordered_at")}) AND o.id <= :orders_id AND {COUNTED_STATUS}
  AND k.one_id IS NOT NULL
GROUP BY k.one_id"""  # fmt: skip


def _shift_windows(conn: sqlite3.Connection, state: dict[str, Any], as_of: date) -> int:
    """Move the windowed counts of the customers not read again from the last run's date to
    `as_of`: the rows that run counted and that left a window are taken off; nothing else in
    a window changes but new rows (added after). Runs before the read customers' rows are
    made again, so it touches only kept rows. Returns how many customers it moved."""
    since = date.fromisoformat(state["as_of"])
    if as_of <= since:
        return 0
    params = {**shift_bounds(since, as_of), "events_id": state["events_id"],
              "orders_id": state["orders_id"]}  # fmt: skip
    for table, sql in (("shifted_events", SHIFTED_EVENTS), ("shifted_orders", SHIFTED_ORDERS)):
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        conn.execute(sql, params)
    days = ", ".join(f"days_{n} = days_{n} - s.left_{n}" for n in WINDOWS)
    conn.execute(
        f"UPDATE profile_event_counts SET {days} FROM temp.shifted_events s "
        "WHERE profile_event_counts.one_id = s.one_id AND profile_event_counts.event = s.event"
    )
    events = ", ".join(f"event_count_{n}d = event_count_{n}d - s.left_{n}" for n in WINDOWS)
    sums = ", ".join(f"sum(left_{n}) AS left_{n}" for n in WINDOWS)
    conn.execute(
        f"UPDATE profile_features SET {events} FROM (SELECT one_id, {sums} "
        "FROM temp.shifted_events GROUP BY one_id) s WHERE profile_features.one_id = s.one_id"
    )
    orders = ", ".join(
        f"order_count_{n}d = order_count_{n}d - s.left_{n}, total_spent_{n}d = "
        + money(f"{minor_units(f'total_spent_{n}d')} - s.minor_{n}")
        for n in WINDOWS
    )
    conn.execute(
        f"UPDATE profile_features SET {orders} FROM temp.shifted_orders s "
        "WHERE profile_features.one_id = s.one_id"
    )
    return int(
        conn.execute(
            "SELECT count(*) FROM profile_features WHERE one_id IN "
            "(SELECT one_id FROM temp.shifted_events UNION SELECT one_id FROM temp.shifted_orders)"
        ).fetchone()[0]
    )


def _add_new_events(conn: sqlite3.Connection, events_id: int, as_of: date) -> int:
    """Count the events added since the last run into the kept rows of the customers whose
    only news they are (temp.new_events_only), as of the day: counts and windows add up, the
    latest time is the later one, and a row dated after the day leaves its day to come into
    range. Reads the new events alone, not the customers' history. Returns how many
    customers."""
    customers = count_rows(conn, "temp.new_events_only")
    if not customers:
        return 0
    conn.execute("DROP TABLE IF EXISTS temp.ek")
    conn.execute(
        event_keys_sql(" AND id > :events_id", rows="events"),
        {**event_bounds(as_of), "events_id": events_id},
    )
    only = "k.one_id IN (SELECT one_id FROM temp.new_events_only)"
    adds = ", ".join(f"days_{n} = days_{n} + excluded.days_{n}" for n in WINDOWS)
    conn.execute(
        f"""{EVENT_COUNTS_INSERT}
WHERE {only} GROUP BY k.one_id, ek.event HAVING sum(ek.total) > 0
ON CONFLICT (one_id, event) DO UPDATE SET total = total + excluded.total, {adds},
  last_at = max(last_at, excluded.last_at)"""
    )
    conn.execute(
        f"""INSERT INTO feature_recount SELECT k.one_id, min(ek.on_day)
FROM ek JOIN identity_keys k ON k.key = ek.identity_key
WHERE {only} GROUP BY k.one_id HAVING min(ek.on_day) IS NOT NULL
ON CONFLICT (one_id) DO UPDATE SET on_day = min(on_day, excluded.on_day)"""
    )
    columns = ["event_count", *(f"event_count_{n}d" for n in WINDOWS), "last_event_at"]
    conn.execute(
        f"UPDATE profile_features SET {', '.join(f'{c} = e.{c}' for c in columns)} "
        f"FROM (SELECT one_id, {EVENT_TOTALS} FROM profile_event_counts "
        "WHERE one_id IN (SELECT one_id FROM temp.new_events_only) GROUP BY one_id) e "
        "WHERE profile_features.one_id = e.one_id"
    )
    return customers


# What counts days from today, from the dates stored: every customer's, on every run.
DATE_RELATIVE = {
    "days_since_first_order": "CAST(julianday(:day) - julianday(substr(first_order_at, 1, 10)) "
    "AS INTEGER)",
    "days_since_last_order": "CAST(julianday(:day) - julianday(substr(last_order_at, 1, 10)) "
    "AS INTEGER)",
    "days_since_last_seen": "CAST(julianday(:day) - julianday(substr(max(coalesce("
    "last_order_at, ''), coalesce(last_event_at, '')), 1, 10)) AS INTEGER)",
    "days_since_registered": "CAST(julianday(:day) - julianday(substr(registered_at, 1, 10)) "
    "AS INTEGER)",
    "rfm_recency_days": "CAST(julianday(:day) - julianday(substr(last_order_at, 1, 10)) "
    "AS INTEGER)",
    "T": "CAST(julianday(:day) - julianday(substr(first_order_at, 1, 10)) AS INTEGER)",
    "birthday_month": "CAST(substr(p.birthday, 6, 2) AS INTEGER)",
    "birthday_this_month": "CASE WHEN p.birthday IS NULL THEN 0 "
    "ELSE CAST(substr(p.birthday, 6, 2) AS INTEGER) = :month END",
    "age": "CAST(substr(:day, 1, 4) AS INTEGER) - CAST(substr(p.birthday, 1, 4) AS INTEGER) "
    "- (substr(:day, 6, 5) < substr(p.birthday, 6, 5))",
}


def _date_relative(conn: sqlite3.Connection, params: dict[str, Any]) -> None:
    """Days since, birthdays and age, from stored dates and profiles, and the RFM scores, for
    every customer, in one UPDATE: each row is written once a run."""
    _rfm_scores(conn, params, STORED_BUYERS)
    sets = ", ".join(f"{name} = {sql}" for name, sql in DATE_RELATIVE.items())
    scores = "rfm_r_score = s.r, rfm_f_score = s.f, rfm_m_score = s.m, rfm_segment = s.segment"
    conn.execute(
        f"UPDATE profile_features SET {sets}, {scores} FROM profiles p "
        "LEFT JOIN temp.rfm s ON s.one_id = p.one_id WHERE p.one_id = profile_features.one_id",
        params,
    )


def _features_sql(scoped: bool) -> str:
    """Every column of the rows of the customers in scope, the RFM scores from temp.rfm (empty
    on a later run, whose _date_relative scores everyone after)."""
    total_spent = money("coalesce(ord.spent_minor, 0)")
    # Spend on the repeat purchase days: all of it less the first day's, whose orders are
    # looked up by the customer's key in po (no pass of its own over every order by day).
    first_day_minor = (
        "(SELECT sum(x.minor) FROM po x "
        "WHERE x.one_id = ord.one_id AND x.day = substr(ord.first_order_at, 1, 10))"
    )
    repeat_days_mean = money_mean(
        f"ord.spent_minor - coalesce({first_day_minor}, 0)", "nullif(ord.order_days - 1, 0)"
    )
    values = {
        "order_count": "coalesce(ord.order_count, 0)",
        "total_spent": total_spent,
        "avg_order_value": money_mean("ord.spent_minor", "ord.order_count"),
        "first_order_at": "ord.first_order_at",
        "last_order_at": "ord.last_order_at",
        **{f"order_count_{n}d": f"coalesce(ord.order_count_{n}d, 0)" for n in WINDOWS},
        **{f"total_spent_{n}d": money(f"coalesce(ord.spent_minor_{n}d, 0)") for n in WINDOWS},
        "order_days": "coalesce(ord.order_days, 0)",
        "repurchase_cycle_days": "CASE WHEN ord.order_days > 1 THEN "
        "(julianday(substr(ord.last_order_at, 1, 10)) "
        "- julianday(substr(ord.first_order_at, 1, 10))) / (ord.order_days - 1) END",
        "top_category": "top_category.category",
        "top_store": "top_store.store",
        "top_channel": "top_channel.channel",
        "event_count": "coalesce(ev.event_count, 0)",
        **{f"event_count_{n}d": f"coalesce(ev.event_count_{n}d, 0)" for n in WINDOWS},
        "last_event_at": "ev.last_event_at",
        "registered_at": "reg.registered_at",
        "rfm_frequency": "coalesce(ord.order_count, 0)",
        "rfm_monetary": total_spent,
        "rfm_r_score": "s.r",
        "rfm_f_score": "s.f",
        "rfm_m_score": "s.m",
        "rfm_segment": "s.segment",
        "frequency": "ord.order_days - 1",
        "recency": "CAST(julianday(substr(ord.last_order_at, 1, 10)) "
        "- julianday(substr(ord.first_order_at, 1, 10)) AS INTEGER)",
        "monetary_value": "CASE WHEN ord.one_id IS NOT NULL THEN "
        f"coalesce({repeat_days_mean}, 0) END",
        **DATE_RELATIVE,  # over the columns above, by name
    }
    return f"""INSERT INTO profile_features (one_id, {", ".join(FEATURES)})
SELECT p.one_id, {", ".join(values[name] for name in FEATURES)}
FROM profiles p
LEFT JOIN temp.ord ord ON ord.one_id = p.one_id
LEFT JOIN temp.top_category ON top_category.one_id = p.one_id
LEFT JOIN temp.top_store ON top_store.one_id = p.one_id
LEFT JOIN temp.top_channel ON top_channel.one_id = p.one_id
LEFT JOIN temp.ev ON ev.one_id = p.one_id
LEFT JOIN temp.reg ON reg.one_id = p.one_id
LEFT JOIN temp.rfm s ON s.one_id = p.one_id
WHERE 1{_in_scope("p.one_id", scoped)}"""


def _top(column: str, rank: str, rows: str = "po") -> str:
    """SQL: each customer's `column` value that ranks first by `rank` among its `rows`."""
    return f"""SELECT one_id, {column} FROM (
  SELECT one_id, {column}, row_number() OVER (PARTITION BY one_id ORDER BY {rank}) AS rn
  FROM {rows} WHERE {column} IS NOT NULL GROUP BY one_id, {column}) WHERE rn = 1"""


def _parts_sql(scoped: bool) -> dict[str, tuple[str, str]]:
    """The per-customer parts the features' INSERT joins: name -> (columns, SQL). Each is
    made a temp table keyed by one_id first (_customer_parts): joined as subqueries, SQLite
    kept every row of each (all of a customer's categories, not the first) and built an
    automatic index on each for the join: at a million customers, 35-41 s for the INSERT
    then, 30-32 s for the parts and the INSERT (9 s) now."""
    # A full run reads every customer's registration: the customers table in its own order,
    # each key looked up (a walk of the keys by one_id read every customer row at random).
    join = "JOIN" if scoped else "CROSS JOIN"
    return {
        "top_category": (
            "category TEXT",
            SPEND + "\n" + _top("category", "sum(spent) DESC, category", "spend"),
        ),
        "top_store": ("store TEXT", _top("store", "count(*) DESC, max(ordered_at) DESC, store")),
        "top_channel": (
            "channel TEXT",
            _top("channel", "count(*) DESC, max(ordered_at) DESC, channel"),
        ),
        "ev": (
            "event_count INTEGER, "
            + ", ".join(f"event_count_{n}d INTEGER" for n in WINDOWS)
            + ", last_event_at TEXT",
            f"SELECT one_id, {EVENT_TOTALS} FROM profile_event_counts "
            f"WHERE 1{_in_scope('one_id', scoped)} GROUP BY one_id",
        ),
        "reg": (
            "registered_at TEXT",
            f"""SELECT k.one_id, min(c.registered_at)
FROM customers c {join} identity_keys k ON k.key = c.identity_key
WHERE k.one_id IS NOT NULL{_in_scope("k.one_id", scoped)} AND c.registered_at IS NOT NULL
GROUP BY k.one_id""",
        ),
    }


# Each order's spend per category: its items', else the order's own category.
SPEND = f"""WITH spend AS (
  SELECT po.one_id, coalesce(i.value ->> '$.category', po.category) AS category,
         CASE WHEN i.value IS NULL THEN po.minor
              ELSE {minor_units(ITEM_AMOUNT)} END AS spent
  FROM po LEFT JOIN json_each(CASE WHEN json_valid(po.items) THEN po.items END) i)"""


def _customer_parts(conn: sqlite3.Connection, scoped: bool) -> None:
    """temp.top_category, top_store, top_channel, ev and reg (_parts_sql), keyed by one_id."""
    for name, (columns, sql) in _parts_sql(scoped).items():
        conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
        conn.execute(f"CREATE TEMP TABLE {name} (one_id TEXT PRIMARY KEY, {columns}) WITHOUT ROWID")
        conn.execute(f"INSERT INTO {name} {sql} ORDER BY 1")


# The customers RFM scores rank, as (one_id, recency, rfm_frequency, rfm_monetary): the rows
# stored, or (a full run, before they are written) the order aggregates just computed, with
# the values the features take from them.
STORED_BUYERS = f"""SELECT one_id, {DATE_RELATIVE["rfm_recency_days"]} AS recency, rfm_frequency,
  rfm_monetary FROM profile_features"""
NEW_BUYERS = f"""SELECT ord.one_id, {DATE_RELATIVE["rfm_recency_days"]} AS recency,
  ord.order_count AS rfm_frequency, {money("coalesce(ord.spent_minor, 0)")} AS rfm_monetary
FROM temp.ord ord JOIN profiles p ON p.one_id = ord.one_id"""


def _rfm_scores(conn: sqlite3.Connection, params: dict[str, Any], buyers: str | None) -> None:
    """temp.rfm: quintiles among customers with orders (`buyers`: SQL, above; None leaves it
    empty), keyed by one_id; equal values share a score (by rank). Recency is counted from
    the last order as of the day, as the features write it."""

    def quintile(column: str, order: str) -> str:
        return (
            f"1 + min(4, CAST(5 * (rank() OVER (ORDER BY {column} {order}) - 1) "
            "AS REAL) / count(*) OVER ())"
        )

    conn.execute("DROP TABLE IF EXISTS temp.rfm")
    conn.execute(
        "CREATE TEMP TABLE rfm (one_id TEXT PRIMARY KEY, r INTEGER, f INTEGER, m INTEGER, "
        "segment TEXT) WITHOUT ROWID"
    )
    if buyers is None:
        return
    conn.execute(
        f"""INSERT INTO rfm
WITH buyers AS ({buyers}),
quintiles AS (
  SELECT one_id,
    CAST({quintile("recency", "DESC")} AS INTEGER) AS r,
    CAST({quintile("rfm_frequency", "ASC")} AS INTEGER) AS f,
    CAST({quintile("rfm_monetary", "ASC")} AS INTEGER) AS m
  FROM buyers WHERE recency IS NOT NULL)
SELECT one_id, r, f, m, {RFM_SEGMENTS} FROM quintiles ORDER BY one_id""",
        params,
    )
