"""What the models learn from: one read of the order history, cut as of any day up to its end.

Hand-made orders whose every input is worked out by hand: purchase days, spend, channels, the
categories of items (an item without one takes its order's; an order without items, or with
items that are not JSON, its own), a void order, events, and the days after a cut.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils

from cdp_cli.predict.inputs import OrderHistory, customer_inputs

CONFIG = """
sources:
  orders:
    kind: orders
    files: [orders.csv]
    key: id
    fields: {order_id: id, phone: phone, amount: amount, ordered_at: at, category: category,
             channel: channel, status: status}
  events:
    kind: events
    files: [events.csv]
    key: id
    fields: {event: event, phone: phone, occurred_at: at}
"""
A, B = "13800000001", "13800000002"
ORDERS = f"""id,phone,amount,at,category,channel,status
o1,{A},100,2026-01-10 09:00,护肤,store,
o2,{A},50.5,2026-01-10 18:00,彩妆,app,
o3,{A},30,2026-03-01 10:00,个护,app,
o4,{A},20,2026-05-01 10:00,护肤,web,refunded
o5,{A},10,2026-06-01 10:00,礼盒,web,
o6,{A},5,2026-07-01 10:00,护肤,store,
o7,{B},70,2026-06-15 10:00,护肤,store,
"""
ITEMS = {
    "o3": '[{"sku": "s1", "category": "香水"}, {"sku": "s2"}]',  # the second: the order's 个护
    "o5": "[]",  # no items: the order's own category
    "o6": "not json",  # unreadable: the order's own category
}
EVENTS = f"""id,event,phone,at
e1,view,{A},2026-01-20 10:00
e2,view,{A},2026-04-20 10:00
e3,view,{A},2026-04-20 11:00
e4,view,{A},2026-06-20 10:00
"""


@pytest.fixture
def db(run, write, tmp_path: Path) -> sqlite_utils.Database:
    write("cdp.yaml", CONFIG)
    write("orders.csv", ORDERS)
    write("events.csv", EVENTS)
    assert run("ingest").exit_code == 0
    assert run("resolve").exit_code == 0
    store = sqlite_utils.Database(tmp_path / "cdp.db")
    for order_id, items in ITEMS.items():
        store.conn.execute("UPDATE orders SET items = ? WHERE order_id = ?", (items, order_id))
    store.conn.commit()
    return store


def one_id(db: sqlite_utils.Database, phone: str) -> str:
    return db.conn.execute(
        "SELECT one_id FROM identifiers WHERE type = 'phone' AND value LIKE ?", (f"%{phone}",)
    ).fetchone()[0]


def test_each_input_as_worked_out_by_hand(db):
    history = OrderHistory(db, date(2026, 7, 1))
    train = history.inputs(date(2026, 5, 1), later_days=60)  # B's first order is later
    assert list(train.one_ids) == [one_id(db, A)] and train.orders == 3
    assert (train.frequency[0], train.recency[0], train.T[0]) == (1, 50, 111)
    assert train.monetary_value[0] == 30  # the repeat day's spend
    assert train.later_orders[0] == 1  # 06-01; the refunded 05-01 does not count
    features = {name: float(values[0]) for name, values in train.features.items()}
    assert features == {
        "days_since_last_order": 61, "days_since_first_order": 111, "order_days": 2,
        "order_count": 3, "order_count_30d": 0, "order_count_90d": 1, "order_count_365d": 3,
        "total_spent": 180.5, "spent_365d": 180.5, "avg_order_value": 180.5 / 3,
        "repurchase_cycle_days": 50, "cycle_overdue": 61 / 50, "event_count": 3,
        "event_count_90d": 2, "days_since_last_event": 11, "channels": 2,  # e1 is 101 days old
    }  # fmt: skip
    now = history.inputs(date(2026, 7, 1))
    assert list(now.one_ids) == sorted([one_id(db, A), one_id(db, B)])
    mine = list(now.one_ids).index(one_id(db, A))
    assert now.frequency[mine] == 3 and now.features["channels"][mine] == 3
    assert now.orders == 6


def test_categories_of_items_else_of_the_order_before_and_after_a_cut(db):
    a, b = one_id(db, A), one_id(db, B)
    categories = OrderHistory(db, date(2026, 7, 1)).categories(date(2026, 5, 1), later_days=60)
    assert categories.buyers == {"护肤": 1, "彩妆": 1, "香水": 1, "个护": 1}
    customers = np.array([a, b, "nobody"], dtype=object)
    assert categories.days_before("护肤", customers).tolist() == [1, 0, 0]
    assert categories.days_after("护肤", customers).tolist() == [0, 1, 0]
    assert categories.days_after("礼盒", customers).tolist() == [1, 0, 0]  # items "[]"
    assert categories.days_before("no such", customers).tolist() == [0, 0, 0]
    later = OrderHistory(db, date(2026, 7, 1)).categories(date(2026, 7, 1))
    assert later.days_before("护肤", customers).tolist() == [2, 1, 0]  # 07-01: items not JSON


def test_a_cut_of_a_longer_history_is_the_history_read_to_that_day(db):
    """The fit cuts one read at two days; each cut must not see what came after it."""
    history = OrderHistory(db, date(2026, 7, 1))
    for day, later in ((date(2026, 5, 1), 60), (date(2026, 6, 15), 0), (date(2026, 1, 9), 0)):
        cut, alone = history.inputs(day, later), customer_inputs(db, day, later)
        assert list(cut.one_ids) == list(alone.one_ids) and cut.orders == alone.orders
        assert np.array_equal(cut.matrix(), alone.matrix())
        assert np.array_equal(cut.later_orders, alone.later_orders)
    with pytest.raises(ValueError, match="history read up to 2026-07-01"):
        history.inputs(date(2026, 6, 1), later_days=60)


def test_one_customer_is_read_alone(db):
    a = one_id(db, A)
    alone = OrderHistory(db, date(2026, 7, 1), one_id=a)
    assert list(alone.inputs(date(2026, 7, 1)).one_ids) == [a]
    everyone = OrderHistory(db, date(2026, 7, 1)).inputs(date(2026, 7, 1))
    mine = list(everyone.one_ids).index(a)
    assert np.array_equal(alone.inputs(date(2026, 7, 1)).matrix()[0], everyone.matrix()[mine])
