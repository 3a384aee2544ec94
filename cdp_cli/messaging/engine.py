"""`cdp journey run`: enrol, advance and end customers in journeys; render and send messages.

Exactly once: a run advances every enrolment and writes every message (or the reason it was
skipped) to the outbox in one transaction, and a message's id is its journey, enrolment and
step, so no step can produce two. Outbound files are written after the commit, from the lines
kept as the messages were queued (outbox.Spool), to a temporary file renamed into place: a
killed run leaves either no file or a whole one, and the next run writes what is still pending
(from the outbox) under the same name. A journey with many enrolments due renders in a second
process (rendering.py) with the same results.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from contextlib import nullcontext
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from cronsim import CronSim

from cdp_cli.config import Config
from cdp_cli.errors import CdpError, FileError, RuleError, UsageError
from cdp_cli.files import ensure_folder
from cdp_cli.messaging.channels import placeholder_problem
from cdp_cli.messaging.conditions import JourneyRules
from cdp_cli.messaging.conversions import convert, forget_kept
from cdp_cli.messaging.coupons import (
    campaigns,
    pool_exists,
    unknown_pool_problem,
    usable_codes,
)
from cdp_cli.messaging.fixtures import example_context
from cdp_cli.messaging.journeys import (
    Branch,
    End,
    Journey,
    Send,
    Split,
    Wait,
    load_journeys,
    named_journey,
)
from cdp_cli.messaging.outbox import OUTBOUND_FILES, Spool, write_outbound
from cdp_cli.messaging.rendering import RENDER_WORKER_FROM, RenderFailed, Workers
from cdp_cli.messaging.run import Enrolment, JourneyRun, RunResult
from cdp_cli.messaging.send import send_batch, settle, settle_for
from cdp_cli.messaging.templates import TemplateStore
from cdp_cli.predict.fields import predicted_categories
from cdp_cli.rules.book import load_rulebook
from cdp_cli.rules.vocabulary import BASE_FROM, unknown_tag_value, unknown_tag_values
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import insert_row, now_iso, one_checkpoint, rollback
from cdp_cli.tags import stored_tags

_FIRST_8_BYTES = struct.Struct(">Q").unpack_from  # a digest's first 8 bytes, big-endian

# How far past this machine's clock a run may be told it is (--now). A run in the evening may
# write tomorrow morning's messages; a clock further ahead is most likely a typo (2062 for
# 2026), and its run would send at once what is due weeks or years later.
MAX_CLOCK_AHEAD = timedelta(days=1)


def share_of(*parts: str) -> float:
    """A stable number in [0, 1) from its parts: holdout and variant assignment (two per
    customer entering: read the digest's first 8 bytes without slicing it)."""
    return _FIRST_8_BYTES(hashlib.sha256(":".join(parts).encode()).digest())[0] / 2**64


# ---------------------------------------------------------------------------------------------
# Rules in journeys


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


def validate_journeys(
    config: Config,
    db: sqlite_utils.Database | None = None,
    known_tags: frozenset[str] | None = None,
) -> list[Journey]:
    """Check every journey and template file without running anything. `known_tags`: the
    store's tags (tags.stored_tags), when the caller has read them already."""
    journeys = load_journeys(config.journeys_folder)
    known: frozenset[str] = frozenset()
    if db is not None:
        known = stored_tags(db) if known_tags is None else known_tags
    predicted = predicted_categories(db.conn) if db is not None else frozenset()
    rules = JourneyRules(config, date.today(), set(known), predicted)
    templates = TemplateStore(config.templates_folder)
    templates.validate_all()
    for journey in journeys.values():
        check_journey(journey, rules, templates)
        check_what_a_run_would_hold(journey, templates, db)
    return list(journeys.values())


def check_what_a_run_would_hold(
    journey: Journey, templates: TemplateStore, db: sqlite_utils.Database | None
) -> None:
    """What a run would make customers wait for (send._hold), refused before any run: a
    WeChat template_id left a placeholder, and (with a store) a coupon pool with no code."""
    for send in journey.sends():
        where = f"{journey.name}, step {send.key}"
        for channel in (send.channel, *send.fallback):
            body = templates.validate(channel, send.template, example_context()).body
            problem = placeholder_problem(channel, send.template, body)
            if problem:
                raise FileError(journey.path, f"journey {where}: {problem}")
        if send.coupon and db is not None and not pool_exists(db, send.coupon):
            problem = unknown_pool_problem(send.coupon, campaigns(db))
            raise FileError(journey.path, f"journey {where}: {problem}")


def journey_tag_value_warnings(config: Config, journeys: list[Journey]) -> dict[str, list[str]]:
    """Per journey, a warning for each tag value its rules (entry, exit, branches) or its
    tag-change entry name that the tag in tag_rules/ never takes: `'at_rsk'` for `at_risk`
    would enrol no one, without an error."""
    book = load_rulebook(config.tag_rules_folder)
    warnings: dict[str, list[str]] = {}
    for journey in journeys:
        rules = [("entry", journey.entry.when), ("exit", journey.exit)]
        rules += [(s.key, s.when) for s in journey.index.values() if isinstance(s, Branch)]
        problems = [
            f"journey {journey.name}, {where}: {problem}"
            for where, rule in rules
            if rule
            for problem in unknown_tag_values(book, rule)
        ]
        if journey.entry.tag and journey.entry.tag_value is not None:
            problem = unknown_tag_value(book, journey.entry.tag, journey.entry.tag_value)
            if problem:
                problems.append(f"journey {journey.name}, entry: {problem}")
        if problems:
            warnings[journey.name] = problems
    return warnings


def coupon_shortfalls(
    db: sqlite_utils.Database,
    config: Config,
    journeys: list[Journey],
    now: datetime,
    known_tags: frozenset[str] | None = None,
) -> dict[str, list[str]]:
    """Per journey, a warning for each coupon step whose pool holds fewer codes it may draw
    (unissued, valid for its min_days_left) than the customers the journey would enrol at
    `now`: an upper bound of who reaches the step (holdout, opt-outs and waits not counted).
    Nothing when the store has no features yet (nothing can enrol)."""
    if "profile_features" not in db.table_names():
        return {}
    known = stored_tags(db) if known_tags is None else known_tags
    rules = JourneyRules(config, now.date(), set(known), predicted_categories(db.conn))
    cursor = db.conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
    warnings: dict[str, list[str]] = {}
    for journey in journeys:
        steps = [s for s in journey.sends() if s.coupon]
        if not steps:
            continue
        audience = len(_would_enter(db, config, journey, now, rules, cursor))
        for step in steps:
            assert step.coupon is not None
            codes = usable_codes(db, step.coupon, now, step.coupon_min_days_left)
            if codes < audience:
                warnings.setdefault(journey.name, []).append(
                    f"journey {journey.name}, step {step.key}: coupon pool {step.coupon} has "
                    f"{codes} codes valid for {step.coupon_min_days_left} more days, fewer than "
                    f"the {audience} customers the journey would enrol now"
                )
    return warnings


def _would_enter(
    db: sqlite_utils.Database,
    config: Config,
    journey: Journey,
    now: datetime,
    rules: JourneyRules,
    cursor: int,
) -> set[str]:
    """Who a run at `now` would enrol (re-entry delays aside), read without writing."""
    result = RunResult(journey.name, now.isoformat(timespec="seconds"), True)
    run = JourneyRun(db, config, journey, now, 2**62, rules, TemplateStore(config.templates_folder),
                     result, True)  # fmt: skip
    candidates = set(_entry_candidates(run, cursor))
    enrolled = db.conn.execute(
        "SELECT one_id FROM journey_enrolments WHERE journey = ? "
        + ("" if journey.entry.reentry is None else "AND status = 'active'"),
        (journey.name,),
    )
    return candidates - {r[0] for r in enrolled}


# ---------------------------------------------------------------------------------------------
# Running

BATCH = 5000  # enrolments walked together: bounds memory, amortizes the per-batch queries


def run_journeys(
    db: sqlite_utils.Database,
    config: Config,
    name: str | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    render_worker_from: int = RENDER_WORKER_FROM,
) -> list[RunResult]:
    """Advance one journey, or all: each in its own transaction, then its outbound files.

    A journey with `render_worker_from` enrolments due or more renders its messages in a
    second process (rendering.py); never in a dry run."""
    journeys = load_journeys(config.journeys_folder)
    if name is not None:
        named_journey(journeys, name, config.journeys_folder)
    settings = config.sending
    clock = (now or datetime.now(settings.zone)).astimezone(settings.zone)
    check_clock(clock, dry_run)
    if "profile_features" not in db.table_names():
        raise CdpError("no features yet: run `cdp tag` before `cdp journey run`")
    rules = JourneyRules(config, clock.date(), set(stored_tags(db)), predicted_categories(db.conn))
    templates = TemplateStore(config.templates_folder)
    chosen = [journeys[name]] if name else list(journeys.values())
    for journey in chosen:  # every journey is checked before any of them changes the store
        check_journey(journey, rules, templates)
    if not dry_run:  # before any journey moves: where their files go must take them
        ensure_folder(config.outbound_folder, OUTBOUND_FILES)
    results = []
    forget_kept(db.conn)
    spool = None if dry_run else Spool(config.outbound_folder)
    workers = Workers(templates, None if dry_run else render_worker_from)
    if dry_run:  # one transaction for all, rolled back: each journey sees what those before
        db.conn.execute("BEGIN IMMEDIATE")  # it would have sent (the frequency cap, coupons)
    try:
        with nullcontext() if dry_run else one_checkpoint(db.conn):
            for journey in chosen:
                result = RunResult(journey.name, clock.isoformat(timespec="seconds"), dry_run)
                run = JourneyRun(db, config, journey, clock, 0, rules, templates, result,
                                 dry_run, spool)  # fmt: skip
                results.append(_run_one(run, workers))
            if spool is not None:
                written = write_outbound(db, config, spool)
                for result in results:
                    result.files = [
                        f for f in written if Path(f).name.startswith(f"{result.journey}-")
                    ]
    finally:
        workers.close()
        if dry_run:
            rollback(db.conn)
        if spool is not None:
            spool.close()
    return results


def check_clock(clock: datetime, dry_run: bool) -> None:
    """Refuse a run (not a dry run) told it is more than MAX_CLOCK_AHEAD past the present."""
    present = datetime.now(clock.tzinfo)
    if dry_run or clock - present <= MAX_CLOCK_AHEAD:
        return
    raise UsageError(
        f"--now {clock:%Y-%m-%d %H:%M} is more than a day ahead of this machine's clock "
        f"({present:%Y-%m-%d %H:%M}): the run would send at once what is due by then; "
        "preview it with --dry-run"
    )


def held_problem(results: list[RunResult]) -> str | None:
    """One line naming what held customers back by the project's fault in these runs (they
    wait at their step; the next run after the fix sends), or None when nothing did."""
    problems = [
        f"journey {r.journey}: {waiting} customers wait at their step: {problem}"
        for r in results
        for problem, waiting in sorted(r.held.items())
    ]
    return "; ".join(problems) + "; fix it and run again" if problems else None


def _run_one(run: JourneyRun, workers: Workers) -> RunResult:
    """One journey's run in its own transaction; a dry run's is the caller's, rolled back
    after every journey has run in it, so that a dry run predicts exactly what a run sends.

    With a render worker, a message it could not render cleanly sends the journey's work back
    to its savepoint, to be done again in one process: a failure then has its usual outcome."""
    started = time.monotonic()
    conn = run.db.conn
    if not run.dry_run:
        conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
        run.run_id = insert_row(
            conn,
            "INSERT INTO journey_runs (journey, now, tag_cursor, started_at) VALUES (?, ?, ?, ?)",
            (run.journey.name, run.result.now, cursor, now_iso()),
        )
        conn.execute("SAVEPOINT journey_work")
        try:
            _work(run, cursor, workers)
        except RenderFailed:
            conn.execute("ROLLBACK TO journey_work")
            run = _in_one_process(run)
            _work(run, cursor, None)
        conn.execute("RELEASE journey_work")
        result = run.result
        for _, reason in sorted(run.coupons.empty.items()):
            result.notes.append(f"{reason}: those sends were skipped")
        for problem, waiting in sorted(result.held.items()):
            result.notes.append(f"{waiting} customers wait at their step: {problem}")
        result.seconds = round(time.monotonic() - started, 3)
        conn.execute(
            "UPDATE journey_runs SET finished_at = ?, result = ? WHERE id = ?",
            (now_iso(), json.dumps(result.as_dict(), ensure_ascii=False), run.run_id),
        )
    except BaseException:
        if not run.dry_run:
            rollback(conn)
        raise
    if not run.dry_run:
        conn.execute("COMMIT")
    return result


def _work(run: JourneyRun, cursor: int, workers: Workers | None) -> None:
    convert(run)
    _exit(run)
    _advance(run, workers, _enrol(run, cursor))


def _in_one_process(run: JourneyRun) -> JourneyRun:
    """The run as it starts, to be done again without a worker (its spooled lines dropped)."""
    if run.spool is not None:
        run.spool.discard(run.run_id)
    result = RunResult(run.journey.name, run.result.now, run.dry_run)
    return JourneyRun(run.db, run.config, run.journey, run.now, run.run_id, run.rules,
                      run.templates, result, run.dry_run, run.spool)  # fmt: skip


def _exit(run: JourneyRun) -> None:
    if not run.journey.exit:
        return
    rule = run.rules.customer(run.journey.exit)
    run.result.exited = run.db.conn.execute(
        f"UPDATE journey_enrolments SET status = 'exited', ended_at = ? WHERE journey = ? "
        f"AND status = 'active' AND one_id IN (SELECT p.one_id FROM {BASE_FROM} WHERE {rule.sql})",
        [run.now_text, run.journey.name, *rule.params],
    ).rowcount


def _entry_candidates(run: JourneyRun, cursor: int) -> list[str]:
    entry, conn = run.journey.entry, run.db.conn
    if entry.schedule is not None:
        return _broadcast_audience(run)
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


def _broadcast_audience(run: JourneyRun) -> list[str]:
    """At a due occurrence of the schedule, everyone the `when` rule picks (or everyone)."""
    occurrence = _due_occurrence(run)
    if occurrence is None:
        return []
    entry, conn = run.journey.entry, run.db.conn
    if entry.when:
        rule = run.rules.customer(entry.when)
        sql, params = f"SELECT p.one_id FROM {BASE_FROM} WHERE {rule.sql}", rule.params
    else:
        sql, params = "SELECT one_id FROM profiles ORDER BY one_id", []
    audience = [r[0] for r in conn.execute(sql, params)]
    conn.execute(
        "INSERT INTO journey_broadcasts (journey, occurrence, run_id, enrolled) "
        "VALUES (?, ?, ?, ?)",
        (run.journey.name, occurrence.isoformat(timespec="seconds"), run.run_id, len(audience)),
    )
    run.result.notes.append(f"broadcast of {occurrence:%Y-%m-%d %H:%M}")
    return audience


def _due_occurrence(run: JourneyRun) -> datetime | None:
    """The latest time of the schedule that is due and not sent yet, if not too late.

    Occurrences missed while cron was down are not sent in a burst: only the latest is, and
    only if it is at most `entry.late` old.
    """
    entry, zone = run.journey.entry, run.settings.zone
    last = run.db.conn.execute(
        "SELECT max(occurrence) FROM journey_broadcasts WHERE journey = ?", (run.journey.name,)
    ).fetchone()[0]
    if isinstance(entry.schedule, datetime):
        at = entry.schedule
        at = (at.replace(tzinfo=zone) if at.tzinfo is None else at).astimezone(zone)
        if last is not None or at > run.now:
            return None
        if run.now - at > entry.late:
            run.result.notes.append(
                f"broadcast of {at:%Y-%m-%d %H:%M} is more than {entry.late} late: not sent"
            )
            return None
        return at
    assert entry.schedule is not None
    start = run.now - entry.late
    if last is not None:
        start = max(start, datetime.fromisoformat(last))
    due = None
    for at in CronSim(entry.schedule, start):
        if at > run.now:
            break
        due = at
    return due


def _enrol(run: JourneyRun, cursor: int) -> list[tuple[int, str, int]]:
    """Who enters now: (id, one_id, enrolment number), not stored yet. Each is written once,
    where the walk leaves it (no insert at the first step, then an update), with the id SQLite
    would give it, one after the largest, in the same order. Their holdout and control draws
    are made a batch at a time (_entering), as the walk reaches them."""
    journey, conn = run.journey, run.db.conn
    last = {
        one_id: (number, status, entered_at)
        for one_id, number, status, entered_at in conn.execute(
            "SELECT one_id, max(enrolment), status, entered_at FROM journey_enrolments "
            "WHERE journey = ? GROUP BY one_id",
            (journey.name,),
        )
    }
    next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM journey_enrolments").fetchone()[0]
    entering: list[tuple[int, str, int]] = []
    for one_id in _entry_candidates(run, cursor):
        previous = last.get(one_id)
        if previous is not None:
            _, status, entered_at = previous
            if status == "active" or journey.entry.reentry is None:
                continue
            if datetime.fromisoformat(entered_at) + journey.entry.reentry > run.now:
                continue
        number = (previous[0] if previous else 0) + 1
        entering.append((next_id + len(entering), one_id, number))
    run.result.enrolled = len(entering)
    return entering


def _entering(run: JourneyRun, people: list[tuple[int, str, int]]) -> list[Enrolment]:
    """Enrolments entering now, with their holdout and control-group draws."""
    journey, settings = run.journey, run.settings
    enrolments = []
    for id_, one_id, number in people:
        holdout = int(share_of(journey.name, "holdout", one_id) < journey.holdout)
        control = int(  # no hash where there is no control group (share 0), the usual case
            settings.control_share > 0
            and share_of("control_group", settings.control_salt, one_id) < settings.control_share
        )
        enrolments.append(Enrolment(id_, one_id, journey.first, 0, None, holdout, control, number))
        run.result.holdout += holdout
        run.result.control += 0 if journey.transactional else control
    return enrolments


def _advance(
    run: JourneyRun, workers: Workers | None, entering: list[tuple[int, str, int]]
) -> None:
    """Walk every due enrolment, then those entering now, a batch at a time, until each waits
    or ends; with enough due (Workers.threshold), a second process renders while this one
    walks the next batch."""
    due = [
        r[0]
        for r in run.db.conn.execute(
            "SELECT id FROM journey_enrolments WHERE journey = ? AND status = 'active' "
            "AND julianday(next_at) <= julianday(?) ORDER BY id",
            (run.journey.name, run.now_text),
        )
    ]
    total = len(due) + len(entering)
    run.worker = workers.for_journey(run.journey.name, total) if workers else None
    try:
        for start in range(0, total, BATCH):
            end = start + BATCH
            people = entering[max(start - len(due), 0) : max(end - len(due), 0)]
            _walk(run, _stored_enrolments(run, due[start:end]) + _entering(run, people))
        settle(run)
    except RenderFailed:
        raise  # the worker is idle again: settle() collected what it still had
    except BaseException:
        if workers is not None:
            workers.stop()
        raise
    finally:
        run.in_flight.clear()
        run.worker = None


def _stored_enrolments(run: JourneyRun, ids: list[int]) -> list[Enrolment]:
    if not ids:
        return []
    return [
        Enrolment(*row)
        for row in run.db.conn.execute(
            "SELECT id, one_id, step, waiting, variant, holdout, control FROM "
            "journey_enrolments WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(ids),),
        )
    ]


def _walk(run: JourneyRun, batch: list[Enrolment]) -> None:
    """Take a batch through its steps, step by step for all at once; save where each stopped."""
    journey = run.journey
    stops: list[tuple[Any, ...]] = []
    entered: list[tuple[Any, ...]] = []

    def stop(
        e: Enrolment, status: str = "active", next_at: str | None = None, why: str | None = None
    ) -> None:
        ended = run.now_text if status != "active" else None
        if e.entering is None:
            stops.append((status, e.step, e.waiting, next_at, why, e.variant, ended, e.id))
        else:
            entered.append((*_entering_row(run, e), status, e.step, e.waiting, next_at, why,
                            e.variant, ended))  # fmt: skip

    at: dict[str | None, list[Enrolment]] = {}
    for e in batch:
        at.setdefault(e.step, []).append(e)
    for _ in range(len(journey.index) + 1):  # a journey's steps are finite and never loop
        if not at:
            break
        moved: dict[str | None, list[Enrolment]] = {}

        def move(e: Enrolment, key: str | None) -> None:
            e.step = key
            moved.setdefault(key, []).append(e)  # noqa: B023 (used within this round)

        for key, group in at.items():
            step = journey.index.get(key) if key else None
            following = journey.following.get(key) if key else None
            if step is None or isinstance(step, End):
                for e in group:
                    stop(e, "completed")
                run.result.completed += len(group)
            elif isinstance(step, Wait):
                for e in group:
                    if e.waiting:
                        e.waiting = 0
                        move(e, following)
                    else:
                        e.waiting = 1
                        stop(e, next_at=_wait_until(run, step))
            elif isinstance(step, Send):
                deferred = send_batch(run, step, group)
                for e in group:
                    if e.id in deferred:
                        stop(e, next_at=deferred[e.id].until, why=deferred[e.id].reason)
                    else:
                        move(e, following)
            elif isinstance(step, Branch):
                holding = _branch_holding(run, step, group)
                for e in group:
                    branch = step.then if e.id in holding else step.otherwise
                    move(e, branch[0].key if branch else following)
            elif isinstance(step, Split):
                for e in group:
                    name, _, steps = _variant(journey.name, step, e.one_id)
                    e.variant = name
                    move(e, steps[0].key)
        at = moved
    if at:
        raise CdpError(f"journey {journey.name}: enrolments did not settle")
    run.db.conn.executemany(
        "UPDATE journey_enrolments SET status = ?, step = ?, waiting = ?, next_at = ?, "
        "wait_reason = ?, variant = ?, ended_at = ? WHERE id = ?",
        stops,
    )
    _insert_enrolments(run, entered)


INSERT_ENROLMENT = (
    "INSERT INTO journey_enrolments (id, journey, one_id, enrolment, holdout, control, "
    "entered_at, status, step, waiting, next_at, wait_reason, variant, ended_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _entering_row(run: JourneyRun, e: Enrolment) -> tuple[Any, ...]:
    """What an entering enrolment's row holds besides its place (INSERT_ENROLMENT's first 7)."""
    return (e.id, run.journey.name, e.one_id, e.entering, e.holdout, e.control, run.now_text)


def _insert_enrolments(run: JourneyRun, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        run.db.conn.executemany(INSERT_ENROLMENT, rows)


def _store_entering(run: JourneyRun, group: list[Enrolment]) -> None:
    """Write the group's entering enrolments where they are now (due now, as the walk goes
    on), for a query that reads them; the walk's end updates them like any stored one."""
    rows = [
        (*_entering_row(run, e), "active", e.step, e.waiting, run.now_text, None, e.variant, None)
        for e in group
        if e.entering is not None
    ]
    _insert_enrolments(run, rows)
    for e in group:
        e.entering = None


def _variant(journey: str, step: Split, one_id: str) -> tuple[str, float, tuple[Any, ...]]:
    """The same customer always lands in the same variant of a split, on every re-entry."""
    point, total = share_of(journey, step.key, one_id), 0.0
    for variant in step.variants:
        total += variant[1]
        if point < total:
            return variant
    return step.variants[-1]


def _branch_holding(run: JourneyRun, step: Branch, group: list[Enrolment]) -> set[int]:
    """The enrolments of the group for which the branch's condition holds."""
    settle_for(run, group)  # `received` reads the messages of a send just before
    _store_entering(run, group)  # `converted`, `received`: the enrolment itself
    rule = run.branch_rule(step)
    rows = run.db.conn.execute(
        "SELECT je.id FROM journey_enrolments je JOIN profiles p ON p.one_id = je.one_id "
        "JOIN profile_features f ON f.one_id = p.one_id "
        f"WHERE je.id IN (SELECT value FROM json_each(?)) AND ({rule.sql})",
        [json.dumps([e.id for e in group]), *rule.params],
    )
    return {r[0] for r in rows}


def _wait_until(run: JourneyRun, step: Wait) -> str:
    if step.duration is not None:
        return (run.now + step.duration).isoformat(timespec="seconds")
    assert step.until is not None
    target = run.now.replace(
        hour=step.until.hour, minute=step.until.minute, second=0, microsecond=0
    )
    if target <= run.now:
        target += timedelta(days=1)
    return target.isoformat(timespec="seconds")
