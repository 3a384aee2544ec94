"""cdp report journey, funnel, lifecycle and overview: what the marketing did."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import Project, html_option, json_option, pass_project


def _report_out(
    report: dict[str, Any] | list[dict[str, Any]],
    json_: bool,
    html_path: Path | None,
    printer: Callable[[Any], None],
    title: str,
    timezone: str,
) -> None:
    """Print a report as tables or JSON, and write its HTML page if asked."""
    if html_path is not None:
        from cdp_cli.reports.html import write_html

        sections = report if isinstance(report, list) else [report]
        write_html(html_path, sections, title, timezone=timezone)
    out.emit(report, json_, printer)
    if html_path is not None:
        out.note(f"wrote {html_path}")


@click.group(name="report")
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
@json_option
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

    with project.store(create=False) as db:
        if name:
            report: Any = journey_report(db, project.config, name, attribution)
        else:
            report = journey_reports(db, project.config, attribution)
    title = f"cdp report: journey {name}" if name else "cdp report: journeys"
    _report_out(report, json_, html_path, print_journey_reports, title, project.config.timezone)


def print_journey_reports(report: dict[str, Any] | list[dict[str, Any]]) -> None:
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
          out.fmt_int(g["converted"]), out.fmt_pct(g["conversion_rate"]),
          out.fmt_money(g["revenue"]), out.fmt_int(g["window_open"]))
         for g in r["groups"]],
        numeric=6,
    )  # fmt: skip
    rows = [
        (s["step"], s["variant"], out.fmt_int(s["entered"]), _fmt_counts(s["sent"]),
         _fmt_counts(s["skipped"]), f"{s['coupons_issued']:,}/{s['coupons_redeemed']:,}",
         out.fmt_int(s["clicks"]), out.fmt_int(s["conversions"]),
         out.fmt_pct(s["conversion_rate"]), out.fmt_money(s["revenue"]), out.fmt_money(s["cost"]),
         "" if s["roi"] is None else f"{s['roi']:,.2f}")
        for s in [*r["steps"], {**r["totals"], "step": "total", "variant": ""}]
    ]  # fmt: skip
    columns = ["step", "variant", "entered", "sent", "skipped", "coupons/redeemed", "clicks",
               "conversions", "rate", "revenue", "cost", "ROI"]  # fmt: skip
    out.print_table("Steps (attributed)", columns, rows, numeric=7)
    out.note(f"{r['journey']}: {r['cost_counts']}")
    for note in r["notes"]:
        out.note(f"{r['journey']}: {note}")


def _fmt_pp(value: float | None) -> str:
    """A difference of two rates in percentage points."""
    return "" if value is None else f"{value * 100:+.1f} pp"


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
@json_option
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
    from cdp_cli.reports.funnel import funnel_report
    from cdp_cli.rules.compiler import parse_duration

    try:
        window = parse_duration(within) if within else None
    except RuleError as exc:
        raise click.BadParameter(exc.message, param_hint="--within") from None
    with project.store(create=False) as db:
        report = funnel_report(
            db,
            steps.split(","),
            window,
            by,
            since.date() if since else None,
            until.date() if until else None,
        )
    _report_out(
        report, json_, html_path, _print_funnel, "cdp report: funnel", project.config.timezone
    )


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
@json_option
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
    from cdp_cli.reports.lifecycle import lifecycle_report

    with project.store(create=False) as db:
        report = lifecycle_report(db, tag)
    _report_out(
        report, json_, html_path, _print_lifecycle, f"cdp report: {tag}", project.config.timezone
    )


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
@json_option
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
    from cdp_cli.reports.overview import overview_report

    with project.store(create=False) as db:
        report = overview_report(db, project.config)
    _report_out(
        report, json_, html_path, print_overview, "cdp report: overview", project.config.timezone
    )


def print_overview(r: dict[str, Any]) -> None:
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
