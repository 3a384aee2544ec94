"""A journey's send step for a batch of enrolments: guards, coupon, rendering and the outbox.

The engine hands the step its JourneyRun; nothing here calls back into the engine. In order:
holdout and the global control group (followed, never messaged), then the guards (guards.py:
opt-outs and reachability with fallback; the frequency cap and quiet hours, which make the
message wait), then a coupon from the pool (coupons.py), a tracked link, and the template. Each
message, queued or skipped with its reason, is one MessageRow of the outbox. A message that
waits has no row: its enrolment stays at the step with a `Deferral` (when, and why).

With a render worker (rendering.py, a large run), the template is rendered there: the row is
queued as if it renders cleanly, and the batch's outbox is written once the worker hands its
messages back, while the engine walks the next batches (`settle` waits for them, and runs
first whenever what comes next reads those messages).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cdp_cli.errors import TemplateError
from cdp_cli.messaging import links
from cdp_cli.messaging.channels import CHANNELS, Outbound, placeholder_problem
from cdp_cli.messaging.coupons import CouponPool
from cdp_cli.messaging.guards import IN_BATCH, Customers, reach
from cdp_cli.messaging.journeys import Send
from cdp_cli.messaging.outbox import file_line
from cdp_cli.messaging.rendering import (
    IN_FLIGHT,
    ContextHeader,
    ContextParts,
    InFlight,
    RenderedMessage,
    RenderFailed,
    RenderJob,
    render_outbound,
)
from cdp_cli.messaging.run import Enrolment, JourneyRun
from cdp_cli.predict.fields import SCORE_FIELDS
from cdp_cli.sqlitelib import sqlite_utils

# What a template sees of the profile (`customer`): these, or those of them it prints.
PROFILE_FIELDS = ("one_id", "name", "gender", "birthday", "city", "known", "first_seen",
                  "last_seen", "records")  # fmt: skip
DRY_RUN_LISTED = 1000  # messages a dry run lists per journey (it counts them all)
QUIET_HOURS = "quiet hours"  # the reasons a message waits, besides a problem of the project's
FREQUENCY_CAP = "frequency cap"


class Deferral(NamedTuple):
    """Why a message waits (its enrolment stays at the step), and when it may go."""

    until: str
    reason: str


class MessageRow(NamedTuple):
    """One row of the outbox (the messages table): a message queued, or why it was skipped."""

    id: str  # journey:enrolment:step, so a step of an enrolment has one message, ever
    run_id: int
    journey: str
    enrolment_id: int
    one_id: str
    step: str
    channel: str | None
    status: str  # 'queued' or 'skipped'
    reason: str | None
    address: str | None
    payload: str | None
    coupon_code: str | None
    cost: float | None
    transactional: int
    created_at: str
    link_code: str | None
    link_url: str | None


_PAYLOAD, _COST = MessageRow._fields.index("payload"), MessageRow._fields.index("cost")
_new_row = functools.partial(tuple.__new__, MessageRow)  # MessageRow from a tuple in its order
INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(MessageRow._fields)}) "
    f"VALUES ({', '.join('?' * len(MessageRow._fields))})"
)


class Delivery(NamedTuple):  # one per message, as Message: tuples are made fastest
    """What a queued message carries: where it goes, what it says, its coupon and link."""

    address: str
    outbound: Outbound | None  # None while the render worker renders it (Outbox.fill)
    coupon_code: str | None
    link: links.Link | None


def message_row(
    run: JourneyRun,
    e: Enrolment,
    step: Send,
    message_id: str,
    channel: str | None,
    *,
    reason: str | None = None,
    delivery: Delivery | None = None,
) -> MessageRow:
    """The outbox row of a message: queued with its `delivery`, or skipped for `reason`."""
    link = delivery.link if delivery else None
    outbound = delivery.outbound if delivery else None
    # In MessageRow's order, made as a tuple: a NamedTuple of 17 fields called with keywords
    # takes several times as long, once per message (the tests compare every field).
    return _new_row((
        message_id,  # id
        run.run_id,
        run.journey.name,
        e.id,  # enrolment_id
        e.one_id,
        step.key,  # step
        channel,
        "queued" if delivery else "skipped",  # status
        reason,
        # address: an openid is stored as '<appid>:<openid>'; the file carries the openid.
        delivery.address.split(":", 1)[-1] if delivery else None,
        json.dumps(outbound.body, ensure_ascii=False) if outbound else None,  # payload
        delivery.coupon_code if delivery else None,
        message_cost(run, channel, outbound.billed_parts) if outbound and channel else None,
        int(run.journey.transactional),
        run.now_text,  # created_at
        link.code if link else None,
        link.url if link else None,
    ))  # fmt: skip


def message_cost(run: JourneyRun, channel: str, billed_parts: int) -> float:
    """What a message costs: per billed part, so a 3-segment SMS costs three."""
    return run.settings.cost(channel) * billed_parts


@dataclass
class Outbox:
    """Rows for the outbox, written together at the end of a batch, and the queued messages'
    lines for their outbound files (the spool's, after the commit)."""

    messages: list[MessageRow] = field(default_factory=list)
    coupons: list[tuple[Any, ...]] = field(default_factory=list)
    lines: list[tuple[str, bytes]] = field(default_factory=list)  # channel, line (UTF-8)
    # With a render worker: the rows whose payload it renders (indexes into messages), in order
    rendering: list[int] = field(default_factory=list)
    jobs: list[RenderJob] = field(default_factory=list)
    header: ContextHeader | None = None  # what the jobs' contexts share

    def flush(self, run: JourneyRun) -> None:
        run.db.conn.executemany(INSERT_MESSAGE, self.messages)
        run.db.conn.executemany(
            "INSERT INTO coupon_issues (code, campaign, one_id, message_id, issued_at) "
            "VALUES (?, ?, ?, ?, ?)",
            self.coupons,
        )
        if run.spool is not None:
            run.spool.add(run.run_id, run.journey.name, self.lines)
        self.messages.clear()
        self.coupons.clear()
        self.lines.clear()

    def fill(self, run: JourneyRun, rendered: list[RenderedMessage]) -> None:
        """Put what the worker rendered into the rows waiting for it, and their lines (made
        here from the body when the worker did not make them)."""
        for index, (payload, billed_parts, made) in zip(self.rendering, rendered, strict=True):
            row = self.messages[index]
            channel = row.channel
            assert channel is not None
            values = list(row)  # faster than row._replace(payload=..., cost=...)
            values[_PAYLOAD] = payload
            values[_COST] = message_cost(run, channel, billed_parts)
            self.messages[index] = _new_row(values)
            if not isinstance(made, bytes):
                made = file_line(CHANNELS[channel], _file_head(row), made).encode()
            self.lines.append((channel, made))
        self.rendering.clear()
        self.jobs.clear()


def settle_for(run: JourneyRun, enrolments: list[Enrolment]) -> None:
    """Settle the batches in flight if one holds messages of these enrolments' customers:
    what comes next for them (a send's guards and coupons, a branch on `received`) reads them."""
    if any(not p.one_ids.isdisjoint(e.one_id for e in enrolments) for p in run.in_flight):
        settle(run)


def settle(run: JourneyRun, keep: int = 0) -> None:
    """Wait for the batches the worker is rendering, oldest first, and write their outbox,
    until `keep` are left in flight. RenderFailed when one of their messages did not render
    cleanly (the engine runs the journey in one process; the worker is left idle)."""
    while len(run.in_flight) > keep:
        pending = run.in_flight.pop(0)
        assert run.worker is not None
        try:
            rendered = run.worker.collect()
        except RenderFailed:
            run.in_flight.clear()
            run.worker.drain()
            raise
        pending.written(rendered)


def _finish(run: JourneyRun, outbox: Outbox) -> None:
    """The batch's outbox, after those in flight: written now, or once the worker has
    rendered its messages (while the engine walks the next batches)."""
    if not outbox.jobs:
        settle(run)  # rows go in in the order they were made, batch after batch
        outbox.flush(run)
        return
    settle(run, keep=IN_FLIGHT - 1)
    assert run.worker is not None
    assert outbox.header is not None
    run.worker.submit(outbox.header, list(outbox.jobs))
    one_ids = {row.one_id for row in outbox.messages}
    codes = {row.link_code for row in outbox.messages if row.link_code}
    run.in_flight.append(InFlight(one_ids, codes, functools.partial(_write_rendered, run, outbox)))


def _write_rendered(run: JourneyRun, outbox: Outbox, rendered: list[RenderedMessage]) -> None:
    outbox.fill(run, rendered)
    outbox.flush(run)


@dataclass
class TemplateData:
    """What templates print about a batch of customers: profile, features and tags, as rows
    with their column names (rendering.message_context makes each message's dicts)."""

    profile_columns: tuple[str, ...] = ()
    feature_columns: tuple[str, ...] = ()
    profiles: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    features: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # one_id left out
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        db: sqlite_utils.Database,
        one_ids: list[str],
        feature_columns: list[str] | None,
        profile_fields: set[str] | None = None,
    ) -> TemplateData:
        """`feature_columns`: the features the templates print, `profile_fields` the profile's
        (one_id always); None reads them all."""
        conn, ids = db.conn, json.dumps(one_ids)
        found = cls()
        printed = (
            PROFILE_FIELDS
            if profile_fields is None
            else [c for c in PROFILE_FIELDS if c == "one_id" or c in profile_fields]
        )
        listed = ", ".join(printed)
        cursor = conn.execute(f"SELECT {listed} FROM profiles WHERE one_id {IN_BATCH}", (ids,))
        found.profile_columns = tuple(d[0] for d in cursor.description)
        found.profiles = {row[0]: row for row in cursor}
        if feature_columns is None:
            features, scores = ["profile_features.*"], list(SCORE_FIELDS)
        else:
            features = [f'"{c}"' for c in ["one_id", *feature_columns] if c not in SCORE_FIELDS]
            scores = [c for c in feature_columns if c in SCORE_FIELDS]
        # cdp predict's scores print as features too (NULL: not predicted)
        listed = ", ".join([*features, *(f'p."{c}"' for c in scores)])
        joined = " LEFT JOIN predictions p USING (one_id)" if scores else ""
        cursor = conn.execute(
            f"SELECT {listed} FROM profile_features{joined} WHERE one_id {IN_BATCH}", (ids,)
        )
        found.feature_columns = tuple(d[0] for d in cursor.description[1:])
        found.features = {row[0]: row[1:] for row in cursor}
        for one_id, tag, value in conn.execute(
            f"SELECT one_id, tag, value FROM profile_tags WHERE one_id {IN_BATCH}", (ids,)
        ):
            found.tags.setdefault(one_id, {})[tag] = value
        return found


class Message(NamedTuple):
    """What is known of a message before its guards: its id, an earlier coupon, a link code."""

    id: str
    earlier_coupon: dict[str, Any] | None
    link_code: str | None


@dataclass
class Batch:
    """A send step's batch: its customers as guards and templates see them, and its outbox."""

    run: JourneyRun
    step: Send
    customers: Customers
    data: TemplateData
    outbox: Outbox
    rendered: int = 0  # messages whose template rendered
    failed: list[tuple[Enrolment, str, str, TemplateError]] = field(default_factory=list)
    header: ContextHeader = field(init=False)  # what every message's context shares
    channels: tuple[str, ...] = field(init=False)  # the step's channel, then its fallbacks
    appid: str | None = field(init=False)  # the WeChat account of cdp.yaml

    def __post_init__(self) -> None:
        self.channels = (self.step.channel, *self.step.fallback)
        self.appid = self.run.settings.wechat_appid
        self.header = ContextHeader(
            self.data.profile_columns, self.data.feature_columns, self.run.settings.brand,
            {"name": self.run.journey.name}, {"name": self.step.key},
        )  # fmt: skip


def send_batch(run: JourneyRun, step: Send, batch: list[Enrolment]) -> dict[int, Deferral]:
    """Queue the step's message for each enrolment, or record why not.

    Returns the enrolments whose message waits, with when it may go and why: quiet hours or
    the frequency cap, or now for those held by the project's fault (`_hold`), so the next
    run tries again.
    """
    journey = run.journey
    settle_for(run, batch)  # a step after another: guards and coupons read the messages before
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
        one_ids = [e.one_id for e in live]
        customers = Customers.load(
            run.db, one_ids, run.now, run.settings, run.journey.transactional
        )
        data = TemplateData.load(run.db, one_ids, run.feature_columns, run.profile_fields)
        earlier = enrolment_coupons(run, live) if not step.coupon and run.coupon_steps else {}
        rendering = frozenset().union(*(p.link_codes for p in run.in_flight))
        codes = link_codes(run, [ids[e.id] for e in live], rendering) if step.link else {}
        current = Batch(run, step, customers, data, outbox)
        for e in live:
            message = Message(ids[e.id], earlier.get(e.id), codes.get(ids[e.id]))
            waits = _send_one(current, e, message)
            if waits:
                deferred[e.id] = waits
        deferred.update(_settle_template_failures(current))
    _finish(run, outbox)
    return deferred


def enrolment_coupons(run: JourneyRun, enrolments: list[Enrolment]) -> dict[int, dict[str, Any]]:
    """The coupon an earlier step of each enrolment drew, for a reminder that mentions it;
    its key "expired" says whether it has expired by the time of this run."""
    ids = json.dumps([e.one_id for e in enrolments])
    wanted = {e.id for e in enrolments}
    found: dict[int, dict[str, Any]] = {}
    for enrolment_id, code, face_value, expires_at, expired in run.db.conn.execute(
        "SELECT m.enrolment_id, c.code, c.face_value, c.expires_at, "
        "coalesce(julianday(c.expires_at) < julianday(?), 0) FROM messages m "
        f"JOIN coupons c ON c.code = m.coupon_code WHERE m.one_id {IN_BATCH} AND m.journey = ? "
        "AND m.coupon_code IS NOT NULL ORDER BY m.created_at",
        (run.now_text, ids, run.journey.name),
    ):
        if enrolment_id in wanted:
            found[enrolment_id] = {"code": code, "face_value": face_value,
                                   "expires_at": expires_at, "expired": bool(expired)}  # fmt: skip
    return found


def link_codes(
    run: JourneyRun, message_ids: list[str], rendering: AbstractSet[str] = frozenset()
) -> dict[str, str]:
    """Each message's link code: links.short_code, lengthened where another message holds it.

    Eight base32 characters make about one clash per two million messages; one query per
    batch finds them, before anything is rendered with the code in it. `rendering`: the codes
    of the batch the worker is rendering, not in the store yet.
    """
    codes = {m: links.short_code(m) for m in message_ids}
    taken = {
        row[0]
        for row in run.db.conn.execute(
            f"SELECT link_code FROM messages WHERE link_code {IN_BATCH}",
            (json.dumps(list(codes.values())),),
        )
    } | (rendering & set(codes.values()))
    given: set[str] = set()
    for message_id, code in codes.items():
        length = len(code)
        while code in taken or code in given:
            length += 1
            code = links.short_code(message_id, length)
            if (
                code in rendering
                or run.db.conn.execute(
                    "SELECT 1 FROM messages WHERE link_code = ?", (code,)
                ).fetchone()
            ):
                taken.add(code)  # a longer code of an earlier clash: rarer still, but possible
        codes[message_id] = code
        given.add(code)
    return codes


def tracked_link(
    run: JourneyRun, step: Send, code: str | None, channel: str, variant: str | None
) -> links.Link | None:
    """The message's tracked link (and its QR image, not in a dry run) when the step has one."""
    if step.link is None or code is None:
        return None
    utm = links.link_utm(run.journey.name, channel, variant or step.key, dict(step.link.utm))
    link = links.Link(code, links.tracked_url(step.link.url, code, utm))
    if step.link.qr and not run.dry_run:
        relative = Path("qr") / run.journey.name / f"{code}.png"
        (run.config.outbound_folder / relative.parent).mkdir(parents=True, exist_ok=True)
        links.write_qr(link.url, run.config.outbound_folder / relative)
        link = links.Link(code, link.url, relative)
    return link


def _send_one(batch: Batch, e: Enrolment, message: Message) -> Deferral | None:
    """Queue one message, or skip it; when and why it waits if it may not go now."""
    run, step, customers, outbox = batch.run, batch.step, batch.customers, batch.outbox
    settings, one_id, message_id = run.settings, e.one_id, message.id
    found = reach(customers, one_id, batch.channels, batch.appid)
    if found.channel is None or found.address is None:
        _skip(run, outbox, e, step, message_id, None, found.skip or "unreachable")
        return None
    channel = found.channel
    if not run.journey.transactional:
        lifts = customers.cap_lifts(one_id, settings, run.now)
        if lifts:
            return _defer(run, Deferral(lifts, FREQUENCY_CAP))
    until = run.quiet_hours.until(customers, one_id, channel)
    if until:
        return _defer(run, Deferral(until, QUIET_HOURS))
    coupon, pool = message.earlier_coupon, None
    if coupon is not None and coupon["expired"] and _prints_coupon(run, channel, step):
        reason = f"coupon expired (the code an earlier step sent, {coupon['code']})"
        _skip(run, outbox, e, step, message_id, channel, reason)
        return None
    if coupon is not None:  # what the template sees: code, face_value, expires_at
        coupon = {k: v for k, v in coupon.items() if k != "expired"}
    if step.coupon and not run.coupons.exists(step.coupon):
        return _hold(run, run.coupons.missing(step.coupon))
    if step.coupon:
        pool = run.coupons.pool(step.coupon)
        coupon = pool.draw(step.coupon_min_days_left)
        if coupon is None:
            reason = pool.empty_reason(step.coupon_min_days_left)
            run.coupons.empty[step.coupon] = reason
            _skip(run, outbox, e, step, message_id, channel, reason)
            return None
    link = tracked_link(run, step, message.link_code, channel, e.variant)
    parts = _context_parts(batch, one_id, channel, coupon, link)
    if run.worker is not None:
        _queue_render(batch, e, message_id, found.address, channel, parts, coupon, pool, link)
        return None
    try:
        outbound = render_outbound(
            run.templates, batch.header, channel, step.template, parts, message_id
        )
    except TemplateError as exc:
        if pool and coupon:
            pool.put_back(coupon)
        batch.failed.append((e, message_id, channel, exc))
        return None
    batch.rendered += 1
    problem = placeholder_problem(channel, step.template, outbound.body)
    if problem:
        if pool and coupon:
            pool.put_back(coupon)
        return _hold(run, problem)
    if link is not None and link.qr is not None:
        outbound.body["qr"] = str(link.qr)  # relative to outbound/
    code = coupon["code"] if coupon else None
    if pool and coupon:
        outbox.coupons.append((code, step.coupon, one_id, message_id, run.now_text))
    delivery = Delivery(found.address, outbound, code, link)
    row = message_row(run, e, step, message_id, channel, delivery=delivery)
    outbox.messages.append(row)
    if run.spool is not None:
        line = file_line(CHANNELS[channel], _file_head(row), outbound.body).encode()
        outbox.lines.append((channel, line))
    customers.count_sent(one_id, run.now)
    run.result.sent[channel] = run.result.sent.get(channel, 0) + 1
    if run.dry_run and len(run.result.messages) < DRY_RUN_LISTED:
        run.result.messages.append(
            {"one_id": one_id, "step": step.key, "channel": channel, **outbound.body}
        )
    return None


def _queue_render(
    batch: Batch,
    e: Enrolment,
    message_id: str,
    address: str,
    channel: str,
    parts: ContextParts,
    coupon: dict[str, Any] | None,
    pool: CouponPool | None,
    link: links.Link | None,
) -> None:
    """The message for the worker to render: queued as if it renders cleanly (when one does
    not, the engine runs the journey again in one process, so nothing here is kept)."""
    run, step, outbox = batch.run, batch.step, batch.outbox
    code = coupon["code"] if coupon else None
    if pool and coupon:
        outbox.coupons.append((code, step.coupon, e.one_id, message_id, run.now_text))
    delivery = Delivery(address, None, code, link)
    row = message_row(run, e, step, message_id, channel, delivery=delivery)
    outbox.rendering.append(len(outbox.messages))
    outbox.messages.append(row)
    qr = str(link.qr) if link is not None and link.qr is not None else None
    outbox.header = batch.header
    outbox.jobs.append((channel, step.template, parts, qr, _file_head(row)))
    batch.customers.count_sent(e.one_id, run.now)
    run.result.sent[channel] = run.result.sent.get(channel, 0) + 1


_FILE_HEAD = operator.itemgetter(*(MessageRow._fields.index(f) for f in (
    "id", "address", "journey", "step", "one_id", "coupon_code", "link_url")))  # fmt: skip


def _file_head(row: MessageRow) -> tuple[Any, ...]:
    """What a message's outbound line carries besides its payload (outbox.file_line): id,
    address, journey, step, one_id, coupon_code, link_url (one C call, once per message)."""
    head: tuple[Any, ...] = _FILE_HEAD(row)
    return head


def _prints_coupon(run: JourneyRun, channel: str, step: Send) -> bool:
    """Whether the step's template may print the coupon (a reminder of an earlier one)."""
    return run.templates.fields_used(channel, step.template, "coupon") != set()


def _context_parts(
    batch: Batch, one_id: str, channel: str, coupon: dict[str, Any] | None, link: links.Link | None
) -> ContextParts:
    """What one customer's message context is made of (rendering.message_context)."""
    customers, data = batch.customers, batch.data
    url = batch.header.brand.get("url", "")
    if link is not None:
        short = batch.header.brand.get("short_links")  # an SMS is billed by length: short link
        url = f"{short}{link.code}" if short and channel == "sms" else link.url
    wechat, device = customers.context_addresses(one_id, batch.appid)
    return (one_id, data.profiles.get(one_id), data.features.get(one_id),
            data.tags.get(one_id), coupon, wechat, device, url)  # fmt: skip


def _settle_template_failures(batch: Batch) -> dict[int, Deferral]:
    """A template that rendered for no one in the batch is the project's fault: its customers
    all wait at the step (`_hold`), each under its error. Where it rendered for others, a
    failure comes from that customer's own data (an order date to print, and no order): the
    message is skipped with the error as its reason."""
    if batch.rendered == 0:
        return {e.id: _hold(batch.run, f"template {exc}") for e, *_, exc in batch.failed}
    for e, message_id, channel, exc in batch.failed:
        reason = f"template: {exc.message}"
        _skip(batch.run, batch.outbox, e, batch.step, message_id, channel, reason)
    return {}


def _defer(run: JourneyRun, deferral: Deferral) -> Deferral:
    run.result.deferred += 1
    run.result.waiting[deferral.reason] = run.result.waiting.get(deferral.reason, 0) + 1
    return deferral


def _hold(run: JourneyRun, problem: str) -> Deferral:
    """The project's fault, not the customer's: the message is not recorded, the customer
    waits at the step (due again now) and the run names the problem."""
    run.result.held[problem] = run.result.held.get(problem, 0) + 1
    return Deferral(run.now_text, problem)


def _skip(
    run: JourneyRun,
    outbox: Outbox,
    e: Enrolment,
    step: Send,
    message_id: str,
    channel: str | None,
    reason: str,
) -> None:
    outbox.messages.append(message_row(run, e, step, message_id, channel, reason=reason))
    label = reason.split(" (")[0]
    run.result.skipped[label] = run.result.skipped.get(label, 0) + 1
