"""cdp ingest, cdp status and cdp backup: export files into the store, what the store holds,
and a checked copy of it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.identity import print_set_aside
from cdp_cli.cli.options import Project, json_option, pass_project, silent_option, writes_store
from cdp_cli.errors import CdpError, UsageError

if TYPE_CHECKING:
    from cdp_cli.backup import BackupResult
    from cdp_cli.ingest import IngestResult
    from cdp_cli.integrity import CheckResult
    from cdp_cli.status import StoreStatus


@click.command(name="ingest")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", "-s", "source_name", metavar="NAME", help="The source in cdp.yaml.")
@click.option("--force", is_flag=True, help="Ingest files again even if seen before.")
@click.option("--strict", is_flag=True, help="Exit 1 if any row was rejected.")
@click.option(
    "--worker-from",
    type=click.IntRange(min=1),
    default=None,
    hidden=True,  # for the tests and benchmarks: ingest_worker.WORKER_FROM_BYTES is the default
    help="Read a JSON Lines file of this many bytes or more with a second process.",
)
@silent_option
@json_option
@writes_store()
@pass_project
def ingest_command(
    project: Project,
    files: tuple[Path, ...],
    source_name: str | None,
    force: bool,
    strict: bool,
    worker_from: int | None,
    silent: bool,
    json_: bool,
) -> None:
    """Read export files into the store, each as one batch of a source declared in cdp.yaml.

    With no FILE, reads the `files:` each source declares (all sources, or just --source).
    A file already ingested is skipped; a row whose key is stored already is updated. Bad rows
    go to the rejects table with the reason, and the rest of the file is kept.

    \b
    Examples:
      cdp ingest                                   every declared file of every source
      cdp ingest exports/members-0601.csv --source crm_members
      cdp ingest --source shop_orders --strict     exit 1 if any row was rejected
    """
    from cdp_cli.ingest import ingest
    from cdp_cli.ingest_worker import WORKER_FROM_BYTES

    config = project.config
    with project.store() as db, out.progress_bars(silent) as start:
        results = ingest(
            db,
            config,
            source_name,
            list(files) or None,
            force=force,
            on_file=lambda source, path: start(f"{source.name} {path.name}", 0),
            worker_from=WORKER_FROM_BYTES if worker_from is None else worker_from,
        )
    out.emit(results, json_, print_ingest)
    if not results:
        out.note("Nothing to ingest: no FILE given and no source declares files that exist.")
    if any(r.status == "skipped" for r in results):
        out.note("Files seen before were skipped; --force ingests them again.", silent)
    rejected = sum(r.rejected for r in results)
    if strict and rejected:
        raise CdpError(f"{rejected} rows were rejected (--strict); see `cdp status`")


def print_ingest(results: list[IngestResult]) -> None:
    rows = [
        (
            r.source,
            Path(r.file).name,
            r.status if r.status == "done" else f"{r.status}: {r.message}",
            out.fmt_int(r.rows_read),
            out.fmt_int(r.inserted),
            out.fmt_int(r.updated),
            out.fmt_int(r.unchanged),
            out.fmt_int(r.rejected),
        )
        for r in results
    ]
    columns = ["source", "file", "status", "read", "new", "updated", "unchanged", "rejected"]
    out.print_table("Ingested", columns, rows, numeric=5)


@click.command()
@click.option(
    "--check",
    is_flag=True,
    help="Instead, read every page of the store (integrity_check, foreign_key_check): print "
    "ok or the problems; exit 1 if it is damaged.",
)
@json_option
@pass_project
def status(project: Project, check: bool, json_: bool) -> None:
    """Show what the store holds: sources and freshness, tables, rejects, field quality.

    --check reads every page of the store instead (15-30 s per GB): a store it finds sound is
    used again by the commands that refused it after one met damage in it (docs/operations.md).

    \b
    Examples:
      cdp status
      cdp status --json | jq '.rejects'
      cdp status --check
    """
    if check:
        _check(project, json_)
        return
    from cdp_cli.status import store_status

    config = project.config if project.has_config else None  # a --db alone will do
    with project.store(create=False) as db:
        result = store_status(db, config)
    out.emit(result, json_, print_status)


def _check(project: Project, json_: bool) -> None:
    from cdp_cli.integrity import check_store

    result = check_store(project.store_path)
    out.emit(result, json_, print_check)
    if not result.ok:
        raise result.error()


def print_check(result: CheckResult) -> None:
    checked = f"{result.store} (integrity_check, foreign_key_check: {result.seconds:.1f} s)"
    if result.ok:
        click.echo(f"ok: {checked}")
        if result.forgotten:
            out.note(f"The damage a command met before ({result.forgotten}) is not there now.")
        return
    click.echo(f"damaged: {checked}")
    for problem in result.problems:
        click.echo(f"  {out.printable(problem)}")


def _check_backup_dest(ctx: click.Context, param: click.Parameter, dest: Path) -> Path:
    """DEST is checked as soon as it is parsed: a database's name, none of the project's files."""
    from cdp_cli.backup import BACKUP_FORMATS

    if dest.suffix.lower() not in BACKUP_FORMATS:
        raise UsageError(f"{dest}: a backup is written as {' or '.join(BACKUP_FORMATS)}")
    project = ctx.find_object(Project) or Project()
    project.check_output(dest, BACKUP_FORMATS)
    return dest


@click.command()
@click.argument(
    "dest", type=click.Path(dir_okay=False, path_type=Path), callback=_check_backup_dest
)
@json_option
@pass_project
def backup(project: Project, dest: Path, json_: bool) -> None:
    """Copy the store to DEST, consistent and checked, while other commands go on.

    The copy is one snapshot of the store (SQLite's online backup): a command writing
    meanwhile goes on, and what it has not committed is not in the copy. The copy is written
    beside DEST, checked (integrity_check, and the rows of every table counted against the
    store's), then renamed over DEST, so an older backup there is only ever replaced by a good
    one. DEST ends in .db, .sqlite or .sqlite3; a file already there is replaced only if it is
    an older backup of this store (or empty), never another store or another program's file.
    A copy that fails the check says the store is damaged (and every command then refuses it
    until `cdp status --check` passes). How to restore: docs/operations.md.

    \b
    Examples:
      cdp backup backups/cdp.db
      cdp backup "backups/cdp-$(date +%a).db" --json     a week of nightly backups, from cron
    """
    from cdp_cli.backup import backup_store

    result = backup_store(project.store_path, dest)
    out.emit(result, json_, print_backup)


def print_backup(result: BackupResult) -> None:
    click.echo(
        f"Backed up {result.store} to {result.backup}: {result.bytes / 1e6:,.1f} MB, "
        f"{out.fmt_int(result.rows)} rows in {len(result.tables)} tables, checked, "
        f"in {result.seconds:.1f} s"
    )


def print_status(status: StoreStatus) -> None:
    out.print_table(
        "Sources",
        ["source", "kind", "rows", "batches", "last batch", "age"],
        [
            (
                s.source,
                s.kind,
                out.fmt_int(s.rows),
                s.batches,
                s.last_batch or "",
                out.fmt_age(s.age_hours),
            )
            for s in status.sources
        ],
        numeric=4,
    )
    out.print_table(
        "Tables",
        ["table", "rows"],
        [(t, out.fmt_int(n)) for t, n in status.tables.items()],
        numeric=1,
    )
    if status.rejects:
        out.print_table(
            "Rejects",
            ["source", "problem", "field", "rows", "example"],
            [
                (r["source"], r["problem"], r["field"], r["count"], r["example"])
                for r in status.rejects
            ],
        )
    print_set_aside(status.set_aside)
    if status.unfinished_batches:
        out.print_table(
            "Batches that did not finish",
            ["batch", "source", "status", "error"],
            [(b["batch"], b["source"], b["status"], b["error"]) for b in status.unfinished_batches],
        )
    sampled = {
        q.source: f"{q.source} {q.sampled:,} of {q.rows:,}" for q in status.fields if q.sampled
    }
    out.print_table(
        "Field quality" + (f" (rows sampled: {', '.join(sampled.values())})" if sampled else ""),
        ["source", "field", "filled", "invalid"],
        [
            (q.source, q.field, out.fmt_pct(q.fill_rate), out.fmt_pct(q.invalid_rate))
            for q in status.fields
        ],
        numeric=2,
    )
