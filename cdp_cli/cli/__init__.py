"""The `cdp` command: parse options, call one library function, print the result.

One module per command family; options.py holds the options they share and output.py what
they print with. A command's module is imported only when that command runs (or a help page
lists it), and the stages themselves inside each command, where used, so that every command
starts fast: `cdp resolve` does not build the options of `cdp journey` or `cdp report`.
"""

from __future__ import annotations

import gc
import importlib
import os
from pathlib import Path
from typing import Any

import click

from cdp_cli import __version__
from cdp_cli.cli.output import printable
from cdp_cli.errors import CdpError, system_fault
from cdp_cli.project import Project

EXIT_CODES = """\b
Exit codes:
  0  success
  1  a data or runtime error (a bad file, a reject under --strict, a busy store)
  2  a usage error, or an invalid cdp.yaml"""


class CliError(click.ClickException):
    """A CdpError on its way out, keeping its exit code; always one line."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(printable(message))  # it may quote a file's name or content
        self.exit_code = exit_code  # type: ignore[misc]  # click's class default, per error


# Each command: the module of cdp_cli.cli that defines it, and its name there.
COMMANDS = {
    "init": ("setup", "init"),
    "demo": ("setup", "demo"),
    "ingest": ("ingest", "ingest_command"),
    "status": ("ingest", "status"),
    "backup": ("ingest", "backup"),
    "resolve": ("identity", "resolve_command"),
    "profile": ("identity", "profile_command"),
    "tag": ("audience", "tag_command"),
    "segment": ("audience", "segment_command"),
    "predict": ("predict", "predict_command"),
    "consent": ("privacy", "consent_command"),
    "forget": ("privacy", "forget_command"),
    "journey": ("journey", "journey_group"),
    "run": ("run", "run_command"),
    "report": ("report", "report_group"),
}


def freeze_start_up() -> None:
    """Freeze what cdp has made so far, as CdpGroup.__call__ froze its imports: only in the
    program itself, whose start-up objects live until it ends (tests call cli.main(), which
    freezes nothing, and keep their collector as it was)."""
    if gc.get_freeze_count():
        gc.freeze()


class CdpGroup(click.Group):
    """Turns the errors a user can cause into one line; re-raises bugs under CDP_DEBUG=1.

    Its commands load on first use, as click's documentation shows for large command-line
    tools (lazily loading subcommands): each module builds its options when imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`cdp` itself: its script and `python -m cdp_cli` (tests call main()).

        What the imports made so far (modules, classes, functions) lives until the process
        ends: frozen, the cyclic garbage collector no longer walks it again at each full
        collection and at exit, 1.5% of an incremental `cdp resolve` at 100k records. Nothing
        made later is frozen: the store, files and the command's own objects are collected
        as before."""
        gc.freeze()
        return self.main(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, name = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"cdp_cli.cli.{module}"), name)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else "-"
        if not name.startswith("-") and self.get_command(ctx, name) is None:
            # click would suggest close names from the commands loaded so far: none yet
            possibilities = self.list_commands(ctx)
            raise click.exceptions.NoSuchCommand(name, possibilities=possibilities, ctx=ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CdpError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from cdp_cli.integrity import corruption_error

            store = _store_path(ctx)
            damaged = corruption_error(exc, store) if store else None  # met outside store()
            fault = damaged or system_fault(exc, store)  # a full disk, a read-only store...
            if fault is not None:  # not a bug: the machine's fault, one line even under CDP_DEBUG
                raise CliError(str(fault), fault.exit_code) from None
            if os.environ.get("CDP_DEBUG"):
                raise
            raise CliError(
                f"internal error: {type(exc).__name__}: {exc} (CDP_DEBUG=1 shows the traceback)", 1
            ) from None


def _store_path(ctx: click.Context) -> Path | None:
    """The store the command used, to name in an error SQLite raised; None if unknown."""
    try:
        return ctx.obj.store_path if isinstance(ctx.obj, Project) else None
    except CdpError:  # cdp.yaml cannot say
        return None


@click.group(cls=CdpGroup, epilog=EXIT_CODES)
@click.option(
    "--config",
    "config_option",
    metavar="FILE",
    help="The project file.  [default: ./cdp.yaml; env: CDP_CONFIG]",
)
@click.option(
    "--db",
    "db_option",
    metavar="FILE",
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
      cdp predict               churn risk, expected orders and value (the predict extra)
      cdp run                   what cron calls: new inbox files, resolve, tag, journeys
    """
    ctx.obj = Project(config_option, db_option)  # which reads $CDP_CONFIG and $CDP_DB
