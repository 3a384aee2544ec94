"""`cdp run`, the scheduled pipeline: new inbox files, then resolve, predict (when cdp.yaml has
a predict: section), tag and the journeys.

Every stage runs and is recorded, whatever happened before it, with two exceptions: when
resolve fails, tag is skipped, because tags computed over records not linked to their
customers could move people into the wrong journeys; and a damaged store stops the run, since
no stage may write into it. A file that cannot be read fails on its own; the other files are
still ingested. Journeys always run: their due steps (a wait that ends, a message held back by
quiet hours) must go out on time even when today's exports are late.

The caller holds the store's lock (cdp_cli.lock) for the whole run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cdp_cli.config import Config, Source
from cdp_cli.errors import CdpError, StoreBusy, StoreDamaged, SystemFault, system_fault
from cdp_cli.identity.tombstones import Screen
from cdp_cli.integrity import (
    corruption_error,
    quick_check,
    remember_run,
    store_damaged,
    store_file,
    unchanged_since_run,
)
from cdp_cli.oplog import OpsLog, for_log, scrub
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso, rollback

DONE_FOLDER, FAILED_FOLDER = "done", "failed"
# Names that copy tools, browsers and editors give a file while it is still being written.
PARTIAL_PREFIXES = (".", "~")
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".filepart", ".swp")


@dataclass
class InboxFile:
    """One file found in an inbox, and what the run did with it.

    status: ingested, duplicate (its content was ingested before), failed, or waiting (it
    changed too recently, and may still be being copied in); with --dry-run, new instead of
    ingested.
    """

    source: str
    file: str
    status: str
    batch_id: int | None = None
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    moved_to: str | None = None
    message: str = ""
    seconds: float = 0.0
    exception: Exception | None = None  # an unexpected error, re-raised under CDP_DEBUG

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "exception"}


@dataclass
class StageResult:
    """One stage of the run: done, failed or skipped, with its counts."""

    stage: str
    status: str = "done"
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why it failed, with personal data scrubbed
    note: str | None = None  # why it was skipped
    details: Any = None  # for --json: per-journey results, resolve's notes, tag warnings
    # journeys: messages sent per channel (counts["by_channel"] is its form for the log)
    sent_by_channel: dict[str, int] = field(default_factory=dict)
    exception: Exception | None = None  # an unexpected error, re-raised under CDP_DEBUG

    def as_dict(self) -> dict[str, Any]:
        left_out = ("sent_by_channel", "exception")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in left_out}


@dataclass
class RunReport:
    """What one `cdp run` did: each stage, and each inbox file."""

    started_at: str
    now: str
    as_of: str
    dry_run: bool = False
    stages: list[StageResult] = field(default_factory=list)
    files: list[InboxFile] = field(default_factory=list)
    seconds: float = 0.0
    # Whether the run read every page first; not when the store was as the last run left it.
    pages_read: bool | None = None

    @property
    def failed(self) -> list[str]:
        return [s.stage for s in self.stages if s.status == "failed"]

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.stage == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at, "now": self.now, "as_of": self.as_of,
            "dry_run": self.dry_run, "ok": not self.failed, "failed": self.failed,
            "seconds": self.seconds, "pages_read": self.pages_read,
            "stages": [s.as_dict() for s in self.stages],
            "files": [f.as_dict() for f in self.files],
        }  # fmt: skip


def run_pipeline(
    db: sqlite_utils.Database,
    config: Config,
    *,
    as_of: date | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    log: OpsLog | None = None,
) -> RunReport:
    """Ingest new inbox files, resolve, tag (as of `as_of`, default today) and run journeys.

    `now` is the journeys' clock (default: now, in the project's timezone). With `dry_run`,
    only lists what the inboxes hold; nothing is ingested, moved or run.
    """
    started = time.monotonic()
    log = OpsLog(None) if dry_run or log is None else log
    zone = ZoneInfo(config.timezone)
    clock = (now or datetime.now(zone)).astimezone(zone)
    if now is not None:  # before any stage: the journeys' stage would refuse it at the end
        from cdp_cli.messaging.engine import check_clock

        check_clock(clock, dry_run)
    day = as_of or clock.date()
    report = RunReport(now_iso(), clock.isoformat(timespec="seconds"), day.isoformat(), dry_run)
    log.write(stage="run", status="started", now=report.now, as_of=report.as_of)
    if not dry_run:
        report.pages_read = check_pages(db)
    _run_stage(db, report, log, "ingest", lambda s: _ingest_inboxes(db, config, report, s, log))
    predicts = config.predict.configured
    if dry_run:
        for name in ("resolve", *(("predict",) if predicts else ()), "tag", "journeys"):
            report.stages.append(StageResult(name, "skipped", note="dry run"))
        return report
    _run_stage(db, report, log, "resolve", lambda stage: _resolve(db, config, stage))
    if report.stage("resolve").status == "failed":
        note = "resolve failed: tags would be computed over records not linked yet"
        for name in (*(("predict",) if predicts else ()), "tag"):
            report.stages.append(StageResult(name, "skipped", note=note))
            log.write(stage=name, status="skipped", note=note)
    else:
        if predicts:  # before tag: predictive tags read today's scores
            _run_stage(db, report, log, "predict", lambda stage: _predict(db, config, day, stage))
        _run_stage(db, report, log, "tag", lambda stage: _tag(db, config, day, stage))
    _run_stage(db, report, log, "journeys", lambda stage: _journeys(db, config, clock, stage))
    remember_run(db.conn)  # after a failed stage too: a stage that met damage raised above
    report.seconds = round(time.monotonic() - started, 3)
    log.write(
        stage="run",
        status="failed" if report.failed else "done",
        failed=",".join(report.failed) or None,
        seconds=report.seconds,
    )
    return report


def check_pages(db: sqlite_utils.Database) -> bool:
    """StoreDamaged unless every page of the store reads sound (PRAGMA quick_check), so that
    cron's run never writes into a store damaged since the last run; False when the pages
    were not read, the store being exactly as the last run left it.

    The check costs about 3 s per GB of store from the page cache, and 12 s per GB from the
    disk: at 1M customers, 15 s or 103 s of a daily run whose stages take 65 s."""
    store = store_file(db.conn)
    if unchanged_since_run(store):
        return False
    problems = quick_check(db.conn)
    if problems:
        raise store_damaged(store, f"quick_check: {problems[0]}")
    return True


def _run_stage(
    db: sqlite_utils.Database,
    report: RunReport,
    log: OpsLog,
    name: str,
    work: Callable[[StageResult], None],
) -> StageResult:
    """Run one stage, recording its failure instead of raising it; but a damaged store, once
    recorded, is raised: the stages after it must not write into it."""
    stage = StageResult(name)
    started = time.monotonic()
    damaged: StoreDamaged | None = None
    try:
        work(stage)
    except Exception as exc:
        known, stage.status = _known(exc, db), "failed"
        if known is None:  # a bug; the CLI re-raises it under CDP_DEBUG
            stage.exception = exc
            stage.error = scrub(f"internal error: {type(exc).__name__}: {exc}")
        else:
            stage.error = scrub(str(known))
        damaged = known if isinstance(known, StoreDamaged) else None
    rollback(db.conn)  # whatever failed, the next stage starts on committed data
    stage.seconds = round(time.monotonic() - started, 3)
    report.stages.append(stage)
    log.write(
        stage=name,
        status=stage.status,
        **stage.counts,
        seconds=stage.seconds,
        error=_log_error(stage.error, stage.exception),
        note=stage.note,
    )
    if damaged is not None:
        raise damaged
    return stage


def _known(exc: Exception, db: sqlite_utils.Database) -> CdpError | None:
    """`exc` as a user reads it: a CdpError, or the machine's fault in words (a damaged store,
    a full disk, a read-only store); None for a bug."""
    if isinstance(exc, CdpError):
        return exc
    store = store_file(db.conn)
    return corruption_error(exc, store) or system_fault(exc, store)


def _log_error(message: str | None, exception: Exception | None) -> str | None:
    """What the log keeps of an error: of an unexpected one only its type, since its text may
    quote any value at all; of the others, the gist (oplog.for_log)."""
    if exception is not None:
        return f"internal error: {type(exception).__name__}"
    return for_log(message) if message else None


# ---------------------------------------------------------------------------------------------
# ingest


def is_partial(name: str) -> bool:
    """A name that copy tools give a file still being written: `.x.csv`, `x.csv.part`, ..."""
    return name.startswith(PARTIAL_PREFIXES) or name.lower().endswith(PARTIAL_SUFFIXES)


def inbox_files(config: Config, source: Source) -> list[Path]:
    """The files in a source's inbox that match its pattern, in name order; partial names are
    left out. An absent inbox folder is a CdpError."""
    folder = config.inbox_folder(source)
    assert folder is not None and source.inbox is not None
    if not folder.is_dir():
        raise CdpError(
            f"{folder}: inbox folder does not exist (sources.{source.name}.inbox in {config.path})"
        )
    return sorted(
        p for p in folder.glob(source.inbox.pattern) if p.is_file() and not is_partial(p.name)
    )


def _ingest_inboxes(
    db: sqlite_utils.Database, config: Config, report: RunReport, stage: StageResult, log: OpsLog
) -> None:
    sources = [s for s in config.sources.values() if s.inbox is not None]
    if not sources:
        stage.status = "skipped"
        stage.note = "no source declares an inbox: folder in cdp.yaml"
        return
    problems: list[str] = []
    found: list[tuple[Source, Path]] = []
    for source in sources:
        try:
            found += [(source, path) for path in inbox_files(config, source)]
        except CdpError as exc:
            problems.append(str(exc))
    claimants: dict[Path, list[str]] = {}
    for source, path in found:
        claimants.setdefault(path.resolve(), []).append(source.name)
    screen = Screen(config.identity, config.region)  # forgotten people never land
    for source, path in found:
        entry = _take(db, source, path, claimants[path.resolve()], report.dry_run, screen)
        if entry is None:
            continue
        report.files.append(entry)
        stage.exception = stage.exception or entry.exception
        stuck = entry.status in ("ingested", "duplicate") and not entry.moved_to
        if entry.status == "failed" or (stuck and not report.dry_run):
            problems.append(f"{source.name}: {path.name}: {entry.message}")
        _log_file(log, entry)
    _count_files(report.files, stage, report.dry_run)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CdpError("; ".join(problems[:3]) + more)


def _take(
    db: sqlite_utils.Database,
    source: Source,
    path: Path,
    claimed_by: list[str],
    dry_run: bool,
    screen: Screen,
) -> InboxFile | None:
    """One inbox file: refused, left to settle, looked up (dry run) or ingested and moved."""
    from cdp_cli.ingest import file_sha256

    assert source.inbox is not None
    started = time.monotonic()
    entry = InboxFile(source.name, str(path), "")
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:  # taken back out of the inbox since it was listed
        return None
    settle = source.inbox.settle_seconds
    if len(claimed_by) > 1:
        entry.status = "failed"
        entry.message = (
            f"matched by the inboxes of {' and '.join(claimed_by)}: give them different "
            "folders or patterns"
        )
    elif age < settle:
        entry.status = "waiting"
        entry.message = f"changed {age:.0f}s ago: read once unchanged for {settle}s"
    elif dry_run:
        try:
            sha256 = file_sha256(path)
        except FileNotFoundError:  # a run going on meanwhile took it (a dry run takes no lock)
            return None
        seen = db.conn.execute(
            "SELECT id FROM batches WHERE source=? AND sha256=? AND status='done' LIMIT 1",
            (source.name, sha256),
        ).fetchone()
        entry.status = "duplicate" if seen else "new"
        entry.batch_id = seen[0] if seen else None
        entry.message = f"seen in batch {seen[0]}" if seen else ""
    else:
        _ingest_one(db, source, path, entry, screen)
    entry.seconds = round(time.monotonic() - started, 3)
    return entry


def _ingest_one(
    db: sqlite_utils.Database, source: Source, path: Path, entry: InboxFile, screen: Screen
) -> None:
    """Ingest one inbox file, then move it to done/; a file that cannot be read to failed/."""
    from cdp_cli.ingest import ingest_file

    try:
        result = ingest_file(db, source, path, screen=screen)
    except Exception as exc:
        known, entry.status = _known(exc, db), "failed"
        if isinstance(known, StoreDamaged):  # the store's fault: the file stays, the run stops
            raise known from None
        if known is None:  # a bug: the file stays, the other files go on
            entry.exception = exc
            entry.message = scrub(f"internal error: {type(exc).__name__}: {exc}")
        elif isinstance(known, (SystemFault, StoreBusy)):  # the machine's: the file stays too
            entry.message = scrub(str(known))
        else:  # the file's fault: it would fail again on every run
            entry.message = scrub(str(known).removeprefix(f"{path.absolute()}: "))
            _move(path, FAILED_FOLDER, entry)
        return
    entry.status = "ingested" if result.status == "done" else "duplicate"
    entry.batch_id, entry.message = result.batch_id, result.message
    entry.rows_read, entry.inserted = result.rows_read, result.inserted
    entry.updated, entry.rejected = result.updated, result.rejected
    _move(path, DONE_FOLDER, entry)


def _move(path: Path, folder_name: str, entry: InboxFile) -> None:
    """Move a file into a subfolder of its inbox, keeping its name (`x~2.csv` if taken)."""
    folder = path.parent / folder_name
    target = folder / path.name
    number = 2
    while target.exists():
        target = folder / f"{path.stem}~{number}{path.suffix}"
        number += 1
    try:
        folder.mkdir(exist_ok=True)
        path.rename(target)
    except OSError as exc:
        why = f"cannot be moved to {folder_name}/ ({exc.strerror})"
        entry.message = f"{entry.message}; {why}" if entry.message else why
        return
    entry.moved_to = str(target)


def _log_file(log: OpsLog, entry: InboxFile) -> None:
    """One line for one inbox file: counts when it was ingested, why when it failed or waits."""
    counts = {}
    if entry.status == "ingested":
        counts = {"read": entry.rows_read, "new": entry.inserted, "updated": entry.updated,
                  "rejected": entry.rejected}  # fmt: skip
    log.write(
        stage="ingest",
        source=entry.source,
        file=Path(entry.file).name,
        status=entry.status,
        batch=entry.batch_id,
        **counts,
        moved_to=_relative(entry),
        seconds=entry.seconds,
        error=_log_error(entry.message, entry.exception) if entry.status == "failed" else None,
        note=entry.message if entry.status == "waiting" else None,
    )


def _relative(entry: InboxFile) -> str | None:
    if entry.moved_to is None:
        return None
    moved = Path(entry.moved_to)
    return f"{moved.parent.name}/{moved.name}"


def _count_files(files: list[InboxFile], stage: StageResult, dry_run: bool) -> None:
    statuses = [f.status for f in files]
    stage.counts = {"files": len([s for s in statuses if s != "waiting"])}
    if dry_run:
        stage.counts["new"] = statuses.count("new")
    else:
        stage.counts["ingested"] = statuses.count("ingested")
    stage.counts |= {
        "duplicates": statuses.count("duplicate"),
        "failed": statuses.count("failed"),
        "waiting": statuses.count("waiting"),
    }
    if not dry_run:
        stage.counts |= {
            "rows_read": sum(f.rows_read for f in files),
            "rows_new": sum(f.inserted for f in files),
            "rows_updated": sum(f.updated for f in files),
            "rejected": sum(f.rejected for f in files),
        }


# ---------------------------------------------------------------------------------------------
# resolve, tag, journeys


def _resolve(db: sqlite_utils.Database, config: Config, stage: StageResult) -> None:
    from cdp_cli.identity.resolve import resolve

    result = resolve(db, config)
    stage.counts = {
        "mode": result.mode, "keys_new": result.keys_new, "customers": result.profiles,
        "created": result.created, "merged": result.merged, "split": result.split,
        "removed": result.removed,
    }  # fmt: skip
    stage.details = {"notes": result.notes} if result.notes else None


def _tag(db: sqlite_utils.Database, config: Config, day: date, stage: StageResult) -> None:
    from cdp_cli.tags import run_tags

    result = run_tags(db, config.tag_rules_folder, day)
    stage.counts = {
        "as_of": result.as_of,
        "tags": len(result.tags),
        "changed": sum(t["changed"] for t in result.tags.values()),
        "removed": sum(t["removed"] for t in result.tags.values()),
    }
    stage.details = {"warnings": result.warnings} if result.warnings else None


def _predict(db: sqlite_utils.Database, config: Config, day: date, stage: StageResult) -> None:
    """Refit when due (predict.refit_days), rescore when the data or the day changed."""
    from cdp_cli.predict import require_extra

    require_extra()
    from cdp_cli.predict.run import refresh

    result = refresh(db, config.predict, day)
    stage.counts = {"action": result.action, "model_id": result.model_id, "scored": result.scored}
    if result.notes:
        stage.note = "; ".join(result.notes)


def _journeys(
    db: sqlite_utils.Database, config: Config, clock: datetime, stage: StageResult
) -> None:
    from cdp_cli.messaging.engine import run_journeys

    results = run_journeys(db, config, now=clock)
    sent: dict[str, int] = {}
    for result in results:
        for channel, count in result.sent.items():
            sent[channel] = sent.get(channel, 0) + count
    stage.sent_by_channel = dict(sorted(sent.items()))
    stage.counts = {
        "journeys": len(results),
        "entered": sum(r.enrolled for r in results),
        "sent": sum(sent.values()),
        "by_channel": ",".join(f"{c}:{n}" for c, n in stage.sent_by_channel.items()) or None,
        "skipped_sends": sum(sum(r.skipped.values()) for r in results),
        "files": sum(len(r.files) for r in results),
    }
    stage.details = [
        {k: v for k, v in r.as_dict().items() if k not in ("messages", "dry_run")} for r in results
    ]
