"""A journey's effect: per step and variant (sent, skipped, coupons, clicks, conversions,
revenue, cost, ROI) and treatment against holdout with the uplift, its interval and p-value.

Reports only read the store, and each is a plain dict: what `--json` prints and a notebook can
use. Every figure is defined in docs/reports.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cdp_cli.config import Config
from cdp_cli.errors import NotFound, UsageError
from cdp_cli.features import VOID_STATUSES
from cdp_cli.messaging import links
from cdp_cli.messaging.journeys import Journey, load_journeys, named_journey
from cdp_cli.reports import stats
from cdp_cli.reports.common import as_days
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import rows_as_dicts

ATTRIBUTIONS = ("last", "first")
SENT = ("queued", "written")  # a message that went (or is about to go) out
GROUPS = ("treatment", "holdout", "control")
# Why a customer waits at a send step, for enrolments deferred before the reason was stored:
# quiet hours were then the one thing that deferred a message.
DEFERRED_REASON = "quiet hours"
_VOID = ", ".join(f"'{s}'" for s in VOID_STATUSES)  # constants of ours, not user text


# ---------------------------------------------------------------------------------------------
# Journeys


# What `cost` (and so ROI) counts, said in every journey report; docs/reports.md defines it.
COST_COUNTS = (
    "cost = messages sent (channels.<channel>.cost each; an SMS per billed segment) "
    "+ the face value of redeemed coupons"
)


def journey_report(
    db: sqlite_utils.Database, config: Config, name: str, attribution: str = "last"
) -> dict[str, Any]:
    """One journey's effect: per step and variant, per group, and treatment against holdout."""
    if attribution not in ATTRIBUTIONS:
        raise UsageError(f"attribution is one of {', '.join(ATTRIBUTIONS)}, not {attribution!r}")
    journeys, journey = _journey(config, name)
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
    counts = journey_counts(db, journeys, journey, as_of, attribution)
    groups, steps, totals = counts["groups"], counts["steps"], counts["totals"]
    report: dict[str, Any] = {
        "report": "journey",
        "journey": name,
        "description": journey.description,
        "goal": {
            "event": journey.goal_event,
            "within_days": as_days(journey.goal_within),
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
        "cost_counts": COST_COUNTS,
        "notes": [],
    }
    _journey_notes(report, journey, counts["waiting_first"], as_of)
    return report


def _journey(config: Config, name: str) -> tuple[dict[str, Journey], Journey]:
    journeys = load_journeys(config.journeys_folder)
    return journeys, named_journey(journeys, name, config.journeys_folder)


def journey_counts(
    db: sqlite_utils.Database,
    journeys: dict[str, Journey],
    journey: Journey,
    as_of: str | None,
    attribution: str = "last",
) -> dict[str, Any]:
    """The counts `cdp report journey` and `cdp journey status` both show, from one place:
    per group and variant (entered, reached, converted), per step and variant (sent, skipped
    by reason, conversions), and their totals. Steps are labelled with their names."""
    goal = _goal_sql(journey)
    enrolments = _enrolment_outcomes(db, journey, goal)
    steps = _steps(db, journey, _attributed(db, journeys, journey, attribution))
    totals = _totals(steps)
    if journey.goal_event != "order":  # revenue comes from orders: not measured for an event
        for row in [*steps, totals]:
            row["revenue"] = row["roi"] = None
    for row in steps:
        row["step"] = journey.label(row["step"])
    return {
        "groups": _groups(enrolments, journey, as_of),
        "steps": steps,
        "totals": totals,
        "waiting_first": sum(1 for e in enrolments if e["start"] is None),
    }


def journey_status(db: sqlite_utils.Database, config: Config, name: str) -> dict[str, Any]:
    """Where a journey's customers are now: enrolments by status, active ones per step, who
    waits for a deferred message and why; and the same counts as its report."""
    journeys, journey = _journey(config, name)
    enrolments = dict(
        db.conn.execute(
            "SELECT status, count(*) FROM journey_enrolments WHERE journey = ? GROUP BY 1", (name,)
        )
    )
    if not enrolments:
        raise NotFound(f"journey {name!r} has no enrolments yet: run `cdp journey run {name}`")
    as_of = db.conn.execute(
        "SELECT max(now) FROM journey_runs WHERE journey = ? AND finished_at IS NOT NULL", (name,)
    ).fetchone()[0]
    active_at = {
        journey.label(step or ""): n
        for step, n in db.conn.execute(
            "SELECT coalesce(step, ''), count(*) FROM journey_enrolments WHERE journey = ? "
            "AND status = 'active' GROUP BY 1",
            (name,),
        )
    }
    counts = journey_counts(db, journeys, journey, as_of)
    return {
        "journey": name,
        "as_of": as_of,
        "enrolments": enrolments,
        "active_at": active_at,
        "waiting": _waiting(db, journey),
        "groups": counts["groups"],
        "steps": counts["steps"],
        "totals": counts["totals"],
    }


def _waiting(db: sqlite_utils.Database, journey: Journey) -> list[dict[str, Any]]:
    """Active enrolments held at a send step whose message has not gone yet, per step and
    reason (quiet hours, the frequency cap, or a problem of the project's: messaging/send.py),
    with the earliest time one of them may go."""
    sends = {s.key for s in journey.sends()}
    found: list[dict[str, Any]] = []
    for step, reason, customers, until in db.conn.execute(
        "SELECT je.step, coalesce(je.wait_reason, ?), count(*), min(je.next_at) "
        "FROM journey_enrolments je WHERE je.journey = ? AND je.status = 'active' "
        "AND je.step IS NOT NULL AND NOT EXISTS (SELECT 1 FROM messages m "
        "WHERE m.enrolment_id = je.id AND m.step = je.step) GROUP BY 1, 2 ORDER BY 4, 1, 2",
        (DEFERRED_REASON, journey.name),
    ):
        if step in sends:
            found.append({"step": journey.label(step), "reason": reason,
                          "customers": customers, "until": until})  # fmt: skip
    return found


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


def group_of(holdout: int, control: int, transactional: bool) -> str:
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
    days = as_days(journey.goal_within) or 0
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
    days = as_days(journey.goal_within) or 0
    now = _julian(as_of)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for e in enrolments:
        key = (group_of(e["holdout"], e["control"], journey.transactional), e["variant"])
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
    window_params = [p for j in rivals for p in (j.name, as_days(j.goal_within))]
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
       m.reason, m.cost, m.link_code, i.code AS coupon,
       (SELECT max(c.face_value) FROM coupons c WHERE c.code = i.code) AS face_value
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
                                   "conversions": 0, "revenue": 0.0, "message_cost": 0.0,
                                   "coupon_cost": 0.0})  # fmt: skip
        s["entered"] += 1
        if m["status"] in SENT:
            s["sent"][m["channel"]] = s["sent"].get(m["channel"], 0) + 1
            s["message_cost"] += m["cost"] or 0
        else:
            label = _skip_label(m["reason"] or "")
            s["skipped"][label] = s["skipped"].get(label, 0) + 1
        if m["coupon"]:
            s["coupons_issued"] += 1
            if m["coupon"] in redeemed:
                s["coupons_redeemed"] += 1
                s["coupon_cost"] += m["face_value"] or 0  # the discount given, once redeemed
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
    s["message_cost"] = round(s["message_cost"], 4)
    s["coupon_cost"] = round(s["coupon_cost"], 2)
    s["cost"] = round(s["message_cost"] + s["coupon_cost"], 4)
    s["click_rate"] = s["clicked"] / sent if sent else None
    s["conversion_rate"] = s["conversions"] / sent if sent else None
    s["roi"] = round((s["revenue"] - s["cost"]) / s["cost"], 2) if s["cost"] > 0 else None


def _totals(steps: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"entered": 0, "sent": {}, "skipped": {}, "coupons_issued": 0,
                             "coupons_redeemed": 0, "clicks": 0, "clicked": 0, "conversions": 0,
                             "revenue": 0.0, "message_cost": 0.0, "coupon_cost": 0.0}  # fmt: skip
    for s in steps:
        for key in ("entered", "coupons_issued", "coupons_redeemed", "clicks", "clicked",
                    "conversions", "revenue", "message_cost", "coupon_cost"):  # fmt: skip
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
    report: dict[str, Any], journey: Journey, waiting: int, as_of: str | None
) -> None:
    notes = report["notes"]
    if not journey.goal_event or not journey.goal_within:
        notes.append("the journey has no goal: conversions are not measured")
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
