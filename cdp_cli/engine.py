"""`cdp journey run`: enrol, advance and end customers in journeys; render and send messages.

Exactly once: a run advances every enrolment and writes every message (or the reason it was
skipped) to the outbox in one transaction, and a message's id is its journey, enrolment and
step, so no step can produce two. Outbound files are written after the commit, from the
outbox, to a temporary file renamed into place: a killed run leaves either no file or a whole
one, and the next run writes what is still pending under the same name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from cdp_cli.config import Config
from cdp_cli.errors import CdpError, NotFound, RuleError, TemplateError
from cdp_cli.journeys import (
    Branch,
    End,
    Journey,
    Send,
    Split,
    Wait,
    load_journeys,
)
from cdp_cli.rules import CompiledRule, RuleSchema, compile_rule
from cdp_cli.store import now_iso, rows_as_dicts, transaction
from cdp_cli.tags import BASE_FROM, RuleContext, load_rulebook
from cdp_cli.templates import TemplateStore, example_context

ADDRESS_TYPES = {"sms": "phone", "email": "email", "wechat": "wechat_openid", "push": "device_id"}
FILE_FORMATS = {"sms": "csv", "email": "jsonl", "wechat": "jsonl", "push": "jsonl"}
OPEN_EVENTS = ("open", "email_open", "message_open")
CLICK_EVENTS = ("click", "link_click", "qr_scan")


@dataclass
class RunResult:
    """What one journey's run did."""

    journey: str
    now: str
    dry_run: bool = False
    enrolled: int = 0
    holdout: int = 0
    converted: int = 0
    exited: int = 0
    completed: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    deferred: int = 0
    files: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # with --dry-run
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def share_of(*parts: str) -> float:
    """A stable number in [0, 1) from its parts: holdout and variant assignment."""
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# ---------------------------------------------------------------------------------------------
# Rules in journeys


class JourneyRules:
    """Compiles a journey's rules; branches may also test the enrolment itself."""

    def __init__(self, config: Config, as_of: date, known_tags: set[str]) -> None:
        self.context = RuleContext(load_rulebook(config.root / "tag_rules"), as_of, known_tags)

    def customer(self, text: str) -> CompiledRule:
        return self.context.compile(text)

    def branch(self, text: str) -> CompiledRule:
        base = self.context.schema()
        fields = dict(base.fields)
        fields["converted"] = "(je.converted_at IS NOT NULL)"
        for name, events in (("opened", OPEN_EVENTS), ("clicked", CLICK_EVENTS)):
            listed = ", ".join(f"'{e}'" for e in events)  # constants of ours, not user text
            fields[name] = (
                "EXISTS (SELECT 1 FROM events e JOIN identity_keys k ON k.key = e.identity_key "
                f"WHERE k.one_id = je.one_id AND e.event IN ({listed}) "
                "AND e.occurred_at >= je.entered_at)"
            )
        return compile_rule(text, RuleSchema(fields, base.functions))


def check_journey(journey: Journey, rules: JourneyRules, templates: TemplateStore) -> None:
    """Compile every rule and render every template of a journey; errors name file and step."""
    checks = [("entry", journey.entry.when, rules.customer), ("exit", journey.exit, rules.customer)]
    checks += [
        (s.key, s.when, rules.branch) for s in journey.index.values() if isinstance(s, Branch)
    ]
    for where, text, compile_ in checks:
        if text is None:
            continue
        try:
            compile_(text)
        except RuleError as exc:
            raise RuleError(
                f"{journey.path}: journey {journey.name}, {where}: {exc.message}"
            ) from None
    for send in journey.sends():
        for channel in (send.channel, *send.fallback):
            templates.validate(channel, send.template, example_context())


def validate_journeys(config: Config, db: sqlite_utils.Database | None = None) -> list[Journey]:
    """Check every journey and template file without running anything."""
    journeys = load_journeys(config.root / "journeys")
    known = set()
    if db is not None:
        known = {r[0] for r in db.conn.execute("SELECT DISTINCT tag FROM profile_tags")}
    rules = JourneyRules(config, date.today(), known)
    templates = TemplateStore(config.root / "templates")
    templates.validate_all()
    for journey in journeys.values():
        check_journey(journey, rules, templates)
    return list(journeys.values())


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class _Run:
    """Everything one journey's run needs, built once."""

    db: sqlite_utils.Database
    config: Config
    journey: Journey
    now: datetime
    run_id: int
    rules: JourneyRules
    templates: TemplateStore
    result: RunResult
    dry_run: bool
    pools_empty: set[str] = field(default_factory=set)

    @property
    def now_text(self) -> str:
        return self.now.isoformat(timespec="seconds")


def run_journeys(
    db: sqlite_utils.Database,
    config: Config,
    name: str | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[RunResult]:
    """Advance one journey, or all: each in its own transaction, then its outbound files."""
    journeys = load_journeys(config.root / "journeys")
    if name is not None and name not in journeys:
        raise NotFound(f"no journey named {name!r} in {config.root / 'journeys'}")
    zone = ZoneInfo(config.timezone)
    clock = (now or datetime.now(zone)).astimezone(zone)
    if "profile_features" not in db.table_names():
        raise CdpError("no features yet: run `cdp tag` before `cdp journey run`")
    known = {r[0] for r in db.conn.execute("SELECT DISTINCT tag FROM profile_tags")}
    rules = JourneyRules(config, clock.date(), known)
    templates = TemplateStore(config.root / "templates")
    results = []
    for journey in [journeys[name]] if name else journeys.values():
        check_journey(journey, rules, templates)
        results.append(_run_one(db, config, journey, clock, rules, templates, dry_run))
    if not dry_run:
        written = write_outbound(db, config)
        for result in results:
            result.files = [f for f in written if Path(f).name.startswith(f"{result.journey}-")]
    return results


def _run_one(
    db: sqlite_utils.Database,
    config: Config,
    journey: Journey,
    now: datetime,
    rules: JourneyRules,
    templates: TemplateStore,
    dry_run: bool,
) -> RunResult:
    started = time.monotonic()
    result = RunResult(journey.name, now.isoformat(timespec="seconds"), dry_run)
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
        run_id = conn.execute(
            "INSERT INTO journey_runs (journey, now, tag_cursor, started_at) VALUES (?, ?, ?, ?)",
            (journey.name, result.now, cursor, now_iso()),
        ).lastrowid
        run = _Run(db, config, journey, now, run_id, rules, templates, result, dry_run)
        _convert(run)
        _exit(run)
        _enrol(run, cursor)
        _advance(run)
        for pool in sorted(run.pools_empty):
            result.notes.append(f"coupon pool {pool} is empty: those sends were skipped")
        result.seconds = round(time.monotonic() - started, 3)
        conn.execute(
            "UPDATE journey_runs SET finished_at = ?, result = ? WHERE id = ?",
            (now_iso(), json.dumps(result.as_dict(), ensure_ascii=False), run_id),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("ROLLBACK" if dry_run else "COMMIT")
    return result


def _convert(run: _Run) -> None:
    """Enrolments whose customer met the goal within its window: converted, and ended."""
    journey = run.journey
    if not journey.goal_event or not journey.goal_within:
        return
    days = journey.goal_within.total_seconds() / 86400
    if journey.goal_event == "order":
        happened = (
            "SELECT o.ordered_at AS at, k.one_id FROM orders o "
            "JOIN identity_keys k ON k.key = o.identity_key"
        )
        params: list[Any] = []
    else:
        happened = (
            "SELECT e.occurred_at AS at, k.one_id FROM events e "
            "JOIN identity_keys k ON k.key = e.identity_key WHERE e.event = ?"
        )
        params = [journey.goal_event]
    rows = run.db.conn.execute(
        f"""SELECT je.id, min(h.at) FROM journey_enrolments je JOIN ({happened}) h
ON h.one_id = je.one_id AND julianday(h.at) >= julianday(je.entered_at)
AND julianday(h.at) <= julianday(je.entered_at) + ? AND julianday(h.at) <= julianday(?)
WHERE je.journey = ? AND je.converted_at IS NULL AND je.status IN ('active', 'completed')
GROUP BY je.id""",
        [*params, days, run.now_text, journey.name],
    ).fetchall()
    for enrolment_id, at in rows:
        run.db.conn.execute(
            "UPDATE journey_enrolments SET converted_at = ?, "
            "status = CASE status WHEN 'active' THEN 'converted' ELSE status END, "
            "ended_at = coalesce(ended_at, ?) WHERE id = ?",
            (at, run.now_text, enrolment_id),
        )
    run.result.converted = len(rows)


def _exit(run: _Run) -> None:
    if not run.journey.exit:
        return
    rule = run.rules.customer(run.journey.exit)
    run.result.exited = run.db.conn.execute(
        f"UPDATE journey_enrolments SET status = 'exited', ended_at = ? WHERE journey = ? "
        f"AND status = 'active' AND one_id IN (SELECT p.one_id FROM {BASE_FROM} WHERE {rule.sql})",
        [run.now_text, run.journey.name, *rule.params],
    ).rowcount


def _entry_candidates(run: _Run, cursor: int) -> list[str]:
    entry, conn = run.journey.entry, run.db.conn
    if entry.when:
        rule = run.rules.customer(entry.when)
        return [
            r[0]
            for r in conn.execute(f"SELECT p.one_id FROM {BASE_FROM} WHERE {rule.sql}", rule.params)
        ]
    previous = conn.execute(
        "SELECT now, tag_cursor FROM journey_runs WHERE journey = ? AND id < ? "
        "AND finished_at IS NOT NULL "
        "ORDER BY id DESC LIMIT 1",
        (run.journey.name, run.run_id),
    ).fetchone()
    if entry.event:
        since = (
            previous[0] if previous else (run.now - timedelta(days=1)).isoformat(timespec="seconds")
        )
        rows = conn.execute(
            "SELECT DISTINCT k.one_id FROM events e JOIN identity_keys k ON k.key = e.identity_key "
            "WHERE e.event = ? AND k.one_id IS NOT NULL "
            "AND julianday(e.occurred_at) > julianday(?) "
            "AND julianday(e.occurred_at) <= julianday(?) ORDER BY k.one_id",
            (entry.event, since, run.now_text),
        )
        return [r[0] for r in rows]
    after = previous[1] if previous else 0
    value_test = "AND new_value = ?" if entry.tag_value is not None else ""
    params = [entry.tag, after, cursor] + ([entry.tag_value] if entry.tag_value is not None else [])
    rows = conn.execute(
        "SELECT DISTINCT one_id FROM tag_changes WHERE tag = ? AND change IN ('added', 'changed') "
        f"AND id > ? AND id <= ? {value_test} ORDER BY one_id",
        params,
    )
    return [r[0] for r in rows]


def _enrol(run: _Run, cursor: int) -> None:
    journey, conn = run.journey, run.db.conn
    last = {
        one_id: (number, status, entered_at)
        for one_id, number, status, entered_at in conn.execute(
            "SELECT one_id, max(enrolment), status, entered_at FROM journey_enrolments "
            "WHERE journey = ? GROUP BY one_id",
            (journey.name,),
        )
    }
    rows = []
    for one_id in _entry_candidates(run, cursor):
        previous = last.get(one_id)
        if previous is not None:
            _, status, entered_at = previous
            if status == "active" or journey.entry.reentry is None:
                continue
            if datetime.fromisoformat(entered_at) + journey.entry.reentry > run.now:
                continue
        holdout = int(share_of(journey.name, "holdout", one_id) < journey.holdout)
        rows.append(
            (journey.name, one_id, (previous[0] if previous else 0) + 1, holdout,
             journey.first, run.now_text, run.now_text)
        )  # fmt: skip
    conn.executemany(
        "INSERT INTO journey_enrolments (journey, one_id, enrolment, holdout, status, step, "
        "next_at, entered_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
        rows,
    )
    run.result.enrolled = len(rows)
    run.result.holdout = sum(r[3] for r in rows)


def _advance(run: _Run) -> None:
    due = rows_as_dicts(
        run.db,
        "SELECT * FROM journey_enrolments WHERE journey = ? AND status = 'active' "
        "AND julianday(next_at) <= julianday(?) ORDER BY id",
        (run.journey.name, run.now_text),
    )
    for enrolment in due:
        _walk(run, enrolment)


def _walk(run: _Run, enrolment: dict[str, Any]) -> None:
    """Take one enrolment through its steps until it waits or ends; save where it stopped."""
    journey = run.journey
    key: str | None = enrolment["step"]
    waiting, variant = enrolment["waiting"], enrolment["variant"]

    def stop(status: str = "active", next_at: str | None = None, waits: int = 0) -> None:
        ended = run.now_text if status != "active" else None
        run.db.conn.execute(
            "UPDATE journey_enrolments SET status = ?, step = ?, waiting = ?, next_at = ?, "
            "variant = ?, ended_at = ? WHERE id = ?",
            (status, key, waits, next_at, variant, ended, enrolment["id"]),
        )

    for _ in range(len(journey.index) + 1):  # a journey's steps are finite and never loop
        step = journey.index.get(key) if key else None
        if step is None or isinstance(step, End):
            stop("completed")
            run.result.completed += 1
            return
        if isinstance(step, Wait):
            if not waiting:
                stop(next_at=_wait_until(run, step), waits=1)
                return
            waiting, key = 0, journey.following[step.key]
        elif isinstance(step, Send):
            deferred_to = _send(run, enrolment, step)
            if deferred_to:
                stop(next_at=deferred_to)
                run.result.deferred += 1
                return
            key = journey.following[step.key]
        elif isinstance(step, Branch):
            branch = step.then if _branch_holds(run, enrolment, step) else step.otherwise
            key = branch[0].key if branch else journey.following[step.key]
        elif isinstance(step, Split):
            chosen = _variant(journey.name, step, enrolment["one_id"])
            variant, key = chosen[0], chosen[2][0].key
    raise CdpError(f"journey {journey.name}: enrolment {enrolment['id']} did not settle")


def _variant(journey: str, step: Split, one_id: str) -> tuple[str, float, tuple[Any, ...]]:
    """The same customer always lands in the same variant of a split, on every re-entry."""
    point, total = share_of(journey, step.key, one_id), 0.0
    for variant in step.variants:
        total += variant[1]
        if point < total:
            return variant
    return step.variants[-1]


def _branch_holds(run: _Run, enrolment: dict[str, Any], step: Branch) -> bool:
    rule = run.rules.branch(step.when)
    row = run.db.conn.execute(
        "SELECT 1 FROM journey_enrolments je JOIN profiles p ON p.one_id = je.one_id "
        f"JOIN profile_features f ON f.one_id = p.one_id WHERE je.id = ? AND ({rule.sql})",
        [enrolment["id"], *rule.params],
    ).fetchone()
    return row is not None


def _wait_until(run: _Run, step: Wait) -> str:
    if step.duration is not None:
        return (run.now + step.duration).isoformat(timespec="seconds")
    assert step.until is not None
    target = run.now.replace(
        hour=step.until.hour, minute=step.until.minute, second=0, microsecond=0
    )
    if target <= run.now:
        target += timedelta(days=1)
    return target.isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Sending


def _channel_settings(config: Config, channel: str) -> dict[str, Any]:
    return dict((config.settings.get("channels") or {}).get(channel) or {})


def _quiet_until(run: _Run, channel: str) -> str | None:
    """The end of the channel's quiet hours if now is inside them: the message waits."""
    window = _channel_settings(run.config, channel).get("quiet_hours")
    if not window:
        return None
    start_text, end_text = str(window).split("-")
    start = datetime.strptime(start_text.strip(), "%H:%M").time()
    end = datetime.strptime(end_text.strip(), "%H:%M").time()
    local = run.now.timetz().replace(tzinfo=None)
    inside = start <= local or local < end if start > end else start <= local < end
    if not inside:
        return None
    until = run.now.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if until <= run.now:
        until += timedelta(days=1)
    return until.isoformat(timespec="seconds")


def _opted_out(run: _Run, one_id: str) -> set[str]:
    """Channels whose latest consent for this customer is an opt-out ('all' covers all)."""
    latest: dict[str, str] = {}
    for channel, status in run.db.conn.execute(
        "SELECT lower(c.channel), c.status FROM consents c "
        "JOIN identity_keys k ON k.key = c.identity_key "
        "WHERE k.one_id = ? ORDER BY coalesce(c.consented_at, '') , c.id",
        (one_id,),
    ):
        latest[channel] = status
    out = {c for c, s in latest.items() if s == "opt_out"}
    return set(ADDRESS_TYPES) if "all" in out else out


def _address(run: _Run, one_id: str, channel: str) -> str | None:
    type_name = ADDRESS_TYPES[channel]
    sql = "SELECT value FROM identifiers WHERE one_id = ? AND type = ? AND status = 'linked'"
    params: list[Any] = [one_id, type_name]
    if channel == "sms":
        sql += " AND detail IN ('mobile', 'fixed_line_or_mobile')"  # a landline takes no SMS
    appid = _channel_settings(run.config, channel).get("appid")
    if channel == "wechat" and appid:
        sql += " AND value LIKE ?"
        params.append(f"{appid}:%")
    row = run.db.conn.execute(sql + " ORDER BY value LIMIT 1", params).fetchone()
    return row[0] if row else None


def _capped(run: _Run, one_id: str) -> bool:
    cap = run.config.settings.get("frequency_cap") or {}
    day_start = run.now.replace(hour=0, minute=0, second=0, microsecond=0)
    for limit, since in (
        (cap.get("per_day"), day_start),
        (cap.get("per_week"), run.now - timedelta(days=7)),
    ):
        if not limit:
            continue
        sent = run.db.conn.execute(
            "SELECT count(*) FROM messages WHERE one_id = ? AND status != 'skipped' "
            "AND transactional = 0 "
            "AND julianday(created_at) >= julianday(?)",
            (one_id, since.isoformat(timespec="seconds")),
        ).fetchone()[0]
        if sent >= int(limit):
            return True
    return False


def _draw_coupon(run: _Run, campaign: str, one_id: str, message_id: str) -> dict[str, Any] | None:
    row = run.db.conn.execute(
        "SELECT code, face_value, expires_at FROM coupons "
        "WHERE campaign = ? AND status = 'available' "
        "AND code NOT IN (SELECT code FROM coupon_issues) ORDER BY code LIMIT 1",
        (campaign,),
    ).fetchone()
    if row is None:
        return None
    run.db.conn.execute(
        "INSERT INTO coupon_issues (code, campaign, one_id, message_id, issued_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (row[0], campaign, one_id, message_id, run.now_text),
    )
    return {"code": row[0], "face_value": row[1], "expires_at": row[2]}


def _enrolment_coupon(run: _Run, enrolment_id: int) -> dict[str, Any] | None:
    """The coupon an earlier step of this enrolment drew, for a reminder that mentions it."""
    row = run.db.conn.execute(
        "SELECT c.code, c.face_value, c.expires_at FROM coupon_issues i "
        "JOIN messages m ON m.id = i.message_id JOIN coupons c ON c.code = i.code "
        "WHERE m.enrolment_id = ? ORDER BY i.issued_at DESC LIMIT 1",
        (enrolment_id,),
    ).fetchone()
    return {"code": row[0], "face_value": row[1], "expires_at": row[2]} if row else None


def _context(run: _Run, one_id: str, step: Send, coupon: dict[str, Any] | None) -> dict[str, Any]:
    db = run.db
    [customer] = rows_as_dicts(
        db, "SELECT one_id, name, gender, birthday, city, known, first_seen, last_seen, records "
        "FROM profiles WHERE one_id = ?", (one_id,),
    )  # fmt: skip
    features = rows_as_dicts(db, "SELECT * FROM profile_features WHERE one_id = ?", (one_id,))
    tags = dict(db.conn.execute("SELECT tag, value FROM profile_tags WHERE one_id = ?", (one_id,)))
    openid = _address(run, one_id, "wechat")
    brand = dict(run.config.settings.get("brand") or {"name": "cdp", "url": ""})
    return {
        "customer": customer,
        "features": {k: v for k, v in (features[0] if features else {}).items() if k != "one_id"},
        "tags": tags,
        "coupon": coupon,
        "journey": {"name": run.journey.name},
        "step": {"name": step.key},
        "wechat": {"openid": openid.split(":", 1)[-1] if openid else None,
                   "appid": openid.split(":", 1)[0] if openid and ":" in openid else None},
        "device": _address(run, one_id, "push"),
        "brand": brand,
        "link": brand.get("url", ""),
    }  # fmt: skip


def _send(run: _Run, enrolment: dict[str, Any], step: Send) -> str | None:
    """Queue the step's message, or record why it was skipped; or defer it past quiet hours."""
    one_id, journey = enrolment["one_id"], run.journey
    message_id = f"{journey.name}:{enrolment['id']}:{step.key}"
    if run.db.conn.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone():
        return None  # this step of this enrolment has its message already: never twice
    if enrolment["holdout"]:
        return _skip(run, enrolment, step, message_id, None, "holdout")
    opted_out = _opted_out(run, one_id)
    tried = []
    for channel in (step.channel, *step.fallback):
        if channel in opted_out:
            tried.append(f"{channel}: opted out")
            continue
        address = _address(run, one_id, channel)
        if address is None:
            tried.append(f"{channel}: no {ADDRESS_TYPES[channel].replace('_', ' ')}")
            continue
        break
    else:
        reason = "opted out" if all(t.endswith("opted out") for t in tried) else "unreachable"
        return _skip(run, enrolment, step, message_id, None, f"{reason} ({'; '.join(tried)})")
    if not journey.transactional and _capped(run, one_id):
        return _skip(run, enrolment, step, message_id, channel, "frequency cap")
    quiet = _quiet_until(run, channel)
    if quiet:
        return quiet
    coupon = None if step.coupon else _enrolment_coupon(run, enrolment["id"])
    if step.coupon:
        coupon = _draw_coupon(run, step.coupon, one_id, message_id)
        if coupon is None:
            run.pools_empty.add(step.coupon)
            return _skip(
                run, enrolment, step, message_id, channel, f"coupon pool {step.coupon} is empty"
            )
    try:
        outbound = run.templates.render(channel, step.template, _context(run, one_id, step, coupon))
    except TemplateError as exc:
        if coupon:
            run.db.conn.execute("DELETE FROM coupon_issues WHERE code = ?", (coupon["code"],))
        return _skip(run, enrolment, step, message_id, channel, f"template: {exc.message}")
    cost = float(_channel_settings(run.config, channel).get("cost", 0) or 0)
    run.db.conn.execute(
        "INSERT INTO messages (id, run_id, journey, enrolment_id, one_id, step, channel, status, "
        "address, payload, coupon_code, cost, transactional, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
        (message_id, run.run_id, journey.name, enrolment["id"], one_id, step.key, channel,
         address.split(":", 1)[-1], json.dumps(outbound.body, ensure_ascii=False),
         coupon["code"] if coupon else None, cost, int(journey.transactional), run.now_text),
    )  # fmt: skip
    run.result.sent[channel] = run.result.sent.get(channel, 0) + 1
    if run.dry_run:
        run.result.messages.append(
            {"one_id": one_id, "step": step.key, "channel": channel, **outbound.body}
        )
    return None


def _skip(
    run: _Run,
    enrolment: dict[str, Any],
    step: Send,
    message_id: str,
    channel: str | None,
    reason: str,
) -> None:
    run.db.conn.execute(
        "INSERT INTO messages (id, run_id, journey, enrolment_id, one_id, step, channel, status, "
        "reason, transactional, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'skipped', ?, ?, ?)",
        (message_id, run.run_id, run.journey.name, enrolment["id"], enrolment["one_id"], step.key,
         channel, reason, int(run.journey.transactional), run.now_text),
    )  # fmt: skip
    label = reason.split(" (")[0]
    run.result.skipped[label] = run.result.skipped.get(label, 0) + 1
    return None


# ---------------------------------------------------------------------------------------------
# Outbound files


def write_outbound(db: sqlite_utils.Database, config: Config) -> list[str]:
    """Write every queued message to outbound/<channel>/<journey>-<run time>.<csv|jsonl>.

    A file is written whole under a temporary name and renamed; its messages are marked
    written afterwards. A run killed in between writes the same file again next time, with the
    same rows, so no message ever appears twice and no file ever holds a partial row.
    """
    groups = db.conn.execute(
        "SELECT DISTINCT m.run_id, m.journey, m.channel, r.now FROM messages m "
        "JOIN journey_runs r ON r.id = m.run_id WHERE m.status = 'queued' ORDER BY m.run_id"
    ).fetchall()
    written = []
    for run_id, journey, channel, now in groups:
        stamp = datetime.fromisoformat(now).strftime("%Y%m%dT%H%M%S")
        folder = config.root / "outbound" / channel
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{journey}-{stamp}-{run_id}.{FILE_FORMATS[channel]}"
        rows = rows_as_dicts(
            db,
            "SELECT id, journey, step, one_id, address, payload, coupon_code FROM messages "
            "WHERE run_id = ? AND journey = ? AND channel = ? AND status != 'skipped' ORDER BY id",
            (run_id, journey, channel),
        )
        _write_file(path, channel, rows)
        with transaction(db) as conn:
            conn.execute(
                "UPDATE messages SET status = 'written', file = ?, written_at = ? "
                "WHERE run_id = ? AND journey = ? AND channel = ? AND status = 'queued'",
                (str(path), now_iso(), run_id, journey, channel),
            )
        written.append(str(path))
    return written


def _write_file(path: Path, channel: str, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if channel == "sms":
            writer = csv.writer(f)
            writer.writerow(
                [
                    "message_id",
                    "to",
                    "text",
                    "segments",
                    "encoding",
                    "journey",
                    "step",
                    "one_id",
                    "coupon",
                ]
            )
            for row in rows:
                body = json.loads(row["payload"])
                writer.writerow([row["id"], row["address"], body.get("text"), body.get("segments"),
                                 body.get("encoding"), row["journey"], row["step"], row["one_id"],
                                 row["coupon_code"]])  # fmt: skip
        else:
            for row in rows:
                record = {
                    "message_id": row["id"], "to": row["address"], "journey": row["journey"],
                    "step": row["step"], "one_id": row["one_id"], "coupon": row["coupon_code"],
                    **json.loads(row["payload"]),
                }  # fmt: skip
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Status


def journey_status(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    """Counts per step and variant, sent and skipped by reason, conversions so far."""
    enrolments = dict(
        db.conn.execute(
            "SELECT status, count(*) FROM journey_enrolments WHERE journey = ? GROUP BY 1", (name,)
        )
    )
    if not enrolments:
        raise NotFound(f"journey {name!r} has no enrolments yet: run `cdp journey run {name}`")
    steps = rows_as_dicts(
        db,
        "SELECT m.step, coalesce(e.variant, '') AS variant, m.channel, m.status, "
        "coalesce(m.reason, '') AS reason, count(*) AS messages FROM messages m "
        "JOIN journey_enrolments e ON e.id = m.enrolment_id WHERE m.journey = ? "
        "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
        (name,),
    )
    groups = rows_as_dicts(
        db,
        "SELECT CASE holdout WHEN 1 THEN 'holdout' ELSE 'treatment' END AS grp, "
        "coalesce(variant, '') AS variant, count(*) AS entered, count(converted_at) AS converted "
        "FROM journey_enrolments WHERE journey = ? GROUP BY 1, 2 ORDER BY 1, 2",
        (name,),
    )
    where = dict(
        db.conn.execute(
            "SELECT coalesce(step, ''), count(*) FROM journey_enrolments WHERE journey = ? "
            "AND status = 'active' GROUP BY 1",
            (name,),
        )
    )
    return {
        "journey": name,
        "enrolments": enrolments,
        "active_at": where,
        "messages": steps,
        "groups": groups,
    }
