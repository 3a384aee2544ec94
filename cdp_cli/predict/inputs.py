"""What the models learn from: each customer's order history as of a day, read in SQL.

Orders are counted as features.py counts them (the same void statuses, amounts to 4
decimals); a purchase day is a day with an order, as in `lifetimes`. Only customers with an
order up to the day are in: the models say nothing of customers who never bought, whose
scores stay NULL.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import sqlite_utils

from cdp_cli.errors import UsageError
from cdp_cli.features import VOID_STATUSES, size_temp_cache

# The columns the classifiers read (churn risk, propensities), each as of the day.
MODEL_FEATURES = (
    "days_since_last_order", "days_since_first_order", "order_days", "order_count",
    "order_count_30d", "order_count_90d", "order_count_365d", "total_spent", "spent_365d",
    "avg_order_value", "repurchase_cycle_days", "cycle_overdue", "event_count",
    "event_count_90d", "days_since_last_event", "channels",
)  # fmt: skip


@dataclass
class CustomerInputs:
    """Customers with an order up to `as_of`, one row each (one_ids sorted), as arrays.

    frequency, recency, T, monetary_value: the BG/NBD and Gamma-Gamma inputs in days;
    features: MODEL_FEATURES; later_orders: purchase days in the `later_days` after as_of
    (the label when these inputs are a training cut; zero when nothing follows)."""

    as_of: date
    one_ids: np.ndarray
    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    monetary_value: np.ndarray
    features: dict[str, np.ndarray]
    later_orders: np.ndarray
    later_days: int = 0
    orders: int = 0

    def __len__(self) -> int:
        return len(self.one_ids)

    def matrix(self) -> np.ndarray:
        """The classifiers' features, one column per MODEL_FEATURES name."""
        return np.column_stack([self.features[name] for name in MODEL_FEATURES])

    def take(self, rows: np.ndarray) -> CustomerInputs:
        """These inputs for the given rows only (a sample)."""
        return CustomerInputs(
            self.as_of, self.one_ids[rows], self.frequency[rows], self.recency[rows],
            self.T[rows], self.monetary_value[rows],
            {k: v[rows] for k, v in self.features.items()}, self.later_orders[rows],
            self.later_days, self.orders,
        )  # fmt: skip


VOID = ", ".join(f"'{s}'" for s in VOID_STATUSES)
_NAMES = itertools.count(1)


class OrderHistory:
    """Every customer's counted orders and events up to `end` (or the one `one_id`'s), read
    from the store in one pass each into temp tables, one row per customer and purchase day.

    The fit reads the history as of the day and as of `churn_days` before it (with the days
    after as labels), and the categories bought: `inputs` and `categories` cut these tables at
    any day up to `end`, so the orders (millions of wide rows) are read once, not once per cut.
    Use it as a context manager: leaving it drops the temp tables."""

    def __init__(self, db: sqlite_utils.Database, end: date, one_id: str | None = None) -> None:
        self.db, self.end, self.one_id = db, end, one_id
        self.name = f"predict_history_{next(_NAMES)}"
        self._inputs: dict[tuple[date, int], CustomerInputs] = {}
        self._read()

    def __enter__(self) -> OrderHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for table in ("orders", "days", "channels", "categories", "events"):
            self.db.conn.execute(f"DROP TABLE IF EXISTS temp.{self.name}_{table}")

    def _read(self) -> None:
        conn, n = self.db.conn, self.name
        size_temp_cache(conn)
        params = {"end": self.end.isoformat(), "one": self.one_id}
        # by the one_id index for one customer (--explain), else everyone with an id
        whose = "k.one_id = :one" if self.one_id is not None else "k.one_id IS NOT NULL"
        conn.execute(
            f"""CREATE TEMP TABLE {n}_orders AS
SELECT k.one_id, substr(o.ordered_at, 1, 10) AS day, o.amount, o.channel, o.category, o.items
FROM orders o JOIN identity_keys k ON k.key = o.identity_key
WHERE {whose} AND substr(o.ordered_at, 1, 10) <= :end
  AND (o.status IS NULL OR lower(o.status) NOT IN ({VOID}))""",
            params,
        )
        # nth: the day's rank in the customer's history (1 = first purchase day), the same
        # whatever the cut, as later days come after every day before it
        conn.execute(
            f"CREATE TEMP TABLE {n}_days (one_id, day, orders, spent, nth, "
            "PRIMARY KEY (one_id, day)) WITHOUT ROWID"
        )
        conn.execute(
            f"""INSERT INTO {n}_days
SELECT one_id, day, count(*), round(sum(coalesce(amount, 0)), 4),
       row_number() OVER (PARTITION BY one_id ORDER BY day)
FROM {n}_orders GROUP BY one_id, day"""
        )
        # a channel counts from the first day the customer ordered through it
        conn.execute(
            f"CREATE TEMP TABLE {n}_channels (one_id, channel, first_day, "
            "PRIMARY KEY (one_id, channel)) WITHOUT ROWID"
        )
        conn.execute(
            f"INSERT INTO {n}_channels SELECT one_id, channel, min(day) FROM {n}_orders "
            "WHERE channel IS NOT NULL GROUP BY one_id, channel"
        )
        # the categories of each purchase day: an order's items' (parsed only where it has
        # items), else the order's own
        conn.execute(
            f"CREATE TEMP TABLE {n}_categories (one_id, category, day, "
            "PRIMARY KEY (one_id, category, day)) WITHOUT ROWID"
        )
        conn.execute(
            f"""INSERT OR IGNORE INTO {n}_categories
SELECT one_id, category, day FROM (
  SELECT one_id, category, day FROM {n}_orders WHERE items IS NULL OR NOT json_valid(items)
  UNION ALL
  SELECT po.one_id, coalesce(i.value ->> '$.category', po.category), po.day
  FROM {n}_orders po LEFT JOIN json_each(po.items) i
  WHERE po.items IS NOT NULL AND json_valid(po.items))
WHERE category IS NOT NULL AND category != ''"""
        )
        conn.execute(f"DROP TABLE temp.{n}_orders")
        conn.execute(
            f"CREATE TEMP TABLE {n}_events (one_id, day, events, "
            "PRIMARY KEY (one_id, day)) WITHOUT ROWID"
        )
        conn.execute(
            f"""INSERT INTO {n}_events
SELECT k.one_id, substr(e.occurred_at, 1, 10) AS day, count(*)
FROM events e JOIN identity_keys k ON k.key = e.identity_key
WHERE {whose} AND substr(e.occurred_at, 1, 10) <= :end GROUP BY k.one_id, day""",
            params,
        )

    def _check(self, day: date) -> None:
        if day > self.end:
            raise ValueError(f"history read up to {self.end}, not {day}")

    def inputs(self, as_of: date, later_days: int = 0) -> CustomerInputs:
        """Every customer with an order up to `as_of`, with the purchase days in the
        `later_days` after it counted too (labels for a model trained as of this day)."""
        key = (as_of, later_days)
        if key not in self._inputs:
            self._inputs[key] = self._customer_inputs(as_of, later_days)
        return self._inputs[key]

    def _customer_inputs(self, as_of: date, later_days: int) -> CustomerInputs:
        self._check(as_of + timedelta(days=later_days))
        n = self.name
        day, end = as_of.isoformat(), (as_of + timedelta(days=later_days)).isoformat()
        sql = f"""WITH daily AS (
  SELECT one_id, day, orders, spent, nth,
         CAST(julianday(:day) - julianday(day) AS INTEGER) AS age
  FROM {n}_days WHERE day <= :end),
ev AS (
  SELECT one_id, sum(events) AS events,
         sum(CASE WHEN day > date(:day, '-90 days') THEN events ELSE 0 END) AS events_90d,
         CAST(julianday(:day) - julianday(max(day)) AS INTEGER) AS since
  FROM {n}_events WHERE day <= :day GROUP BY one_id),
ch AS (
  SELECT one_id, count(*) AS channels FROM {n}_channels WHERE first_day <= :day
  GROUP BY one_id),
later AS (SELECT one_id, count(*) AS days FROM daily WHERE age < 0 GROUP BY one_id)
SELECT d.one_id,
  count(*) - 1 AS frequency,
  max(-age) - min(-age) AS recency,
  max(age) AS T,
  coalesce(sum(CASE WHEN nth > 1 THEN spent END) / nullif(count(*) - 1, 0), 0) AS monetary,
  min(age) AS days_since_last_order,
  sum(orders) AS order_count,
  sum(CASE WHEN age < 30 THEN orders ELSE 0 END) AS order_count_30d,
  sum(CASE WHEN age < 90 THEN orders ELSE 0 END) AS order_count_90d,
  sum(CASE WHEN age < 365 THEN orders ELSE 0 END) AS order_count_365d,
  sum(spent) AS total_spent,
  sum(CASE WHEN age < 365 THEN spent ELSE 0 END) AS spent_365d,
  coalesce(ev.events, 0), coalesce(ev.events_90d, 0), ev.since, coalesce(ch.channels, 0),
  coalesce(later.days, 0)
FROM daily d LEFT JOIN ev ON ev.one_id = d.one_id LEFT JOIN ch ON ch.one_id = d.one_id
  LEFT JOIN later ON later.one_id = d.one_id
WHERE d.age >= 0
GROUP BY d.one_id ORDER BY d.one_id"""
        rows = self.db.conn.execute(sql, {"day": day, "end": end}).fetchall()
        orders = self.db.conn.execute(
            f"SELECT coalesce(sum(orders), 0) FROM {n}_days WHERE day <= :day", {"day": day}
        ).fetchone()[0]
        return _arrays(as_of, rows, later_days, orders)

    def categories(self, cut: date, later_days: int = 0) -> CategoryHistory:
        """Who bought in which category up to `cut`, and in the `later_days` after it."""
        end = cut + timedelta(days=later_days)
        self._check(end)
        history = CategoryHistory()
        for customer, category, before, after in self.db.conn.execute(
            f"SELECT one_id, category, sum(day <= :cut), sum(day > :cut) "
            f"FROM {self.name}_categories WHERE day <= :end GROUP BY one_id, category",
            {"cut": cut.isoformat(), "end": end.isoformat()},
        ):
            if before:
                history.before.setdefault(category, {})[customer] = before
                history.buyers[category] = history.buyers.get(category, 0) + 1
            if after:
                history.after.setdefault(category, {})[customer] = after
        return history


def customer_inputs(
    db: sqlite_utils.Database, as_of: date, later_days: int = 0, one_id: str | None = None
) -> CustomerInputs:
    """Every customer with an order up to `as_of` (or the one `one_id`), with the purchase days
    in the `later_days` after it counted too (labels for a model trained as of this day)."""
    with OrderHistory(db, as_of + timedelta(days=later_days), one_id) as history:
        return history.inputs(as_of, later_days)


def _arrays(as_of: date, rows: list[tuple], later_days: int, orders: int) -> CustomerInputs:
    if not rows:
        empty = np.zeros(0)
        features = {name: empty for name in MODEL_FEATURES}
        return CustomerInputs(as_of, np.array([], dtype=object), empty, empty, empty, empty,
                              features, empty, later_days, orders)  # fmt: skip
    columns = list(zip(*rows, strict=True))
    one_ids = np.array(columns[0], dtype=object)
    number = [np.array(c, dtype=float) for c in columns[1:]]
    (frequency, recency, T, monetary, since_last, order_count, c30, c90, c365, spent, spent365,
     events, events90, since_event, channels, later) = number  # fmt: skip
    order_days = frequency + 1
    cycle = np.where(frequency > 0, recency / np.maximum(frequency, 1), 0.0)
    features = {
        "days_since_last_order": since_last, "days_since_first_order": T,
        "order_days": order_days, "order_count": order_count, "order_count_30d": c30,
        "order_count_90d": c90, "order_count_365d": c365, "total_spent": spent,
        "spent_365d": spent365, "avg_order_value": spent / np.maximum(order_count, 1),
        "repurchase_cycle_days": cycle,
        # how far past their usual gap a repeat buyer is (0 for a single purchase day)
        "cycle_overdue": np.where(cycle > 0, since_last / np.maximum(cycle, 1), 0.0),
        "event_count": events, "event_count_90d": events90,
        # never seen: as if last seen when the history began, a long time ago
        "days_since_last_event": np.where(np.isnan(since_event), 3650.0, since_event),
        "channels": channels,
    }  # fmt: skip
    return CustomerInputs(
        as_of, one_ids, frequency, recency, T, monetary, features, later, later_days, orders
    )


@dataclass
class CategoryHistory:
    """Per category: each customer's purchase days in it up to the cut, and after it."""

    before: dict[str, dict[str, int]] = field(default_factory=dict)  # category -> one_id -> n
    after: dict[str, dict[str, int]] = field(default_factory=dict)  # the same, after the cut
    buyers: dict[str, int] = field(default_factory=dict)  # category -> buyers up to the cut


def category_history(
    db: sqlite_utils.Database, cut: date, later_days: int = 0, one_id: str | None = None
) -> CategoryHistory:
    """Who bought in which category (an order's items' categories, else its own) up to `cut`,
    and in the `later_days` after it (everyone, or the one `one_id`)."""
    with OrderHistory(db, cut + timedelta(days=later_days), one_id) as history:
        return history.categories(cut, later_days)


def top_categories(history: CategoryHistory, count: int) -> list[str]:
    """The `count` categories with the most buyers up to the cut (ties by name)."""
    ranked = sorted(history.buyers.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked[:count]]


# The profile_features columns look-alikes and clusters compare customers on (everyone, with or
# without orders); a days-since column is NULL for what never happened, read as DAYS_NEVER.
PROFILE_FEATURES = (
    "order_count", "total_spent", "avg_order_value", "order_days", "order_count_365d",
    "total_spent_365d", "days_since_last_order", "days_since_first_order",
    "repurchase_cycle_days", "event_count", "event_count_90d", "days_since_last_seen",
    "days_since_registered",
)  # fmt: skip
DAYS_NEVER = 3650.0


def require_features(db: sqlite_utils.Database) -> None:
    """UsageError before the first `cdp tag`: look-alikes and clusters read its features."""
    if "profile_features" not in db.table_names():
        raise UsageError("no features yet: run `cdp tag` first")


def profile_matrix(db: sqlite_utils.Database) -> tuple[np.ndarray, np.ndarray]:
    """Every customer's one_id (sorted) and PROFILE_FEATURES from the last `cdp tag`."""
    require_features(db)
    columns = ", ".join(PROFILE_FEATURES)
    rows = db.conn.execute(
        f"SELECT one_id, {columns} FROM profile_features ORDER BY one_id"
    ).fetchall()
    if not rows:
        return np.array([], dtype=object), np.zeros((0, len(PROFILE_FEATURES)))
    one_ids = np.array([r[0] for r in rows], dtype=object)
    matrix = np.array([r[1:] for r in rows], dtype=float)  # None becomes nan
    for i, name in enumerate(PROFILE_FEATURES):
        missing = np.isnan(matrix[:, i])
        matrix[missing, i] = DAYS_NEVER if name.startswith("days_since") else 0.0
    return one_ids, matrix
