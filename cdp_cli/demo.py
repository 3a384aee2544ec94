"""`cdp demo`: the whole pipeline on the sample data, in a fresh folder, stage by stage."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cdp_cli.config import load_config
from cdp_cli.engine import run_journeys
from cdp_cli.errors import CdpError
from cdp_cli.ingest import ingest
from cdp_cli.profiles import Lookup, find_one_id, profile_view
from cdp_cli.resolve import resolve
from cdp_cli.scaffold import init_project
from cdp_cli.segments import audience, count, portrait
from cdp_cli.status import store_status
from cdp_cli.store import open_store
from cdp_cli.tags import load_rulebook, run_tags

StageCallback = Callable[[str, Any], None]
STORE_FILES = ("cdp.db", "cdp.db-wal", "cdp.db-shm")
# The sample's customer written four ways across four sources: the merge worth showing.
DEMO_PHONE = "13800138000"
# The sample's exports end on this day (benchmarks/generate.py --end-date): "today" for tags.
DEMO_AS_OF = date(2026, 11, 15)
DEMO_SEGMENT, DEMO_PORTRAIT = "winback", "tag('preferred_category')"
# Half past ten on that day: outside the SMS quiet hours, after the birthday wait (10:00).
DEMO_NOW = datetime(2026, 11, 15, 10, 30)


def run_demo(directory: Path, force: bool = False, on_stage: StageCallback | None = None) -> dict:
    """init, ingest, status, resolve, a merged profile, tags, a segment and the journeys.

    Each stage's result goes to `on_stage` as it ends.

    A folder that already holds a demo store is refused unless `force`, which starts it over.
    """
    report = on_stage or (lambda stage, result: None)
    if (directory / "cdp.db").exists():
        if not force:
            raise CdpError(f"{directory} already holds a demo; --force starts it over")
        for name in STORE_FILES:
            (directory / name).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Any] = {}
    stages["init"] = [str(p) for p in init_project(directory, force=force)]
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
        one_id, _ = find_one_id(db, config, Lookup(phone=DEMO_PHONE))
        stages["profile"] = profile_view(db, one_id)
        report("profile", stages["profile"])
        stages["tag"] = run_tags(db, directory / "tag_rules", DEMO_AS_OF)
        report("tag", stages["tag"])
        book = load_rulebook(directory / "tag_rules")
        chosen = audience(db, book, DEMO_AS_OF, None, DEMO_SEGMENT)
        size, base = count(db, chosen)
        stages["segment"] = {
            "segment": DEMO_SEGMENT, "rule": chosen.rule, "customers": size, "base": base,
            "by": DEMO_PORTRAIT, "portrait": portrait(db, book, DEMO_AS_OF, chosen, DEMO_PORTRAIT),
        }  # fmt: skip
        report("segment", stages["segment"])
        now = DEMO_NOW.replace(tzinfo=ZoneInfo(config.timezone))
        stages["journeys"] = run_journeys(db, config, now=now)
        report("journeys", stages["journeys"])
    finally:
        db.close()
    return stages
