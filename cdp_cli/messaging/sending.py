"""A journey's send step for a batch of enrolments: guards, coupons, rendering and the outbox.

Everything a guard or a template needs about the batch's customers is read in a handful of
set queries (`Customers`), so a run costs a few queries per thousand messages, not per message.
The guards, in order: holdout and the global control group (followed, never messaged), opt-outs
and reachability per channel with fallback, the frequency cap (marketing only), quiet hours in
the customer's own timezone (the message waits), then a coupon from the pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezones

from cdp_cli.config import SendSettings
from cdp_cli.errors import TemplateError
from cdp_cli.messaging import links
from cdp_cli.messaging.channels import ADDRESS_TYPES, CHANNELS, opted_out_channels
from cdp_cli.messaging.journeys import Send

if TYPE_CHECKING:
    from cdp_cli.messaging.engine import _Run

PROFILE_FIELDS = "one_id, name, gender, birthday, city, known, first_seen, last_seen, records"
IN_BATCH = "IN (SELECT value FROM json_each(?))"
DRY_RUN_LISTED = 1000  # messages a dry run lists per journey (it counts them all)
ADDRESSED_TYPES = ", ".join(f"'{t}'" for t in ADDRESS_TYPES)  # constants of ours


@dataclass(slots=True)
class Enrolment:
    """One customer's place in a journey, as the engine walks it."""

    id: int
    one_id: str
    step: str | None
    waiting: int
    variant: str | None
    holdout: int
    control: int


# ---------------------------------------------------------------------------------------------
# The customers of a batch


def customer_zone(phone: str | None, default: ZoneInfo) -> ZoneInfo:
    """The customer's timezone from their phone number's region; the project's otherwise."""
    if not phone:
        return default
    return _zone_of_number(phone, default)


@lru_cache(maxsize=65536)
def _zone_of_number(e164: str, default: ZoneInfo) -> ZoneInfo:
    if e164.startswith("+86"):  # China keeps one zone: the common case needs no parsing
        return ZoneInfo("Asia/Shanghai")
    try:
        names = phone_timezones.time_zones_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return default
    zones = [ZoneInfo(n) for n in names if n != "Etc/Unknown"]
    if not zones:
        return default
    # Several zones that keep one offset all year (London, Jersey) are one answer.
    probes = (datetime(2026, 1, 15, 12), datetime(2026, 7, 15, 12))
    if len({tuple(z.utcoffset(p) for p in probes) for z in zones}) == 1:
        return zones[0]
    return default


@dataclass
class Customers:
    """What guards and templates need about a batch of customers, read in a few queries."""

    addresses: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    opted_out: dict[str, set[str]] = field(default_factory=dict)
    sent_today: dict[str, int] = field(default_factory=dict)
    sent_week: dict[str, int] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, run: _Run, one_ids: list[str], for_templates: bool = True) -> Customers:
        conn, ids = run.db.conn, json.dumps(one_ids)
        found = cls()
        for one_id, type_name, value, detail in conn.execute(
            f"SELECT one_id, type, value, detail FROM identifiers WHERE one_id {IN_BATCH} "
            # +type: look customers up by one_id, never by scanning every identifier of a type
            f"AND status = 'linked' AND +type IN ({ADDRESSED_TYPES}) "
            "ORDER BY one_id, value",
            (ids,),
        ):
            found.addresses.setdefault(one_id, []).append((type_name, value, detail))
        latest: dict[tuple[str, str], str] = {}
        for one_id, channel, status in conn.execute(
            "SELECT k.one_id, lower(c.channel), c.status FROM consents c "
            f"JOIN identity_keys k ON k.key = c.identity_key WHERE k.one_id {IN_BATCH} "
            "ORDER BY coalesce(c.consented_at, ''), c.id",
            (ids,),
        ):
            latest[(one_id, channel)] = status
        for (one_id, channel), status in latest.items():
            if status == "opt_out":
                found.opted_out.setdefault(one_id, set()).update(opted_out_channels(channel))
        found._load_sent(run, ids)
        if for_templates:
            found._load_context(run, ids)
        return found

    def _load_sent(self, run: _Run, ids: str) -> None:
        settings = run.settings
        if not settings.per_day and not settings.per_week:
            return
        day_start = run.now.replace(hour=0, minute=0, second=0, microsecond=0)
        week_start = run.now - timedelta(days=7)
        for one_id, today, week in run.db.conn.execute(
            "SELECT one_id, sum(julianday(created_at) >= julianday(?)), count(*) FROM messages "
            f"WHERE one_id {IN_BATCH} AND status != 'skipped' AND transactional = 0 "
            "AND julianday(created_at) >= julianday(?) GROUP BY one_id",
            (day_start.isoformat(), ids, min(day_start, week_start).isoformat()),
        ):
            self.sent_today[one_id] = today
            self.sent_week[one_id] = week

    def _load_context(self, run: _Run, ids: str) -> None:
        conn = run.db.conn
        cursor = conn.execute(
            f"SELECT {PROFILE_FIELDS} FROM profiles WHERE one_id {IN_BATCH}", (ids,)
        )
        names = [d[0] for d in cursor.description]
        self.profiles = {row[0]: dict(zip(names, row, strict=True)) for row in cursor}
        wanted = run.feature_columns
        listed = "*" if wanted is None else ", ".join(f'"{c}"' for c in ["one_id", *wanted])
        cursor = conn.execute(
            f"SELECT {listed} FROM profile_features WHERE one_id {IN_BATCH}", (ids,)
        )
        names = [d[0] for d in cursor.description]
        self.features = {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in cursor}
        for one_id, tag, value in conn.execute(
            f"SELECT one_id, tag, value FROM profile_tags WHERE one_id {IN_BATCH}", (ids,)
        ):
            self.tags.setdefault(one_id, {})[tag] = value

    def address(self, one_id: str, channel: str, wechat_appid: str | None) -> str | None:
        """The first linked identifier that reaches this customer on the channel."""
        spec = CHANNELS[channel]
        for type_name, value, detail in self.addresses.get(one_id, ()):
            if spec.reaches(type_name, value, detail, wechat_appid):
                return value
        return None

    def phone(self, one_id: str) -> str | None:
        return next((v for t, v, _ in self.addresses.get(one_id, ()) if t == "phone"), None)

    def capped(self, one_id: str, settings: SendSettings) -> bool:
        day, week = settings.per_day, settings.per_week
        return bool(
            (day and self.sent_today.get(one_id, 0) >= day)
            or (week and self.sent_week.get(one_id, 0) >= week)
        )

    def count_sent(self, one_id: str) -> None:
        self.sent_today[one_id] = self.sent_today.get(one_id, 0) + 1
        self.sent_week[one_id] = self.sent_week.get(one_id, 0) + 1


# ---------------------------------------------------------------------------------------------
# Coupons


class CouponPool:
    """A campaign's available codes, drawn in code order a block at a time."""

    BLOCK = 2000

    def __init__(self, run: _Run, campaign: str) -> None:
        self.run, self.campaign = run, campaign
        self.ready: list[tuple[str, Any, Any]] = []
        self.after = ""
        self.exhausted = False

    def draw(self) -> dict[str, Any] | None:
        if not self.ready and not self.exhausted:
            self._fill()
        if not self.ready:
            return None
        code, face_value, expires_at = self.ready.pop()
        return {"code": code, "face_value": face_value, "expires_at": expires_at}

    def put_back(self, coupon: dict[str, Any]) -> None:
        self.ready.append((coupon["code"], coupon["face_value"], coupon["expires_at"]))

    def _fill(self) -> None:
        rows = self.run.db.conn.execute(
            "SELECT code, face_value, expires_at FROM coupons c "
            "WHERE campaign = ? AND status = 'available' AND code > ? "
            "AND NOT EXISTS (SELECT 1 FROM coupon_issues i WHERE i.code = c.code) "
            "ORDER BY code LIMIT ?",
            (self.campaign, self.after, self.BLOCK),
        ).fetchall()
        if len(rows) < self.BLOCK:
            self.exhausted = True
        if rows:
            self.after = rows[-1][0]
        self.ready = rows[::-1]  # pop() takes the lowest code first


def enrolment_coupons(run: _Run, enrolments: list[Enrolment]) -> dict[int, dict[str, Any]]:
    """The coupon an earlier step of each enrolment drew, for a reminder that mentions it."""
    ids = json.dumps([e.one_id for e in enrolments])
    wanted = {e.id for e in enrolments}
    found: dict[int, dict[str, Any]] = {}
    for enrolment_id, code, face_value, expires_at in run.db.conn.execute(
        "SELECT m.enrolment_id, c.code, c.face_value, c.expires_at FROM messages m "
        f"JOIN coupons c ON c.code = m.coupon_code WHERE m.one_id {IN_BATCH} AND m.journey = ? "
        "AND m.coupon_code IS NOT NULL ORDER BY m.created_at",
        (ids, run.journey.name),
    ):
        if enrolment_id in wanted:
            found[enrolment_id] = {"code": code, "face_value": face_value, "expires_at": expires_at}
    return found


# ---------------------------------------------------------------------------------------------
# Sending a batch


@dataclass
class Outbox:
    """Rows for the outbox, written together at the end of a batch."""

    messages: list[tuple[Any, ...]] = field(default_factory=list)
    coupons: list[tuple[Any, ...]] = field(default_factory=list)

    def flush(self, run: _Run) -> None:
        conn = run.db.conn
        conn.executemany(
            "INSERT INTO messages (id, run_id, journey, enrolment_id, one_id, step, channel, "
            "status, reason, address, payload, coupon_code, cost, transactional, created_at, "
            "link_code, link_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.messages,
        )
        conn.executemany(
            "INSERT INTO coupon_issues (code, campaign, one_id, message_id, issued_at) "
            "VALUES (?, ?, ?, ?, ?)",
            self.coupons,
        )
        self.messages.clear()
        self.coupons.clear()


def send_batch(run: _Run, step: Send, batch: list[Enrolment]) -> dict[int, str]:
    """Queue the step's message for each enrolment, or record why not.

    Returns the enrolments whose message waits out quiet hours, with the time it may go.
    """
    journey = run.journey
    ids = {e.id: f"{journey.name}:{e.id}:{step.key}" for e in batch}
    done = {
        row[0]
        for row in run.db.conn.execute(
            f"SELECT id FROM messages WHERE id {IN_BATCH}", (json.dumps(list(ids.values())),)
        )
    }  # a step of an enrolment has one message, ever: a rerun never sends it twice
    outbox, deferred = Outbox(), {}
    live = []
    for e in batch:
        if ids[e.id] in done:
            continue
        if e.holdout:
            _skip(run, outbox, e, step, ids[e.id], None, "holdout")
        elif e.control and not journey.transactional:
            _skip(run, outbox, e, step, ids[e.id], None, "control group")
        else:
            live.append(e)
    if live:
        customers = Customers.load(run, [e.one_id for e in live])
        earlier = enrolment_coupons(run, live) if not step.coupon and run.coupon_steps else {}
        codes = link_codes(run, [ids[e.id] for e in live]) if step.link else {}
        for e in live:
            message = Message(ids[e.id], earlier.get(e.id), codes.get(ids[e.id]))
            until = _send_one(run, outbox, customers, e, step, message)
            if until:
                deferred[e.id] = until
    outbox.flush(run)
    return deferred


@dataclass(frozen=True)
class Message:
    """What is known of a message before its guards: its id, an earlier coupon, a link code."""

    id: str
    earlier_coupon: dict[str, Any] | None
    link_code: str | None


def link_codes(run: _Run, message_ids: list[str]) -> dict[str, str]:
    """Each message's link code: links.short_code, lengthened where another message holds it.

    Eight base32 characters make about one clash per two million messages; one query per
    batch finds them, before anything is rendered with the code in it.
    """
    codes = {m: links.short_code(m) for m in message_ids}
    taken = {
        row[0]
        for row in run.db.conn.execute(
            f"SELECT link_code FROM messages WHERE link_code {IN_BATCH}",
            (json.dumps(list(codes.values())),),
        )
    }
    given: set[str] = set()
    for message_id, code in codes.items():
        length = len(code)
        while code in taken or code in given:
            length += 1
            code = links.short_code(message_id, length)
            if run.db.conn.execute(
                "SELECT 1 FROM messages WHERE link_code = ?", (code,)
            ).fetchone():
                taken.add(code)  # a longer code of an earlier clash: rarer still, but possible
        codes[message_id] = code
        given.add(code)
    return codes


def _send_one(
    run: _Run,
    outbox: Outbox,
    customers: Customers,
    e: Enrolment,
    step: Send,
    message: Message,
) -> str | None:
    settings, one_id, message_id = run.settings, e.one_id, message.id
    opted_out = customers.opted_out.get(one_id, set())
    tried = []
    for channel in (step.channel, *step.fallback):
        if channel in opted_out:
            tried.append(f"{channel}: opted out")
            continue
        address = customers.address(one_id, channel, settings.wechat_appid)
        if address is None:
            tried.append(f"{channel}: no {CHANNELS[channel].address_noun}")
            continue
        break
    else:
        reason = "opted out" if all(t.endswith("opted out") for t in tried) else "unreachable"
        _skip(run, outbox, e, step, message_id, None, f"{reason} ({'; '.join(tried)})")
        return None
    if not run.journey.transactional and customers.capped(one_id, settings):
        _skip(run, outbox, e, step, message_id, channel, "frequency cap")
        return None
    quiet = settings.quiet_hours(channel)
    if quiet:
        zone = customer_zone(customers.phone(one_id), settings.zone)
        until = quiet.until(run.now.astimezone(zone))
        if until:
            run.result.deferred += 1
            return until.astimezone(settings.zone).isoformat(timespec="seconds")
    coupon, pool = message.earlier_coupon, None
    if step.coupon:
        pool = run.coupon_pool(step.coupon)
        coupon = pool.draw()
        if coupon is None:
            run.pools_empty.add(step.coupon)
            reason = f"coupon pool {step.coupon} is empty"
            _skip(run, outbox, e, step, message_id, channel, reason)
            return None
    link = run.link_for(step, message.link_code, channel, e.variant)
    context = _context(run, customers, one_id, step, channel, coupon, link)
    try:
        outbound = run.templates.render(channel, step.template, context)
    except TemplateError as exc:
        if pool and coupon:
            pool.put_back(coupon)
        _skip(run, outbox, e, step, message_id, channel, f"template: {exc.message}")
        return None
    if link is not None and link.qr is not None:
        outbound.body["qr"] = str(link.qr)  # relative to outbound/
    code = coupon["code"] if coupon else None
    if pool and coupon:
        outbox.coupons.append((code, step.coupon, one_id, message_id, run.now_text))
    outbox.messages.append(
        (message_id, run.run_id, run.journey.name, e.id, one_id, step.key, channel, "queued",
         None, address.split(":", 1)[-1], json.dumps(outbound.body, ensure_ascii=False), code,
         settings.cost(channel), int(run.journey.transactional), run.now_text,
         link.code if link else None, link.url if link else None)
    )  # fmt: skip
    customers.count_sent(one_id)
    run.result.sent[channel] = run.result.sent.get(channel, 0) + 1
    if run.dry_run and len(run.result.messages) < DRY_RUN_LISTED:
        run.result.messages.append(
            {"one_id": one_id, "step": step.key, "channel": channel, **outbound.body}
        )
    return None


def _context(
    run: _Run,
    customers: Customers,
    one_id: str,
    step: Send,
    channel: str,
    coupon: dict[str, Any] | None,
    link: links.Link | None,
) -> dict[str, Any]:
    openid = customers.address(one_id, "wechat", run.settings.wechat_appid)
    brand = run.settings.brand
    url = brand.get("url", "")
    if link is not None:
        short = brand.get("short_links")  # an SMS is billed by length: a short link, if any
        url = f"{short}{link.code}" if short and channel == "sms" else link.url
    return {
        "customer": customers.profiles.get(one_id) or {"one_id": one_id},
        "features": customers.features.get(one_id, {}),
        "tags": customers.tags.get(one_id, {}),
        "coupon": coupon,
        "journey": {"name": run.journey.name},
        "step": {"name": step.key},
        "wechat": {"openid": openid.split(":", 1)[-1] if openid else None,
                   "appid": openid.split(":", 1)[0] if openid and ":" in openid else None},
        "device": customers.address(one_id, "push", None),
        "brand": brand,
        "link": url,
    }  # fmt: skip


def _skip(
    run: _Run,
    outbox: Outbox,
    e: Enrolment,
    step: Send,
    message_id: str,
    channel: str | None,
    reason: str,
) -> None:
    outbox.messages.append(
        (message_id, run.run_id, run.journey.name, e.id, e.one_id, step.key, channel, "skipped",
         reason, None, None, None, None, int(run.journey.transactional), run.now_text, None, None)
    )  # fmt: skip
    label = reason.split(" (")[0]
    run.result.skipped[label] = run.result.skipped.get(label, 0) + 1
