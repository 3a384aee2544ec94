"""The overview of the base: customers, how many are identified, reachable per channel,
tag coverage and each source's freshness."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cdp_cli.config import Config
from cdp_cli.messaging.channels import CHANNEL_NAMES, CHANNELS
from cdp_cli.reports.common import in_zone
from cdp_cli.sqlitelib import sqlite_utils

TIME_FIELDS = {
    "customers": "registered_at",
    "orders": "ordered_at",
    "events": "occurred_at",
    "consents": "consented_at",
    "coupons": "issued_at",
}


def overview_report(
    db: sqlite_utils.Database, config: Config, now: datetime | None = None
) -> dict[str, Any]:
    """Customers, how many are identified, reachable per channel, tag coverage, freshness.

    Ages are counted to `now` (default: the current time in the project's timezone).
    """
    now = now or datetime.now(ZoneInfo(config.timezone))
    customers, known = db.conn.execute(
        "SELECT count(*), coalesce(sum(known), 0) FROM profiles"
    ).fetchone()
    return {
        "report": "overview",
        "customers": customers,
        "identified": known,
        "anonymous": customers - known,
        "identified_share": known / customers if customers else None,
        "linked_rows": _linked_rows(db),
        "reachable": _reachable(db, config, customers),
        "tags": _tag_coverage(db, customers),
        "tags_as_of": db.conn.execute("SELECT max(as_of) FROM tag_runs").fetchone()[0],
        "sources": _freshness(db, config, now),
        "as_of": now.isoformat(timespec="seconds"),
    }


def _linked_rows(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Orders and events that belong to a customer, against all of them."""
    rows = []
    for table in ("orders", "events"):
        total, linked = db.conn.execute(
            f"SELECT count(*), count(k.one_id) FROM {table} t "
            "LEFT JOIN identity_keys k ON k.key = t.identity_key"
        ).fetchone()
        rows.append({"table": table, "rows": total, "linked": linked,
                     "linked_share": linked / total if total else None})  # fmt: skip
    return rows


def _reachable(db: sqlite_utils.Database, config: Config, customers: int) -> list[dict[str, Any]]:
    """Per channel: customers with an address for it and no opt-out (as journeys decide)."""
    configured = config.sending.channels
    channels = [c for c in CHANNEL_NAMES if c in configured] or list(CHANNEL_NAMES)
    appid = config.sending.wechat_appid
    opted_out = """WITH latest AS (
  SELECT k.one_id, lower(c.channel) AS channel, c.status, row_number() OVER (
    PARTITION BY k.one_id, lower(c.channel) ORDER BY coalesce(c.consented_at, '') DESC, c.id DESC
  ) AS r FROM consents c JOIN identity_keys k ON k.key = c.identity_key
  WHERE k.one_id IS NOT NULL
), out AS (SELECT one_id, channel FROM latest WHERE r = 1 AND status = 'opt_out')"""
    rows, anyone = [], set()
    for channel in channels:
        spec = CHANNELS[channel]
        # The channel's own addressing rule, as a journey applies it when it sends.
        with_address = {
            one_id
            for one_id, type_name, value, detail in db.conn.execute(
                "SELECT i.one_id, i.type, i.value, i.detail FROM identifiers i JOIN profiles p "
                "ON p.one_id = i.one_id WHERE i.status = 'linked' AND i.type = ?",
                (spec.address_type,),
            )
            if spec.reaches(type_name, value, detail, appid)
        }
        out = {
            r[0]
            for r in db.conn.execute(
                f"{opted_out} SELECT one_id FROM out WHERE channel IN (?, 'all')", (channel,)
            )
        }
        reachable = with_address - out
        anyone |= reachable
        share = len(reachable) / customers if customers else None
        rows.append({"channel": channel, "with_address": len(with_address),
                     "opted_out": len(with_address & out), "reachable": len(reachable),
                     "reachable_share": share})  # fmt: skip
    rows.append({"channel": "any", "with_address": None, "opted_out": None,
                 "reachable": len(anyone),
                 "reachable_share": len(anyone) / customers if customers else None})  # fmt: skip
    return rows


def _tag_coverage(db: sqlite_utils.Database, customers: int) -> list[dict[str, Any]]:
    rows = db.conn.execute(
        "SELECT tag, count(*), count(DISTINCT value) FROM profile_tags GROUP BY tag ORDER BY tag"
    )
    return [
        {"tag": tag, "customers": n, "values": values,
         "coverage": n / customers if customers else None}
        for tag, n, values in rows
    ]  # fmt: skip


def _freshness(db: sqlite_utils.Database, config: Config, now: datetime) -> list[dict[str, Any]]:
    """Per source: rows, the last finished batch, and the newest record's own time."""
    kinds = {name: s.kind for name, s in config.sources.items()}
    batches = {
        source: (kind, finished, n)
        for source, kind, finished, n in db.conn.execute(
            "SELECT source, kind, max(finished_at), count(*) FROM batches "
            "WHERE status = 'done' GROUP BY source"
        )
    }
    rows = []
    for source in sorted(set(kinds) | set(batches)):
        kind, finished, n = batches.get(source, (kinds.get(source), None, 0))
        newest = rows_count = None
        if kind in TIME_FIELDS:
            rows_count, newest = db.conn.execute(
                f"SELECT count(*), max({TIME_FIELDS[kind]}) FROM {kind} WHERE source = ?",
                (source,),
            ).fetchone()
        rows.append({
            "source": source, "kind": kind, "rows": rows_count or 0, "batches": n,
            "last_ingest": in_zone(finished, config.timezone), "newest_record": newest,
            "days_since_newest": _days_since(newest, now),
        })  # fmt: skip
    return rows


def _days_since(moment: str | None, now: datetime) -> float | None:
    if not moment:
        return None
    try:
        then = datetime.fromisoformat(moment)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=now.tzinfo)
    return round((now - then).total_seconds() / 86400, 1)
