"""Options several commands share, each written once: --json, --silent, --as-of, --now, --html,
the ways to name a customer, and --wait with the store's lock for commands that write."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cdp_cli.files import HTML_FORMATS, ROW_FORMATS
from cdp_cli.project import Project

if TYPE_CHECKING:
    from cdp_cli.identity.profiles import Lookup

Command = Callable[..., Any]
CLOCK_FORMATS = ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]


pass_project = click.make_pass_decorator(Project)


def json_option(fn: Command) -> Command:
    """`--json`, on every command that prints data."""
    return click.option("json_", "--json", is_flag=True, help="Print JSON instead of a table.")(fn)


def silent_option(fn: Command) -> Command:
    return click.option("--silent", is_flag=True, help="No progress bars or notes on stderr.")(fn)


as_of_option = click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The date taken as today, so results can be reproduced.  [default: today]",
)


def now_option(help: str) -> Callable[[Command], Command]:
    """`--now`: a clock other than the present, in the project's timezone."""
    return click.option("--now", type=click.DateTime(formats=CLOCK_FORMATS), help=help)


def output_option(
    flag: str, name: str, formats: tuple[str, ...], help: str, any_new_name: bool = False
) -> Callable[[Command], Command]:
    """An option naming a file the command writes (`--export`, `--html`), checked by
    Project.check_output as soon as it is parsed: before the command does any work."""

    def check(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        if value is not None:
            project = ctx.find_object(Project)
            (project or Project()).check_output(value, formats, any_new_name)
        return value

    return click.option(
        flag,
        name,
        metavar="FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        callback=check,
        help=help,
    )


def export_option(help: str) -> Callable[[Command], Command]:
    """`--export FILE`: rows to a .csv or .jsonl file."""
    return output_option("--export", "export_path", ROW_FORMATS, help)


html_option = output_option(
    "--html",
    "html_path",
    HTML_FORMATS,
    "Also write the report as one self-contained HTML page with charts.",
    any_new_name=True,  # as before: a new file of any name; never over another kind of file
)


def lookup_options(device: bool = False) -> Callable[[Command], Command]:
    """ONE_ID, --phone, --email (and --device): the ways a command is told which customer."""

    def decorate(fn: Command) -> Command:
        if device:
            fn = click.option("--device", help="Find the customer by a device id.")(fn)
        fn = click.option("--email", help="Find the customer by an email address.")(fn)
        fn = click.option(
            "--phone", help="Find the customer by a phone number, in any written form."
        )(fn)
        return click.argument("one_id", required=False)(fn)

    return decorate


def one_lookup(
    one_id: str | None,
    phone: str | None,
    email: str | None,
    device: str | None = None,
    *,
    by_device: bool = False,
) -> Lookup:
    """The customer asked for through lookup_options; a usage error unless exactly one way
    was given."""
    from cdp_cli.identity.profiles import Lookup

    if len([v for v in (one_id, phone, email, device) if v]) != 1:
        ways = "ONE_ID, --phone, --email or --device" if by_device else "ONE_ID, --phone or --email"
        raise click.UsageError(f"give exactly one of {ways}")
    return Lookup(one_id, phone, email, device)


def writes_store(
    unless: tuple[str, ...] = (), only_with: tuple[str, ...] = (), pass_wait: bool = False
) -> Callable[[Command], Command]:
    """For commands that write to the store: `--wait SECONDS`, and the store's lock held while
    the command runs, so that one writer runs at a time. Put it just above @pass_project.

    Readers take no lock and run during a write (WAL). A command run with one of the flags in
    `unless` set only reads (`cdp tag --list`) and takes no lock either; nor does one run with
    none of the options in `only_with` (`cdp consent` without --opt-out or --opt-in). With
    `pass_wait`, the command gets `wait` too (`cdp forget` waits as long for a reader).
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
            if pass_wait:
                kwargs["wait"] = wait
            reads_only = any(kwargs.get(flag) for flag in unless) or (
                only_with and not any(kwargs.get(option) for option in only_with)
            )
            if reads_only:
                return fn(*args, **kwargs)
            # A dry run writes nothing, not even the log line of a refusal.
            logged = not kwargs.get("dry_run")
            with _store_lock(click.get_current_context(), wait, logged):
                return fn(*args, **kwargs)

        return command

    return decorate


def _store_lock(ctx: click.Context, wait: float, logged: bool = True) -> Any:
    """The store's write lock; a refusal is also written to the log file, if one is set (and
    the refusal is `logged`)."""
    from cdp_cli.cli import freeze_start_up
    from cdp_cli.errors import StoreBusy

    project = ctx.find_object(Project)
    assert project is not None
    command = ctx.command_path.replace(ctx.find_root().info_name or "cdp", "cdp", 1)
    try:
        held = project.lock(wait, command)
    except StoreBusy as exc:
        from cdp_cli.oplog import OpsLog, for_log  # only for a refusal: it imports phonenumbers

        log_path = project.config.log_path if logged and project.has_config else None
        with OpsLog(log_path) as log:
            log.write(
                stage="lock", status="busy", command=command, wait=wait, error=for_log(str(exc))
            )
        raise
    # cdp.yaml is read and the store's modules are loaded: they too live until the end.
    freeze_start_up()
    return held
