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

import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import sqlite_utils

from cdp_cli.config import Config
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
    """What `compute_features` did."""

    as_of: str
    customers: int
    with_orders: int
    seconds: float


def today(config: Config) -> date:
    return datetime.now(ZoneInfo(config.timezone)).date()


def features_as_of(db: sqlite_utils.Database, config: Config) -> date:
    """The day the stored features were computed as of (the last `cdp tag`), so that rules
    over them count days from that day; today, in the project's timezone, before any."""
    row = db.conn.execute("SELECT as_of FROM feature_runs ORDER BY id DESC LIMIT 1").fetchone()
    return date.fromisoformat(row[0]) if row else today(config)


def compute_features(db: sqlite_utils.Database, as_of: date) -> FeatureResult:
    """Rebuild profile_features and profile_event_counts for every customer, as of a date."""
    started = time.monotonic()
    day = as_of.isoformat()
    with transaction(db) as conn:
        _create_tables(conn)
        _order_rows(conn, day)
        _event_counts(conn, day)
        conn.execute(_features_sql(), {"day": day, "month": as_of.month})
        _rfm_scores(conn)
        conn.execute(
            "INSERT INTO feature_runs (as_of, computed_at) VALUES (?, ?)", (day, now_iso())
        )
        customers, with_orders = conn.execute(
            "SELECT count(*), count(last_order_at) FROM profile_features"
        ).fetchone()
    return FeatureResult(day, customers, with_orders, round(time.monotonic() - started, 3))


def _create_tables(conn: sqlite3.Connection) -> None:
    """Both tables are derived, rebuilt by every run: made from FEATURES, not migrated."""
    conn.execute("DROP TABLE IF EXISTS profile_features")
    columns = ",\n  ".join(f"{name} {sql_type}" for name, (sql_type, _) in FEATURES.items())
    conn.execute(f"CREATE TABLE profile_features (\n  one_id TEXT PRIMARY KEY,\n  {columns}\n)")
    conn.execute("DROP TABLE IF EXISTS profile_event_counts")
    windows = ", ".join(f"days_{n} INTEGER" for n in WINDOWS)
    conn.execute(
        f"CREATE TABLE profile_event_counts (one_id TEXT NOT NULL, event TEXT NOT NULL, "
        f"total INTEGER, {windows}, last_at TEXT, PRIMARY KEY (one_id, event)) WITHOUT ROWID"
    )


def _order_rows(conn: sqlite3.Connection, day: str) -> None:
    """Temp table po: each customer's counted orders up to the day, with the day's age."""
    void = ", ".join(f"'{s}'" for s in VOID_STATUSES)
    conn.execute("DROP TABLE IF EXISTS temp.po")
    conn.execute(
        f"""CREATE TEMP TABLE po AS
SELECT k.one_id, o.ordered_at, substr(o.ordered_at, 1, 10) AS day, o.amount,
       {minor_units("o.amount")} AS minor, o.store, o.channel, o.category, o.items,
       CAST(julianday(:day) - julianday(substr(o.ordered_at, 1, 10)) AS INTEGER) AS age
FROM orders o JOIN identity_keys k ON k.key = o.identity_key
WHERE k.one_id IS NOT NULL AND substr(o.ordered_at, 1, 10) <= :day
  AND (o.status IS NULL OR lower(o.status) NOT IN ({void}))""",
        {"day": day},
    )
    conn.execute("CREATE INDEX temp.po_one_id ON po (one_id)")


def _event_counts(conn: sqlite3.Connection, day: str) -> None:
    windows = ", ".join(f"sum(age < {n}) AS days_{n}" for n in WINDOWS)
    counted = ", ".join(f"days_{n}" for n in WINDOWS)
    conn.execute(
        f"""INSERT INTO profile_event_counts (one_id, event, total, {counted}, last_at)
SELECT one_id, event, count(*), {windows}, max(occurred_at) FROM (
  SELECT k.one_id, e.event, e.occurred_at,
         CAST(julianday(:day) - julianday(substr(e.occurred_at, 1, 10)) AS INTEGER) AS age
  FROM events e JOIN identity_keys k ON k.key = e.identity_key
  WHERE k.one_id IS NOT NULL AND substr(e.occurred_at, 1, 10) <= :day)
GROUP BY one_id, event""",
        {"day": day},
    )


def _features_sql() -> str:
    order_windows = ",\n    ".join(
        f"sum(age < {n}) AS order_count_{n}d, "
        f"coalesce(sum(CASE WHEN age < {n} THEN minor END), 0) AS spent_minor_{n}d"
        for n in WINDOWS
    )
    event_windows = ", ".join(f"sum(days_{n}) AS event_count_{n}d" for n in WINDOWS)
    scored_later = ("rfm_r_score", "rfm_f_score", "rfm_m_score", "rfm_segment")
    columns = [c for c in FEATURES if c not in scored_later]
    total_spent = money("coalesce(ord.spent_minor, 0)")
    repeat_days_mean = money_mean(
        "sum(CASE WHEN nth > 1 THEN spent_minor END)", "nullif(count(*) - 1, 0)"
    )
    return f"""
WITH ord AS (
  SELECT one_id, count(*) AS order_count, sum(minor) AS spent_minor,
    min(ordered_at) AS first_order_at, max(ordered_at) AS last_order_at,
    max(age) AS days_since_first_order, min(age) AS days_since_last_order,
    count(DISTINCT day) AS order_days,
    {order_windows}
  FROM po GROUP BY one_id),
daily AS (
  SELECT one_id, day, sum(minor) AS spent_minor,
         row_number() OVER (PARTITION BY one_id ORDER BY day) AS nth
  FROM po GROUP BY one_id, day),
life AS (
  SELECT one_id, count(*) - 1 AS frequency,
    CAST(julianday(max(day)) - julianday(min(day)) AS INTEGER) AS recency,
    CAST(julianday(:day) - julianday(min(day)) AS INTEGER) AS T,
    coalesce({repeat_days_mean}, 0) AS monetary_value
  FROM daily GROUP BY one_id),
spend AS (
  SELECT po.one_id, coalesce(i.value ->> '$.category', po.category) AS category,
         CASE WHEN i.value IS NULL THEN po.minor
              ELSE {minor_units(ITEM_AMOUNT)} END AS spent
  FROM po LEFT JOIN json_each(CASE WHEN json_valid(po.items) THEN po.items END) i),
top_category AS (
  SELECT one_id, category FROM (
    SELECT one_id, category, row_number() OVER (
      PARTITION BY one_id ORDER BY sum(spent) DESC, category) AS rn
    FROM spend WHERE category IS NOT NULL GROUP BY one_id, category) WHERE rn = 1),
top_store AS (
  SELECT one_id, store FROM (
    SELECT one_id, store, row_number() OVER (
      PARTITION BY one_id ORDER BY count(*) DESC, max(ordered_at) DESC, store) AS rn
    FROM po WHERE store IS NOT NULL GROUP BY one_id, store) WHERE rn = 1),
top_channel AS (
  SELECT one_id, channel FROM (
    SELECT one_id, channel, row_number() OVER (
      PARTITION BY one_id ORDER BY count(*) DESC, max(ordered_at) DESC, channel) AS rn
    FROM po WHERE channel IS NOT NULL GROUP BY one_id, channel) WHERE rn = 1),
ev AS (
  SELECT one_id, sum(total) AS event_count, {event_windows}, max(last_at) AS last_event_at
  FROM profile_event_counts GROUP BY one_id),
reg AS (
  SELECT k.one_id, min(c.registered_at) AS registered_at
  FROM customers c JOIN identity_keys k ON k.key = c.identity_key
  WHERE k.one_id IS NOT NULL AND c.registered_at IS NOT NULL GROUP BY k.one_id)
INSERT INTO profile_features (one_id, {", ".join(columns)})
SELECT p.one_id,
  coalesce(ord.order_count, 0), {total_spent},
  {money_mean("ord.spent_minor", "ord.order_count")}, ord.first_order_at, ord.last_order_at,
  ord.days_since_first_order, ord.days_since_last_order,
  {", ".join(f"coalesce(ord.order_count_{n}d, 0)" for n in WINDOWS)},
  {", ".join(money(f"coalesce(ord.spent_minor_{n}d, 0)") for n in WINDOWS)},
  coalesce(ord.order_days, 0),
  CASE WHEN ord.order_days > 1 THEN (julianday(substr(ord.last_order_at, 1, 10))
    - julianday(substr(ord.first_order_at, 1, 10))) / (ord.order_days - 1) END,
  top_category.category, top_store.store, top_channel.channel,
  coalesce(ev.event_count, 0), {", ".join(f"coalesce(ev.event_count_{n}d, 0)" for n in WINDOWS)},
  ev.last_event_at,
  CAST(julianday(:day) - julianday(substr(max(coalesce(ord.last_order_at, ''),
    coalesce(ev.last_event_at, '')), 1, 10)) AS INTEGER),
  reg.registered_at,
  CAST(julianday(:day) - julianday(substr(reg.registered_at, 1, 10)) AS INTEGER),
  CAST(substr(p.birthday, 6, 2) AS INTEGER),
  CASE WHEN p.birthday IS NULL THEN 0 ELSE CAST(substr(p.birthday, 6, 2) AS INTEGER) = :month END,
  CAST(substr(:day, 1, 4) AS INTEGER) - CAST(substr(p.birthday, 1, 4) AS INTEGER)
    - (substr(:day, 6, 5) < substr(p.birthday, 6, 5)),
  ord.days_since_last_order, coalesce(ord.order_count, 0), {total_spent},
  life.frequency, life.recency, life.T, life.monetary_value
FROM profiles p
LEFT JOIN ord ON ord.one_id = p.one_id
LEFT JOIN life ON life.one_id = p.one_id
LEFT JOIN top_category ON top_category.one_id = p.one_id
LEFT JOIN top_store ON top_store.one_id = p.one_id
LEFT JOIN top_channel ON top_channel.one_id = p.one_id
LEFT JOIN ev ON ev.one_id = p.one_id
LEFT JOIN reg ON reg.one_id = p.one_id"""


def _rfm_scores(conn: sqlite3.Connection) -> None:
    """Quintiles among customers with orders; equal values share a score (by rank)."""

    def quintile(column: str, order: str) -> str:
        return (
            f"1 + min(4, CAST(5 * (rank() OVER (ORDER BY {column} {order}) - 1) "
            "AS REAL) / count(*) OVER ())"
        )

    conn.execute(
        f"""WITH quintiles AS (
  SELECT one_id,
    CAST({quintile("rfm_recency_days", "DESC")} AS INTEGER) AS r,
    CAST({quintile("rfm_frequency", "ASC")} AS INTEGER) AS f,
    CAST({quintile("rfm_monetary", "ASC")} AS INTEGER) AS m
  FROM profile_features WHERE rfm_recency_days IS NOT NULL),
scored AS (SELECT one_id, r, f, m, {RFM_SEGMENTS} AS segment FROM quintiles)
UPDATE profile_features SET rfm_r_score = s.r, rfm_f_score = s.f, rfm_m_score = s.m,
  rfm_segment = s.segment
FROM scored s WHERE s.one_id = profile_features.one_id"""
    )
