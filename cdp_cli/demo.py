"""`cdp demo`: the whole pipeline on the sample data, in a fresh folder, stage by stage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cdp_cli.config import Config, load_config
from cdp_cli.demo_response import respond_and_rerun
from cdp_cli.errors import CdpError
from cdp_cli.files import write_text
from cdp_cli.identity import match, review
from cdp_cli.identity.explain import explain
from cdp_cli.identity.profiles import Lookup
from cdp_cli.identity.resolve import resolve
from cdp_cli.ingest import ingest
from cdp_cli.messaging.channels import PLACEHOLDER_PREFIX
from cdp_cli.messaging.engine import run_journeys
from cdp_cli.privacy import masked_review
from cdp_cli.profile360 import profile_360
from cdp_cli.reports.funnel import funnel_report
from cdp_cli.reports.html import write_html
from cdp_cli.reports.journey import journey_reports
from cdp_cli.reports.lifecycle import lifecycle_report
from cdp_cli.reports.overview import overview_report
from cdp_cli.rules.book import load_rulebook
from cdp_cli.scaffold import PROJECT_FILES, init_project
from cdp_cli.segments import audience, describe
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.status import store_status
from cdp_cli.store import open_store
from cdp_cli.storefiles import DEFAULT_STORE, LOCK_SUFFIX, SIDECAR_SUFFIXES
from cdp_cli.tags import run_tags

StageCallback = Callable[[str, Any], None]
# The store and every file beside it that a demo run leaves.
STORE_FILES = (DEFAULT_STORE, *(DEFAULT_STORE + s for s in (*SIDECAR_SUFFIXES, LOCK_SUFFIX)))
DEMO_FOLDERS = ("outbound", "responses")
# The sample's customer written four ways across four sources: the merge worth showing.
DEMO_PHONE = "13800138000"
# The sample's exports end on this day (benchmarks/generate.py --end-date): "today" for tags.
DEMO_AS_OF = date(2026, 11, 15)
DEMO_SEGMENT, DEMO_PORTRAIT = "winback", "tag('preferred_category')"
# Half past ten on that day: outside the SMS quiet hours, after the birthday wait (10:00).
DEMO_NOW = datetime(2026, 11, 15, 10, 30)
# The simulated two weeks after: the journeys run again the next morning (birthday greetings
# wait for ten o'clock), when winback's reminders are due, and when the goal windows close.
DEMO_LATER = (datetime(2026, 11, 16, 10, 30), datetime(2026, 11, 18, 10, 30),
              datetime(2026, 11, 29, 10, 30))  # fmt: skip
DEMO_FUNNEL = ["view_item", "add_to_cart", "order"]
DEMO_REPORT = "report.html"
# Written by every demo: `--force` starts over only a folder that holds it, never a project
# `cdp init` made and the user filled with data.
DEMO_MARKER = ".cdp-demo"
DEMO_MARKER_TEXT = (
    "Made by `cdp demo`: `cdp demo --force` deletes this folder's store, outbound/, responses/\n"
    "and report.html and starts over. Delete this file to keep the folder as a project.\n"
)


def run_demo(directory: Path, force: bool = False, on_stage: StageCallback | None = None) -> dict:
    """init, ingest, status, resolve, a merged profile, tags, a segment, the journeys, a
    simulated response (labelled as such) with the journeys run again, and the reports.

    Each stage's result goes to `on_stage` as it ends.

    A folder the demo made (it holds DEMO_MARKER) is refused unless `force`, which starts it
    over; any other folder that holds something the demo would write is refused, `force` or not.
    """
    report = on_stage or (lambda stage, result: None)
    _make_room(directory, force)
    stages: dict[str, Any] = {}
    write_text(directory / DEMO_MARKER, DEMO_MARKER_TEXT)  # first: a half-made demo is one too
    stages["init"] = [str(p) for p in init_project(directory, force=force)]
    _fill_wechat_template_ids(directory)
    report("init", stages["init"])
    config = load_config(directory / "cdp.yaml")
    db = open_store(config.store)
    try:
        stages["ingest"] = ingest(db, config)
        report("ingest", stages["ingest"])
        stages["status"] = store_status(db, config)
        report("status", stages["status"])
        stages["resolve"] = resolve(db, config)
        report("resolve", stages["resolve"])
        stages["profile"] = profile_360(db, config, Lookup(phone=DEMO_PHONE))
        report("profile", stages["profile"])
        stages["match"], config = match_stage(directory, db, config)
        report("match", stages["match"])
        stages["predict"] = _predict(db, config)
        report("predict", stages["predict"])
        stages["tag"] = run_tags(db, config.tag_rules_folder, DEMO_AS_OF)
        report("tag", stages["tag"])
        book = load_rulebook(config.tag_rules_folder)
        chosen = audience(db, book, DEMO_AS_OF, None, DEMO_SEGMENT)
        stages["segment"] = describe(db, book, DEMO_AS_OF, chosen, by=DEMO_PORTRAIT)
        report("segment", stages["segment"])
        now = DEMO_NOW.replace(tzinfo=ZoneInfo(config.timezone))
        stages["journeys"] = run_journeys(db, config, now=now)
        report("journeys", stages["journeys"])
        later = [t.replace(tzinfo=ZoneInfo(config.timezone)) for t in DEMO_LATER]
        stages["response"] = respond_and_rerun(db, config, now, later)
        report("response", stages["response"])
        stages["retag"] = run_tags(db, config.tag_rules_folder, later[-1].date())
        report("retag", stages["retag"])
        stages["reports"] = _reports(db, config, directory / DEMO_REPORT, later[-1])
        report("reports", stages["reports"])
    finally:
        db.close()
    return stages


def _predict(db: Any, config: Config) -> dict[str, Any]:
    """The predictive scores, when the predict extra is installed; else how to enable them."""
    from cdp_cli.predict import INSTALL_HINT, missing_extra

    if missing_extra() is not None:
        return {"skipped": f"predictive scores need the predict extra: {INSTALL_HINT}"}
    from cdp_cli.predict.run import predict

    result = predict(db, config.predict, DEMO_AS_OF).as_dict()
    result["caution"] = (
        f"the sample is small ({result['customers']:,} customers with an order): its "
        "evaluation is rough, a brand's own data say more (cdp predict --evaluate)"
    )
    return result


def match_stage(
    directory: Path, db: sqlite_utils.Database, config: Config
) -> tuple[dict[str, Any], Config]:
    """Probabilistic matching on the sample's legacy CRM export, whose people share no
    identifier: cdp.yaml's lines marked #match turned on, the export ingested and resolved,
    one probable link explained, and the most probable pair of the review queue accepted (as
    a person would after looking), then resolved again. Skipped, in one line, without the
    `match` extra; the project and the stages after it are then as they were."""
    if not match.available():
        return {"skipped": f"matching skipped: it is not installed ({match.INSTALL_HINT})"}, config
    path = directory / "cdp.yaml"
    write_text(path, path.read_text(encoding="utf-8").replace("  #match ", "  "))
    config = load_config(path)
    ingested = ingest(db, config, "legacy_crm")
    resolved = resolve(db, config)
    row = db.conn.execute(
        "SELECT k.one_id FROM match_links l JOIN identity_keys k ON k.key = l.key_a "
        "WHERE l.status = 'linked' ORDER BY l.probability DESC, l.key_a LIMIT 1"
    ).fetchone()
    link = explain(db, row[0])["probable_links"][0] if row else None
    queue = review.review_queue(db, limit=1)
    decision = review.decide(db, str(queue[0]["pair"]), "accepted") if queue else None
    after = resolve(db, config) if decision else None
    return {
        "ingest": ingested,
        "resolve": resolved,
        "link": link,
        "review": masked_review(queue)[0] if queue else None,
        "decision": decision,
        "after": after,
    }, config


def _fill_wechat_template_ids(directory: Path) -> None:
    """The demo sends to no one: its WeChat templates get demo ids for the placeholders that
    a real project replaces with its official account's (a run holds placeholder ids)."""
    for path in (directory / "templates" / "wechat").glob("*.json"):
        text = path.read_text(encoding="utf-8")
        write_text(path, text.replace(f'"{PLACEHOLDER_PREFIX}_', '"DEMO_'))


def _make_room(directory: Path, force: bool) -> None:
    """Clear the last demo's output from a folder the demo made, when `force`; else make sure
    the demo overwrites nothing (a project of the user's above all)."""
    if (directory / DEMO_MARKER).is_file():
        if not force:
            raise CdpError(f"{directory} already holds a demo; --force starts it over")
        for name in (*STORE_FILES, DEMO_REPORT):
            (directory / name).unlink(missing_ok=True)
        for folder in DEMO_FOLDERS:  # what the last demo wrote: the response reads outbound/
            shutil.rmtree(directory / folder, ignore_errors=True)
        return
    in_the_way = [name for name in _demo_names() if (directory / name).exists()]
    if in_the_way:
        shown = ", ".join(in_the_way[:3]) + (" ..." if len(in_the_way) > 3 else "")
        raise CdpError(
            f"{directory} holds {shown} and no {DEMO_MARKER} (the mark of a folder cdp demo "
            "made), so the demo will not replace it, --force or not; run it in a new folder"
        )
    directory.mkdir(parents=True, exist_ok=True)


def _demo_names() -> list[str]:
    """What the demo writes at the top of its folder."""
    return [*PROJECT_FILES, *STORE_FILES, *DEMO_FOLDERS, DEMO_REPORT]


def _reports(db: Any, config: Config, html: Path, now: datetime) -> dict[str, Any]:
    """The overview, every journey's report, lifecycle and a funnel; all in one HTML page."""
    reports: dict[str, Any] = {
        "overview": overview_report(db, config, now),
        "journeys": journey_reports(db, config),
        "lifecycle": lifecycle_report(db),
        "funnel": funnel_report(db, DEMO_FUNNEL, timedelta(days=7)),
        "html": str(html),
    }
    sections: list[dict[str, Any]] = [
        reports["overview"],
        *reports["journeys"],
        reports["lifecycle"],
        reports["funnel"],
    ]
    write_html(html, sections, "cdp demo: what the marketing did", timezone=config.timezone)
    return reports
