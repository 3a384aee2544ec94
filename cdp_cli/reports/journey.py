"""`cdp report`: what the marketing did, in numbers a marketer can check.

Four reports, each a plain dict (what `--json` prints and a notebook can use): a journey's
effect (per step and variant; treatment against holdout), a funnel over event data, the
lifecycle stages and the movement between them, and an overview of the customer base.
Reports only read the store. Every figure is defined in docs/reports.md.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from cdp_cli.config import Config
from cdp_cli.errors import NotFound, UsageError
from cdp_cli.features import VOID_STATUSES
from cdp_cli.messaging import links
from cdp_cli.messaging.channels import CHANNEL_NAMES, CHANNELS
from cdp_cli.messaging.journeys import Journey, load_journeys
from cdp_cli.reports import stats
from cdp_cli.store import rows_as_dicts

ATTRIBUTIONS = ("last", "first")
SENT = ("queued", "written")  # a message that went (or is about to go) out
GROUPS = ("treatment", "holdout", "control")
NONE = "(none)"  # a customer without a value, in lifecycle flows and funnel groups
_VOID = ", ".join(f"'{s}'" for s in VOID_STATUSES)  # constants of ours, not user text


# ---------------------------------------------------------------------------------------------
# Journeys


def journey_report(
    db: sqlite_utils.Database, config: Config, name: str, attribution: str = "last"
) -> dict[str, Any]:
    """One journey's effect: per step and variant, per group, and treatment against holdout."""
    if attribution not in ATTRIBUTIONS:
        raise UsageError(f"attribution is one of {', '.join(ATTRIBUTIONS)}, not {attribution!r}")
    journeys = load_journeys(config.journeys_folder)
    if name not in journeys:
        raise NotFound(f"no journey named {name!r} in {config.journeys_folder}")
    journey = journeys[name]
    runs = db.conn.execute(
        "SELECT count(*), min(now), max(now) FROM journey_runs WHERE journey = ? "
        "AND finished_at IS NOT NULL",
        (name,),
    ).fetchone()
    entered = db.conn.execute(
        "SELECT count(*) FROM journey_enrolments WHERE journey = ?", (name,)
    ).fetchone()[0]
    if not entered:
        raise NotFound(f"journey {name!r} has no enrolments yet: run `cdp journey run {name}`")
    as_of = runs[2]
    goal = _goal_sql(journey)
    enrolments = _enrolment_outcomes(db, journey, goal)
    attributed = _attributed(db, journeys, journey, attribution)
    steps = _steps(db, journey, attributed)
    groups = _groups(enrolments, journey, as_of)
    totals = _totals(steps)
    if journey.goal_event != "order":  # revenue comes from orders: not measured for an event
        for row in [*steps, totals]:
            row["revenue"] = row["roi"] = None
    report: dict[str, Any] = {
        "report": "journey",
        "journey": name,
        "description": journey.description,
        "goal": {
            "event": journey.goal_event,
            "within_days": _days(journey.goal_within),
        },
        "attribution": attribution,
        "runs": runs[0],
        "first_run": runs[1],
        "as_of": as_of,
        "entered": entered,
        "groups": groups,
        "steps": steps,
        "totals": totals,
        "uplift": _uplifts(groups),
        "links": _has_links(db, name),
        "notes": [],
    }
    _journey_notes(report, journey, enrolments, as_of)
    return report


def journey_reports(
    db: sqlite_utils.Database, config: Config, attribution: str = "last"
) -> list[dict[str, Any]]:
    """The report of every journey that has enrolments, in name order."""
    names = [
        r[0] for r in db.conn.execute("SELECT DISTINCT journey FROM journey_enrolments ORDER BY 1")
    ]
    defined = load_journeys(config.journeys_folder)
    reports = [journey_report(db, config, n, attribution) for n in names if n in defined]
    if not reports:
        raise NotFound("no journey has enrolments yet: run `cdp journey run` first")
    return reports


def _days(duration: timedelta | None) -> float | None:
    return None if duration is None else duration.total_seconds() / 86400


def _goal_sql(journey: Journey) -> tuple[str, list[Any]] | None:
    """(SQL of the goal events: id, one_id, at as a julian day, amount; its parameters)."""
    if not journey.goal_event or not journey.goal_within:
        return None
    if journey.goal_event == "order":
        return (
            "SELECT o.id, k.one_id, julianday(o.ordered_at) AS at, o.amount FROM orders o "
            "JOIN identity_keys k ON k.key = o.identity_key WHERE k.one_id IS NOT NULL "
            f"AND (o.status IS NULL OR lower(o.status) NOT IN ({_VOID}))",
            [],
        )
    return (
        "SELECT e.id, k.one_id, julianday(e.occurred_at) AS at, 0 AS amount FROM events e "
        "JOIN identity_keys k ON k.key = e.identity_key WHERE k.one_id IS NOT NULL "
        "AND e.event = ?",
        [journey.goal_event],
    )


def _group_of(holdout: int, control: int, transactional: bool) -> str:
    """The global control group is left alone by marketing journeys only."""
    if control and not transactional:
        return "control"
    return "holdout" if holdout else "treatment"


def _enrolment_outcomes(
    db: sqlite_utils.Database, journey: Journey, goal: tuple[str, list[Any]] | None
) -> list[dict[str, Any]]:
    """Each enrolment: its group, variant, window start (its first message) and goal outcome.

    The window opens at the enrolment's first message, sent or not: a holdout's first message
    is recorded, skipped, at the moment it would have gone out, so both groups are timed alike.
    """
    days = _days(journey.goal_within) or 0
    goal_sql, params = goal or ("SELECT NULL AS id, NULL AS one_id, NULL AS at, 0 AS amount", [])
    return rows_as_dicts(
        db,
        f"""WITH anchor AS (
  SELECT enrolment_id, min(julianday(created_at)) AS start FROM messages
  WHERE journey = ? GROUP BY enrolment_id
), goal AS ({goal_sql})
SELECT je.id, je.holdout, je.control, coalesce(je.variant, '') AS variant, a.start,
       count(g.id) AS goals, coalesce(sum(g.amount), 0) AS revenue
FROM journey_enrolments je LEFT JOIN anchor a ON a.enrolment_id = je.id
LEFT JOIN goal g ON g.one_id = je.one_id AND g.at >= a.start AND g.at <= a.start + ?
WHERE je.journey = ? GROUP BY je.id ORDER BY je.id""",
        [journey.name, *params, days, journey.name],
    )


def _groups(
    enrolments: list[dict[str, Any]], journey: Journey, as_of: str | None
) -> list[dict[str, Any]]:
    """Per group and variant: entered, reached the first send, converted, rate, revenue."""
    days = _days(journey.goal_within) or 0
    now = _julian(as_of)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for e in enrolments:
        key = (_group_of(e["holdout"], e["control"], journey.transactional), e["variant"])
        g = found.setdefault(key, {"group": key[0], "variant": key[1], "entered": 0,
                                   "reached": 0, "converted": 0, "revenue": 0.0,
                                   "window_open": 0})  # fmt: skip
        g["entered"] += 1
        if e["start"] is None:
            continue
        g["reached"] += 1
        g["converted"] += e["goals"] > 0
        g["revenue"] += e["revenue"]
        g["window_open"] += now is not None and e["start"] + days > now
    rows = sorted(found.values(), key=lambda g: (GROUPS.index(g["group"]), g["variant"]))
    for g in rows:
        g["revenue"] = round(g["revenue"], 2) if journey.goal_event == "order" else None
        g["conversion_rate"] = g["converted"] / g["reached"] if g["reached"] else None
        g["revenue_per_customer"] = (
            round(g["revenue"] / g["reached"], 2) if g["reached"] and g["revenue"] is not None
            else None
        )  # fmt: skip
    return rows


def _julian(text: str | None) -> float | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment.timestamp() / 86400 + 2440587.5


def _uplifts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Treatment (all variants) against the holdout, and against the global control group."""
    totals: dict[str, dict[str, Any]] = {}
    for g in groups:
        t = totals.setdefault(g["group"], {"reached": 0, "converted": 0, "revenue": 0.0})
        t["reached"] += g["reached"]
        t["converted"] += g["converted"]
        # None (a goal that is not an order) stays None
        t["revenue"] = (
            None if g["revenue"] is None or t["revenue"] is None else t["revenue"] + g["revenue"]
        )
    treated = {"treatment": totals.get("treatment", {"reached": 0, "converted": 0, "revenue": 0})}
    variants = [g for g in groups if g["group"] == "treatment" and g["variant"]]
    if len(variants) > 1:  # each variant of a split against the same baseline, too
        treated.update({g["variant"]: g for g in variants})
    result = []
    for baseline in ("holdout", "control"):
        if baseline in totals:
            result += [_compare(name, t, baseline, totals[baseline]) for name, t in treated.items()]
    return result


def _compare(name: str, treated: dict[str, Any], baseline: str, base: dict[str, Any]) -> dict:
    """One comparison, with the conversions and revenue the difference amounts to."""
    comparison = stats.compare(
        int(treated["converted"]), int(treated["reached"]),
        int(base["converted"]), int(base["reached"]), (name, baseline),
    ).as_dict()  # fmt: skip
    comparison["incremental_conversions"] = comparison["incremental_revenue"] = None
    if comparison["uplift"] is not None:
        n = treated["reached"]
        comparison["incremental_conversions"] = round(comparison["uplift"] * n, 1)
        if treated["revenue"] is not None and base["revenue"] is not None:
            per_treated, per_base = treated["revenue"] / n, base["revenue"] / base["reached"]
            comparison["incremental_revenue"] = round((per_treated - per_base) * n, 2)
    return comparison


def _attributed(
    db: sqlite_utils.Database,
    journeys: dict[str, Journey],
    journey: Journey,
    attribution: str,
) -> dict[str, dict[str, float]]:
    """{message id: {conversions, revenue}}: goal events credited to this journey's messages.

    Every journey with the same goal event competes for each goal event: of the messages sent
    to the customer before it, within their enrolment's window, the latest (last touch) or the
    earliest (first touch) gets the credit, so no order is counted twice across journeys.
    """
    goal = _goal_sql(journey)
    if goal is None:
        return {}
    rivals = [j for j in journeys.values() if j.goal_event == journey.goal_event and j.goal_within]
    windows = " UNION ALL ".join("SELECT ?, ?" for _ in rivals)
    window_params = [p for j in rivals for p in (j.name, _days(j.goal_within))]
    order = "DESC" if attribution == "last" else "ASC"
    sent = ", ".join(f"'{s}'" for s in SENT)
    rows = db.conn.execute(
        f"""WITH win(journey, days) AS ({windows}),
anchor AS (SELECT enrolment_id, min(julianday(created_at)) AS start FROM messages
           GROUP BY enrolment_id),
touch AS (
  SELECT m.id, m.journey, m.one_id, julianday(m.created_at) AS at, a.start + w.days AS until
  FROM messages m JOIN anchor a ON a.enrolment_id = m.enrolment_id
  JOIN win w ON w.journey = m.journey WHERE m.status IN ({sent})
), goal AS ({goal[0]}),
ranked AS (
  SELECT g.id AS goal_id, g.amount, t.id AS message_id, t.journey,
         row_number() OVER (PARTITION BY g.id ORDER BY t.at {order}, t.id {order}) AS r
  FROM goal g JOIN touch t ON t.one_id = g.one_id AND g.at >= t.at AND g.at <= t.until
)
SELECT message_id, count(*), sum(amount) FROM ranked WHERE r = 1 AND journey = ?
GROUP BY message_id""",
        [*window_params, *goal[1], journey.name],
    )
    return {m: {"conversions": n, "revenue": revenue or 0.0} for m, n, revenue in rows}


def _has_links(db: sqlite_utils.Database, journey: str) -> bool:
    row = db.conn.execute(
        "SELECT 1 FROM messages WHERE journey = ? AND link_code IS NOT NULL LIMIT 1", (journey,)
    ).fetchone()
    return row is not None


def _skip_label(reason: str) -> str:
    """'unreachable (wechat: no wechat openid; sms: no phone)' -> 'unreachable'."""
    return reason.split(" (")[0].split(":")[0].strip() or "unknown"


def _steps(
    db: sqlite_utils.Database, journey: Journey, attributed: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """Per send step and variant: what went out, what came back, what it cost and earned."""
    messages = rows_as_dicts(
        db,
        """SELECT m.id, m.step, coalesce(e.variant, '') AS variant, m.channel, m.status,
       m.reason, m.cost, m.link_code, i.code AS coupon
FROM messages m JOIN journey_enrolments e ON e.id = m.enrolment_id
LEFT JOIN coupon_issues i ON i.message_id = m.id
WHERE m.journey = ? ORDER BY m.id""",
        (journey.name,),
    )
    clicks = _clicks(db, journey.name)
    redeemed = _redeemed_coupons(db, journey.name)
    order = {s.key: i for i, s in enumerate(journey.sends())}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for m in messages:
        key = (m["step"], m["variant"])
        s = found.setdefault(key, {"step": m["step"], "variant": m["variant"], "entered": 0,
                                   "sent": {}, "skipped": {}, "coupons_issued": 0,
                                   "coupons_redeemed": 0, "clicks": 0, "clicked": 0,
                                   "conversions": 0, "revenue": 0.0, "cost": 0.0})  # fmt: skip
        s["entered"] += 1
        if m["status"] in SENT:
            s["sent"][m["channel"]] = s["sent"].get(m["channel"], 0) + 1
            s["cost"] += m["cost"] or 0
        else:
            label = _skip_label(m["reason"] or "")
            s["skipped"][label] = s["skipped"].get(label, 0) + 1
        if m["coupon"]:
            s["coupons_issued"] += 1
            s["coupons_redeemed"] += m["coupon"] in redeemed
        count = clicks.get(m["link_code"], 0) if m["link_code"] else 0
        s["clicks"] += count
        s["clicked"] += count > 0
        credit = attributed.get(m["id"])
        if credit:
            s["conversions"] += credit["conversions"]
            s["revenue"] += credit["revenue"]
    rows = sorted(found.values(), key=lambda s: (order.get(s["step"], len(order)), s["variant"]))
    for s in rows:
        _rates(s)
    return rows


def _rates(s: dict[str, Any]) -> None:
    """Rounded money, and the rates and ROI of a step (or the totals)."""
    sent = sum(s["sent"].values())
    s["sent_total"] = sent
    s["revenue"] = round(s["revenue"], 2)
    s["cost"] = round(s["cost"], 4)
    s["click_rate"] = s["clicked"] / sent if sent else None
    s["conversion_rate"] = s["conversions"] / sent if sent else None
    s["roi"] = round((s["revenue"] - s["cost"]) / s["cost"], 2) if s["cost"] > 0 else None


def _totals(steps: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"entered": 0, "sent": {}, "skipped": {}, "coupons_issued": 0,
                             "coupons_redeemed": 0, "clicks": 0, "clicked": 0, "conversions": 0,
                             "revenue": 0.0, "cost": 0.0}  # fmt: skip
    for s in steps:
        for key in ("entered", "coupons_issued", "coupons_redeemed", "clicks", "clicked",
                    "conversions", "revenue", "cost"):  # fmt: skip
            total[key] += s[key]
        for key in ("sent", "skipped"):
            for name, n in s[key].items():
                total[key][name] = total[key].get(name, 0) + n
    _rates(total)
    return total


def _clicks(db: sqlite_utils.Database, journey: str) -> dict[str, int]:
    """Click and scan events per link code of this journey's messages."""
    events = ", ".join(f"'{e}'" for e in links.CLICK_EVENTS)
    rows = db.conn.execute(
        f"SELECT e.properties, k.one_id FROM events e "
        f"LEFT JOIN identity_keys k ON k.key = e.identity_key WHERE e.event IN ({events})"
    )
    by_code = links.clicks_by_code(rows)
    codes = {
        r[0]
        for r in db.conn.execute(
            "SELECT link_code FROM messages WHERE journey = ? AND link_code IS NOT NULL",
            (journey,),
        )
    }
    return {code: len(found) for code, found in by_code.items() if code in codes}


def _redeemed_coupons(db: sqlite_utils.Database, journey: str) -> set[str]:
    """Codes this journey issued that came back: on a counted order, or marked redeemed."""
    rows = db.conn.execute(
        f"""SELECT i.code FROM coupon_issues i JOIN messages m ON m.id = i.message_id
WHERE m.journey = ? AND (
  EXISTS (SELECT 1 FROM orders o WHERE o.coupon_code = i.code
          AND (o.status IS NULL OR lower(o.status) NOT IN ({_VOID})))
  OR EXISTS (SELECT 1 FROM coupons c WHERE c.code = i.code AND c.status = 'redeemed'))""",
        (journey,),
    )
    return {r[0] for r in rows}


def _journey_notes(
    report: dict[str, Any], journey: Journey, enrolments: list[dict[str, Any]], as_of: str | None
) -> None:
    notes = report["notes"]
    if not journey.goal_event or not journey.goal_within:
        notes.append("the journey has no goal: conversions are not measured")
    waiting = sum(1 for e in enrolments if e["start"] is None)
    if waiting:
        notes.append(f"{waiting:,} enrolments have not reached their first message yet")
    still_open = sum(g["window_open"] for g in report["groups"])
    if still_open:
        notes.append(
            f"{still_open:,} goal windows were still open at the last run ({as_of}): "
            "conversions may still come"
        )
    if not report["uplift"]:
        notes.append("no holdout: the journey's effect cannot be told from what would have been")
    if report["totals"]["sent_total"] and not report["links"]:
        notes.append("the messages carry no tracked links: clicks are not measured")


# ---------------------------------------------------------------------------------------------
# Funnels


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
    sql, params = _funnel_sql(steps, within, dimension, since, until)
    counts: dict[str, list[int]] = {}
    for value, *per_step in db.conn.execute(sql, {**params, **extra}):
        counts[NONE if value is None else str(value)] = list(per_step)
    overall = [sum(c[i] for c in counts.values()) for i in range(len(steps))]
    report: dict[str, Any] = {
        "report": "funnel",
        "steps": _funnel_rows(steps, overall),
        "within_days": _days(within),
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
    params["within"] = _days(within) if within else 1e9
    params["since"] = since.isoformat() if since else "0000"
    params["until"] = until.isoformat() if until else "9999"
    names = ", ".join(f":e{i}" for i in range(len(steps)))
    parts = [
        f"""ev AS (SELECT k.one_id, e.event, julianday(e.occurred_at) AS at, e.platform,
  substr(e.occurred_at, 1, 10) AS day FROM events e JOIN identity_keys k ON k.key = e.identity_key
  WHERE k.one_id IS NOT NULL AND e.event IN ({names}))""",
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


# ---------------------------------------------------------------------------------------------
# Lifecycle


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


# ---------------------------------------------------------------------------------------------
# Overview

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
            "last_ingest": finished, "newest_record": newest,
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
