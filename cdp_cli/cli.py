"""The `cdp` command: parse options, call one library function, print the result."""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cdp_cli import __version__
from cdp_cli import console as out
from cdp_cli.config import Config, config_path, load_config
from cdp_cli.errors import CdpError
from cdp_cli.scaffold import init_project
from cdp_cli.store import open_store

if TYPE_CHECKING:  # the stages are imported where used: `cdp --help` and each command start fast
    from cdp_cli.identity.resolve import ResolveResult
    from cdp_cli.ingest import IngestResult
    from cdp_cli.status import StoreStatus
    from cdp_cli.tags import TagResult

EXIT_CODES = """\b
Exit codes:
  0  success
  1  a data or runtime error (a bad file, a reject under --strict, a busy store)
  2  a usage error, or an invalid cdp.yaml"""


class CliError(click.ClickException):
    """A CdpError on its way out, keeping its exit code; always one line."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(out.printable(message))  # it may quote a file's name or content
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


Command = Callable[..., Any]


def writes_store(
    unless: tuple[str, ...] = (), only_with: tuple[str, ...] = ()
) -> Callable[[Command], Command]:
    """For commands that write to the store: `--wait SECONDS`, and the store's lock held while
    the command runs, so that one writer runs at a time. Put it just above @pass_project.

    Readers take no lock and run during a write (WAL). A command run with one of the flags in
    `unless` set only reads (`cdp tag --list`) and takes no lock either; nor does one run with
    none of the options in `only_with` (`cdp consent` without --opt-out or --opt-in).
    """

    def decorate(fn: Command) -> Command:
        @click.option(
            "--wait",
            type=click.FloatRange(min=0),
            default=0,
            metavar="SECONDS",
            help="When another command is writing to the store, wait up to this long for it "
            "before giving up (exit 1).  [default: 0]",
        )
        @functools.wraps(fn)
        def command(*args: Any, wait: float, **kwargs: Any) -> Any:
            reads_only = any(kwargs.get(flag) for flag in unless) or (
                only_with and not any(kwargs.get(option) for option in only_with)
            )
            if reads_only:
                return fn(*args, **kwargs)
            with _store_lock(click.get_current_context(), wait):
                return fn(*args, **kwargs)

        return command

    return decorate


def _store_lock(ctx: click.Context, wait: float) -> Any:
    """The store's write lock; a refusal is also written to the log file, if one is set."""
    from cdp_cli import lock
    from cdp_cli.errors import StoreBusy
    from cdp_cli.oplog import OpsLog, for_log

    project = ctx.find_object(Project)
    assert project is not None
    command = ctx.command_path.replace(ctx.find_root().info_name or "cdp", "cdp", 1)
    try:
        return lock.acquire(project.store_path(), wait, command)
    except StoreBusy as exc:
        config = project.config_if_any()
        with OpsLog(config.log_path if config else None) as log:
            log.write(
                stage="lock", status="busy", command=command, wait=wait, error=for_log(str(exc))
            )
        raise


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
      cdp resolve               link records into customers, each with a stable one_id
      cdp profile --phone 13800138000       one customer's 360° view
      cdp tag                   features and the tags in tag_rules/
      cdp segment --rule "tag('lifecycle') = 'at_risk'" --by city
      cdp run                   what cron calls: new inbox files, resolve, tag, journeys
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

    The stages: init (a project in DIRECTORY), ingest (every sample export), status (what the
    store now holds), resolve (records linked into customers), one merged customer's profile,
    tag (features and the starter tags, as of the sample's last day, 2026-11-15), segment (the
    winback audience and its portrait) and journeys (run at 10:30 that day, writing outbound
    files to DIRECTORY/outbound). Then two weeks of customer response, simulated and labelled
    so (clicks and orders made up from the outbound files, ingested as the sample's sources),
    the journeys run again as the days pass, tags two weeks on, and the reports: the overview
    and every journey's, with DIRECTORY/report.html. Afterwards DIRECTORY is an ordinary
    project.

    \b
    Example:
      cdp demo /tmp/cdp-demo && cd /tmp/cdp-demo && cdp status
    """
    from cdp_cli.demo import run_demo

    titles = {"response": "response (simulated: not real data)", "retag": "tag, two weeks on"}

    def show(stage: str, result: Any) -> None:
        if json_:
            return
        out.heading(titles.get(stage, stage))
        if stage == "init":
            click.echo(f"A new project in {directory}: {len(result)} files")
            for line in _summarize_paths([Path(p) for p in result], directory):
                click.echo(f"  {line}")
        elif stage == "ingest":
            _print_ingest(result)
        elif stage == "status":
            _print_status(result)
        elif stage == "resolve":
            _print_resolve(result)
        elif stage == "profile":
            click.echo("One customer the sample writes four ways, across four sources:")
            _mask_profile(result)
            _print_profile({**result, "merged_from": []})
        elif stage == "tag":
            _print_tags(result)
        elif stage == "segment":
            _print_segment({**result, "sample": []})
        elif stage == "journeys":
            _print_journeys(result, dry_run=False)
            for r in result:
                for path in r.files:
                    click.echo(f"  wrote {os.path.relpath(path, directory)}")
        elif stage == "response":
            _print_demo_response(result)
        elif stage == "retag":
            _print_tags(result)
        elif stage == "reports":
            _print_overview(result["overview"])
            _print_journey_reports(result["journeys"])
            click.echo(f"  wrote {os.path.relpath(result['html'], directory)}")

    stages = run_demo(directory, force=force, on_stage=show)
    if json_:
        out.print_json(
            {
                "directory": str(directory),
                "init": stages["init"],
                "ingest": [r.as_dict() for r in stages["ingest"]],
                "status": stages["status"].as_dict(),
                "resolve": stages["resolve"].as_dict(),
                "profile": stages["profile"],
                "tag": stages["tag"].as_dict(),
                "segment": stages["segment"],
                "journeys": [r.as_dict() for r in stages["journeys"]],
                "response": [
                    {
                        "response": s["response"].as_dict(),
                        "journeys": [r.as_dict() for r in s["journeys"]],
                    }
                    for s in stages["response"]
                ],
                "retag": stages["retag"].as_dict(),
                "reports": stages["reports"],
            }
        )
    else:
        out.note("", silent)
        out.note(f"The demo project is in {directory}; try: cd {directory} && cdp status", silent)


def _print_demo_response(stretches: list[dict[str, Any]]) -> None:
    click.echo(
        "Two weeks of customer response, made up by cdp_cli/demo_response.py from the outbound "
        "files (not real data), ingested as app_events (clicks) and shop_orders (orders); the "
        "journeys run again at each moment:"
    )
    rows = [
        (s["response"].until, out.fmt_int(s["response"].clicks),
         ", ".join(f"{g} {n}" for g, n in sorted(s["response"].orders.items())),
         _fmt_money(s["response"].revenue),
         ", ".join(f"{c} {n}" for c, n in _sum_sent(s["journeys"]).items()),
         sum(r.converted for r in s["journeys"]))
        for s in stretches
    ]  # fmt: skip
    columns = ["until", "clicks", "orders by group", "revenue", "then sent", "converted"]
    out.print_table("Simulated response", columns, rows, numeric=1)


def _sum_sent(results: list[Any]) -> dict[str, int]:
    sent: dict[str, int] = {}
    for r in results:
        for channel, n in r.sent.items():
            sent[channel] = sent.get(channel, 0) + n
    return sent


# ---------------------------------------------------------------------------------------------
# ingest


@cli.command(name="ingest")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", "-s", "source_name", metavar="NAME", help="The source in cdp.yaml.")
@click.option("--force", is_flag=True, help="Ingest files again even if seen before.")
@click.option("--strict", is_flag=True, help="Exit 1 if any row was rejected.")
@out.silent_option
@out.json_option
@writes_store()
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
    from cdp_cli.ingest import ingest

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
    from cdp_cli.status import store_status

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


# ---------------------------------------------------------------------------------------------
# resolve and profile


@cli.command(name="resolve")
@click.option("--full", is_flag=True, help="Resolve everything again, not only what is new.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Then write the ID-mapping table (source, key, one_id) to a .csv or .jsonl file.",
)
@click.option(
    "--explain", "explain_id", metavar="ONE_ID", help="Show why a customer's records are together."
)
@click.option("--unmask", is_flag=True, help="With --explain: show phones and emails in full.")
@out.silent_option
@out.json_option
@writes_store(unless=("explain_id",))
@pass_project
def resolve_command(
    project: Project,
    full: bool,
    export_path: Path | None,
    explain_id: str | None,
    unmask: bool,
    silent: bool,
    json_: bool,
) -> None:
    """Link records that share an identifier into one customer with a stable one_id.

    Phones, emails, member numbers, WeChat ids and device ids are normalized, then joined
    strongest first under the guards in cdp.yaml's identity: section. After the first run only
    what new batches reach is resolved again; with nothing new, nothing changes.

    \b
    Examples:
      cdp resolve
      cdp resolve --export id_mapping.csv      the table business systems take back
      cdp resolve --explain C000000042         why these records are one customer
    """
    from cdp_cli.identity.resolve import explain, export_mapping, resolve

    config = project.config()
    db = open_store(config.store)
    try:
        if explain_id:
            report = explain(db, explain_id)
            if not unmask:
                _mask_explain(report)
            out.print_json(report) if json_ else _print_explain(report)
            return
        result = resolve(db, config, full=full)
        exported = export_mapping(db, export_path) if export_path else None
    finally:
        db.close()
    if json_:
        out.print_json({**result.as_dict(), "exported": exported})
        return
    _print_resolve(result)
    for note in result.notes:
        out.note(note, silent)
    if export_path:
        out.note(f"Wrote {exported:,} rows of the ID mapping to {export_path}", silent)


def _print_resolve(result: ResolveResult) -> None:
    rows = [
        ("mode", result.mode),
        ("identity keys, new", out.fmt_int(result.keys_new)),
        ("identity keys, resolved", out.fmt_int(result.keys_resolved)),
        ("customers (one_ids)", out.fmt_int(result.profiles)),
        ("one_ids created", out.fmt_int(result.created)),
        ("one_ids merged away", out.fmt_int(result.merged)),
        ("one_ids split off", out.fmt_int(result.split)),
        ("one_ids removed", out.fmt_int(result.removed)),
        ("links refused by a guard", out.fmt_int(result.refused_links)),
        ("values that identify no one", out.fmt_int(result.unusable_values)),
        ("seconds", f"{result.seconds:.2f}"),
    ]
    out.print_table("Resolved", ["", "count"], rows, numeric=1)


def _mask_explain(report: dict[str, Any]) -> None:
    from cdp_cli.privacy import mask

    for item in report["identifiers"] + report["refused_links"]:
        item["value"] = mask(item["type"], item["value"])
    for item in report["unusable_values"]:
        item["raw"] = mask(item["type"], item["raw"])


def _print_explain(report: dict[str, Any]) -> None:
    if report["merged_from"]:
        out.note(f"{report['asked_for']} was merged into {report['one_id']}")
    out.print_table(
        f"Identifiers of {report['one_id']}",
        ["type", "value", "detail", "keys"],
        [(i["type"], i["value"], i["detail"], i["keys"]) for i in report["identifiers"]],
        numeric=1,
    )
    out.print_table(
        "Records",
        ["kind", "source", "key"],
        [(r["kind"], r["source"], r["key"]) for r in report["records"]],
    )
    if report["refused_links"]:
        out.print_table(
            "Links refused",
            ["type", "value", "reason", "belongs to"],
            [
                (r["type"], r["value"], r["reason"], r["belongs_to"])
                for r in report["refused_links"]
            ],
        )
    if report["unusable_values"]:
        out.print_table(
            "Values that identify no one",
            ["type", "as written", "reason"],
            [(u["type"], u["raw"], u["reason"]) for u in report["unusable_values"]],
        )


@cli.command(name="profile")
@click.argument("one_id", required=False)
@click.option("--phone", help="Find the customer by a phone number, in any written form.")
@click.option("--email", help="Find the customer by an email address.")
@click.option("--device", help="Find the customer by a device id.")
@click.option("--unmask", is_flag=True, help="Show phones and emails in full.")
@out.json_option
@pass_project
def profile_command(
    project: Project,
    one_id: str | None,
    phone: str | None,
    email: str | None,
    device: str | None,
    unmask: bool,
    json_: bool,
) -> None:
    """Show one customer's 360° view: golden record, identifiers, orders, events, history.

    A one_id that was merged into another still finds the customer it became.

    \b
    Examples:
      cdp profile C000000042
      cdp profile --phone "+86 138 0013 8000"
      cdp profile --email li.na@example.com --json
    """
    from cdp_cli import segments as seg
    from cdp_cli.features import today
    from cdp_cli.identity.profiles import Lookup, find_one_id, profile_view
    from cdp_cli.tags import customer_tags, load_rulebook

    given = [v for v in (one_id, phone, email, device) if v]
    if len(given) != 1:
        raise click.UsageError("give exactly one of ONE_ID, --phone, --email or --device")
    config = project.config()
    db = open_store(config.store, create=False)
    try:
        current, merged_from = find_one_id(db, config, Lookup(one_id, phone, email, device))
        view = profile_view(db, current)
        view["tags"] = customer_tags(db, current)
        book = load_rulebook(config.tag_rules_folder)
        as_of = _features_as_of(db) or today(config)
        view["segments"] = seg.segments_of(db, book, as_of, current)
    finally:
        db.close()
    view["merged_from"] = merged_from
    if not unmask:
        _mask_profile(view)
    if json_:
        out.print_json(view)
    else:
        _print_profile(view)


def _mask_profile(view: dict[str, Any]) -> None:
    from cdp_cli.privacy import mask

    profile = view["profile"]
    profile["phones"] = [mask("phone", p) for p in profile["phones"] or []]
    profile["emails"] = [mask("email", e) for e in profile["emails"] or []]
    profile["identifiers"] = {
        t: [mask(t, v) for v in values] for t, values in (profile["identifiers"] or {}).items()
    }
    for item in view["identifiers"]:
        item["value"] = mask(item["type"], item["value"])


def _print_profile(view: dict[str, Any]) -> None:
    profile = view["profile"]
    if view["merged_from"]:
        out.note(f"{' -> '.join(view['merged_from'])} was merged into {profile['one_id']}")
    lineage = profile["lineage"] or {}
    golden = [
        (field, profile[field], lineage.get(field) or "")
        for field in ("name", "gender", "birthday", "city")
    ]
    golden += [
        ("phones", ", ".join(profile["phones"]), ""),
        ("emails", ", ".join(profile["emails"]), ""),
        ("first seen", profile["first_seen"], ""),
        ("last seen", profile["last_seen"], ""),
        ("sources", ", ".join(profile["sources"] or []), ""),
        ("records", profile["records"], ""),
        ("known", "yes" if profile["known"] else "no (anonymous: a device only)", ""),
    ]
    out.print_table(f"Customer {profile['one_id']}", ["", "value", "from"], golden)
    out.print_table(
        "Identifiers",
        ["type", "value", "detail"],
        [(i["type"], i["value"], i["detail"]) for i in view["identifiers"]],
    )
    orders = view["orders"]
    out.print_table(
        f"Orders: {orders['orders']}, total {orders['total_spent']:,.2f}",
        ["at", "source", "order", "channel", "store", "amount"],
        [
            (
                o["ordered_at"],
                o["source"],
                o["order_id"],
                o["channel"],
                o["store"],
                f"{o['amount']:,.2f}",
            )
            for o in orders["latest"]
        ],
        numeric=1,
    )
    if view["events"]:
        out.print_table(
            "Recent events",
            ["at", "event", "platform"],
            [(e["occurred_at"], e["event"], e["platform"]) for e in view["events"]],
        )
    if view.get("tags"):
        out.print_table(
            "Tags",
            ["tag", "value", "since"],
            [(t["tag"], t["value"], t["since"]) for t in view["tags"]],
        )
    if view.get("segments"):
        click.echo(f"Segments: {', '.join(view['segments'])}")
    if view["history"]:
        out.print_table(
            "History",
            ["one_id", "event", "other", "at"],
            [(h["one_id"], h["event"], h["other_one_id"], h["at"]) for h in view["history"]],
        )


# ---------------------------------------------------------------------------------------------
# tag and segment

as_of_option = click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The date taken as today, so results can be reproduced.  [default: today]",
)


@cli.command(name="tag")
@as_of_option
@click.option("--only", metavar="NAME", help="Evaluate this tag only.")
@click.option("--list", "list_", is_flag=True, help="List the tags with their customers per value.")
@out.silent_option
@out.json_option
@writes_store(unless=("list_",))
@pass_project
def tag_command(
    project: Project, as_of: Any, only: str | None, list_: bool, silent: bool, json_: bool
) -> None:
    """Compute customer features and evaluate the tags in tag_rules/*.yaml.

    Every tag file is checked before anything is written: a mistake names the file, line and
    tag. Current values go to profile_tags, every change (added, removed, changed) to
    tag_changes.

    \b
    Examples:
      cdp tag
      cdp tag --as-of 2026-11-15 --only lifecycle
      cdp tag --list
    """
    from cdp_cli.features import today
    from cdp_cli.identity.resolve import unresolved_batches
    from cdp_cli.tags import run_tags, tag_list

    config = project.config()
    folder = config.tag_rules_folder
    db = open_store(config.store)
    try:
        if list_:
            listed = tag_list(db, folder)
            out.print_json(listed) if json_ else _print_tag_list(listed)
            return
        day = as_of.date() if as_of else today(config)
        pending = unresolved_batches(db)
        if pending:
            out.note(
                f"{pending} ingested batches are not resolved yet: run `cdp resolve` first", silent
            )
        result = run_tags(db, folder, day, only)
    finally:
        db.close()
    if json_:
        out.print_json(result.as_dict())
    else:
        _print_tags(result)


def _print_tags(result: TagResult) -> None:
    out.print_table(
        f"Tags as of {result.as_of}",
        ["tag", "customers", "added or changed", "removed"],
        [(name, out.fmt_int(t["customers"]), out.fmt_int(t["changed"]), out.fmt_int(t["removed"]))
         for name, t in result.tags.items()],
        numeric=3,
    )  # fmt: skip


def _print_tag_list(listed: list[dict[str, Any]]) -> None:
    rows = []
    for tag in listed:
        values = sorted(tag["values"].items(), key=lambda v: -v[1])
        shown = ", ".join(f"{v} {n:,}" for v, n in values[:6]) + (" ..." if len(values) > 6 else "")
        rows.append(
            (tag["name"], tag["category"], shown or "(not evaluated yet)", tag["description"])
        )
    out.print_table("Tags", ["tag", "category", "customers per value", "description"], rows)


@cli.command(name="segment")
@click.argument("name", required=False)
@click.option("--rule", "rule", metavar="EXPR", help="The audience, as a rule.")
@click.option(
    "--by",
    "by",
    metavar="FIELD",
    help="Portrait: the audience against the base over a field, tag or expression.",
)
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the audience to a .csv or .jsonl file.",
)
@click.option(
    "--fields",
    default="one_id,name,phone,email,member_no,city,total_spent",
    show_default=True,
    help="Export fields: identifiers, golden attributes, features, tags.",
)
@click.option(
    "--hashed",
    is_flag=True,
    help="With --export: SHA-256 of each customer's emails and phones, for an ad platform's "
    "customer matching (see docs/privacy.md).",
)
@click.option(
    "--layout",
    type=click.Choice(["google", "meta"]),
    help="With --hashed: Google Ads Customer Match (Email, Phone) or a Meta customer list "
    "(email, phone).  [default: google]",
)
@click.option("--sample", "sample_size", default=10, show_default=True, help="Customers to show.")
@click.option("--unmask", is_flag=True, help="Show phones and emails in full.")
@out.json_option
@pass_project
def segment_command(
    project: Project,
    name: str | None,
    rule: str | None,
    by: str | None,
    export_path: Path | None,
    fields: str,
    hashed: bool,
    layout: str | None,
    sample_size: int,
    unmask: bool,
    json_: bool,
) -> None:
    """Count, describe and export an audience: a named segment or an ad-hoc --rule.

    Named segments live in tag_rules/segments.yaml. Rules read features, golden attributes
    and tags, and run after `cdp tag`.

    \b
    Examples:
      cdp segment --rule "total_spent_365d >= 1000 and city in ('武汉', '北京')"
      cdp segment winback --by "tag('preferred_category')"
      cdp segment vip --export vip.csv --fields one_id,phone,member_no,total_spent
      cdp segment winback --export winback-ads.csv --hashed --layout meta
    """
    from cdp_cli import segments as seg
    from cdp_cli.features import today
    from cdp_cli.privacy import mask
    from cdp_cli.tags import load_rulebook

    if (name is None) == (rule is None):
        raise click.UsageError("give a segment NAME or --rule EXPR, not both")
    _check_hashed_options(export_path, hashed, layout)
    config = project.config()
    book = load_rulebook(config.tag_rules_folder)
    db = open_store(config.store, create=False)
    try:
        day = _features_as_of(db) or today(config)
        chosen = seg.audience(db, book, day, rule, name)
        size, base = seg.count(db, chosen)
        report: dict[str, Any] = {
            "segment": name,
            "rule": chosen.rule,
            "customers": size,
            "base": base,
        }
        if export_path and hashed:
            from cdp_cli.customer_match import export_hashed

            report["layout"] = layout or "google"
            report["exported"] = export_hashed(db, book, day, chosen, export_path, report["layout"])
            report["file"] = str(export_path)
        elif export_path:
            report["exported"] = seg.export(db, book, day, chosen, export_path, fields.split(","))
            report["file"] = str(export_path)
        if by:
            report["by"] = by
            report["portrait"] = seg.portrait(db, book, day, chosen, by)
        names, cursor = seg.members(db, book, day, chosen, list(seg.SAMPLE_FIELDS), sample_size)
        report["sample"] = [dict(zip(names, row, strict=True)) for row in cursor]
    finally:
        db.close()
    if not unmask:
        for row in report["sample"]:
            row["phone"] = mask("phone", row["phone"])
    if json_:
        out.print_json(report)
    else:
        _print_segment(report)


def _check_hashed_options(export_path: Path | None, hashed: bool, layout: str | None) -> None:
    ctx = click.get_current_context()
    if hashed and not export_path:
        raise click.UsageError("--hashed goes with --export FILE")
    if layout and not hashed:
        raise click.UsageError("--layout goes with --hashed")
    if hashed and ctx.get_parameter_source("fields") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--hashed writes the layout's columns: leave out --fields")


def _features_as_of(db: Any) -> Any:
    row = db.conn.execute("SELECT as_of FROM feature_runs ORDER BY id DESC LIMIT 1").fetchone()
    return datetime.date.fromisoformat(row[0]) if row else None


def _print_segment(report: dict[str, Any]) -> None:
    share = report["customers"] / report["base"] if report["base"] else 0
    label = report["segment"] or report["rule"]
    click.echo(f"{label}: {report['customers']:,} of {report['base']:,} customers ({share:.1%})")
    if report.get("exported") is not None:
        out.note(f"Wrote {report['exported']:,} customers to {report['file']}")
    if report.get("portrait"):
        rows = [
            ("(none)" if r["value"] is None else r["value"], out.fmt_int(r["audience"]),
             out.fmt_pct(r["audience_share"]), out.fmt_int(r["base"]),
             out.fmt_pct(r["base_share"]), r["index"])
            for r in report["portrait"]
        ]  # fmt: skip
        columns = ["value", "audience", "share", "base", "base share", "index"]
        out.print_table(f"Portrait by {report['by']}", columns, rows, numeric=5)
    if report["sample"]:
        names = list(report["sample"][0])
        out.print_table("Sample", names, [list(r.values()) for r in report["sample"]], numeric=2)


# ---------------------------------------------------------------------------------------------
# privacy: consents and forgetting


@cli.command(name="consent")
@click.argument("one_id", required=False)
@click.option("--phone", help="Find the customer by a phone number, in any written form.")
@click.option("--email", help="Find the customer by an email address.")
@click.option(
    "--channel",
    type=click.Choice(["sms", "email", "wechat", "push", "all"]),
    help="The channel the consent is for; `all` covers every channel.",
)
@click.option("--opt-out", "status", flag_value="opt_out", help="Record an opt-out.")
@click.option("--opt-in", "status", flag_value="opt_in", help="Record an opt-in.")
@click.option("--reason", metavar="TEXT", help="Why, or where it was given (kept with it).")
@click.option("--unmask", is_flag=True, help="Show phones and emails in full.")
@out.json_option
@writes_store(only_with=("status",))
@pass_project
def consent_command(
    project: Project,
    one_id: str | None,
    phone: str | None,
    email: str | None,
    channel: str | None,
    status: str | None,
    reason: str | None,
    unmask: bool,
    json_: bool,
) -> None:
    """Record an opt-in or opt-out by hand, or show a customer's consents.

    The consent is stored as a row of the consents source `manual`, at the present time, and
    journeys obey it from their next run: no `cdp resolve` needed. Without --opt-out or
    --opt-in, shows the customer's consents and the latest per channel.

    \b
    Examples:
      cdp consent --phone 13800138000 --channel sms --opt-out --reason "replied TD"
      cdp consent C000000042 --channel all --opt-in --reason "signed the form in store"
      cdp consent --email li.na@example.com
    """
    from cdp_cli.consent import consents_of, record_consent
    from cdp_cli.identity.profiles import Lookup
    from cdp_cli.privacy import mask

    if len([v for v in (one_id, phone, email) if v]) != 1:
        raise click.UsageError("give exactly one of ONE_ID, --phone or --email")
    if status and not channel:
        raise click.UsageError("--opt-out and --opt-in need --channel")
    if (channel or reason) and not status:
        raise click.UsageError("--channel and --reason go with --opt-out or --opt-in")
    config = project.config()
    lookup = Lookup(one_id, phone, email)
    db = open_store(config.store, create=False)
    try:
        recorded = None
        if status:
            assert channel is not None
            recorded = record_consent(db, config, lookup, channel, status, reason).as_dict()
            if not unmask:
                recorded["identifier"] = mask(recorded["identifier_type"], recorded["identifier"])
        report = consents_of(db, config, lookup)
    finally:
        db.close()
    if json_:
        out.print_json({**report, "recorded": recorded})
        return
    if recorded:
        verb = "opted out of" if recorded["status"] == "opt_out" else "opted in to"
        out.note(
            f"Recorded: {recorded['one_id']} {verb} {recorded['channel']} at "
            f"{recorded['consented_at']}, linked by {recorded['identifier_type']} "
            f"{recorded['identifier']}"
        )
    _print_consents(report)


def _print_consents(report: dict[str, Any]) -> None:
    def rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (c["channel"], c["status"], c["consented_at"], c["source"], c["reason"]) for c in items
        ]

    columns = ["channel", "status", "at", "source", "reason"]
    if not report["history"]:
        click.echo(f"{report['one_id']}: no consent recorded")
        return
    title = f"Consents of {report['one_id']}: latest per channel"
    out.print_table(title, columns, rows(report["latest"]))
    out.print_table("All, oldest first", columns, rows(report["history"]))
    skipped = ", ".join(report["journeys_skip"]) or "none"
    click.echo(f"Channels journeys skip for {report['one_id']}: {skipped}")


@cli.command(name="forget")
@click.argument("one_id", required=False)
@click.option("--phone", help="Find the customer by a phone number, in any written form.")
@click.option("--email", help="Find the customer by an email address.")
@click.option("--yes", is_flag=True, help="Do not ask; required when not run from a terminal.")
@out.json_option
@writes_store()
@pass_project
def forget_command(
    project: Project,
    one_id: str | None,
    phone: str | None,
    email: str | None,
    yes: bool,
    json_: bool,
) -> None:
    """Erase a person everywhere, and keep them from coming back.

    Deletes their records, events, consents, identifiers, profile, tags and their history,
    features, journey state and unsent messages, and rejected lines that name them; rewrites
    outbound files not picked up yet without them. Orders keep amount, time, store, channel and
    products, without any personal field or link. Tombstones (keyed hashes of their
    identifiers) make ingest refuse their rows from now on. Then the store is VACUUMed, so the
    erased bytes leave the file on disk. See docs/privacy.md.

    \b
    Examples:
      cdp forget --phone 13800138000
      cdp forget C000000042 --yes --json
    """
    import sys

    from cdp_cli.forget import find_target, forget
    from cdp_cli.identity.profiles import Lookup

    if len([v for v in (one_id, phone, email) if v]) != 1:
        raise click.UsageError("give exactly one of ONE_ID, --phone or --email")
    if not yes and not sys.stdin.isatty():
        raise click.UsageError("not a terminal, so nothing can be confirmed: add --yes to forget")
    config = project.config()
    db = open_store(config.store, create=False)
    try:
        target = find_target(db, config, Lookup(one_id, phone, email))
        if target.one_id and not yes:
            click.confirm(
                f"Forget {_describe_target(target)} for good? This cannot be undone",
                abort=True,
                err=True,
            )
        result = forget(db, config, target).as_dict()
    finally:
        db.close()
    _mask_forgotten(result)
    if json_:
        out.print_json(result)
    else:
        _print_forgotten(result)


def _describe_target(target: Any) -> str:
    from cdp_cli.privacy import mask

    shown = ", ".join(f"{t} {mask(t, v)}" for t, v in target.identifiers)
    name = f"{target.name}, " if target.name else ""
    return f"{target.one_id} ({name}{target.records} records; {shown})"


def _mask_forgotten(result: dict[str, Any]) -> None:
    from cdp_cli.privacy import mask

    for item in result["identifiers"]:
        item["value"] = mask(item["type"], item["value"])


def _print_forgotten(result: dict[str, Any]) -> None:
    if result["already_forgotten"]:
        click.echo("Forgotten already: nobody in the store has that identifier or one_id.")
    else:
        records = result["records"]
        rows = [
            ("identifiers erased, each now a tombstone",
             ", ".join(f"{i['type']} {i['value']}" for i in result["identifiers"])),
            ("customer records, events, consents deleted",
             f"{records['customers']}, {records['events']}, {records['consents']}"),
            ("orders and coupons kept without a person",
             f"{records['orders']}, {records['coupons']}"),
            ("other customers whose records named them", ", ".join(result["other_customers"])),
            ("journey enrolments deleted", result["journey_enrolments"]),
            ("messages deleted (unsent) / kept without a person (written)",
             f"{result['messages_deleted']} / {result['messages_kept_without_person']}"),
            ("rejected lines deleted", result["rejects"]),
            ("outbound files rewritten without them", len(result["outbound_files"])),
        ]  # fmt: skip
        out.print_table(f"Forgotten: {result['one_id']}", ["", "value"], rows)
        for path in result["outbound_files"]:
            out.note(f"rewrote {path}")
    if result["wal_truncated"]:
        out.note("Store VACUUMed and its WAL truncated: the erased bytes are gone from disk.")
    else:
        out.note(
            "Store VACUUMed, but another process is reading it, so its WAL could not be "
            "truncated: run `cdp forget` again when it is done to finish."
        )


# ---------------------------------------------------------------------------------------------
# journeys


@cli.group(name="journey")
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
@click.option(
    "--now",
    type=click.DateTime(formats=["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="The clock, in the project's timezone (tests, backfills).  [default: now]",
)
@click.option("--dry-run", is_flag=True, help="Show who would get what; change nothing.")
@out.json_option
@writes_store()
@pass_project
def journey_run_command(
    project: Project, name: str | None, now: Any, dry_run: bool, json_: bool
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

    from cdp_cli.messaging.engine import run_journeys

    config = project.config()
    clock = now.replace(tzinfo=ZoneInfo(config.timezone)) if now else None
    db = open_store(config.store, create=False)
    try:
        results = run_journeys(db, config, name, clock, dry_run)
    finally:
        db.close()
    if json_:
        out.print_json([r.as_dict() for r in results])
        return
    _print_journeys(results, dry_run)
    for r in results:
        for path in r.files:
            out.note(f"wrote {path}")


def _print_journeys(results: list[Any], dry_run: bool) -> None:
    rows = [
        (r.journey, r.enrolled, r.holdout, ", ".join(f"{c} {n}" for c, n in r.sent.items()),
         ", ".join(f"{k} {n}" for k, n in r.skipped.items()), r.deferred, r.converted,
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
        "deferred",
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
        data = m.get("data") or {}
        first_field = next(iter(data.values()), {}).get("value", "") if data else ""
        text = m.get("subject") or m.get("title") or m.get("text") or first_field
        text = " ".join(str(text).split())
        rows.append(
            (journey, m["one_id"], m["channel"], text[:60] + ("…" if len(text) > 60 else ""))
        )
    title = f"Would send (the first {len(rows)} of {sum(sum(r.sent.values()) for r in results):,})"
    out.print_table(title, ["journey", "one_id", "channel", "message"], rows)


@journey_group.command(name="status")
@click.argument("name")
@out.json_option
@pass_project
def journey_status_command(project: Project, name: str, json_: bool) -> None:
    """Show a journey's counts: entered, per step and variant, sent and skipped by reason.

    \b
    Example:
      cdp journey status winback
    """
    from cdp_cli.messaging.engine import journey_status

    config = project.config()
    db = open_store(config.store, create=False)
    try:
        report = journey_status(db, name)
    finally:
        db.close()
    if json_:
        out.print_json(report)
        return
    click.echo(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in report["enrolments"].items()))
    out.print_table(
        "Entered and converted",
        ["group", "variant", "entered", "converted"],
        [(g["grp"], g["variant"], g["entered"], g["converted"]) for g in report["groups"]],
        numeric=2,
    )
    out.print_table(
        "Messages",
        ["step", "variant", "channel", "status", "reason", "messages"],
        [(m["step"], m["variant"], m["channel"], m["status"], m["reason"], m["messages"])
         for m in report["messages"]],
        numeric=1,
    )  # fmt: skip


@journey_group.command(name="validate")
@out.json_option
@pass_project
def journey_validate_command(project: Project, json_: bool) -> None:
    """Check every journey and template file without running anything.

    \b
    Example:
      cdp journey validate
    """
    from cdp_cli.messaging.engine import validate_journeys

    config = project.config()
    db = open_store(config.store, create=False) if config.store.exists() else None
    try:
        journeys = validate_journeys(config, db)
    finally:
        if db is not None:
            db.close()
    summary = [
        {
            "journey": j.name,
            "steps": len(j.index),
            "entry": j.entry.when or j.entry.event or f"tag {j.entry.tag}",
            "channels": sorted({c for s in j.sends() for c in (s.channel, *s.fallback)}),
        }
        for j in journeys
    ]
    if json_:
        out.print_json(summary)
        return
    out.print_table(
        "Journeys: valid",
        ["journey", "steps", "entry", "channels"],
        [(s["journey"], s["steps"], s["entry"], ", ".join(s["channels"])) for s in summary],
    )


# ---------------------------------------------------------------------------------------------
# run: the scheduled pipeline


@cli.command(name="run")
@as_of_option
@click.option(
    "--now",
    type=click.DateTime(formats=["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="The journeys' clock, in the project's timezone (tests, backfills).  [default: now]",
)
@click.option("--dry-run", is_flag=True, help="Only list what the inboxes hold; change nothing.")
@out.silent_option
@out.json_option
@writes_store()
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

    config = project.config()
    clock = now.replace(tzinfo=ZoneInfo(config.timezone)) if now else None
    day = as_of.date() if as_of else None
    with OpsLog(None if dry_run else config.log_path) as log:
        try:
            db = open_store(config.store)
        except CdpError as exc:
            log.write(stage="run", status="failed", error=for_log(str(exc)))
            raise
        try:
            report = run_pipeline(db, config, as_of=day, now=clock, dry_run=dry_run, log=log)
        finally:
            db.close()
    if json_:
        out.print_json(report.as_dict())
    else:
        _print_run(report, config.root)
    for stage in report.stages:
        if stage.exception is not None and os.environ.get("CDP_DEBUG"):
            raise stage.exception
    if report.failed:
        shown = "; ".join(f"{s.stage}: {s.error}" for s in report.stages if s.status == "failed")
        raise CliError(shown, 1)
    if dry_run:
        out.note("Dry run: nothing was ingested, moved or run.", silent)


def _print_run(report: Any, root: Path) -> None:
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


def _stage_summary(stage: Any) -> str:
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
    if stage.stage == "tag":
        changes = f"{c['changed']:,} added or changed, {c['removed']:,} removed"
        return f"{c['tags']} tags as of {c['as_of']}: {changes}"
    if stage.stage == "journeys":
        sent = (c["by_channel"] or "").replace(":", " ").replace(",", ", ")
        return (
            f"{c['journeys']} journeys: {c['entered']:,} entered, {c['sent']:,} sent"
            + (f" ({sent})" if sent else "")
            + f", {c['files']} files"
        )
    return ""


# ---------------------------------------------------------------------------------------------
# report: what the marketing did


def html_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--html FILE`: the report as one self-contained HTML page with charts, too."""
    return click.option(
        "html_path",
        "--html",
        metavar="FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the report as one self-contained HTML page with charts.",
    )(fn)


def _report_out(
    report: dict[str, Any] | list[dict[str, Any]],
    json_: bool,
    html_path: Path | None,
    printer: Callable[[Any], None],
    title: str,
) -> None:
    """Print a report as tables or JSON, and write its HTML page if asked."""
    if html_path is not None:
        from cdp_cli.reports.html import write_html

        write_html(html_path, report if isinstance(report, list) else [report], title)
    if json_:
        out.print_json(report)
    else:
        printer(report)
    if html_path is not None:
        out.note(f"wrote {html_path}")


@cli.group(name="report")
def report_group() -> None:
    """Measure what the marketing did: journeys, funnels, lifecycle, the customer base.

    Every report prints tables, JSON with --json, and with --html FILE a self-contained page
    with charts to open in a browser. Reports only read the store. Every figure is defined in
    docs/reports.md.

    \b
    Examples:
      cdp report overview
      cdp report journey winback --html winback.html
      cdp report funnel --steps view_item,add_to_cart,order --within 7d --by platform
      cdp report lifecycle
    """


@report_group.command(name="journey")
@click.argument("name", required=False)
@click.option(
    "--attribution",
    type=click.Choice(["last", "first"]),
    default="last",
    show_default=True,
    help="Which message gets an order that several journeys' messages preceded.",
)
@out.json_option
@html_option
@pass_project
def report_journey_command(
    project: Project, name: str | None, attribution: str, json_: bool, html_path: Path | None
) -> None:
    """A journey's effect: per step and variant, and treatment against holdout.

    Per step and variant: entered, sent by channel, skipped by reason, coupons issued and
    redeemed, clicks, conversions, revenue, cost and ROI. Treatment against the holdout (and
    the global control group): conversion rates, the uplift with its 95% interval and p-value,
    or plainly "too small to tell". Without NAME, every journey that has run. With --json and
    NAME one object, without NAME a list.

    \b
    Examples:
      cdp report journey winback
      cdp report journey --html journeys.html
      cdp report journey winback --attribution first --json | jq '.uplift'
    """
    from cdp_cli.reports.journey import journey_report, journey_reports

    config = project.config()
    db = open_store(config.store, create=False)
    try:
        if name:
            report: Any = journey_report(db, config, name, attribution)
        else:
            report = journey_reports(db, config, attribution)
    finally:
        db.close()
    title = f"cdp report: journey {name}" if name else "cdp report: journeys"
    _report_out(report, json_, html_path, _print_journey_reports, title)


def _print_journey_reports(report: dict[str, Any] | list[dict[str, Any]]) -> None:
    for one in report if isinstance(report, list) else [report]:
        _print_journey_report(one)


def _print_journey_report(r: dict[str, Any]) -> None:
    goal = r["goal"]
    within = f" within {goal['within_days']:g} days" if goal["within_days"] else ""
    click.echo(
        f"{r['journey']}: {r['entered']:,} entered; goal {goal['event'] or 'none'}{within} of the "
        f"first message; {r['attribution']}-touch attribution; runs: {r['runs']}, the last at "
        f"{r['as_of']}"
    )
    if r["uplift"]:
        baselines = " and ".join(dict.fromkeys(c["baseline"] for c in r["uplift"]))
        out.print_table(
            f"Effect: treatment against {baselines}",
            ["compared", "treatment", "baseline", "uplift", "95% interval", "p", "verdict"],
            [(f"{c['treatment']} vs {c['baseline']}",
              f"{c['treatment_converted']:,}/{c['treatment_customers']:,} "
              f"{out.fmt_pct(c['treatment_rate'])}",
              f"{c['baseline_converted']:,}/{c['baseline_customers']:,} "
              f"{out.fmt_pct(c['baseline_rate'])}",
              _fmt_pp(c["uplift"]),
              f"{_fmt_pp(c['interval'][0])} to {_fmt_pp(c['interval'][1])}"
              if c["interval"] else "",
              "" if c["p_value"] is None else f"{c['p_value']:.3g}",
              c["verdict"])
             for c in r["uplift"]],
        )  # fmt: skip
    out.print_table(
        "Groups",
        ["group", "variant", "entered", "reached", "converted", "rate", "revenue", "window open"],
        [(g["group"], g["variant"], out.fmt_int(g["entered"]), out.fmt_int(g["reached"]),
          out.fmt_int(g["converted"]), out.fmt_pct(g["conversion_rate"]), _fmt_money(g["revenue"]),
          out.fmt_int(g["window_open"]))
         for g in r["groups"]],
        numeric=6,
    )  # fmt: skip
    rows = [
        (s["step"], s["variant"], out.fmt_int(s["entered"]), _fmt_counts(s["sent"]),
         _fmt_counts(s["skipped"]), f"{s['coupons_issued']:,}/{s['coupons_redeemed']:,}",
         out.fmt_int(s["clicks"]), out.fmt_int(s["conversions"]),
         out.fmt_pct(s["conversion_rate"]), _fmt_money(s["revenue"]), _fmt_money(s["cost"]),
         "" if s["roi"] is None else f"{s['roi']:,.2f}")
        for s in [*r["steps"], {**r["totals"], "step": "total", "variant": ""}]
    ]  # fmt: skip
    columns = ["step", "variant", "entered", "sent", "skipped", "coupons/redeemed", "clicks",
               "conversions", "rate", "revenue", "cost", "ROI"]  # fmt: skip
    out.print_table("Steps (attributed)", columns, rows, numeric=7)
    for note in r["notes"]:
        out.note(f"{r['journey']}: {note}")


def _fmt_pp(value: float | None) -> str:
    """A difference of two rates in percentage points."""
    return "" if value is None else f"{value * 100:+.1f} pp"


def _fmt_money(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in counts.items())


@report_group.command(name="funnel")
@click.option(
    "--steps",
    required=True,
    metavar="EVENT,EVENT,...",
    help="The events of the funnel, in order.",
)
@click.option("--within", metavar="DURATION", help="Every step within this of the first: 7d, 12h.")
@click.option(
    "--by",
    metavar="FIELD",
    help="One funnel per value: platform (or channel) of the first step, city, gender, "
    "tag('NAME').",
)
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="First step on or after.")
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), help="First step on or before.")
@out.json_option
@html_option
@pass_project
def report_funnel_command(
    project: Project,
    steps: str,
    within: str | None,
    by: str | None,
    since: Any,
    until: Any,
    json_: bool,
    html_path: Path | None,
) -> None:
    """Customers who did each event in turn, and the conversion from step to step.

    A customer enters at their first event of the first step; each later step counts when it
    came after the step before it (and, with --within, within that time of the first).

    \b
    Examples:
      cdp report funnel --steps view_item,add_to_cart,order
      cdp report funnel --steps view_item,add_to_cart,order --within 7d --by platform
      cdp report funnel --steps register,order --since 2026-01-01 --html funnel.html
    """
    from cdp_cli.errors import RuleError
    from cdp_cli.reports.journey import funnel_report
    from cdp_cli.rules.compiler import parse_duration

    try:
        window = parse_duration(within) if within else None
    except RuleError as exc:
        raise click.BadParameter(exc.message, param_hint="--within") from None
    config = project.config()
    db = open_store(config.store, create=False)
    try:
        report = funnel_report(
            db,
            steps.split(","),
            window,
            by,
            since.date() if since else None,
            until.date() if until else None,
        )
    finally:
        db.close()
    _report_out(report, json_, html_path, _print_funnel, "cdp report: funnel")


def _print_funnel(r: dict[str, Any]) -> None:
    groups = [(None, r["steps"])] + [(g["value"], g["steps"]) for g in r.get("groups", [])]
    for value, steps in groups:
        title = "Funnel" if value is None else f"Funnel, {r['by']} = {value}"
        out.print_table(
            title,
            ["step", "customers", "from previous", "from first"],
            [(s["step"], out.fmt_int(s["customers"]), out.fmt_pct(s["from_previous"]),
              out.fmt_pct(s["from_first"])) for s in steps],
            numeric=3,
        )  # fmt: skip


@report_group.command(name="lifecycle")
@click.option("--tag", default="lifecycle", show_default=True, help="The tag holding the stage.")
@out.json_option
@html_option
@pass_project
def report_lifecycle_command(
    project: Project, tag: str, json_: bool, html_path: Path | None
) -> None:
    """Customers per lifecycle stage now, and how they moved between stages, run by run.

    Read from the tag's recorded changes (tag_changes): each `cdp tag` run is a period.

    \b
    Examples:
      cdp report lifecycle
      cdp report lifecycle --tag rfm_segment --html rfm.html
    """
    from cdp_cli.reports.journey import lifecycle_report

    config = project.config()
    db = open_store(config.store, create=False)
    try:
        report = lifecycle_report(db, tag)
    finally:
        db.close()
    _report_out(report, json_, html_path, _print_lifecycle, f"cdp report: {tag}")


def _print_lifecycle(r: dict[str, Any]) -> None:
    total = r["customers"]
    out.print_table(
        f"{r['tag']}: customers per stage now",
        ["stage", "customers", "share"],
        [(s["stage"], out.fmt_int(s["customers"]),
          out.fmt_pct(s["customers"] / total if total else None)) for s in r["stages"]],
        numeric=2,
    )  # fmt: skip
    if r["flows"]:
        out.print_table(
            f"Moves between stages since {r['since']}",
            ["from", "to", "customers"],
            [(f["from"], f["to"], out.fmt_int(f["customers"])) for f in r["flows"]],
            numeric=1,
        )
    stages = [s["stage"] for s in r["stages"]]
    out.print_table(
        "Customers per stage after each tag run",
        ["as of", *stages],
        [(p["as_of"], *(out.fmt_int(p["stages"].get(s, 0)) for s in stages))
         for p in r["periods"]],
        numeric=len(stages),
    )  # fmt: skip
    for note in r["notes"]:
        out.note(note)


@report_group.command(name="overview")
@out.json_option
@html_option
@pass_project
def report_overview_command(project: Project, json_: bool, html_path: Path | None) -> None:
    """The customer base: customers, share identified, reachable per channel, tag coverage and
    data freshness per source.

    \b
    Examples:
      cdp report overview
      cdp report overview --html overview.html
    """
    from cdp_cli.reports.journey import overview_report

    config = project.config()
    db = open_store(config.store, create=False)
    try:
        report = overview_report(db, config)
    finally:
        db.close()
    _report_out(report, json_, html_path, _print_overview, "cdp report: overview")


def _print_overview(r: dict[str, Any]) -> None:
    rows = [
        ("customers", out.fmt_int(r["customers"]), ""),
        ("identified", out.fmt_int(r["identified"]), out.fmt_pct(r["identified_share"])),
        ("anonymous (a device only)", out.fmt_int(r["anonymous"]), ""),
    ] + [
        (f"{t['table']} with a customer", f"{t['linked']:,} of {t['rows']:,}",
         out.fmt_pct(t["linked_share"]))
        for t in r["linked_rows"]
    ]  # fmt: skip
    out.print_table("Customers", ["", "count", "share"], rows, numeric=2)
    out.print_table(
        "Reachable per channel (an address and no opt-out)",
        ["channel", "with an address", "opted out", "reachable", "share"],
        [(c["channel"], out.fmt_int(c["with_address"]), out.fmt_int(c["opted_out"]),
          out.fmt_int(c["reachable"]), out.fmt_pct(c["reachable_share"])) for c in r["reachable"]],
        numeric=4,
    )  # fmt: skip
    out.print_table(
        f"Tag coverage (as of {r['tags_as_of'] or 'never'})",
        ["tag", "customers", "values", "coverage"],
        [(t["tag"], out.fmt_int(t["customers"]), t["values"], out.fmt_pct(t["coverage"]))
         for t in r["tags"]],
        numeric=3,
    )  # fmt: skip
    out.print_table(
        "Data freshness per source",
        ["source", "kind", "rows", "newest record", "days old", "last ingest"],
        [(s["source"], s["kind"] or "", out.fmt_int(s["rows"]), s["newest_record"] or "never",
          "" if s["days_since_newest"] is None else f"{s['days_since_newest']:g}",
          s["last_ingest"] or "never")
         for s in r["sources"]],
        numeric=0,
    )  # fmt: skip
