"""The send step's guards: who may be messaged on which channel, and when.

Opt-outs (those linked to the customer, and suppressions of a phone or email they hold) and
reachability per channel with its fallbacks (the channel registry's addressing
rule), the frequency cap (marketing only) and quiet hours in the customer's own timezone.
What they need about a batch of customers is read in a few set queries (`Customers`), so a run
costs a few queries per thousand messages, not per message. Holdout and the control group are
the engine's (they are decided at enrolment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezones

from cdp_cli.consent import CUSTOMER_CONSENTS
from cdp_cli.messaging.channels import (
    ADDRESS_TYPES,
    CHANNELS,
    opted_out_channels,
    purposes_obeyed,
)
from cdp_cli.messaging.settings import SendSettings
from cdp_cli.sqlitelib import sqlite_utils

IN_BATCH = "IN (SELECT value FROM json_each(?))"
_WECHAT, _PUSH = CHANNELS["wechat"], CHANNELS["push"]
CAP_WEEK = timedelta(days=7)
ADDRESSED_TYPES = ", ".join(f"'{t}'" for t in ADDRESS_TYPES)  # constants of ours


@dataclass
class Customers:
    """What the guards need about a batch of customers: their addresses, their opt-outs and
    the marketing messages they were sent today and this week."""

    addresses: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    phones: dict[str, str] = field(default_factory=dict)  # the first, for the timezone
    opted_out: dict[str, set[str]] = field(default_factory=dict)
    sent_week: dict[str, list[datetime]] = field(default_factory=dict)  # oldest first

    @classmethod
    def load(
        cls,
        db: sqlite_utils.Database,
        one_ids: list[str],
        now: datetime,
        settings: SendSettings,
        transactional: bool = False,
    ) -> Customers:
        """`transactional`: the journey's, which decides the consent purposes it obeys."""
        conn, ids = db.conn, json.dumps(one_ids)
        found = cls()
        for one_id, type_name, value, detail in conn.execute(
            f"SELECT one_id, type, value, detail FROM identifiers WHERE one_id {IN_BATCH} "
            # +type: look customers up by one_id, never by scanning every identifier of a type
            f"AND status = 'linked' AND +type IN ({ADDRESSED_TYPES}) "
            "ORDER BY one_id, value",
            (ids,),
        ):
            found.addresses.setdefault(one_id, []).append((type_name, value, detail))
            if type_name == "phone":
                found.phones.setdefault(one_id, value)
        latest: dict[tuple[str, str], str] = {}
        obeyed = purposes_obeyed(transactional)
        for one_id, channel, status, *_, purpose in conn.execute(CUSTOMER_CONSENTS, (ids, ids)):
            if purpose in obeyed:
                latest[(one_id, channel)] = status
        for (one_id, channel), status in latest.items():
            if status == "opt_out":
                found.opted_out.setdefault(one_id, set()).update(opted_out_channels(channel))
        if settings.per_day or settings.per_week:
            found._load_sent(db, ids, now)
        return found

    def _load_sent(self, db: sqlite_utils.Database, ids: str, now: datetime) -> None:
        week_start = now - CAP_WEEK
        for one_id, created_at in db.conn.execute(
            f"SELECT one_id, created_at FROM messages WHERE one_id {IN_BATCH} "
            "AND status != 'skipped' AND transactional = 0 "
            "AND julianday(created_at) >= julianday(?) ORDER BY one_id, julianday(created_at)",
            (ids, week_start.isoformat()),
        ):
            self.sent_week.setdefault(one_id, []).append(datetime.fromisoformat(created_at))

    def address(self, one_id: str, channel: str, wechat_appid: str | None) -> str | None:
        """The first linked identifier that reaches this customer on the channel."""
        spec = CHANNELS[channel]
        wanted = spec.address_type  # tested here first: most identifiers are of another type
        for type_name, value, detail in self.addresses.get(one_id, ()):
            if type_name == wanted and spec.reaches(type_name, value, detail, wechat_appid):
                return value
        return None

    def context_addresses(
        self, one_id: str, wechat_appid: str | None
    ) -> tuple[str | None, str | None]:
        """What a message's context shows of the customer's WeChat openid and push device:
        address() on each channel, in one walk of their identifiers (every message asks)."""
        wechat_type, push_type = _WECHAT.address_type, _PUSH.address_type
        wechat = push = None
        for type_name, value, detail in self.addresses.get(one_id, ()):
            if type_name == wechat_type:
                if wechat is None and _WECHAT.reaches(type_name, value, detail, wechat_appid):
                    wechat = value
            elif (
                type_name == push_type
                and push is None
                and _PUSH.reaches(type_name, value, detail, None)
            ):
                push = value
        return wechat, push

    def cap_lifts(self, one_id: str, settings: SendSettings, now: datetime) -> str | None:
        """When the frequency cap lets the customer's next marketing message go; None when it
        may go now. The day is the calendar day in the project's timezone; the week, the 7
        days up to now, so it lifts when enough of that week's messages have left it."""
        sent = self.sent_week.get(one_id)
        if not sent:  # the usual case: nothing this week
            return None
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        lifts = []
        if settings.per_day and sum(t >= day_start for t in sent) >= settings.per_day:
            lifts.append(day_start + timedelta(days=1))
        if settings.per_week and len(sent) >= settings.per_week:
            lifts.append(sent[len(sent) - settings.per_week] + CAP_WEEK + timedelta(seconds=1))
        return max(lifts).astimezone(now.tzinfo).isoformat(timespec="seconds") if lifts else None

    def count_sent(self, one_id: str, now: datetime) -> None:
        self.sent_week.setdefault(one_id, []).append(now)


_NO_CHANNELS: frozenset[str] = frozenset()


class Reach(NamedTuple):  # one per message: a tuple is made faster than a frozen dataclass
    """The channel and address a message goes to, or why it cannot go (`skip`)."""

    channel: str | None = None
    address: str | None = None
    skip: str | None = None


def reach(
    customers: Customers, one_id: str, channels: tuple[str, ...], wechat_appid: str | None
) -> Reach:
    """The first of `channels` (a step's channel, then its fallbacks) the customer has not
    opted out of and has an address for; else why none: 'opted out' when every channel was
    opted out of, else 'unreachable', each with what was tried."""
    opted_out = customers.opted_out.get(one_id, _NO_CHANNELS)
    tried = []
    for channel in channels:
        if channel in opted_out:
            tried.append(f"{channel}: opted out")
            continue
        address = customers.address(one_id, channel, wechat_appid)
        if address is None:
            tried.append(f"{channel}: no {CHANNELS[channel].address_noun}")
            continue
        return Reach(channel, address)
    reason = "opted out" if all(t.endswith("opted out") for t in tried) else "unreachable"
    return Reach(skip=f"{reason} ({'; '.join(tried)})")


def _quiet_until(
    zone: ZoneInfo, channel: str, now: datetime, settings: SendSettings, transactional: bool
) -> str | None:
    quiet = settings.quiet_hours(channel, transactional)
    until = quiet.until(now.astimezone(zone)) if quiet is not None else None
    return until.astimezone(settings.zone).isoformat(timespec="seconds") if until else None


@dataclass
class QuietHoursOfRun:
    """When a message of one run may go, if the channel's quiet hours hold now in the
    customer's own timezone (in the project's timezone, to the second); None when it may go
    now. Every channel has quiet hours for marketing (SendSettings.quiet_hours). The answer
    is the same for all customers of a timezone on a channel: worked out once per pair."""

    now: datetime
    settings: SendSettings
    transactional: bool
    known: dict[tuple[str, ZoneInfo], str | None] = field(default_factory=dict)

    def until(self, customers: Customers, one_id: str, channel: str) -> str | None:
        zone = customer_zone(customers.phones.get(one_id), self.settings.zone)
        key = (channel, zone)
        if key not in self.known:
            self.known[key] = _quiet_until(zone, channel, self.now, self.settings,
                                           self.transactional)  # fmt: skip
        return self.known[key]


_CHINA = ZoneInfo("Asia/Shanghai")


def customer_zone(phone: str | None, default: ZoneInfo) -> ZoneInfo:
    """The customer's timezone from their phone number's region; the project's otherwise."""
    if not phone:
        return default
    if phone.startswith("+86"):  # China keeps one zone: the common case, no parsing or cache
        return _CHINA
    return _zone_of_number(phone, default)


@lru_cache(maxsize=65536)
def _zone_of_number(e164: str, default: ZoneInfo) -> ZoneInfo:
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
