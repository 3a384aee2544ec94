"""cdp tag and cdp segment: features and tags per customer, and audiences picked by rules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import (
    Project,
    as_of_option,
    export_option,
    json_option,
    pass_project,
    silent_option,
    writes_store,
)

if TYPE_CHECKING:
    from cdp_cli.segments import SegmentReport
    from cdp_cli.tags import TagResult


@click.command(name="tag")
@as_of_option
@click.option("--only", metavar="NAME", help="Evaluate this tag only.")
@click.option("--list", "list_", is_flag=True, help="List the tags with their customers per value.")
@click.option(
    "--force", is_flag=True, help="Recompute even when nothing is new since the last run."
)
@silent_option
@json_option
@writes_store(unless=("list_",))
@pass_project
def tag_command(
    project: Project,
    as_of: Any,
    only: str | None,
    list_: bool,
    force: bool,
    silent: bool,
    json_: bool,
) -> None:
    """Compute customer features and evaluate the tags in tag_rules/*.yaml.

    Every tag file is checked before anything is written: a mistake names the file, line and
    tag. Current values go to profile_tags, every change (added, removed, changed) to
    tag_changes. A run that would read what the last run read (no new batch, resolve or
    erasure, the same rules and as-of date) changes nothing and says so; --force recomputes.

    \b
    Examples:
      cdp tag
      cdp tag --as-of 2026-11-15 --only lifecycle
      cdp tag --list
    """
    from cdp_cli.features import today
    from cdp_cli.identity.resolve import unresolved_batches
    from cdp_cli.tags import run_tags, tag_list

    config = project.config
    folder = config.tag_rules_folder
    with project.store() as db:
        if list_:
            listed = tag_list(db, folder)
            out.emit(listed, json_, _print_tag_list)
            return
        day = as_of.date() if as_of else today(config)
        pending = unresolved_batches(db)
        if pending:
            out.note(
                f"{pending} ingested batches are not resolved yet: run `cdp resolve` first", silent
            )
        result = run_tags(db, folder, day, only, force)
    out.emit(result, json_, print_tags)
    if result.unchanged_since is not None:
        out.note(
            f"Nothing new since tag run {result.unchanged_since} (data, rules and as-of date "
            "are the same): tags left as they are; --force recomputes them",
            silent,
        )


def print_tags(result: TagResult) -> None:
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


@click.command(name="segment")
@click.argument("name", required=False)
@click.option("--rule", "rule", metavar="EXPR", help="The audience, as a rule.")
@click.option(
    "--by",
    "by",
    metavar="FIELD",
    help="Portrait: the audience against the base over a field, tag or expression.",
)
@export_option("Write the audience to a .csv or .jsonl file.")
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
@click.option(
    "--sample",
    "sample_size",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Customers to show.",
)
@click.option("--unmask", is_flag=True, help="Show phones and emails in full.")
@json_option
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
    from cdp_cli.features import features_as_of
    from cdp_cli.privacy import masked_row
    from cdp_cli.rules.book import load_rulebook

    if (name is None) == (rule is None):
        raise click.UsageError("give a segment NAME or --rule EXPR, not both")
    _check_hashed_options(export_path, hashed, layout)
    config = project.config
    book = load_rulebook(config.tag_rules_folder)
    with project.store(create=False) as db:
        day = features_as_of(db, config)
        chosen = seg.audience(db, book, day, rule, name)
        report = seg.describe(db, book, day, chosen, by, sample_size)
        if export_path and hashed:
            from cdp_cli.customer_match import export_hashed

            report.layout = layout or "google"
            report.exported = export_hashed(db, book, day, chosen, export_path, report.layout)
        elif export_path:
            report.exported = seg.export(db, book, day, chosen, export_path, fields.split(","))
        report.file = str(export_path) if export_path else None
    if not unmask:
        report.sample = [masked_row(row) for row in report.sample or []]
    out.emit(report, json_, print_segment)


def _check_hashed_options(export_path: Path | None, hashed: bool, layout: str | None) -> None:
    ctx = click.get_current_context()
    if hashed and not export_path:
        raise click.UsageError("--hashed goes with --export FILE")
    if layout and not hashed:
        raise click.UsageError("--layout goes with --hashed")
    if hashed and ctx.get_parameter_source("fields") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--hashed writes the layout's columns: leave out --fields")


def print_segment(report: SegmentReport) -> None:
    label = report.segment or report.rule
    click.echo(f"{label}: {report.customers:,} of {report.base:,} customers ({report.share:.1%})")
    if report.exported is not None:
        out.note(f"Wrote {report.exported:,} customers to {report.file}")
    if report.portrait:
        rows = [
            ("(none)" if r["value"] is None else r["value"], out.fmt_int(r["audience"]),
             out.fmt_pct(r["audience_share"]), out.fmt_int(r["base"]),
             out.fmt_pct(r["base_share"]), r["index"])
            for r in report.portrait
        ]  # fmt: skip
        columns = ["value", "audience", "share", "base", "base share", "index"]
        out.print_table(f"Portrait by {report.by}", columns, rows, numeric=5)
    if report.sample:
        names = list(report.sample[0])
        out.print_table("Sample", names, [list(r.values()) for r in report.sample], numeric=2)
