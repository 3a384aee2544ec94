"""Lifecycle: the customers in each stage of the lifecycle tag, and how they moved between
stages."""

from __future__ import annotations

from typing import Any

from cdp_cli.errors import NotFound
from cdp_cli.reports.common import NONE
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.tags import stored_tags
from cdp_cli.yamlfile import did_you_mean


def lifecycle_report(db: sqlite_utils.Database, tag: str = "lifecycle") -> dict[str, Any]:
    """Customers per stage now, per tag run, and the moves between stages (from tag_changes)."""
    now = dict(
        db.conn.execute(
            "SELECT value, count(*) FROM profile_tags WHERE tag = ? GROUP BY 1 ORDER BY 2 DESC",
            (tag,),
        )
    )
    changes = db.conn.execute(
        "SELECT c.run_id, r.as_of, coalesce(c.old_value, ?), coalesce(c.new_value, ?), count(*) "
        "FROM tag_changes c JOIN tag_runs r ON r.id = c.run_id WHERE c.tag = ? "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 4",
        (NONE, NONE, tag),
    ).fetchall()
    if not now and not changes:
        hint = did_you_mean(tag, stored_tags(db))
        if hint:
            raise NotFound(f"no customer has the tag {tag!r}{hint}")
        raise NotFound(f"no customer has the tag {tag!r}: run `cdp tag` (is it in tag_rules/?)")
    periods: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for run_id, as_of, old, new, n in changes:
        if not periods or periods[-1]["run"] != run_id:
            periods.append({"run": run_id, "as_of": as_of, "moves": [], "stages": {}})
        periods[-1]["moves"].append({"from": old, "to": new, "customers": n})
        counts[old] = counts.get(old, 0) - n
        counts[new] = counts.get(new, 0) + n
        periods[-1]["stages"] = {k: v for k, v in counts.items() if k != NONE and v}
    flows: dict[tuple[str, str], int] = {}
    for period in periods[1:]:  # the first run places everyone: that is no movement
        for move in period["moves"]:
            key = (move["from"], move["to"])
            flows[key] = flows.get(key, 0) + move["customers"]
    order = list(now) + sorted({v for p in periods for v in p["stages"]} - set(now))
    return {
        "report": "lifecycle",
        "tag": tag,
        "stages": [{"stage": s, "customers": now.get(s, 0)} for s in order],
        "customers": sum(now.values()),
        "periods": periods,
        "since": periods[0]["as_of"] if periods else None,
        "flows": [
            {"from": a, "to": b, "customers": n}
            for (a, b), n in sorted(flows.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "notes": []
        if len(periods) > 1
        else ["one tag run so far: movement between stages shows from the next `cdp tag`"],
    }
