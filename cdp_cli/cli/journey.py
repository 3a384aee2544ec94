"""cdp journey run, status and validate: customer journeys and the messages they send."""

from __future__ import annotations

from typing import Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import Project, json_option, now_option, pass_project, writes_store
from cdp_cli.errors import CdpError


@click.group(name="journey")
def journey_group() -> None:
    """Advance customer journeys (journeys/*.yaml) and write outbound message files.

    \b
    Examples:
      cdp journey validate
      cdp journey run --now "2026-11-15 10:30"
      cdp journey status winback
    """


@journey_group.command(name="run")
@click.argument("name", required=False)
@now_option(
    "The clock, in the project's timezone (tests, backfills); at most a day ahead of this "
    "machine's, except with --dry-run.  [default: now]"
)
@click.option("--dry-run", is_flag=True, help="Show who would get what; change nothing.")
@click.option(
    "--render-worker-from",
    type=click.IntRange(min=1),
    default=None,
    hidden=True,  # for the tests and benchmarks: rendering.RENDER_WORKER_FROM is the default
    help="Render in a second process from this many due enrolments of a journey.",
)
@json_option
@writes_store()
@pass_project
def journey_run_command(
    project: Project,
    name: str | None,
    now: Any,
    dry_run: bool,
    render_worker_from: int | None,
    json_: bool,
) -> None:
    """Enrol who qualifies, advance everyone whose step is due, write outbound files.

    What cron calls, say every 15 minutes. Each journey advances in one transaction with its
    outbox; files go to outbound/<channel>/<journey>-<run time>-<run>.csv|jsonl, written whole.

    \b
    Examples:
      cdp journey run
      cdp journey run winback --now "2026-11-15 10:30" --dry-run
    """
    from zoneinfo import ZoneInfo

    from cdp_cli.feature_state import stale_note
    from cdp_cli.messaging.engine import held_problem, run_journeys
    from cdp_cli.messaging.rendering import RENDER_WORKER_FROM

    config = project.config
    clock = now.replace(tzinfo=ZoneInfo(config.timezone)) if now else None
    worker_from = RENDER_WORKER_FROM if render_worker_from is None else render_worker_from
    with project.store(create=False) as db:
        stale = stale_note(db)
        results = run_journeys(db, config, name, clock, dry_run, worker_from)
    out.emit(results, json_, lambda _: _print_run(results, dry_run))
    if stale:
        out.note(stale)
    problem = held_problem(results)
    if problem:  # the project's fault: exit 1, so that cron's mail or the monitor says so
        raise CdpError(problem)


def _print_run(results: list[Any], dry_run: bool) -> None:
    print_journeys(results, dry_run)
    for r in results:
        for path in r.files:
            out.note(f"wrote {path}")


def print_journeys(results: list[Any], dry_run: bool) -> None:
    rows = [
        (r.journey, r.enrolled, r.holdout, ", ".join(f"{c} {n}" for c, n in r.sent.items()),
         ", ".join(f"{k} {n}" for k, n in r.skipped.items()),
         ", ".join(f"{k} {n}" for k, n in r.waiting.items()), r.converted,
         r.exited, r.completed)
        for r in results
    ]  # fmt: skip
    title = "Journeys (dry run: nothing was changed)" if dry_run else "Journeys"
    columns = [
        "journey",
        "entered",
        "holdout",
        "sent",
        "skipped",
        "waiting",
        "converted",
        "exited",
        "done",
    ]
    out.print_table(title, columns, rows, numeric=0)
    for r in results:
        for note in r.notes:
            out.note(f"{r.journey}: {note}")
    if dry_run:
        _print_would_send(results)


def _print_would_send(results: list[Any], shown: int = 10) -> None:
    """Who would get what: the first messages of a dry run, the text cut short."""
    messages = [(r.journey, m) for r in results for m in r.messages]
    if not messages:
        return
    rows = []
    for journey, m in messages[:shown]:
        first = next(iter((m.get("data") or {}).values()), None)
        first_field = first.get("value", "") if first else ""
        text = m.get("subject") or m.get("title") or m.get("text") or first_field
        text = " ".join(str(text).split())
        rows.append(
            (journey, m["one_id"], m["channel"], text[:60] + ("…" if len(text) > 60 else ""))
        )
    title = f"Would send (the first {len(rows)} of {sum(sum(r.sent.values()) for r in results):,})"
    out.print_table(title, ["journey", "one_id", "channel", "message"], rows)


@journey_group.command(name="status")
@click.argument("name")
@json_option
@pass_project
def journey_status_command(project: Project, name: str, json_: bool) -> None:
    """Show where a journey's customers are, and its counts as `cdp report journey` has them.

    Enrolments by status, active ones per step, customers waiting at a send step (for quiet
    hours, the frequency cap or a problem of the project's, and until when), per group
    entered, reached and converted, and per step and variant sent and skipped by reason.
    Steps show their `name:` when they have one.

    \b
    Example:
      cdp journey status winback
    """
    from cdp_cli.reports.journey import journey_status

    with project.store(create=False) as db:
        report = journey_status(db, project.config, name)
    out.emit(report, json_, lambda _: _print_status(name, report))


def _print_status(name: str, report: dict[str, Any]) -> None:
    from cdp_cli.cli.report import _fmt_counts

    click.echo(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in report["enrolments"].items()))
    if report["active_at"]:
        out.print_table(
            "Active, per step", ["step", "customers"],
            [(step, f"{n:,}") for step, n in report["active_at"].items()], numeric=1,
        )  # fmt: skip
    if report["waiting"]:
        out.print_table(
            "Waiting at a send step", ["step", "reason", "customers", "until"],
            [(w["step"], w["reason"], f"{w['customers']:,}", w["until"])
             for w in report["waiting"]], numeric=2,
        )  # fmt: skip
    out.print_table(
        "Entered and converted",
        ["group", "variant", "entered", "reached", "converted"],
        [(g["group"], g["variant"], out.fmt_int(g["entered"]), out.fmt_int(g["reached"]),
          out.fmt_int(g["converted"])) for g in report["groups"]],
        numeric=2,
    )  # fmt: skip
    out.print_table(
        "Messages, per step",
        ["step", "variant", "entered", "sent", "skipped"],
        [(s["step"], s["variant"], out.fmt_int(s["entered"]), _fmt_counts(s["sent"]),
          _fmt_counts(s["skipped"])) for s in report["steps"]],
        numeric=2,
    )  # fmt: skip


@journey_group.command(name="validate")
@json_option
@pass_project
def journey_validate_command(project: Project, json_: bool) -> None:
    """Check every journey and template file without running anything.

    \b
    Example:
      cdp journey validate
    """
    from datetime import datetime

    from cdp_cli.messaging.engine import (
        coupon_shortfalls,
        journey_tag_value_warnings,
        validate_journeys,
    )
    from cdp_cli.tags import stored_tags

    config = project.config
    shortfalls: dict[str, list[str]] = {}
    if project.store_path.exists():  # then templates are checked against its data, too
        with project.store(create=False) as db:
            known = stored_tags(db)  # read once for both
            journeys = validate_journeys(config, db, known)
            now = datetime.now(config.sending.zone)
            shortfalls = coupon_shortfalls(db, config, journeys, now, known)
    else:
        journeys = validate_journeys(config, None)
    tag_values = journey_tag_value_warnings(config, journeys)
    warnings = {
        j.name: [*tag_values.get(j.name, []), *shortfalls.get(j.name, [])] for j in journeys
    }
    summary = [
        {
            "journey": j.name,
            "steps": len(j.index),
            "entry": j.entry.when or j.entry.event or f"tag {j.entry.tag}",
            "channels": sorted({c for s in j.sends() for c in (s.channel, *s.fallback)}),
            "warnings": warnings.get(j.name, []),
        }
        for j in journeys
    ]
    out.emit(summary, json_, _print_valid)
    for journey_warnings in warnings.values():
        for warning in journey_warnings:
            out.note(f"Warning: {warning}")


def _print_valid(summary: list[dict[str, Any]]) -> None:
    out.print_table(
        "Journeys: valid",
        ["journey", "steps", "entry", "channels"],
        [(s["journey"], s["steps"], s["entry"], ", ".join(s["channels"])) for s in summary],
    )
