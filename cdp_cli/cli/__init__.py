"""The `cdp` command: parse options, call one library function, print the result.

One module per command family; options.py holds the options they share and output.py what
they print with. The stages themselves are imported inside each command, where used, so that
`cdp --help` and every command start fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cdp_cli import __version__
from cdp_cli.cli import (
    audience,
    identity,
    ingest,
    journey,
    predict,
    privacy,
    report,
    run,
    setup,
)
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


for command in (
    setup.init,
    setup.demo,
    ingest.ingest_command,
    ingest.status,
    ingest.backup,
    identity.resolve_command,
    identity.profile_command,
    audience.tag_command,
    audience.segment_command,
    predict.predict_command,
    privacy.consent_command,
    privacy.forget_command,
    journey.journey_group,
    run.run_command,
    report.report_group,
):
    cli.add_command(command)
