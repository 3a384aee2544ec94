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
    from cdp_cli.identity.resolve import unresolved_note
    from cdp_cli.tags import run_tags, tag_list

    config = project.config
    folder = config.tag_rules_folder
    with project.store() as db:
        if list_:
            listed = tag_list(db, folder)
            out.emit(listed, json_, _print_tag_list)
            return
        day = as_of.date() if as_of else today(config)
        pending = unresolved_note(db)
        if pending:
            out.note(pending, silent)
        result = run_tags(db, folder, day, only, force)
    out.emit(result, json_, print_tags)
    for warning in result.warnings:
        out.note(f"Warning: {warning}", silent)
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
@click.option(
    "--lookalike",
    metavar="SEGMENT",
    help="The customers outside this named segment most like it (needs the predict extra).",
)
@click.option(
    "--size", type=click.IntRange(min=1), help="With --lookalike: how many customers to pick."
)
@click.option(
    "--min-score",
    type=click.FloatRange(0, 1),
    help="With --lookalike: those whose similarity score is at least this (0.5: as like the "
    "segment as the base).",
)
@click.option(
    "--clusters",
    type=click.IntRange(2, 20),
    metavar="K",
    help="Group the customers into K behavioural clusters, each portrayed against the base "
    "(needs the predict extra).",
)
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
    lookalike: str | None,
    size: int | None,
    min_score: float | None,
    clusters: int | None,
    json_: bool,
) -> None:
    """Count, describe and export an audience: a named segment or an ad-hoc --rule.

    Named segments live in tag_rules/segments.yaml. Rules read features, golden attributes,
    tags and predictive scores (cdp predict), and run after `cdp tag`. --lookalike finds the
    customers most like a segment's, checked on a fifth of the segment held back;
    --clusters groups the whole base by behaviour.

    \b
    Examples:
      cdp segment --rule "total_spent_365d >= 1000 and city in ('武汉', '北京')"
      cdp segment winback --by "tag('preferred_category')"
      cdp segment vip --export vip.csv --fields one_id,phone,member_no,total_spent
      cdp segment winback --export winback-ads.csv --hashed --layout meta
      cdp segment --lookalike vip --size 500 --export vip-lookalike.csv
      cdp segment --clusters 5
    """
    from cdp_cli import segments as seg
    from cdp_cli.feature_state import stale_note
    from cdp_cli.features import features_as_of
    from cdp_cli.privacy import masked_row
    from cdp_cli.rules.book import load_rulebook

    _check_predictive_options(name, rule, lookalike, size, min_score, clusters, export_path, by)
    if clusters is not None:
        _clusters(project, clusters, json_)
        return
    if lookalike is None and (name is None) == (rule is None):
        raise click.UsageError("give a segment NAME or --rule EXPR, not both")
    _check_hashed_options(export_path, hashed, layout)
    config = project.config
    book = load_rulebook(config.tag_rules_folder)
    found = None
    with project.store(create=False) as db:
        stale = stale_note(db)
        day = features_as_of(db, config)
        if lookalike is not None:
            from cdp_cli.predict import lookalike as look

            seed = seg.audience(db, book, day, None, lookalike)
            found = look.lookalike(db, lookalike, look.seed_members(db, seed), size, min_score)
            chosen = look.as_audience(db, found, seed)
        else:
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
    if found is not None:
        out.emit(
            {**report.as_dict(), "lookalike": found.as_dict()},
            json_,
            lambda _: _print_lookalike(report, found.as_dict()),
        )
        return
    out.emit(report, json_, print_segment)
    for warning in report.warnings or []:
        out.note(f"Warning: {warning}")
    if stale:
        out.note(stale)


def _check_predictive_options(
    name: str | None,
    rule: str | None,
    lookalike: str | None,
    size: int | None,
    min_score: float | None,
    clusters: int | None,
    export_path: Path | None,
    by: str | None,
) -> None:
    if (size is not None or min_score is not None) and lookalike is None:
        raise click.UsageError("--size and --min-score go with --lookalike SEGMENT")
    if lookalike is not None and (name is not None or rule is not None):
        raise click.UsageError("--lookalike SEGMENT is the seed: leave out NAME and --rule")
    if lookalike is not None and size is None and min_score is None:
        raise click.UsageError("--lookalike needs --size N or --min-score X")
    given = name or rule or lookalike or export_path or by
    if clusters is not None and given:
        raise click.UsageError("--clusters K portrays the whole base: it goes alone")
    if lookalike is not None or clusters is not None:
        from cdp_cli.predict import require_extra

        require_extra()


def _clusters(project: Project, k: int, json_: bool) -> None:
    from cdp_cli.predict.clusters import clusters

    with project.store(create=False) as db:
        found = clusters(db, k)
    out.emit(found, json_, _print_clusters)


def _print_clusters(found: dict[str, Any]) -> None:
    click.echo(f"{found['k']} clusters of {found['customers']:,} customers (index 100 = the base)")
    names = list(found["base"])
    rows = [
        (c["cluster"], out.fmt_int(c["customers"]), out.fmt_pct(c["share"]),
         ", ".join(c["stands_out"]))
        for c in found["clusters"]
    ]  # fmt: skip
    out.print_table("Clusters", ["cluster", "customers", "share", "stands out by"], rows)
    detail = [
        (name, *("" if c["features"][name]["index"] is None else c["features"][name]["index"]
                 for c in found["clusters"]))
        for name in names
    ]  # fmt: skip
    columns = ["feature", *(f"#{c['cluster']}" for c in found["clusters"])]
    out.print_table("Index per feature", columns, detail, numeric=len(found["clusters"]))


def _print_lookalike(report: SegmentReport, found: dict[str, Any]) -> None:
    check = found["held_back_check"]
    click.echo(
        f"Look-alikes of {found['seed']} ({found['seed_customers']:,} customers): "
        f"{found['chosen']:,} chosen of {found['candidates']:,} outside it"
    )
    click.echo(
        f"Held-back check: {check['found']} of the first {check['n']:,} ranked were among the "
        f"{check['held_back']:,} seed members held back: precision {check['precision_at_n']:.1%} "
        f"against {check['chance']:.1%} by chance (lift {check['lift']})"
    )
    print_segment(report)


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
