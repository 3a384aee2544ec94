"""Reports: hand-computed journeys, attribution, statistics, funnels, lifecycle, overview, HTML."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp_cli.messaging import links
from cdp_cli.reports import stats
from tests.conftest import demo_once, query

CONFIG = """
store: cdp.db
timezone: Asia/Shanghai
channels:
  sms: {cost: 0.04}
  email: {cost: 0.001}
sources:
  crm:
    kind: customers
    key: member
    fields: {member_no: member, name: name, phone: phone, email: email}
  orders:
    kind: orders
    key: order_id
    fields: {order_id: order_id, member_no: member, amount: amount, ordered_at: at,
             status: status, coupon_code: coupon}
  events:
    kind: events
    key: id
    fields: {event: event, occurred_at: at, member_no: member, platform: platform,
             properties: props}
  optouts:
    kind: consents
    fields: {phone: phone, channel: channel, status: "=opt_out", consented_at: at}
"""
CRM = """member,name,phone,email
M1,李娜,13800000001,li@qq.com
M2,王芳,13800000002,
M3,张敏,13800000003,
M4,刘洋,13800000004,
M5,陈静,,chen@qq.com
M6,杨帆,13800000006,
"""
# Orders, hand-placed against the journeys below (alpha's window: 11-01 10:00 + 7 days).
ORDERS = """order_id,member,amount,at,status,coupon
O1,M1,100,2026-11-04 12:00:00,paid,CPN1
O2,M2,50,2026-11-05 12:00:00,paid,
O3,M2,70,2026-11-20 12:00:00,paid,
O4,M3,30,2026-11-02 12:00:00,paid,
O5,M4,20,2026-10-31 12:00:00,paid,
O6,M5,40,2026-11-06 12:00:00,paid,
O7,M2,999,2026-11-06 12:00:00,refunded,
"""
EVENTS = [
    # clicks on alpha's first message (code1): by code, and by a URL typed in capitals
    ("C1", "link_click", "2026-11-01 11:00:00", "M1", "sms", {"code": "code1"}),
    ("C2", "qr_scan", "2026-11-01 12:00:00", "", "", {"url": "https://hy.example.com/?c=CODE1"}),
    ("C3", "click", "2026-11-01 12:00:00", "M2", "", {"code": "unknown"}),
    ("C4", "view_item", "2026-11-01 12:00:00", "M1", "", {"code": "code1"}),  # not a click
    # the funnel view_item -> add_to_cart -> order
    ("F1", "view_item", "2026-11-01 09:00:00", "M1", "ios", {}),
    ("F2", "add_to_cart", "2026-11-01 09:10:00", "M1", "ios", {}),
    ("F3", "order", "2026-11-02 10:00:00", "M1", "ios", {}),
    ("F4", "view_item", "2026-11-01 09:00:00", "M2", "android", {}),
    ("F5", "add_to_cart", "2026-11-10 09:00:00", "M2", "android", {}),  # 9 days after
    ("F6", "order", "2026-11-11 09:00:00", "M2", "android", {}),
    ("F7", "view_item", "2026-11-02 09:00:00", "M3", "ios", {}),
    ("F8", "order", "2026-11-02 10:00:00", "M3", "ios", {}),  # skipped add_to_cart
    ("F9", "add_to_cart", "2026-10-30 09:00:00", "M4", "web", {}),  # before viewing
    ("F10", "view_item", "2026-11-01 09:00:00", "M4", "web", {}),
    ("F11", "add_to_cart", "2026-11-01 09:00:00", "M5", "web", {}),  # never viewed
]
JOURNEY = """name: {name}
entry: {{when: "order_count >= 0"}}
goal: {{event: order, within: 7d}}
holdout: 50%
steps:
  - send: {{channel: sms, template: hello}}
"""
LIFECYCLE = """
- name: lifecycle
  cases:
    - {value: active, when: "days_since_last_order <= 30"}
    - {value: lapsed, when: "days_since_last_order > 30"}
"""


def _events_csv() -> str:
    lines = ["id,event,at,member,platform,props"]
    for id_, event, at, member, platform, props in EVENTS:
        quoted = '"' + json.dumps(props).replace('"', '""') + '"'
        lines.append(f"{id_},{event},{at},{member},{platform},{quoted}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def project(run, write, tmp_path):
    """Six customers, their orders, clicks and funnel events; two journeys with no runs yet."""
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("orders.csv", ORDERS)
    write("events.csv", _events_csv())
    write("optouts.csv", "phone,channel,at\n13800000004,sms,2026-01-01 10:00:00\n")
    write("tag_rules/lifecycle.yaml", LIFECYCLE)
    write("journeys/alpha.yaml", JOURNEY.format(name="alpha"))
    write("journeys/beta.yaml", JOURNEY.format(name="beta"))
    for name, source in [("crm.csv", "crm"), ("orders.csv", "orders"), ("events.csv", "events"),
                         ("optouts.csv", "optouts")]:  # fmt: skip
        result = run("ingest", name, "-s", source)
        assert result.exit_code == 0, result.output
    assert run("resolve").exit_code == 0
    return tmp_path


def one_id(tmp_path: Path, member: str) -> str:
    return query(
        tmp_path / "cdp.db", "SELECT one_id FROM id_mapping WHERE source='crm' AND key=?", member
    )[0][0]


AT = "2026-11-01T10:00:00+08:00"


@pytest.fixture
def journeys(project):
    """The outcome of journey runs, written by hand so every figure can be worked out:

    alpha: M1 and M2 sent (M1 with coupon CPN1 and link code1), M3 and M4 held out, M5
    unreachable, M6 not at its first message yet; it ran again on 11-20, when every window
    had closed. beta: M1 sent two days after alpha; it has not run since.
    """
    ids = {m: one_id(project, m) for m in ("M1", "M2", "M3", "M4", "M5", "M6")}
    conn = sqlite3.connect(project / "cdp.db")
    with conn:
        conn.execute(
            "INSERT INTO journey_runs (id, journey, now, tag_cursor, started_at, finished_at) "
            "VALUES (1, 'alpha', ?, 0, ?, ?), (2, 'beta', '2026-11-03T10:00:00+08:00', 0, ?, ?), "
            "(3, 'alpha', '2026-11-20T10:00:00+08:00', 0, ?, ?)",
            (AT, AT, AT, AT, AT, AT, AT),
        )
        enrolments = [  # id, journey, member, holdout
            (1, "alpha", "M1", 0), (2, "alpha", "M2", 0), (3, "alpha", "M3", 1),
            (4, "alpha", "M4", 1), (5, "alpha", "M5", 0), (6, "alpha", "M6", 0),
            (7, "beta", "M1", 0),
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO journey_enrolments (id, journey, one_id, enrolment, holdout, status, "
            "step, entered_at) VALUES (?, ?, ?, 1, ?, 'active', 'steps[0]', ?)",
            [(i, j, ids[m], h, AT) for i, j, m, h in enrolments],
        )
        messages = [  # id, run, journey, enrolment, member, channel, status, reason, cost, code, at
            ("alpha:1", 1, "alpha", 1, "M1", "sms", "written", None, 0.04, "code1", AT),
            ("alpha:2", 1, "alpha", 2, "M2", "sms", "written", None, 0.04, "code2", AT),
            ("alpha:3", 1, "alpha", 3, "M3", None, "skipped", "holdout", None, None, AT),
            ("alpha:4", 1, "alpha", 4, "M4", None, "skipped", "holdout", None, None, AT),
            ("alpha:5", 1, "alpha", 5, "M5", None, "skipped", "unreachable (sms: no phone)",
             None, None, AT),
            ("beta:7", 2, "beta", 7, "M1", "sms", "written", None, 0.04, "code7",
             "2026-11-03T10:00:00+08:00"),
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO messages (id, run_id, journey, enrolment_id, one_id, step, channel, "
            "status, reason, cost, link_code, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'steps[0]', ?, ?, ?, ?, ?, ?)",
            [(m[0], m[1], m[2], m[3], ids[m[4]], *m[5:]) for m in messages],
        )
        conn.execute(
            "INSERT INTO coupon_issues VALUES ('CPN1', 'TEST', ?, 'alpha:1', ?)", (ids["M1"], AT)
        )
    conn.close()
    return project


def report_json(run, *args: str) -> dict:
    result = run("report", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------
# Journeys


def test_journey_groups_count_goal_orders_in_the_window_of_the_first_message(run, journeys):
    report = report_json(run, "journey", "alpha")
    assert report["entered"] == 6
    treatment, holdout = report["groups"]
    # M1 (O1), M2 (O2; O3 is after the window, O7 refunded) and M5 (O6: unreachable, but
    # assigned to treatment all the same) converted; M6 has no first message yet.
    assert treatment == {
        "group": "treatment", "variant": "", "entered": 4, "reached": 3, "converted": 3,
        "revenue": 190.0, "window_open": 0, "conversion_rate": 1.0, "revenue_per_customer": 63.33,
    }  # fmt: skip
    # M3 ordered in the window; M4's order came before the first message.
    assert holdout == {
        "group": "holdout", "variant": "", "entered": 2, "reached": 2, "converted": 1,
        "revenue": 30.0, "window_open": 0, "conversion_rate": 0.5, "revenue_per_customer": 15.0,
    }  # fmt: skip
    assert "1 enrolments have not reached their first message yet" in report["notes"]


def test_journey_steps_sent_skipped_coupons_clicks_and_last_touch(run, journeys):
    [step] = report_json(run, "journey", "alpha")["steps"]
    assert step == {
        "step": "steps[0]", "variant": "", "entered": 5, "sent": {"sms": 2},
        "skipped": {"holdout": 2, "unreachable": 1}, "coupons_issued": 1, "coupons_redeemed": 1,
        "clicks": 2, "clicked": 1,
        # O1 came after beta's message too, so the last touch is beta's: alpha keeps O2 only
        "conversions": 1, "revenue": 50.0, "message_cost": 0.08, "coupon_cost": 0.0,
        "cost": 0.08, "sent_total": 2, "click_rate": 0.5, "conversion_rate": 0.5, "roi": 624.0,
    }  # fmt: skip
    beta = report_json(run, "journey", "beta")
    assert (beta["totals"]["conversions"], beta["totals"]["revenue"]) == (1, 100.0)
    assert beta["uplift"] == []
    assert beta["groups"][0]["window_open"] == 1
    assert (
        "1 goal windows were still open at the last run (2026-11-03T10:00:00+08:00): "
        "conversions may still come" in beta["notes"]
    )
    assert (
        "no holdout: the journey's effect cannot be told from what would have been"
        in (beta["notes"])
    )


def test_cost_counts_redeemed_coupons_face_value_and_says_so(run, journeys):
    """CPN1 came back on O1: its ¥20 is part of the cost, and ROI is computed with it."""
    conn = sqlite3.connect(journeys / "cdp.db")
    with conn:
        conn.execute(
            "INSERT INTO coupons (source, key, code, campaign, face_value, status, batch_id) "
            "VALUES ('manual', 'CPN1', 'CPN1', 'TEST', 20, 'redeemed', 1)"
        )
    conn.close()
    report = report_json(run, "journey", "alpha")
    [step] = report["steps"]
    assert (step["message_cost"], step["coupon_cost"], step["cost"]) == (0.08, 20.0, 20.08)
    assert step["roi"] == round((50.0 - 20.08) / 20.08, 2)
    assert "face value of redeemed coupons" in report["cost_counts"]
    result = run("report", "journey", "alpha")
    assert result.exit_code == 0, result.output
    assert report["cost_counts"] in " ".join(result.stderr.split())


def test_first_touch_gives_the_shared_order_to_the_earlier_message(run, journeys):
    alpha = report_json(run, "journey", "alpha", "--attribution", "first")
    assert (alpha["totals"]["conversions"], alpha["totals"]["revenue"]) == (2, 150.0)
    beta = report_json(run, "journey", "beta", "--attribution", "first")
    assert (beta["totals"]["conversions"], beta["totals"]["revenue"]) == (0, 0.0)


def test_journey_uplift_says_too_small_to_tell(run, journeys):
    [uplift] = report_json(run, "journey", "alpha")["uplift"]
    assert (uplift["treatment_converted"], uplift["treatment_customers"]) == (3, 3)
    assert (uplift["baseline_converted"], uplift["baseline_customers"]) == (1, 2)
    assert uplift["uplift"] == pytest.approx(0.5)
    assert uplift["relative_uplift"] == pytest.approx(1.0)
    assert uplift["too_small"] is True
    assert (
        uplift["verdict"] == "too small to tell: treatment has 3 customers; at least 30 are needed"
    )
    assert uplift["incremental_conversions"] == 1.5
    assert uplift["incremental_revenue"] == pytest.approx((190 / 3 - 15) * 3, abs=0.01)


def test_the_control_group_is_its_own_baseline_except_in_transactional_journeys(
    run, write, journeys
):
    conn = sqlite3.connect(journeys / "cdp.db")
    with conn:
        conn.execute("UPDATE journey_enrolments SET control = 1 WHERE id = 2")  # M2, messaged
    conn.close()
    report = report_json(run, "journey", "alpha")
    assert [(g["group"], g["reached"], g["converted"]) for g in report["groups"]] == [
        ("treatment", 2, 2),
        ("holdout", 2, 1),
        ("control", 1, 1),
    ]
    assert [(u["treatment"], u["baseline"]) for u in report["uplift"]] == [
        ("treatment", "holdout"),
        ("treatment", "control"),
    ]
    write("journeys/alpha.yaml", JOURNEY.format(name="alpha") + "transactional: true\n")
    report = report_json(run, "journey", "alpha")
    assert [g["group"] for g in report["groups"]] == ["treatment", "holdout"]


def test_a_goal_event_other_than_an_order_converts_without_revenue(run, write, journeys):
    write(
        "journeys/alpha.yaml",
        JOURNEY.format(name="alpha").replace("event: order", "event: view_item"),
    )
    report = report_json(run, "journey", "alpha")
    # M1 viewed an item after the message (C4); M2 only before it; M3 (holdout) the next day
    assert [(g["group"], g["converted"], g["revenue"]) for g in report["groups"]] == [
        ("treatment", 1, None),
        ("holdout", 1, None),
    ]
    [step] = report["steps"]
    assert (step["conversions"], step["revenue"], step["roi"]) == (1, None, None)
    assert report["uplift"][0]["incremental_revenue"] is None


def test_all_journeys_and_tables(run, journeys):
    both = report_json(run, "journey")
    assert [r["journey"] for r in both] == ["alpha", "beta"]
    result = run("report", "journey", "alpha")
    assert result.exit_code == 0
    assert "alpha: 6 entered; goal order within 7 days of the first message" in result.stdout
    assert "too small to tell: treatment has 3 customers" in result.stdout
    assert "alpha: 1 enrolments have not reached their first message yet" in result.stderr


def test_journey_report_errors_are_one_line(run, project):
    result = run("report", "journey")
    assert result.exit_code == 1
    assert result.stderr == ("Error: no journey has enrolments yet: run `cdp journey run` first\n")
    result = run("report", "journey", "alpha")
    assert result.exit_code == 1
    assert "journey 'alpha' has no enrolments yet: run `cdp journey run alpha`" in result.stderr
    result = run("report", "journey", "gamma")
    assert result.exit_code == 1
    assert "no journey named 'gamma' in" in result.stderr
    result = run("report", "journey", "Alpha")
    assert result.exit_code == 1
    assert result.stderr.endswith(" (did you mean 'alpha'?)\n")


def test_journey_report_matches_a_real_run(run, write, project):
    """The engine's own run, reported: sends and skips agree with what the run said."""
    write("templates/sms/hello.txt", "{# test #}你好 {{ customer.name }}")
    result = run("tag", "--as-of", "2026-11-15")
    assert result.exit_code == 0
    ran = run("journey", "run", "alpha", "--now", "2026-11-15 10:30", "--json")
    assert ran.exit_code == 0, ran.output
    [done] = json.loads(ran.stdout)
    report = report_json(run, "journey", "alpha")
    assert report["entered"] == done["enrolled"]
    assert report["totals"]["sent"] == done["sent"]
    assert report["totals"]["skipped"] == done["skipped"]
    held = sum(g["entered"] for g in report["groups"] if g["group"] == "holdout")
    assert held == done["holdout"]


# ---------------------------------------------------------------------------------------------
# Statistics, against published values


def test_wilson_and_newcombe_intervals_match_newcombe_1998():
    low, high = stats.wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = stats.newcombe_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    low, high = stats.newcombe_interval(9, 10, 3, 10)
    assert (round(low, 4), round(high, 4)) == (0.1705, 0.8090)


def test_two_proportion_z_test():
    # pooled p = 104/150; z = 0.2 / sqrt(p(1-p)(1/70 + 1/80)) = 2.6501
    assert stats.two_proportion_p_value(56, 70, 48, 80) == pytest.approx(0.008045, abs=1e-6)
    assert stats.two_proportion_p_value(10, 100, 10, 100) == pytest.approx(1.0)
    assert stats.two_proportion_p_value(0, 50, 0, 50) == 1.0  # no conversions at all


def test_verdicts_and_the_too_small_rule():
    assert stats.compare(56, 70, 48, 80).verdict == (
        "treatment converted more than holdout (95% confidence, p = 0.00805)"
    )
    assert stats.compare(48, 80, 56, 70).verdict.startswith("treatment converted less than")
    assert stats.compare(40, 100, 36, 100).verdict == (
        "no clear difference: the 95% interval includes zero (p = 0.56)"
    )
    assert stats.compare(20, 29, 5, 30).verdict == (
        "too small to tell: treatment has 29 customers; at least 30 are needed"
    )
    # 3 + 2 conversions in 200: 2.5 expected per group at the pooled rate
    assert stats.compare(3, 100, 2, 100).verdict.startswith(
        "too small to tell: too few conversions: 2.5 expected in treatment"
    )
    assert not stats.compare(5, 100, 5, 100).too_small  # 5 expected: enough
    assert stats.compare(3, 10, 0, 0).verdict == "too small to tell: holdout has no customers"


# ---------------------------------------------------------------------------------------------
# Tracked links


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True),
    path=st.from_regex(r"(/[a-zA-Z0-9._~-]{0,10}){0,3}", fullmatch=True),
    params=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), max_size=5),
    fragment=st.text(max_size=8),
    utm=st.dictionaries(st.sampled_from(links.UTM_KEYS), st.text(min_size=1, max_size=12)),
    message_id=st.text(min_size=1, max_size=40),
)
def test_tracked_url_keeps_the_base_and_adds_utm_and_code(
    scheme, host, path, params, fragment, utm, message_id
):
    base = urlunsplit((scheme, host, path, urlencode(params), fragment))
    code = links.short_code(message_id)
    url = links.tracked_url(base, code, utm)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (scheme, host, path)
    assert parts.fragment == urlsplit(base).fragment
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {**utm, "c": code}
    kept = [(k, v) for k, v in params if k not in ours]
    assert query == kept + [(k, ours[k]) for k in (*links.UTM_KEYS, "c") if k in ours]
    assert links.code_of({"url": url}) == code


@given(st.text(min_size=1, max_size=60))
def test_short_codes_are_short_url_safe_and_stable(message_id):
    code = links.short_code(message_id)
    assert len(code) == links.CODE_LENGTH
    assert set(code) <= set(links.CODE_ALPHABET)
    assert code == links.short_code(message_id)
    assert links.short_code(message_id, 10).startswith(code)


def test_a_taken_code_is_lengthened(tmp_path):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, link_code TEXT)")
    code = links.short_code("journey:1:steps[0]")
    conn.execute("INSERT INTO messages VALUES ('other', ?)", (code,))
    assert links.assign_code(conn, "journey:1:steps[0]") == links.short_code(
        "journey:1:steps[0]", 9
    )
    pending: set[str] = set()
    first = links.assign_code(conn, "journey:2:steps[0]", pending)
    assert first in pending
    pending.add(links.short_code("journey:3:steps[0]"))  # given out earlier in this batch
    assert len(links.assign_code(conn, "journey:3:steps[0]", pending)) == 9


def test_tracked_url_refuses_an_unknown_utm_key():
    with pytest.raises(ValueError, match="not a UTM parameter: utm_camp"):
        links.tracked_url("https://x.example.com", "abc", {"utm_camp": "x"})


def test_code_of_click_properties():
    assert links.code_of({"code": " AB12 "}) == "ab12"
    assert links.code_of({"url": "https://x.example.com/p?a=1&c=xyz#top"}) == "xyz"
    assert links.code_of({"url": "https://x.example.com/p?a=1"}) is None
    assert links.code_of({}) is None
    assert links.code_of(None) is None


def test_message_link_writes_a_qr_code_that_holds_the_url(tmp_path):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, link_code TEXT)")
    utm = links.link_utm("winback", "sms", "sms_only")
    link = links.message_link(conn, "winback:1:s", "https://hy.example.com/?p=1", utm,
                              qr_folder=tmp_path / "qr")  # fmt: skip
    assert link.url == (
        "https://hy.example.com/?p=1&utm_source=cdp&utm_medium=sms&utm_campaign=winback"
        f"&utm_content=sms_only&c={link.code}"
    )
    assert link.qr == tmp_path / "qr" / f"{link.code}.png"
    assert link.qr.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "qr").glob(".*"))  # no temporary file left behind


# ---------------------------------------------------------------------------------------------
# Funnels


def counts(report: dict) -> list[int]:
    return [s["customers"] for s in report["steps"]]


def test_funnel_counts_each_customer_once_in_order(run, project):
    report = report_json(run, "funnel", "--steps", "view_item,add_to_cart,order")
    # M1 to M4 viewed; M1 and M2 added to cart after viewing (M4 before: not counted); both
    # ordered after. M5 never viewed.
    assert counts(report) == [4, 2, 2]
    assert report["steps"][1]["from_previous"] == 0.5
    assert report["steps"][2] == {
        "step": "order", "customers": 2, "from_previous": 1.0, "from_first": 0.5
    }  # fmt: skip


def test_funnel_within_and_by(run, project):
    report = report_json(run, "funnel", "--steps", "view_item,add_to_cart,order", "--within", "7d")
    assert counts(report) == [4, 1, 1]  # M2 added to cart 9 days after viewing
    report = report_json(
        run, "funnel", "--steps", "view_item,add_to_cart,order", "--within", "7d", "--by", "channel"
    )
    groups = {g["value"]: [s["customers"] for s in g["steps"]] for g in report["groups"]}
    assert groups == {"ios": [2, 1, 1], "android": [1, 0, 0], "web": [1, 0, 0]}
    since = report_json(run, "funnel", "--steps", "view_item,order", "--since", "2026-11-02")
    assert counts(since) == [1, 1]  # M3 only


def test_funnel_order_step_counts_the_orders_table(run, project):
    report = report_json(run, "funnel", "--steps", "add_to_cart,order")
    # M1 and M2 have order events after adding to cart; M4 (O5 on 10-31, after adding on
    # 10-30) and M5 (O6) only have orders in the orders table.
    assert counts(report) == [4, 4]


def test_funnel_unknown_step_is_an_error_with_a_suggestion(run, project):
    result = run("report", "funnel", "--steps", "view_itme,order")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --steps: no event 'view_itme' in the store (did you mean 'view_item'?)"
    ]


def test_funnel_usage_errors(run, project):
    result = run("report", "funnel", "--steps", "view_item")
    assert result.exit_code == 2
    assert "a funnel needs at least two steps" in result.stderr
    result = run("report", "funnel", "--steps", "a,b", "--by", "colour")
    assert result.exit_code == 2
    assert "--by 'colour': expected platform" in result.stderr
    result = run("report", "funnel", "--steps", "a,b", "--within", "7x")
    assert result.exit_code == 2
    assert "Invalid value for --within: invalid duration '7x'" in result.stderr


# ---------------------------------------------------------------------------------------------
# Lifecycle and overview


def test_lifecycle_stages_and_movement(run, project):
    result = run("report", "lifecycle")
    assert result.exit_code == 1
    assert "no customer has the tag 'lifecycle': run `cdp tag`" in result.stderr
    assert run("tag", "--as-of", "2026-11-21").exit_code == 0
    typo = run("report", "lifecycle", "--tag", "lifecycl")
    assert (typo.exit_code, typo.stderr) == (
        1, "Error: no customer has the tag 'lifecycl' (did you mean 'lifecycle'?)\n",
    )  # fmt: skip
    first = report_json(run, "lifecycle")
    assert first["stages"] == [{"stage": "active", "customers": 5}]  # M6 never ordered
    assert first["flows"] == []
    assert first["notes"] == [
        "one tag run so far: movement between stages shows from the next `cdp tag`"
    ]
    assert run("tag", "--as-of", "2026-12-10").exit_code == 0  # only M2 ordered within 30 days
    report = report_json(run, "lifecycle")
    assert report["stages"] == [
        {"stage": "lapsed", "customers": 4},
        {"stage": "active", "customers": 1},
    ]
    assert report["flows"] == [{"from": "active", "to": "lapsed", "customers": 4}]
    assert [(p["as_of"], p["stages"]) for p in report["periods"]] == [
        ("2026-11-21", {"active": 5}),
        ("2026-12-10", {"active": 1, "lapsed": 4}),
    ]


def test_overview(run, project):
    assert run("tag", "--as-of", "2026-11-21").exit_code == 0
    report = report_json(run, "overview")
    assert (report["customers"], report["identified"], report["identified_share"]) == (6, 6, 1.0)
    assert {r["table"]: (r["linked"], r["rows"]) for r in report["linked_rows"]} == {
        "orders": (7, 7),
        "events": (14, 15),  # the QR scan carries no identifier
    }
    reach = {r["channel"]: (r["with_address"], r["opted_out"], r["reachable"])
             for r in report["reachable"]}  # fmt: skip
    assert reach == {"sms": (5, 1, 4), "email": (2, 0, 2), "any": (None, None, 5)}
    assert report["tags"] == [{"tag": "lifecycle", "customers": 5, "values": 1, "coverage": 5 / 6}]
    assert report["tags_as_of"] == "2026-11-21"
    sources = {s["source"]: (s["rows"], (s["newest_record"] or "")[:10]) for s in report["sources"]}
    assert sources["crm"] == (6, "")  # no registration dates
    assert sources["orders"] == (7, "2026-11-20")
    assert sources["optouts"] == (1, "2026-01-01")


@pytest.fixture
def server_in_new_york(monkeypatch):
    """The server's clock set to New York, far from the project's Asia/Shanghai."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_report_times_are_in_the_projects_timezone_not_the_servers(
    run, write, project, server_in_new_york
):
    write("more.csv", "member,name,phone,email\nM9,Nine,13800000009,\n")
    assert run("ingest", "more.csv", "-s", "crm").exit_code == 0  # stamped by a New York clock
    report = report_json(run, "overview", "--html", "overview.html")
    last_ingest = {s["source"]: s["last_ingest"] for s in report["sources"]}["crm"]
    assert last_ingest.endswith("+08:00"), last_ingest
    assert report["as_of"].endswith("+08:00")
    page = (project / "overview.html").read_text(encoding="utf-8")
    made = re.search(r"Made by cdp on (\S+)\.", page)
    assert made and made.group(1).endswith("+08:00"), made


def test_overview_of_an_empty_store(run, write):
    write("cdp.yaml", CONFIG)
    assert run("ingest").exit_code == 0  # nothing declared: an empty store
    report = report_json(run, "overview")
    assert (report["customers"], report["identified_share"]) == (0, None)
    assert run("report", "overview").exit_code == 0


# ---------------------------------------------------------------------------------------------
# HTML, in a real browser


def test_html_escapes_user_text_and_is_self_contained(run, journeys, write):
    write("journeys/alpha.yaml", JOURNEY.format(name="alpha").replace(
        "name: alpha", 'name: alpha\ndescription: "<script>alert(1)</script> 花漾"'))  # fmt: skip
    result = run("report", "journey", "alpha", "--html", "alpha.html")
    assert result.exit_code == 0
    assert "wrote alpha.html" in result.stderr
    page = (journeys / "alpha.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 花漾" in page
    assert '<meta charset="utf-8">' in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium (no browser download). Without it the test skips, saying how to get
    it, but under CI (CI=true, as .ci/run sets) it fails: there the browser test must run."""
    found = Path(shutil.which("chromium") or "/usr/bin/chromium")
    if not found.exists():
        message = "no Chromium for the HTML test: apt-get install chromium (Debian's package)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}; CI={os.environ['CI']} requires it")
        pytest.skip(message)
    return found


def _chromium_page(chromium: Path, path: Path):
    """Open the file in headless Chromium; yields (page, console errors)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    manager = sync_playwright().start()
    browser = manager.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
    page = browser.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return manager, browser, page, errors


def data(page, selector: str, names: list[str]) -> list[dict]:
    return page.eval_on_selector_all(
        selector, "(els, names) => els.map(e => Object.fromEntries(names.map(n => [n, e.dataset[n]])))",
        names,
    )  # fmt: skip


def number(text: str) -> float | None:
    return None if text == "" else float(text)


def test_html_charts_carry_the_json_numbers_in_chromium(chromium, run, journeys):
    assert run("tag", "--as-of", "2026-11-21").exit_code == 0
    assert run("tag", "--as-of", "2026-12-10").exit_code == 0
    funnel_args = ["--steps", "view_item,add_to_cart,order", "--by", "platform"]
    reports = {
        "journey": report_json(run, "journey", "alpha", "--html", "journey.html"),
        "funnel": report_json(run, "funnel", *funnel_args, "--html", "funnel.html"),
        "lifecycle": report_json(run, "lifecycle", "--html", "lifecycle.html"),
        "overview": report_json(run, "overview", "--html", "overview.html"),
    }
    manager, browser, page, errors = _chromium_page(chromium, journeys / "journey.html")
    try:
        journey = reports["journey"]
        [uplift] = data(
            page, "svg[data-chart=uplift] g.comparison", ["uplift", "low", "high", "pValue"]
        )
        [expected] = journey["uplift"]
        assert [number(uplift[k]) for k in ("uplift", "low", "high", "pValue")] == [
            expected["uplift"],
            *expected["interval"],
            expected["p_value"],
        ]
        bars = data(page, "svg[data-chart=conversion] g", ["group", "reached", "converted", "rate"])
        assert [(b["group"], int(b["reached"]), int(b["converted"]), number(b["rate"]))
                for b in bars] == [(g["group"], g["reached"], g["converted"], g["conversion_rate"])
                                   for g in journey["groups"]]  # fmt: skip
        steps = data(page, "table[data-table=steps] tr[data-step]", ["step", "conversions", "roi"])
        assert [(s["step"], int(s["conversions"]), number(s["roi"])) for s in steps] == [
            ("steps[0]", 1, 624.0), ("total", 1, 624.0)
        ]  # fmt: skip

        page.goto((journeys / "funnel.html").resolve().as_uri())
        charts = page.eval_on_selector_all(
            "svg[data-chart=funnel]",
            "els => els.map(s => [s.dataset.group, [...s.querySelectorAll('g[data-step]')]"
            ".map(g => [g.dataset.step, +g.dataset.customers, g.dataset.fromPrevious])])",
        )
        funnel = reports["funnel"]
        expected_charts = [["", funnel["steps"]]] + [[g["value"], g["steps"]]
                                                     for g in funnel["groups"]]  # fmt: skip
        assert [
            [value, [[s, n, number(rate)] for s, n, rate in steps]] for value, steps in charts
        ] == [
            [value, [[s["step"], s["customers"], s["from_previous"]] for s in steps]]
            for value, steps in expected_charts
        ]

        page.goto((journeys / "lifecycle.html").resolve().as_uri())
        lifecycle = reports["lifecycle"]
        stages = data(page, "svg[data-chart=stages] g", ["stage", "customers"])
        assert [(s["stage"], int(s["customers"])) for s in stages] == [
            (s["stage"], s["customers"]) for s in lifecycle["stages"]
        ]
        flows = data(page, "svg[data-chart=flow] path.flow", ["from", "to", "customers"])
        assert sorted((f["from"], f["to"], int(f["customers"])) for f in flows) == sorted(
            (f["from"], f["to"], f["customers"]) for f in lifecycle["flows"]
        )
        periods = data(page, "svg[data-chart=periods] rect", ["asOf", "stage", "customers"])
        assert {
            (p["asOf"], p["stage"]): int(p["customers"]) for p in periods if p["customers"] != "0"
        } == {
            (p["as_of"], stage): n for p in lifecycle["periods"] for stage, n in p["stages"].items()
        }

        page.goto((journeys / "overview.html").resolve().as_uri())
        reach = data(page, "svg[data-chart=reachable] g", ["channel", "reachable"])
        assert [(r["channel"], int(r["reachable"])) for r in reach] == [
            (r["channel"], r["reachable"]) for r in reports["overview"]["reachable"]
        ]
        assert page.title() == "cdp report: overview"
        assert errors == []
    finally:
        browser.close()
        manager.stop()


# ---------------------------------------------------------------------------------------------
# The demo


def test_demo_ends_with_a_labelled_simulated_response_the_reports_and_the_html(
    tmp_path_factory, tmp_path
):
    ran = demo_once(tmp_path_factory)
    shown = (ran / "stdout").read_text(encoding="utf-8")
    assert (ran / "exit").read_text() == "0", shown + (ran / "stderr").read_text(encoding="utf-8")
    stages = [line for line in shown.splitlines() if line.startswith("== ")]
    assert stages[-4:] == [
        "== journeys ==",
        "== response (simulated: not real data) ==",
        "== tag, two weeks on ==",
        "== reports ==",
    ]
    reports = shown.split("== reports ==")[1]
    assert "# Reachable per channel (an address and no opt-out)" in reports
    assert re.search(r"^winback: \d+ entered; goal order within 14 days", reports, re.M)
    assert "# Effect: treatment against holdout" in reports
    assert "wrote report.html" in reports
    assert (ran / "stderr").read_text(encoding="utf-8").splitlines()[-2:] == [
        "",
        "The demo project is in demo; try: cd demo && cdp status",
    ]
    folder = shutil.copytree(ran / "demo", tmp_path / "demo")  # opening the store writes beside it
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert [m for m in re.findall(r'data-report="(\w+)"', page)][:2] == ["overview", "journey"]
    assert page.count('data-report="journey"') == len(list((folder / "journeys").glob("*.yaml")))
    assert 'data-report="lifecycle"' in page and 'data-report="funnel"' in page
    orders = sorted((folder / "responses").glob("simulated-orders-*.jsonl"))
    assert [p.name for p in orders] == [
        "simulated-orders-20261116T1030.jsonl",
        "simulated-orders-20261118T1030.jsonl",
        "simulated-orders-20261129T1030.jsonl",
    ]
    ingested = query(folder / "cdp.db", "SELECT count(*) FROM orders WHERE key LIKE 'SIM%'")
    assert ingested[0][0] == sum(len(p.read_text().splitlines()) for p in orders) > 0


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_demo_never_replaces_a_project_cdp_init_made(run, tmp_path, force):
    # A real project: cdp init, the user's data ingested, an outbound file waiting to be sent.
    assert run("init", "shop").exit_code == 0
    folder = tmp_path / "shop"
    (folder / "cdp.yaml").write_text(
        (folder / "cdp.yaml").read_text(encoding="utf-8") + "# the user's own edit\n",
        encoding="utf-8",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert run("ingest", "--source", "crm_members", "--silent").exit_code == 0
    (folder / "outbound").mkdir()
    (folder / "outbound" / "sms.csv").write_text("phone\n13800138000\n", encoding="utf-8")
    before = _snapshot(folder)
    assert "cdp.db" in before

    result = run("demo", "shop", *force)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: shop holds cdp.yaml, tag_rules, journeys ... and no .cdp-demo (the mark of a "
        "folder cdp demo made), so the demo will not replace it, --force or not; run it in a "
        "new folder"
    ]
    assert _snapshot(folder) == before


def test_demo_force_refuses_any_folder_holding_what_it_would_write(run, tmp_path):
    # Not a project at all, but a store and a report.html of the user's own.
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "report.html").write_text("<p>mine</p>", encoding="utf-8")
    result = run("demo", "mine", "--force")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: mine holds report.html and no .cdp-demo")
    assert (folder / "report.html").read_text(encoding="utf-8") == "<p>mine</p>"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html"]


@pytest.mark.slow  # two whole demos (the first demo test runs one)
def test_demo_force_in_a_new_or_empty_folder_just_runs_and_leaves_its_mark(run, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    result = run("demo", "empty", "--force", "--json")
    assert result.exit_code == 0, result.output
    assert "cdp demo --force" in (folder / ".cdp-demo").read_text(encoding="utf-8")
    refused = run("demo", "empty")
    assert refused.exit_code == 1
    assert refused.stderr == "Error: empty already holds a demo; --force starts it over\n"
    # --force over a demo starts over: the same outbound files, nothing left from the last.
    before = sorted(p.relative_to(folder) for p in (folder / "outbound").rglob("*"))
    (folder / "outbound" / "sms" / "stale.csv").write_text("old", encoding="utf-8")
    again = run("demo", "empty", "--force", "--json")
    assert again.exit_code == 0, again.output
    assert sorted(p.relative_to(folder) for p in (folder / "outbound").rglob("*")) == before


def test_journey_status_and_report_agree_on_every_count(run, journeys):
    report = report_json(run, "journey", "alpha")
    status = json.loads(run("journey", "status", "alpha", "--json").stdout)
    assert status["groups"] == report["groups"]
    assert status["steps"] == report["steps"]
    assert status["totals"] == report["totals"]
    assert status["groups"][0]["converted"] == 3  # worked out from the orders, as the report does
