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
from typing import Any

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
EPOCH = date(1970, 1, 1)
# SQL: an ISO day as days since EPOCH (ingest writes every timestamp as ISO: parsing.py)
DAY_NUMBER = "CAST(julianday({}) - 2440587.5 AS INTEGER)"
CHUNK = 100_000  # rows fetched at a time: a million customers' days are never tuples at once


def day_number(day: date) -> int:
    return (day - EPOCH).days


class OrderHistory:
    """Every customer's counted orders and events up to `end` (or the one `one_id`'s), read
    from the store once, and cut at any day up to `end`.

    The fit reads the history as of the day and as of `churn_days` before it (with the days
    after as labels), and the categories bought. Reading the orders (millions of wide rows)
    once per cut cost most of `cdp predict`'s time; here one pass copies the few columns used
    to a temp table, from which come each customer's purchase days (count and spend), the
    first day of each channel and the days of each category; the days, channels and events
    are held as arrays (a day as a number), which `inputs` cuts with numpy. Sums are taken
    row by row in day order, as SQLite's sum() takes them, so the inputs are the same to the
    last bit. Use it as a context manager: leaving it drops the temp table of categories."""

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
        for table in ("orders", "categories"):
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
        # customer codes: 0, 1, ... in one_id order, from the purchase days
        self.index: dict[str, int] = {}
        # each customer's purchase days in order: code, day, orders, spend (rounded per day)
        self.days = self._rows(
            f"SELECT one_id, {DAY_NUMBER.format('day')}, count(*), "
            f"round(sum(coalesce(amount, 0)), 4) FROM {n}_orders GROUP BY one_id, day "
            "ORDER BY one_id, day",
            grow=True,
        )
        # a channel counts from the first day the customer ordered through it
        self.channels = self._rows(
            f"SELECT one_id, {DAY_NUMBER.format('min(day)')} FROM {n}_orders "
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
        self.events = self._rows(
            f"""SELECT k.one_id, {DAY_NUMBER.format("substr(e.occurred_at, 1, 10)")}, count(*)
FROM events e JOIN identity_keys k ON k.key = e.identity_key
WHERE {whose} AND substr(e.occurred_at, 1, 10) <= :end
GROUP BY k.one_id, substr(e.occurred_at, 1, 10)""",
            params,
        )
        self.one_ids = np.array(list(self.index), dtype=object)
        code = self.days[0]
        self.starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else code

    def _rows(
        self, sql: str, params: dict[str, Any] | None = None, grow: bool = False
    ) -> list[np.ndarray]:
        """A query's rows (one_id, numbers...) as columns: the customer's code, then each
        number as floats. With `grow` a new one_id gets the next code (rows in one_id order);
        without, rows of customers without a purchase day are left out."""
        cursor = self.db.conn.execute(sql, params or {})
        index, parts = self.index, []
        while rows := cursor.fetchmany(CHUNK):
            ids, *numbers = zip(*rows, strict=True)
            if grow:
                codes = [index.setdefault(one_id, len(index)) for one_id in ids]
            else:
                codes = [index.get(one_id, -1) for one_id in ids]
            parts.append([np.array(codes, dtype=np.int64)] + [np.array(c, float) for c in numbers])
        width = len(cursor.description)
        columns = [np.concatenate(c) for c in zip(*parts, strict=True)] if parts else None
        if columns is None:
            return [np.zeros(0, dtype=np.int64)] + [np.zeros(0) for _ in range(width - 1)]
        known = columns[0] >= 0
        return columns if known.all() else [c[known] for c in columns]

    def _check(self, day: date) -> None:
        if day > self.end:
            raise ValueError(f"history read up to {self.end}, not {day}")

    def inputs(self, as_of: date, later_days: int = 0) -> CustomerInputs:
        """Every customer with an order up to `as_of`, with the purchase days in the
        `later_days` after it counted too (labels for a model trained as of this day)."""
        key = (as_of, later_days)
        if key not in self._inputs:
            self._check(as_of + timedelta(days=later_days))
            self._inputs[key] = self._customer_inputs(as_of, later_days)
        return self._inputs[key]

    def _customer_inputs(self, as_of: date, later_days: int) -> CustomerInputs:
        """The customer_inputs of docs/predict.md, per customer code; each sum in day order
        (np.bincount adds its weights one by one, in order, as SQLite's sum() does)."""
        today, end = day_number(as_of), day_number(as_of) + later_days
        code, day, orders, spent = self.days
        size = len(self.one_ids)

        def total(weights: np.ndarray, codes: np.ndarray = code) -> np.ndarray:
            return np.bincount(codes, weights=weights, minlength=size)

        counted = day <= today
        days = np.bincount(code[counted], minlength=size)
        first = day[self.starts] if size else np.zeros(0)
        last = np.maximum.reduceat(np.where(counted, day, -np.inf), self.starts) if size else first
        age = today - day
        repeat = counted.copy()
        repeat[self.starts] = False  # the first purchase day has no repeat spend
        repeat_spent = total(np.where(repeat, spent, 0.0))
        frequency = days - 1.0
        window = {n: counted & (age < n) for n in (30, 90, 365)}
        e_code, e_day, e_count = self.events
        e_counted = e_day <= today
        seen = np.full(size, -np.inf)
        np.maximum.at(seen, e_code[e_counted], e_day[e_counted])
        ch_code, ch_first = self.channels
        columns = [
            frequency,
            last - first,
            today - first,
            np.where(frequency > 0, repeat_spent / np.maximum(frequency, 1), 0.0),
            today - last,
            total(np.where(counted, orders, 0.0)),
            *(total(np.where(window[n], orders, 0.0)) for n in (30, 90, 365)),
            total(np.where(counted, spent, 0.0)),
            total(np.where(window[365], spent, 0.0)),
            total(np.where(e_counted, e_count, 0.0), e_code),
            total(np.where(e_counted & (e_day > today - 90), e_count, 0.0), e_code),
            np.where(np.isfinite(seen), today - seen, np.nan),
            np.bincount(ch_code[ch_first <= today], minlength=size).astype(float),
            total(((day > today) & (day <= end)).astype(float)),
        ]
        scored = days > 0
        orders_up_to = int(orders[counted].sum())
        return _arrays(as_of, self.one_ids[scored], [c[scored] for c in columns], later_days,
                       orders_up_to)  # fmt: skip

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


def _arrays(
    as_of: date, one_ids: np.ndarray, number: list[np.ndarray], later_days: int, orders: int
) -> CustomerInputs:
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
