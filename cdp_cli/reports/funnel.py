"""Funnels over event data: how many customers reach each step in order, within a time,
grouped by a profile field or tag."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from cdp_cli.errors import UsageError
from cdp_cli.features import VOID_STATUSES
from cdp_cli.reports.common import NONE, as_days
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.yamlfile import did_you_mean

ORDER_STEP = "order"  # the step that also counts the orders table, not only `order` events
_VOID = ", ".join(f"'{s}'" for s in VOID_STATUSES)  # constants of ours, not user text


def funnel_report(
    db: sqlite_utils.Database,
    steps: list[str],
    within: timedelta | None = None,
    by: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> dict[str, Any]:
    """Customers who did each event in turn, each after the one before (and within `within`
    of the first), and the conversion from step to step; per value of `by` if given."""
    steps = [s.strip() for s in steps]
    if len(steps) < 2 or any(not s for s in steps):
        raise UsageError("a funnel needs at least two steps, as in view_item,add_to_cart,order")
    dimension, extra = _funnel_dimension(by)
    _check_steps(db, steps)
    sql, params = _funnel_sql(steps, within, dimension, since, until)
    counts: dict[str, list[int]] = {}
    for value, *per_step in db.conn.execute(sql, {**params, **extra}):
        counts[NONE if value is None else str(value)] = list(per_step)
    overall = [sum(c[i] for c in counts.values()) for i in range(len(steps))]
    report: dict[str, Any] = {
        "report": "funnel",
        "steps": _funnel_rows(steps, overall),
        "within_days": as_days(within),
        "by": by,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "customers": overall[0],
    }
    if by:
        report["groups"] = [
            {"value": value, "steps": _funnel_rows(steps, c)}
            for value, c in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
        ]
    return report


def _check_steps(db: sqlite_utils.Database, steps: list[str]) -> None:
    """A step no event in the store has is a typo far more often than a funnel of zeros."""
    known = {row[0] for row in db.conn.execute("SELECT DISTINCT event FROM events")}
    known.add(ORDER_STEP)
    for step in steps:
        if step not in known:
            raise UsageError(
                f"--steps: no event {step!r} in the store{did_you_mean(step, sorted(known))}"
            )


def _funnel_dimension(by: str | None) -> tuple[str | None, dict[str, Any]]:
    """The SQL for --by (the first step's platform, a golden attribute or a tag's value)."""
    if by is None:
        return None, {}
    if by in ("platform", "channel"):
        return "s0.platform", {}
    if by in ("city", "gender"):
        return f"(SELECT p.{by} FROM profiles p WHERE p.one_id = s0.one_id)", {}
    if by.startswith("tag(") and by.endswith(")") and by[4:-1].strip("'\"").strip():
        return (
            "(SELECT t.value FROM profile_tags t WHERE t.one_id = s0.one_id AND t.tag = :tag)",
            {"tag": by[4:-1].strip("'\"").strip()},
        )
    raise UsageError(
        f"--by {by!r}: expected platform (or channel: the first step's), city, gender "
        "or tag('NAME')"
    )


def _funnel_sql(
    steps: list[str],
    within: timedelta | None,
    dimension: str | None,
    since: date | None,
    until: date | None,
) -> tuple[str, dict[str, Any]]:
    """One query: per value of the dimension, the customers at each step."""
    params: dict[str, Any] = {f"e{i}": s for i, s in enumerate(steps)}
    params["order"] = ORDER_STEP
    params["within"] = as_days(within) if within else 1e9
    params["since"] = since.isoformat() if since else "0000"
    params["until"] = until.isoformat() if until else "9999"
    names = ", ".join(f":e{i}" for i in range(len(steps)))
    parts = [
        f"""ev AS (SELECT k.one_id, e.event, julianday(e.occurred_at) AS at, e.platform,
  substr(e.occurred_at, 1, 10) AS day FROM events e JOIN identity_keys k ON k.key = e.identity_key
  WHERE k.one_id IS NOT NULL AND e.event IN ({names})
  UNION ALL SELECT k.one_id, :order, julianday(o.ordered_at), o.channel, substr(o.ordered_at, 1, 10)
  FROM orders o JOIN identity_keys k ON k.key = o.identity_key
  WHERE k.one_id IS NOT NULL AND :order IN ({names})
  AND (o.status IS NULL OR lower(o.status) NOT IN ({_VOID})))""",
        # a bare column beside min() takes its value from the row of the minimum (SQLite)
        """s0 AS (SELECT one_id, min(at) AS at, min(at) AS start, platform FROM ev
  WHERE event = :e0 AND day >= :since AND day <= :until GROUP BY one_id)""",
    ]
    for i in range(1, len(steps)):
        later = ">" if steps[i] == steps[i - 1] else ">="
        parts.append(
            f"""s{i} AS (SELECT s.one_id, min(e.at) AS at, s.start FROM s{i - 1} s JOIN ev e
  ON e.one_id = s.one_id AND e.event = :e{i} AND e.at {later} s.at AND e.at <= s.start + :within
  GROUP BY s.one_id)"""
        )
    reached = ", ".join(f"count(s{i}.one_id)" for i in range(1, len(steps)))
    joins = " ".join(f"LEFT JOIN s{i} ON s{i}.one_id = s0.one_id" for i in range(1, len(steps)))
    sql = (
        f"WITH {', '.join(parts)} SELECT {dimension or 'NULL'} AS value, count(*), {reached} "
        f"FROM s0 {joins} GROUP BY 1"
    )
    return sql, params


def _funnel_rows(steps: list[str], counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for i, (step, n) in enumerate(zip(steps, counts, strict=True)):
        previous = counts[i - 1] if i else n
        rows.append(
            {
                "step": step,
                "customers": n,
                "from_previous": n / previous if previous else None,
                "from_first": n / counts[0] if counts[0] else None,
            }
        )
    return rows
