"""cdp run: the pipeline cron calls, and its one summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import (
    Project,
    as_of_option,
    json_option,
    now_option,
    pass_project,
    silent_option,
    writes_store,
)
from cdp_cli.errors import CdpError

if TYPE_CHECKING:
    from cdp_cli.pipeline import RunReport, StageResult
    from cdp_cli.sqlitelib import sqlite_utils


@click.command(name="run")
@as_of_option
@now_option(
    "The journeys' clock, in the project's timezone (tests, backfills); at most a day ahead "
    "of this machine's, except with --dry-run.  [default: now]"
)
@click.option("--dry-run", is_flag=True, help="Only list what the inboxes hold; change nothing.")
@silent_option
@json_option
@writes_store(unless=("dry_run",))  # a dry run only reads: it takes no lock, so is never busy
@pass_project
def run_command(
    project: Project, as_of: Any, now: Any, dry_run: bool, silent: bool, json_: bool
) -> None:
    """Run the pipeline cron calls: new inbox files, resolve, tag, journeys; one summary.

    Ingests every new file in each source's inbox: folder (a file whose content was ingested
    before is a duplicate), moving it to the inbox's done/ folder, or to failed/ if it cannot
    be read; a file changed in the last minute waits for the next run. Then resolves, tags as
    of today in the project's timezone, and runs every journey. A failed stage does not stop
    the others, but tag is skipped when resolve failed; the exit code is 1 if any stage
    failed. Each stage is a line in the log file set by `log:` in cdp.yaml. See
    docs/operations.md for a crontab.

    \b
    Examples:
      cdp run
      cdp run --dry-run                          which inbox files the next run would take
      cdp run --now "2026-11-15 10:30" --json
    """
    from zoneinfo import ZoneInfo

    from cdp_cli.oplog import OpsLog, for_log
    from cdp_cli.pipeline import run_pipeline

    config = project.config
    clock = now.replace(tzinfo=ZoneInfo(config.timezone)) if now else None
    day = as_of.date() if as_of else None
    with OpsLog(None if dry_run else config.log_path) as log:
        try:
            db = _open_store(project, dry_run)
            try:
                report = run_pipeline(db, config, as_of=day, now=clock, dry_run=dry_run, log=log)
            finally:
                db.close()
        except CdpError as exc:  # the store cannot be opened, or is damaged (StoreDamaged)
            log.write(stage="run", status="failed", error=for_log(str(exc)))
            raise
    out.emit(report, json_, lambda _: _print_run(report, config.root))
    for stage in report.stages:
        for warning in stage.details.get("warnings", []) if isinstance(stage.details, dict) else []:
            out.note(f"Warning: {stage.stage}: {warning}", silent)
    for stage in report.stages:
        if stage.exception is not None and os.environ.get("CDP_DEBUG"):
            raise stage.exception
    if report.failed:
        shown = "; ".join(f"{s.stage}: {s.error}" for s in report.stages if s.status == "failed")
        raise CdpError(shown)
    if dry_run:
        out.note("Dry run: nothing was ingested, moved or run.", silent)


def _open_store(project: Project, dry_run: bool) -> sqlite_utils.Database:
    """The store; for a dry run of a project without one yet, an empty one in memory (every
    inbox file is new), so that a dry run creates no file."""
    if not dry_run or project.store_path.exists():
        return project.open_store()
    from cdp_cli.sqlitelib import sqlite_utils
    from cdp_cli.store import migrate

    db = sqlite_utils.Database(memory=True, execute_plugins=False)
    migrate(db)
    return db


def _print_run(report: RunReport, root: Path) -> None:
    if report.files:
        rows = [
            (f.source, os.path.relpath(f.file, root), f.status, f.message,
             *([out.fmt_int(n) for n in (f.rows_read, f.inserted, f.updated, f.rejected)]
               if f.status == "ingested" else ["", "", "", ""]))
            for f in report.files
        ]  # fmt: skip
        columns = ["source", "file", "status", "note", "read", "new", "updated", "rejected"]
        out.print_table("Inbox files", columns, rows, numeric=4)
    title = f"cdp run, now {report.now}, tags as of {report.as_of}"
    out.print_table(
        title + (" (dry run: nothing was changed)" if report.dry_run else ""),
        ["stage", "status", "what it did", "seconds"],
        [(s.stage, s.status, _stage_summary(s), f"{s.seconds:.2f}") for s in report.stages],
        numeric=1,
    )


def _stage_summary(stage: StageResult) -> str:
    """One line of what a stage of `cdp run` did, from its counts."""
    c = stage.counts
    if stage.status == "skipped":
        return stage.note or ""
    if stage.status == "failed" and not c:
        return stage.error or ""
    if stage.stage == "ingest":
        parts = [f"{c['files']} file{'' if c['files'] == 1 else 's'}"]
        parts += [f"{c[k]} {label}" for k, label in (
            ("new", "new"), ("ingested", "ingested"), ("duplicates", "seen before"),
            ("failed", "failed"), ("waiting", "waiting")) if c.get(k)]  # fmt: skip
        if "rows_new" not in c:  # a dry run
            return ", ".join(parts)
        rows = f"{c['rows_new']:,} rows new, {c['rows_updated']:,} updated"
        return f"{', '.join(parts)}; {rows}, {c['rejected']:,} rejected"
    if stage.stage == "resolve":
        return (
            f"{c['mode']}: {c['customers']:,} customers, {c['created']:,} new, "
            f"{c['merged']:,} merged, {c['split']:,} split"
        )
    if stage.stage == "predict":
        verb = {"fitted": "models fitted", "rescored": "rescored with model"}
        done = verb.get(c["action"], "nothing new for model")
        return f"{done} {c['model_id']}: {c['scored']:,} customers scored"
    if stage.stage == "tag":
        changes = f"{c['changed']:,} added or changed, {c['removed']:,} removed"
        return f"{c['tags']} tags as of {c['as_of']}: {changes}"
    if stage.stage == "journeys":
        sent = ", ".join(f"{channel} {n}" for channel, n in stage.sent_by_channel.items())
        return (
            f"{c['journeys']} journeys: {c['entered']:,} entered, {c['sent']:,} sent"
            + (f" ({sent})" if sent else "")
            + f", {c['files']} files"
        )
    return ""
