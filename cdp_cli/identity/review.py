"""The review queue and the probable links, read back: `cdp resolve --review`, `--accept`,
`--reject`, and the probable links `--explain` and `cdp profile` show.

identity/match.py makes the links and fills the queue; a person's decisions recorded here
(match_decisions) are what every later run of it honours.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cdp_cli.errors import NotFound, UsageError
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso, rows_as_dicts


def probable_links(db: sqlite_utils.Database, one_id: str) -> list[dict[str, Any]]:
    """The probabilistic links inside a customer: the two records' keys, who decided, the
    probability, the match weight and each field's level and weight."""
    rows = rows_as_dicts(
        db,
        "SELECT l.key_a, l.key_b, l.probability, l.weight, l.decided_by, l.status, l.reason, "
        "l.fields FROM match_links l JOIN identity_keys k ON k.key = l.key_a "
        "WHERE k.one_id = ? ORDER BY l.weight DESC, l.key_a, l.key_b",
        (one_id,),
    )
    for row in rows:
        _read_fields(row)
    return rows


def _read_fields(row: dict[str, Any]) -> None:
    """A pair's stored comparison, field by field, and the names of the fields that agree."""
    row["fields"] = json.loads(row["fields"])
    row["agreeing"] = [f for f, v in row["fields"].items() if v["agrees"]]


def review_queue(db: sqlite_utils.Database, limit: int = 200) -> list[dict[str, Any]]:
    """The pairs waiting for a person, most probable first, with both records' fields."""
    rows = rows_as_dicts(
        db,
        "SELECT r.id AS pair, r.key_a, r.key_b, r.probability, r.weight, r.fields, "
        "ka.one_id AS one_id_a, kb.one_id AS one_id_b, ma.shown AS shown_a, mb.shown AS shown_b "
        "FROM match_reviews r LEFT JOIN identity_keys ka ON ka.key = r.key_a "
        "LEFT JOIN identity_keys kb ON kb.key = r.key_b "
        "LEFT JOIN match_records ma ON ma.key = r.key_a "
        "LEFT JOIN match_records mb ON mb.key = r.key_b "
        "WHERE NOT EXISTS (SELECT 1 FROM match_decisions d "
        "WHERE d.key_a = r.key_a AND d.key_b = r.key_b) "
        "ORDER BY r.probability DESC, r.id LIMIT ?",
        (limit,),
    )
    for row in rows:
        _read_fields(row)
        row["shown_a"] = json.loads(row["shown_a"] or "{}")
        row["shown_b"] = json.loads(row["shown_b"] or "{}")
    return rows


def decide(db: sqlite_utils.Database, pair: str, decision: str) -> dict[str, Any]:
    """Record a person's word on a pair of the review queue (its number, or KEY_A-KEY_B):
    accepted pairs are joined by every later run, rejected ones never."""
    if decision not in ("accepted", "rejected"):
        raise UsageError(f"a decision is accepted or rejected, not {decision!r}")
    keys = _pair_keys(db, pair)
    a, b = sorted(keys)
    db.conn.execute(
        "INSERT OR REPLACE INTO match_decisions (key_a, key_b, decision, decided_at) "
        "VALUES (?, ?, ?, ?)",
        (a, b, decision, now_iso()),
    )
    return {"pair": pair, "key_a": a, "key_b": b, "decision": decision}


def _pair_keys(db: sqlite_utils.Database, pair: str) -> tuple[int, int]:
    text = pair.strip()
    if text.isdigit():
        row = db.conn.execute(
            "SELECT key_a, key_b FROM match_reviews WHERE id = ?", (int(text),)
        ).fetchone()
        if row is None:
            raise NotFound(f"no pair {text} in the review queue (cdp resolve --review lists them)")
        return row[0], row[1]
    match = re.fullmatch(r"(-?\d+)[:/](-?\d+)", text)
    if not match:
        raise UsageError(
            f"{pair!r}: give a pair's number from `cdp resolve --review`, or KEY_A:KEY_B"
        )
    a, b = int(match[1]), int(match[2])
    known = db.conn.execute(
        "SELECT count(*) FROM match_records WHERE key IN (?, ?)", (a, b)
    ).fetchone()[0]
    if known < 2 or a == b:
        raise NotFound(f"{pair}: not two records that matching compares")
    return a, b
