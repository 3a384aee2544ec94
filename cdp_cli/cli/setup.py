"""cdp init and cdp demo: a new project, and the whole pipeline shown on the sample data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.audience import print_segment, print_tags
from cdp_cli.cli.identity import print_probable_links, print_profile, print_resolve, print_review
from cdp_cli.cli.ingest import print_ingest, print_status
from cdp_cli.cli.journey import print_journeys
from cdp_cli.cli.options import json_option, silent_option
from cdp_cli.cli.report import print_journey_reports, print_overview


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@json_option
def init(directory: Path, force: bool, json_: bool) -> None:
    """Create a project: cdp.yaml, tag_rules/, journeys/, templates/ and sample data.

    \b
    Example:
      cdp init my-brand && cd my-brand && cdp ingest && cdp status
    """
    from cdp_cli.scaffold import init_project

    written = init_project(directory, force=force)
    created = {"directory": str(directory), "files": [str(p) for p in written]}
    out.emit(created, json_, lambda _: _print_created(written, directory))


def _print_created(written: list[Path], directory: Path) -> None:
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


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="cdp-demo")
@click.option(
    "--force",
    is_flag=True,
    help="Start over in a folder an earlier demo made (it holds .cdp-demo); never any other.",
)
@silent_option
@json_option
def demo(directory: Path, force: bool, silent: bool, json_: bool) -> None:
    """Run the whole pipeline on the sample data in a fresh folder, showing every stage.

    The stages: init (a project in DIRECTORY), ingest (every sample export), status (what the
    store now holds), resolve (records linked into customers), one merged customer's profile,
    match (a legacy CRM export whose people share no identifier, linked probabilistically, one
    pair of the review queue accepted; skipped without `pip install 'cdp[match]'`),
    predict (churn risk, expected orders and value, propensities: with the predict extra
    only, and rough on data this small), tag (features and the starter tags, as of the
    sample's last day, 2026-11-15), segment (the
    winback audience and its portrait) and journeys (run at 10:30 that day, writing outbound
    files to DIRECTORY/outbound). Then two weeks of customer response, simulated and labelled
    so (clicks and orders made up from the outbound files, ingested as the sample's sources),
    the journeys run again as the days pass, tags two weeks on, and the reports: the overview
    and every journey's, with DIRECTORY/report.html. Afterwards DIRECTORY is an ordinary
    project, marked by a .cdp-demo file: only a folder so marked is started over by --force
    (delete the file to keep it). A folder holding a project or files of its own is refused.

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
            print_ingest(result)
        elif stage == "status":
            print_status(result)
        elif stage == "resolve":
            print_resolve(result)
        elif stage == "profile":
            click.echo("One customer the sample writes four ways, across four sources:")
            print_profile(result.masked())
        elif stage == "match":
            _print_demo_match(result)
        elif stage == "predict":
            _print_demo_predict(result)
        elif stage == "tag":
            print_tags(result)
        elif stage == "segment":
            print_segment(result)
        elif stage == "journeys":
            print_journeys(result, dry_run=False)
            for r in result:
                for path in r.files:
                    click.echo(f"  wrote {os.path.relpath(path, directory)}")
        elif stage == "response":
            _print_demo_response(result)
        elif stage == "retag":
            print_tags(result)
        elif stage == "reports":
            print_overview(result["overview"])
            print_journey_reports(result["journeys"])
            click.echo(f"  wrote {os.path.relpath(result['html'], directory)}")

    stages = run_demo(directory, force=force, on_stage=show)
    out.emit({"directory": str(directory), **stages}, json_, lambda _: _where(directory, silent))


def _print_demo_predict(result: dict[str, Any]) -> None:
    if "skipped" in result:
        click.echo(result["skipped"])
        return
    from cdp_cli.cli.predict import print_predict_result
    from cdp_cli.predict.run import PredictResult

    print_predict_result(PredictResult(**{k: v for k, v in result.items() if k != "caution"}))
    click.echo(f"Note: {result['caution']}")


def _where(directory: Path, silent: bool) -> None:
    out.note("", silent)
    out.note(f"The demo project is in {directory}; try: cd {directory} && cdp status", silent)


def _print_demo_match(result: dict[str, Any]) -> None:
    if "skipped" in result:
        click.echo(result["skipped"])
        return
    matching = result["resolve"].matching or {}
    click.echo(
        "A legacy CRM export whose people share no identifier with any other "
        "(sample_data/legacy_crm.csv), matched on name, birthday, city and address "
        "(cdp.yaml's #match lines, turned on): "
        f"{out.fmt_count(matching.get('probable_links', 0), 'probable link')}, "
        f"{out.fmt_count(matching.get('to_review', 0), 'pair')} for review."
    )
    if result["link"]:
        print_probable_links([result["link"]])
    if result["review"]:
        click.echo("The most probable pair of the review queue (cdp resolve --review):")
        print_review([result["review"]])
        click.echo(
            f"Accepted, as a person would after looking (cdp resolve --accept "
            f"{result['decision']['pair']}); resolved again: "
            f"{out.fmt_count(result['after'].matching['probable_links'], 'probable link')}."
        )


def _print_demo_response(stretches: list[dict[str, Any]]) -> None:
    click.echo(
        "Two weeks of customer response, made up by cdp_cli/demo_response.py from the outbound "
        "files (not real data), ingested as app_events (clicks) and shop_orders (orders); the "
        "journeys run again at each moment:"
    )
    rows = [
        (s["response"].until, out.fmt_int(s["response"].clicks),
         ", ".join(f"{g} {n}" for g, n in sorted(s["response"].orders.items())),
         out.fmt_money(s["response"].revenue),
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
