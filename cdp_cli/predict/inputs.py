"""What the models learn from: each customer's order history as of a day, read in SQL.

Orders are counted as features.py counts them (the same void statuses, amounts to 4
decimals); a purchase day is a day with an order, as in `lifetimes`. Only customers with an
order up to the day are in: the models say nothing of customers who never bought, whose
scores stay NULL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from cdp_cli.errors import UsageError
from cdp_cli.features import VOID_STATUSES
from cdp_cli.sqlitelib import sqlite_utils

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
EPOCH = date(1970, 1, 1)
# SQL: an ISO day as days since EPOCH (ingest writes every timestamp as ISO: parsing.py)
DAY_NUMBER = "CAST(julianday({}) - 2440587.5 AS INTEGER)"
CHUNK = 100_000  # rows fetched at a time: a million customers' days are never tuples at once


def day_number(day: date) -> int:
    return (day - EPOCH).days


# SQL: an order's categories as a JSON array: its items' (an item without one: the order's),
# else the order's own; parsed only where it has items. NULL and '' are left to Python.
ORDER_CATEGORIES = """CASE WHEN json_valid(o.items) THEN (
    SELECT CASE WHEN count(*) = 0 THEN json_array(o.category) ELSE json_group_array(DISTINCT
      coalesce(i.value ->> '$.category', o.category)) END FROM json_each(o.items) i)
  ELSE json_array(o.category) END"""


def _order_categories(text: str) -> list[Any]:
    """A purchase day's categories from its JSON array of its orders' arrays (each an array,
    or its JSON text: SQLite keeps a JSON value's type through DISTINCT or not)."""
    found: list[Any] = []
    for order in json.loads(text):
        for category in order if isinstance(order, list) else json.loads(order):
            if category is not None and category != "" and category not in found:
                found.append(category)
    return found


def _channels(text: str) -> list[Any]:
    return [c for c in json.loads(text) if c is not None]


class _Codes:
    """Names (channels, categories) as codes, each distinct JSON text parsed once."""

    def __init__(self, parse: Callable[[str], list[Any]] = _channels) -> None:
        self.parse = parse
        self.names: list[Any] = []
        self._codes: dict[Any, int] = {}
        self._texts: dict[str, list[int]] = {}

    def _of(self, text: str) -> list[int]:
        found = self._texts.get(text)
        if found is None:
            for name in (names := self.parse(text)):
                if name not in self._codes:
                    self._codes[name] = len(self.names)
                    self.names.append(name)
            found = self._texts[text] = [self._codes[name] for name in names]
        return found

    def expand(self, texts: tuple[str, ...], first_row: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, code) for every name of every row, rows counted from `first_row`."""
        lists = [self._of(text) for text in texts]
        counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        rows = np.repeat(np.arange(first_row, first_row + len(lists)), counts)
        codes = np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(counts.sum()))
        return rows, codes


class OrderHistory:
    """Every customer's counted orders and events up to `end` (or the one `one_id`'s), read
    from the store once, and cut at any day up to `end`.

    The fit reads the history as of the day and as of `churn_days` before it (with the days
    after as labels), and the categories bought. Reading the orders (millions of wide rows)
    once per cut cost most of `cdp predict`'s time; here one query reads them once, grouped by
    customer and purchase day (orders, spend, the day's channels and categories), and one the
    events; they are held as arrays (a day as a number, a channel or category as a code),
    which `inputs` and `categories` cut with numpy. Sums are taken row by row in day order, as
    SQLite's sum() takes them, so the inputs are the same to the last bit."""

    def __init__(self, db: sqlite_utils.Database, end: date, one_id: str | None = None) -> None:
        self.db, self.end, self.one_id = db, end, one_id
        self._last: tuple[tuple[date, int], CustomerInputs] | None = None
        self.index: dict[str, int] = {}  # one_id -> code: 0, 1, ... in one_id order
        params = {"end": end.isoformat(), "one": one_id}
        # by the one_id index for one customer (--explain), else everyone with an id
        whose = "k.one_id = :one" if one_id is not None else "k.one_id IS NOT NULL"
        self._read_days(
            f"""SELECT k.one_id, {DAY_NUMBER.format("substr(o.ordered_at, 1, 10)")}, count(*),
  round(sum(coalesce(o.amount, 0)), 4), json_group_array(DISTINCT o.channel),
  json_group_array(DISTINCT {ORDER_CATEGORIES})
FROM orders o JOIN identity_keys k ON k.key = o.identity_key
WHERE {whose} AND substr(o.ordered_at, 1, 10) <= :end
  AND (o.status IS NULL OR lower(o.status) NOT IN ({VOID}))
GROUP BY k.one_id, substr(o.ordered_at, 1, 10) ORDER BY k.one_id, substr(o.ordered_at, 1, 10)""",
            params,
        )
        self.events = self._rows(
            f"""SELECT k.one_id, {DAY_NUMBER.format("substr(e.occurred_at, 1, 10)")}, count(*)
FROM events e JOIN identity_keys k ON k.key = e.identity_key
WHERE {whose} AND substr(e.occurred_at, 1, 10) <= :end
GROUP BY k.one_id, substr(e.occurred_at, 1, 10)""",
            params,
        )

    def _read_days(self, sql: str, params: dict[str, Any]) -> None:
        """self.days: each customer's purchase days in order (code, day, orders, spend);
        self.channels: each customer's channels with the first day of each (code, day);
        self.day_categories: the categories of each purchase day (row in days, category)."""
        channels = _Codes()
        categories = _Codes(_order_categories)
        parts: list[list[np.ndarray]] = []
        rows_before = 0
        cursor = self.db.conn.execute(sql, params)
        while rows := cursor.fetchmany(CHUNK):
            chunk = list(zip(*rows, strict=True))
            codes = [self.index.setdefault(one_id, len(self.index)) for one_id in chunk[0]]
            parts.append([
                np.array(codes, dtype=np.int64), *(np.array(c, float) for c in chunk[1:4]),
                *channels.expand(chunk[4], rows_before), *categories.expand(chunk[5], rows_before),
            ])  # fmt: skip
            rows_before += len(rows)
        if parts:
            columns = [np.concatenate(c) for c in zip(*parts, strict=True)]
        else:
            columns = [np.zeros(0, dtype=np.int64)] * 2 + [np.zeros(0)] * 2
            columns += [np.zeros(0, dtype=np.int64)] * 4
        code, day, orders, spent, ch_rows, ch_codes, cat_rows, cat_codes = columns
        self.days: list[np.ndarray] = [code, day, orders, spent]
        self.one_ids = np.array(list(self.index), dtype=object)
        self.starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else code
        # a channel counts from the first day the customer ordered through it: the first of
        # its (customer, channel) rows, as the rows are in day order
        pairs = code[ch_rows] * max(len(channels.names), 1) + ch_codes
        _, first = np.unique(pairs, return_index=True)
        self.channels = [code[ch_rows[first]], day[ch_rows[first]]]
        self.day_categories = (cat_rows, cat_codes)
        self.category_names = categories.names

    def _rows(self, sql: str, params: dict[str, Any]) -> list[np.ndarray]:
        """A query's rows (one_id, numbers...) as columns: the customer's code, then each
        number as floats; rows of customers without a purchase day are left out."""
        cursor = self.db.conn.execute(sql, params)
        parts = []
        while rows := cursor.fetchmany(CHUNK):
            ids, *numbers = zip(*rows, strict=True)
            codes = [self.index.get(one_id, -1) for one_id in ids]
            parts.append([np.array(codes, dtype=np.int64)] + [np.array(c, float) for c in numbers])
        if not parts:
            return [np.zeros(0, dtype=np.int64)] + [np.zeros(0)] * (len(cursor.description) - 1)
        columns = [np.concatenate(c) for c in zip(*parts, strict=True)]
        known = columns[0] >= 0
        return columns if known.all() else [c[known] for c in columns]

    def _check(self, day: date) -> None:
        if day > self.end:
            raise ValueError(f"history read up to {self.end}, not {day}")

    def inputs(self, as_of: date, later_days: int = 0) -> CustomerInputs:
        """Every customer with an order up to `as_of`, with the purchase days in the
        `later_days` after it counted too (labels for a model trained as of this day)."""
        key = (as_of, later_days)
        if self._last is None or self._last[0] != key:
            self._check(as_of + timedelta(days=later_days))
            # only the last cut is kept (scoring asks for the fit's first again): at a million
            # customers the training cut is 140 MB the scores no longer need
            self._last = None
            self._last = (key, self._customer_inputs(as_of, later_days))
        return self._last[1]

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
        """Who bought in which category up to `cut`, and in the `later_days` after it: per
        customer and category, the purchase days with an order in it before and after."""
        end = cut + timedelta(days=later_days)
        self._check(end)
        rows, category = self.day_categories
        code, day = self.days[0][rows], self.days[1][rows]
        kept = day <= day_number(end)
        width = max(len(self.category_names), 1)
        pairs, which = np.unique(code[kept] * width + category[kept], return_inverse=True)
        before = day[kept] <= day_number(cut)
        return CategoryHistory(
            self.index, self.category_names, pairs // width, pairs % width,
            np.bincount(which, weights=before, minlength=len(pairs)),
            np.bincount(which, weights=~before, minlength=len(pairs)),
        )  # fmt: skip


def customer_inputs(
    db: sqlite_utils.Database, as_of: date, later_days: int = 0, one_id: str | None = None
) -> CustomerInputs:
    """Every customer with an order up to `as_of` (or the one `one_id`), with the purchase days
    in the `later_days` after it counted too (labels for a model trained as of this day)."""
    return OrderHistory(db, as_of + timedelta(days=later_days), one_id).inputs(as_of, later_days)


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


class CategoryHistory:
    """Per category: each customer's purchase days in it up to the cut, and after it, over the
    (customer, category) pairs of a history (customer and category as codes)."""

    def __init__(
        self, index: dict[str, int], names: list[Any], customer: np.ndarray,
        category: np.ndarray, before: np.ndarray, after: np.ndarray,
    ) -> None:  # fmt: skip
        self.index, self.codes = index, {name: i for i, name in enumerate(names)}
        self.customer, self.category, self.before, self.after = customer, category, before, after
        counts = np.bincount(category[before > 0], minlength=len(names))
        # category -> customers who bought in it up to the cut
        self.buyers = {names[c]: int(n) for c, n in enumerate(counts) if n}
        self._asked: tuple[np.ndarray, np.ndarray] | None = None

    def _per_customer(self, values: np.ndarray, category: Any, one_ids: np.ndarray) -> np.ndarray:
        dense = np.zeros(len(self.index) + 1)  # the last: customers not in the history
        if category in self.codes:
            mine = self.category == self.codes[category]
            dense[self.customer[mine]] = values[mine]
        return dense[self._codes(one_ids)]

    def _codes(self, one_ids: np.ndarray) -> np.ndarray:
        """The customers' codes (the last for one not in the history); the last asked is kept,
        as every category asks for the same customers."""
        if self._asked is None or self._asked[0] is not one_ids:
            missing = len(self.index)
            codes = [self.index.get(one_id, missing) for one_id in one_ids]
            self._asked = (one_ids, np.array(codes, dtype=np.int64))
        return self._asked[1]

    def days_before(self, category: Any, one_ids: np.ndarray) -> np.ndarray:
        """Each customer's purchase days in the category up to the cut."""
        return self._per_customer(self.before, category, one_ids)

    def days_after(self, category: Any, one_ids: np.ndarray) -> np.ndarray:
        """Each customer's purchase days in the category after the cut."""
        return self._per_customer(self.after, category, one_ids)


def category_history(
    db: sqlite_utils.Database, cut: date, later_days: int = 0, one_id: str | None = None
) -> CategoryHistory:
    """Who bought in which category (an order's items' categories, else its own) up to `cut`,
    and in the `later_days` after it (everyone, or the one `one_id`)."""
    return OrderHistory(db, cut + timedelta(days=later_days), one_id).categories(cut, later_days)


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
