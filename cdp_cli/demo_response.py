"""The demo's simulated customer response: clicks and orders made up from what was sent.

NOT REAL DATA. The sample exports end on the day the demo's journeys first run, so nothing has
happened after the messages yet. To show `cdp report` with real numbers, the demo makes up
what customers did next, deterministically (a hash of each message or enrolment, no random
state), and ingests it through the sample's ordinary sources, as a brand's next exports would
arrive: clicks as app events (`link_click`, carrying the message's link code) and orders as
shop orders. The rules are simple on purpose:

- every sent message with a tracked link is clicked with a channel's rate (CLICK_RATES),
  within two days;
- every enrolment that reached its first message (sent or held out) converts, within its
  window, with BASE_RATE; one whose first message was sent converts with BASE_RATE plus LIFT
  (COUPON_LIFT when it carried a coupon, which the order then redeems in most cases).

So treatment converts more than holdout by design; whether the report can tell, with the
sample's small holdouts, is for the report to say.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cdp_cli.config import Config
from cdp_cli.files import write_text
from cdp_cli.ingest import ingest
from cdp_cli.sqlitelib import sqlite_utils

CLICK_RATES = {"wechat": 0.25, "push": 0.15, "sms": 0.08, "email": 0.05}
BASE_RATE = 0.08
LIFT, COUPON_LIFT = 0.06, 0.12
COUPON_USE = 0.7
CLICKS_SOURCE, ORDERS_SOURCE = "app_events", "shop_orders"
CATALOGUE = (  # sku, name, category, price
    ("SK-1003", "玻尿酸保湿精华 30ml", "护肤", 299.0),
    ("SK-2001", "丝绒雾面口红 #12", "彩妆", 169.0),
    ("SK-3006", "桂花香氛 50ml", "香水", 459.0),
    ("SK-4007", "海盐磨砂膏 200g", "个护", 109.0),
    ("SK-5002", "节日礼盒 (精华+面霜)", "礼盒", 688.0),
)


@dataclass
class SimulatedResponse:
    """What one stretch of simulated time produced, and the files it was written to."""

    since: str
    until: str
    clicks: int = 0
    orders: dict[str, int] = field(default_factory=dict)  # per group of the enrolment
    revenue: float = 0.0
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chance(*parts: object) -> float:
    """A stable number in [0, 1) from its parts: the same message always gets the same draw."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sent_message_ids(outbound: Path) -> set[str]:
    """The message ids in the outbound files: what was handed to the senders."""
    ids: set[str] = set()
    for path in sorted(outbound.glob("*/*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            ids.update(row["message_id"] for row in csv.DictReader(f))
    for path in sorted(outbound.glob("*/*.jsonl")):
        with path.open(encoding="utf-8") as f:
            ids.update(json.loads(line)["message_id"] for line in f if line.strip())
    return ids


def simulate_response(
    db: sqlite_utils.Database, config: Config, since: datetime, until: datetime
) -> SimulatedResponse:
    """Write the clicks and orders that fall between `since` and `until`, and ingest them."""
    result = SimulatedResponse(since.isoformat(), until.isoformat())
    sent = sent_message_ids(config.outbound_folder)
    folder = config.root / "responses"
    folder.mkdir(exist_ok=True)
    stamp = until.strftime("%Y%m%dT%H%M")
    clicks = list(_clicks(db, sent, since, until))
    orders = list(_orders(db, sent, since, until, result))
    for source, name, rows in (
        (CLICKS_SOURCE, f"simulated-clicks-{stamp}.jsonl", clicks),
        (ORDERS_SOURCE, f"simulated-orders-{stamp}.jsonl", orders),
    ):
        if not rows:
            continue
        path = folder / name
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        ingest(db, config, source, [path])
        result.files.append(str(path))
    result.clicks = len(clicks)
    return result


def _identity(db: sqlite_utils.Database, one_id: str) -> dict[str, str]:
    """A customer's phone, email and WeChat unionid, as their next order would carry them."""
    found: dict[str, str] = {}
    for type_name, value in db.conn.execute(
        "SELECT type, value FROM identifiers WHERE one_id = ? AND status = 'linked' "
        "AND type IN ('phone', 'email', 'wechat_unionid') ORDER BY type, value",
        (one_id,),
    ):
        found.setdefault(type_name, value)
    return found


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _clicks(
    db: sqlite_utils.Database, sent: set[str], since: datetime, until: datetime
) -> Iterator[dict[str, Any]]:
    rows = db.conn.execute(
        "SELECT id, one_id, channel, created_at, link_code, link_url FROM messages "
        "WHERE link_code IS NOT NULL AND status != 'skipped' ORDER BY id"
    )
    for message_id, one_id, channel, created_at, code, url in rows:
        if message_id not in sent or chance("click", message_id) >= CLICK_RATES.get(channel, 0):
            continue
        at = _moment(created_at) + timedelta(minutes=5 + 2880 * chance("click at", message_id))
        if not since < at <= until:
            continue
        phone = _identity(db, one_id).get("phone")
        yield {
            "event_id": f"SIMC-{hashlib.sha256(message_id.encode()).hexdigest()[:12]}",
            "event": "link_click",
            "ts": int(at.timestamp() * 1000),
            "device_id": None,
            "user_id": None,
            "platform": channel,
            "properties": {"code": code, "url": url, **({"phone": phone} if phone else {})},
        }


def _orders(
    db: sqlite_utils.Database,
    sent: set[str],
    since: datetime,
    until: datetime,
    result: SimulatedResponse,
) -> Iterator[dict[str, Any]]:
    """One order for each enrolment drawn to convert, placed inside its goal window."""
    first = db.conn.execute(
        """SELECT m.enrolment_id, m.id, m.journey, m.one_id, m.created_at, m.status,
       m.coupon_code, e.holdout, e.control
FROM messages m JOIN journey_enrolments e ON e.id = m.enrolment_id
WHERE m.created_at = (SELECT min(created_at) FROM messages WHERE enrolment_id = m.enrolment_id)
ORDER BY m.enrolment_id, m.id"""
    )
    seen = set()
    for (
        enrolment_id,
        message_id,
        journey,
        one_id,
        created_at,
        status,
        coupon,
        hold,
        control,
    ) in first:
        if enrolment_id in seen:
            continue
        seen.add(enrolment_id)
        went_out = status != "skipped" and message_id in sent
        rate = BASE_RATE + ((COUPON_LIFT if coupon else LIFT) if went_out else 0)
        key = f"{journey}:{enrolment_id}"
        if chance("order", key) >= rate:
            continue
        at = _moment(created_at) + timedelta(hours=2 + 280 * chance("order at", key))
        if not since < at <= until:
            continue
        who = _identity(db, one_id)
        if not who:
            continue
        sku, name, category, price = CATALOGUE[int(chance("item", key) * len(CATALOGUE))]
        used = coupon if went_out and coupon and chance("coupon", key) < COUPON_USE else None
        group = "control" if control else "holdout" if hold else "treatment"
        result.orders[group] = result.orders.get(group, 0) + 1
        result.revenue = round(result.revenue + price, 2)
        yield {
            "order_id": f"SIM{hashlib.sha256(key.encode()).hexdigest()[:14].upper()}",
            "platform": "own_shop",
            "created": at.isoformat(timespec="seconds"),
            "payment": f"{price:.2f}",
            "status": "paid",
            "buyer": {"mobile": who.get("phone"), "email": who.get("email"),
                      "unionid": who.get("wechat_unionid")},
            "items": [{"sku": sku, "name": name, "category": category, "price": price,
                       "qty": 1}],
            "coupon_code": used,
        }  # fmt: skip


def respond_and_rerun(
    db: sqlite_utils.Database, config: Config, start: datetime, checkpoints: list[datetime]
) -> list[dict[str, Any]]:
    """From `start`, at each checkpoint: the simulated response since the one before,
    ingested and resolved, then the journeys run at that moment (conversions, reminders)."""
    from cdp_cli.identity.resolve import resolve
    from cdp_cli.messaging.engine import run_journeys

    stretches = []
    since = start
    for until in checkpoints:
        response = simulate_response(db, config, since, until)
        resolve(db, config)
        runs = run_journeys(db, config, now=until)
        stretches.append({"response": response, "journeys": runs})
        since = until
    return stretches
