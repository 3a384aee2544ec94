"""The `cdp` command: parse options, call one library function, print the result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cdp_cli import __version__
from cdp_cli import console as out
from cdp_cli.config import Config, config_path, load_config
from cdp_cli.demo import run_demo
from cdp_cli.errors import CdpError
from cdp_cli.ingest import IngestResult, ingest
from cdp_cli.scaffold import init_project
from cdp_cli.status import StoreStatus, store_status
from cdp_cli.store import open_store

EXIT_CODES = """\b
Exit codes:
  0  success
  1  a data or runtime error (a bad file, a reject under --strict, a busy store)
  2  a usage error, or an invalid cdp.yaml"""


class CliError(click.ClickException):
    """A CdpError on its way out, keeping its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CdpGroup(click.Group):
    """Turns the errors a user can cause into one line; re-raises bugs under CDP_DEBUG=1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CdpError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("CDP_DEBUG"):
                raise
            raise CliError(
                f"internal error: {type(exc).__name__}: {exc} (CDP_DEBUG=1 shows the traceback)", 1
            ) from None


@dataclass
class Project:
    """The --config and --db a command was started with; loads them only when needed."""

    config_option: str | None
    db_option: str | None

    def config(self) -> Config:
        return load_config(config_path(self.config_option), self.db_option)

    def store_path(self) -> Path:
        if self.db_option or os.environ.get("CDP_DB"):
            return Path(self.db_option or os.environ["CDP_DB"])
        return self.config().store

    def config_if_any(self) -> Config | None:
        path = config_path(self.config_option)
        return load_config(path, self.db_option) if path.exists() else None


pass_project = click.make_pass_decorator(Project)


@click.group(cls=CdpGroup, epilog=EXIT_CODES)
@click.option(
    "--config",
    "config_option",
    metavar="FILE",
    envvar="CDP_CONFIG",
    help="The project file.  [default: ./cdp.yaml; env: CDP_CONFIG]",
)
@click.option(
    "--db",
    "db_option",
    metavar="FILE",
    envvar="CDP_DB",
    help="The SQLite store.  [default: store: in cdp.yaml; env: CDP_DB]",
)
@click.version_option(__version__, prog_name="cdp")
@click.pass_context
def cli(ctx: click.Context, config_option: str | None, db_option: str | None) -> None:
    """cdp: a Customer Data Platform over local files.

    Reads a brand's exports (CRM, POS and shop orders, app events, WeChat followers, coupons,
    opt-outs) into one SQLite store, and works out who is who.

    \b
    Start here:
      cdp demo                  the whole pipeline on the sample data, in ./cdp-demo
      cdp init my-brand         a new project: cdp.yaml, tag rules, journeys, templates
      cdp ingest                read every file declared in cdp.yaml
      cdp status                what the store holds, how fresh, how clean
    """
    ctx.obj = Project(config_option, db_option)


# ---------------------------------------------------------------------------------------------
# init and demo


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@out.json_option
def init(directory: Path, force: bool, json_: bool) -> None:
    """Create a project: cdp.yaml, tag_rules/, journeys/, templates/ and sample data.

    \b
    Example:
      cdp init my-brand && cd my-brand && cdp ingest && cdp status
    """
    written = init_project(directory, force=force)
    if json_:
        out.print_json({"directory": str(directory), "files": [str(p) for p in written]})
        return
    click.echo(f"Created {len(written)} files in {directory}:")
    for path in _summarize_paths(written, directory):
        click.echo(f"  {path}")
    click.echo(f"Next: cd {directory} && cdp ingest && cdp status")


def _summarize_paths(paths: list[Path], root: Path) -> list[str]:
    """cdp.yaml, then one line per folder with its file count."""
    folders: dict[str, int] = {}
    lines = []
    for path in paths:
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            lines.append(str(relative))
        else:
            folders[relative.parts[0]] = folders.get(relative.parts[0], 0) + 1
    return lines + [f"{name}/  ({count} files)" for name, count in folders.items()]


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="cdp-demo")
@click.option("--force", is_flag=True, help="Start over in a folder that holds a demo already.")
@out.silent_option
@out.json_option
def demo(directory: Path, force: bool, silent: bool, json_: bool) -> None:
    """Run the whole pipeline on the sample data in a fresh folder, showing every stage.

    Today the stages are: init (a project in DIRECTORY), ingest (every sample export) and
    status (what the store now holds). Afterwards DIRECTORY is an ordinary project to explore.

    \b
    Example:
      cdp demo /tmp/cdp-demo && cd /tmp/cdp-demo && cdp status
    """

    def show(stage: str, result: Any) -> None:
        if json_:
            return
        out.stdout().rule(f"[bold]{stage}", style="cyan")
        if stage == "init":
            click.echo(f"A new project in {directory}: {len(result)} files")
            for line in _summarize_paths([Path(p) for p in result], directory):
                click.echo(f"  {line}")
        elif stage == "ingest":
            _print_ingest(result)
        elif stage == "status":
            _print_status(result)

    stages = run_demo(directory, force=force, on_stage=show)
    if json_:
        out.print_json(
            {
                "directory": str(directory),
                "init": stages["init"],
                "ingest": [r.as_dict() for r in stages["ingest"]],
                "status": stages["status"].as_dict(),
            }
        )
    else:
        out.note(f"\nThe demo project is in {directory}; try: cd {directory} && cdp status", silent)


# ---------------------------------------------------------------------------------------------
# ingest


@cli.command(name="ingest")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", "-s", "source_name", metavar="NAME", help="The source in cdp.yaml.")
@click.option("--force", is_flag=True, help="Ingest files again even if seen before.")
@click.option("--strict", is_flag=True, help="Exit 1 if any row was rejected.")
@out.silent_option
@out.json_option
@pass_project
def ingest_command(
    project: Project,
    files: tuple[Path, ...],
    source_name: str | None,
    force: bool,
    strict: bool,
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
    config = project.config()
    db = open_store(config.store)
    try:
        with out.progress_bars(silent) as start:
            results = ingest(
                db,
                config,
                source_name,
                list(files) or None,
                force=force,
                on_file=lambda source, path: start(f"{source.name} {path.name}", 0),
            )
    finally:
        db.close()
    if json_:
        out.print_json([r.as_dict() for r in results])
    else:
        _print_ingest(results)
    if not results:
        out.note("Nothing to ingest: no FILE given and no source declares files that exist.")
    if any(r.status == "skipped" for r in results):
        out.note("Files seen before were skipped; --force ingests them again.", silent)
    rejected = sum(r.rejected for r in results)
    if strict and rejected:
        raise CliError(f"{rejected} rows were rejected (--strict); see `cdp status`", 1)


def _print_ingest(results: list[IngestResult]) -> None:
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


# ---------------------------------------------------------------------------------------------
# status


@cli.command()
@out.json_option
@pass_project
def status(project: Project, json_: bool) -> None:
    """Show what the store holds: sources and freshness, tables, rejects, field quality.

    \b
    Examples:
      cdp status
      cdp status --json | jq '.rejects'
    """
    config = project.config_if_any()
    path = project.store_path() if config is None else config.store
    db = open_store(path, create=False)
    try:
        result = store_status(db, config)
    finally:
        db.close()
    if json_:
        out.print_json(result.as_dict())
    else:
        _print_status(result)


def _print_status(status: StoreStatus) -> None:
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
    if status.unfinished_batches:
        out.print_table(
            "Batches that did not finish",
            ["batch", "source", "status", "error"],
            [(b["batch"], b["source"], b["status"], b["error"]) for b in status.unfinished_batches],
        )
    out.print_table(
        "Field quality",
        ["source", "field", "filled", "invalid"],
        [
            (q.source, q.field, out.fmt_pct(q.fill_rate), out.fmt_pct(q.invalid_rate))
            for q in status.fields
        ],
        numeric=2,
    )
