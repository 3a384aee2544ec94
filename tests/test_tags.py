"""Features against figures computed by hand, the starter tags on crafted customers, and
`cdp tag` / `cdp segment` as a user runs them."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sqlite3
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import pytest

from cdp_cli.features import event_bounds, event_keys_sql
from cdp_cli.tags import _appended_by_one_id
from tests.conftest import REPO, query

AS_OF = "2026-11-15"
CONFIG = """
store: cdp.db
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member, name: name, phone: phone, city: city, birthday: birthday,
             registered_at: registered}
  orders:
    kind: orders
    key: order_id
    fields: {order_id: order_id, member_no: member, amount: amount, ordered_at: at,
             store: store, channel: channel, category: category, status: status}
    items: {from: items}
  events:
    kind: events
    key: event_id
    fields: {event: event, occurred_at: at, member_no: member}
"""
CRM = """member,name,phone,city,birthday,registered
M1,李娜,13800000001,武汉,1990-05-12,2026-10-01 10:00:00
M2,王芳,13800000002,北京,1985-11-03,2024-01-01 10:00:00
M3,张敏,13800000003,武汉,2000-01-20,2026-11-01 10:00:00
M4,刘洋,13800000004,上海,1979-02-02,2020-01-01 10:00:00
"""
ORDERS = [
    # A (M1): two counted orders, one refunded; the second holds two items.
    {
        "order_id": "O1",
        "member": "M1",
        "amount": 120,
        "at": "2026-11-10 12:00:00",
        "store": "武汉江汉路店",
        "channel": "store",
        "category": "护肤",
    },
    {
        "order_id": "O2",
        "member": "M1",
        "amount": 200,
        "at": "2026-10-20 09:30:00",
        "channel": "own_shop",
        "items": [
            {"category": "彩妆", "price": 150, "quantity": 1},
            {"category": "护肤", "price": 50, "quantity": 1},
        ],
    },
    {
        "order_id": "O3",
        "member": "M1",
        "amount": 300,
        "at": "2025-11-01 09:00:00",
        "channel": "own_shop",
        "status": "refunded",
    },
    # after the as-of date: ignored
    {
        "order_id": "O4",
        "member": "M1",
        "amount": 999,
        "at": "2026-11-20 09:00:00",
        "channel": "own_shop",
    },
    {
        "order_id": "O5",
        "member": "M2",
        "amount": 80,
        "at": "2026-06-01 09:00:00",
        "channel": "tmall",
    },
    {
        "order_id": "O6",
        "member": "M4",
        "amount": 50,
        "at": "2025-01-01 09:00:00",
        "channel": "store",
        "store": "上海店",
    },
]
EVENTS = [
    ("E1", "view_item", "2026-11-14 20:00:00", "M1"),
    ("E2", "view_item", "2026-11-01 20:00:00", "M1"),
    ("E3", "view_item", "2026-08-01 20:00:00", "M1"),
    ("E4", "app_open", "2026-11-15 08:00:00", "M1"),
    ("E5", "view_item", "2026-11-12 08:00:00", "M3"),
    ("E6", "view_item", "2026-11-13 08:00:00", "M3"),
    ("E7", "view_item", "2026-11-14 08:00:00", "M3"),
]


@pytest.fixture
def project(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("orders.jsonl", "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in ORDERS))
    write("events.csv", "event_id,event,at,member\n" + "".join(",".join(e) + "\n" for e in EVENTS))
    shutil.copytree(REPO / "tag_rules", tmp_path / "tag_rules")
    for name, source in [("crm.csv", "crm"), ("orders.jsonl", "orders"), ("events.csv", "events")]:
        assert run("ingest", name, "-s", source).exit_code == 0
    assert run("resolve").exit_code == 0
    return tmp_path


def one_id(tmp_path, member):
    return query(
        tmp_path / "cdp.db", "SELECT one_id FROM id_mapping WHERE source='crm' AND key=?", member
    )[0][0]


def features(tmp_path, member):
    rows = query(
        tmp_path / "cdp.db",
        "SELECT * FROM profile_features WHERE one_id = ?",
        one_id(tmp_path, member),
    )
    names = [r[1] for r in query(tmp_path / "cdp.db", "PRAGMA table_info(profile_features)")]
    return dict(zip(names, rows[0], strict=True))


def test_features_match_hand_computed_figures(run, project):
    result = run("tag", "--as-of", AS_OF, "--json")
    assert result.exit_code == 0, result.output
    a = features(project, "M1")
    assert {k: a[k] for k in (
        "order_count", "total_spent", "avg_order_value", "first_order_at", "last_order_at",
        "days_since_first_order", "days_since_last_order", "order_count_30d", "total_spent_30d",
        "order_count_365d", "order_days", "repurchase_cycle_days", "top_category", "top_store",
        "top_channel", "event_count", "event_count_30d", "days_since_last_seen",
        "days_since_registered", "birthday_month", "birthday_this_month", "age",
        "frequency", "recency", "T", "monetary_value",
    )} == {
        "order_count": 2, "total_spent": 320.0, "avg_order_value": 160.0,
        "first_order_at": "2026-10-20T09:30:00+08:00", "last_order_at": "2026-11-10T12:00:00+08:00",
        "days_since_first_order": 26, "days_since_last_order": 5, "order_count_30d": 2,
        "total_spent_30d": 320.0, "order_count_365d": 2, "order_days": 2,
        "repurchase_cycle_days": 21.0, "top_category": "护肤", "top_store": "武汉江汉路店",
        "top_channel": "store", "event_count": 4, "event_count_30d": 3,
        "days_since_last_seen": 0, "days_since_registered": 45, "birthday_month": 5,
        "birthday_this_month": 0, "age": 36, "frequency": 1, "recency": 21, "T": 26,
        "monetary_value": 120.0,
    }  # fmt: skip
    c = features(project, "M3")
    assert (c["order_count"], c["total_spent"], c["days_since_last_order"], c["frequency"]) == (
        0,
        0,
        None,
        None,
    )
    assert features(project, "M2")["birthday_this_month"] == 1
    counts = query(
        project / "cdp.db",
        "SELECT event, total, days_30 FROM profile_event_counts WHERE one_id = ? ORDER BY event",
        one_id(project, "M1"),
    )
    assert counts == [("app_open", 1, 1), ("view_item", 3, 2)]


def test_events_count_by_day_at_the_edges_of_each_window():
    """Events are compared as timestamps against day bounds (event_bounds), not by their day:
    the as-of day's last second counts, the next day's first does not, and each window opens
    on its first day, whatever the offset the time was written with."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE events (identity_key INTEGER, event TEXT, occurred_at TEXT)")
    conn.execute("CREATE INDEX events_identity ON events (identity_key, event, occurred_at)")
    times = [
        "2026-11-15T23:59:59+08:00",  # the as-of day: in every window
        "2026-11-16T00:00:00-05:00",  # the next day: not counted yet, so recounted then
        "2026-10-17T00:00:00+08:00",  # the 30-day window's first day
        "2026-10-16T23:59:59+08:00",  # the day before it: 90 days, not 30
        "2025-11-16T00:00:00+08:00",  # the 365-day window's first day
        "2025-11-15T23:59:59+08:00",  # the day before it: the total alone
    ]
    conn.executemany("INSERT INTO events VALUES (1, 'view_item', ?)", [(t,) for t in times])
    conn.execute(event_keys_sql(), event_bounds(date(2026, 11, 15)))
    row = conn.execute("SELECT total, days_30, days_90, days_365, last_at, on_day FROM ek")
    assert row.fetchone() == (5, 2, 3, 4, "2026-11-15T23:59:59+08:00", "2026-11-16")
    conn.execute("DROP TABLE ek")
    conn.execute(event_keys_sql(), event_bounds(date(2026, 11, 16)))
    row = conn.execute("SELECT total, days_30, days_90, days_365, last_at, on_day FROM ek")
    # 10-17 left the 30 days and 2025-11-16 the 365; no row is left to come into range
    assert row.fetchone() == (6, 2, 4, 4, "2026-11-16T00:00:00-05:00", None)


def test_rfm_scores_are_quintiles_among_buyers(run, project):
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    rows = query(
        project / "cdp.db",
        "SELECT rfm_r_score, rfm_f_score, rfm_m_score, rfm_segment FROM profile_features WHERE one_id = ?",
        one_id(project, "M1"),
    )
    # Three buyers: M1 most recent, most frequent, most spent -> rank 3 of 3 -> 1 + floor(5*2/3) = 4
    assert rows == [(4, 4, 4, "loyal")]
    assert features(project, "M3")["rfm_segment"] is None


def test_starter_tags_on_crafted_customers(run, project):
    result = run("tag", "--as-of", AS_OF, "--json")
    assert result.exit_code == 0, result.output
    tags = {}
    for member in ("M1", "M2", "M3", "M4"):
        tags[member] = dict(
            query(
                project / "cdp.db",
                "SELECT tag, value FROM profile_tags WHERE one_id = ?",
                one_id(project, member),
            )
        )
    assert tags["M1"]["lifecycle"] == "active"
    assert tags["M2"]["lifecycle"] == "at_risk"
    assert tags["M3"]["lifecycle"] == "new"
    assert tags["M4"]["lifecycle"] == "churned"
    assert tags["M1"]["preferred_channel"] == "store" and tags["M1"]["preferred_category"] == "护肤"
    assert "high_value" not in tags["M1"]  # 320 < 1000
    assert tags["M3"]["new_member"] == "true" and "new_member" not in tags["M1"]
    assert tags["M4"]["dormant"] == "true" and "dormant" not in tags["M1"]
    assert tags["M2"]["birthday_this_month"] == "true"
    assert tags["M3"]["browser_not_buyer"] == "true"  # three views in 30 days, no order
    assert "browser_not_buyer" not in tags["M1"]  # two views only
    assert tags["M1"]["rfm_segment"] == "loyal"
    assert "repurchase_due" not in tags["M1"]  # 5 days since, cycle 21


def test_tag_changes_are_recorded_and_reruns_change_nothing(run, project):
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    first = query(project / "cdp.db", "SELECT count(*) FROM tag_changes WHERE change = 'added'")[0][
        0
    ]
    assert first > 0
    again = json.loads(run("tag", "--as-of", AS_OF, "--json").stdout)
    assert all(t["changed"] == 0 and t["removed"] == 0 for t in again["tags"].values())
    # nothing new: the run is skipped, and says so; --force recomputes, and changes nothing
    assert again["unchanged_since"] == 1
    assert query(project / "cdp.db", "SELECT count(*) FROM tag_runs") == [(1,)]
    forced = json.loads(run("tag", "--as-of", AS_OF, "--force", "--json").stdout)
    assert forced["unchanged_since"] is None
    assert {n: t["customers"] for n, t in forced["tags"].items()} == {
        n: t["customers"] for n, t in again["tags"].items()
    }
    assert all(t["changed"] == 0 and t["removed"] == 0 for t in forced["tags"].values())
    # A month later M1 is past their repurchase cycle: the tag is added and lifecycle stays.
    later = json.loads(run("tag", "--as-of", "2026-12-15", "--json").stdout)
    assert later["tags"]["repurchase_due"]["changed"] >= 1
    m1 = one_id(project, "M1")
    changes = query(
        project / "cdp.db",
        "SELECT tag, change, old_value, new_value FROM tag_changes WHERE one_id = ? AND run_id = 3 ORDER BY tag",
        m1,
    )
    assert ("repurchase_due", "added", None, "true") in changes
    # M3 is no longer new: their lifecycle value changes to prospect
    m3 = query(
        project / "cdp.db",
        "SELECT change, old_value, new_value FROM tag_changes WHERE one_id = ? AND tag = 'lifecycle' AND run_id = 3",
        one_id(project, "M3"),
    )
    assert m3 == [("changed", "new", "prospect")]


READING_TAGS = """
- name: still_new
  when: "tag('lifecycle') = 'new'"
- name: member_reader
  when: "has_tag('new_member')"
- name: second_hand
  value: "tag('still_new')"
- name: wuhan_fan
  when: "in_segment('wuhan_skincare')"
- name: ever_active
  when: "tag('lifecycle') = 'active' or has_tag('ever_active')"
- name: viewer
  value: "event_count('view_item', '90d') + 10 * event_count('view_item', '2w')"
"""


def test_a_tag_reads_the_values_of_this_run(run, project, write):
    """Tags that read tags see the values computed in the same run, two levels down and
    through a segment, never those stored by the run before; a tag reading itself sees its
    stored value. Missing event counts are 0."""
    write("tag_rules/reads.yaml", READING_TAGS)

    def tags_of(member):
        return dict(
            query(
                project / "cdp.db",
                "SELECT tag, value FROM profile_tags WHERE one_id = ? AND tag IN "
                "('still_new', 'member_reader', 'second_hand', 'wuhan_fan', 'ever_active', "
                "'viewer')",
                one_id(project, member),
            )
        )

    # First run: nothing is stored yet, so each value read was computed in this run.
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    assert tags_of("M3") == {
        "still_new": "true", "member_reader": "true", "second_hand": "true", "viewer": "33",
    }  # fmt: skip
    # 90 days: two views (the third is older); 2 weeks: one view
    assert tags_of("M1") == {"wuhan_fan": "true", "ever_active": "true", "viewer": "12"}
    assert tags_of("M2") == {"viewer": "0"}
    # A month later M3 is no longer new nor a new member: every tag built on that goes.
    later = json.loads(run("tag", "--as-of", "2026-12-15", "--json").stdout)
    assert tags_of("M3") == {"viewer": "3"}
    assert {t: later["tags"][t]["removed"] for t in ("still_new", "member_reader")} == {
        "still_new": 1, "member_reader": 1,
    }  # fmt: skip
    removed = query(
        project / "cdp.db",
        "SELECT tag, old_value FROM tag_changes WHERE one_id = ? AND change = 'removed' "
        "AND run_id = 2 ORDER BY tag",
        one_id(project, "M3"),
    )
    assert {"member_reader", "new_member", "second_hand", "still_new"} <= {t for t, _ in removed}
    # M1 has churned by mid-2027, and ever_active keeps the value it had stored.
    assert run("tag", "--as-of", "2027-06-01").exit_code == 0
    assert query(
        project / "cdp.db",
        "SELECT value FROM profile_tags WHERE one_id = ? AND tag = 'lifecycle'",
        one_id(project, "M1"),
    ) == [("churned",)]
    assert tags_of("M1")["ever_active"] == "true"
    # --only reads the other tags as they are stored.
    only = json.loads(run("tag", "--as-of", AS_OF, "--only", "still_new", "--json").stdout)
    assert only["tags"] == {"still_new": {"customers": 0, "changed": 0, "removed": 0}}


def test_a_first_run_writes_in_bulk_and_keeps_every_index(run, project):
    """A first run writes more rows than profile_tags and tag_changes hold: their indexes are
    dropped for the write and made again, as they were."""
    indexes = (
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
        "AND tbl_name IN ('profile_tags', 'tag_changes') ORDER BY name"
    )
    before = query(project / "cdp.db", indexes)
    names = {"profile_tags_tag", "tag_changes_tag", "tag_changes_one_id"}
    assert names <= {name for name, _ in before}
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    assert query(project / "cdp.db", indexes) == before
    assert run("tag", "--as-of", "2026-12-15").exit_code == 0  # a few changes: no bulk
    assert query(project / "cdp.db", indexes) == before
    plan = query(
        project / "cdp.db",
        "EXPLAIN QUERY PLAN SELECT one_id FROM profile_tags WHERE tag = 'lifecycle'",
    )
    assert "profile_tags_tag" in plan[0][-1]


def test_a_first_run_fills_the_customer_index_of_tag_changes_in_order(run, project):
    """A store's first run writes tag_changes in customer order into an empty table: the
    index by customer stays up for the write, and holds every row, as one sorted after
    would."""
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    db = project / "cdp.db"
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    rows = "SELECT one_id, id FROM tag_changes {} WHERE one_id > '' ORDER BY one_id, id"
    by_index = query(db, rows.format("INDEXED BY tag_changes_one_id"))
    assert by_index and by_index == query(db, rows.format("NOT INDEXED"))


@pytest.mark.parametrize(
    ("stored", "appended"), [((), True), (("C1",), True), (("C1", "C2"), True), (("C3",), False)]
)
def test_the_customer_index_stays_up_only_for_rows_after_its_last(stored, appended):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE tag_changes (id INTEGER PRIMARY KEY, one_id TEXT)")
    conn.executemany("INSERT INTO tag_changes (one_id) VALUES (?)", [(s,) for s in stored])
    values = "SELECT 'C2' AS one_id UNION ALL SELECT 'C4'"  # the new rows, in one_id order
    assert _appended_by_one_id(conn, values) == (["tag_changes_one_id"] if appended else [])
    assert _appended_by_one_id(conn, "SELECT 'C2' AS one_id WHERE 0") == ["tag_changes_one_id"]


def test_tag_only_and_list(run, project):
    result = run("tag", "--as-of", AS_OF, "--only", "lifecycle", "--json")
    assert list(json.loads(result.stdout)["tags"]) == ["lifecycle"]
    listed = json.loads(run("tag", "--list", "--json").stdout)
    lifecycle = next(t for t in listed if t["name"] == "lifecycle")
    assert lifecycle["values"] == {"active": 1, "at_risk": 1, "new": 1, "churned": 1}
    assert run("tag", "--only", "lifecycel").stderr.startswith("Error: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- name: x\n  when: totl_spent > 1\n",
            "tag_rules/bad.yaml:1: tag x: unknown field 'totl_spent' (did you mean 'total_spent'?)",
        ),
        (
            "- name: x\n  when: tag('lifecycel') = 'new'\n",
            "tag_rules/bad.yaml:1: tag x: unknown tag 'lifecycel' (did you mean 'lifecycle'?)",
        ),
        (
            "- name: x\n  category: rules\n  when: order_count > 1\n",
            "tag_rules/bad.yaml:2: tag x: category must be one of attribute, statistical, rule, predictive, got 'rules' (did you mean 'rule'?)",
        ),
        (
            "- name: x\n  when: a\n  value: b\n",
            "tag_rules/bad.yaml:1: tag x: give exactly one of when, cases or value",
        ),
        (
            "- name: X Y\n  when: order_count > 1\n",
            "tag_rules/bad.yaml:1: a tag needs a name of lower-case letters, digits and _ (got 'X Y')",
        ),
        (
            "- name: a\n  when: has_tag('b')\n- name: b\n  when: has_tag('a')\n",
            "tag_rules/bad.yaml:1: tag a: tags read each other in a cycle: a -> b -> a",
        ),
        (
            "- name: lifecycle\n  when: order_count > 1\n",
            "tag_rules/lifecycle.yaml:6: tag 'lifecycle' is defined twice (first at tag_rules/bad.yaml:1)",
        ),
        ("- name: x\n  when: [\n", "tag_rules/bad.yaml:3: invalid YAML"),
    ],
)
def test_a_broken_tag_file_fails_before_anything_is_written(run, project, text, message):
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    before = query(project / "cdp.db", "SELECT count(*) FROM tag_changes")
    (project / "tag_rules" / "bad.yaml").write_text(text, encoding="utf-8")
    result = run("tag", "--as-of", "2026-12-15")
    assert result.exit_code == 2, result.output
    assert result.stderr.replace(str(project) + "/", "").startswith(f"Error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert query(project / "cdp.db", "SELECT count(*) FROM tag_changes") == before


def test_segment_count_portrait_and_export(run, project):
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    counted = json.loads(run("segment", "--rule", "city = '武汉'", "--json").stdout)
    assert (counted["customers"], counted["base"]) == (2, 4)
    assert {r["one_id"] for r in counted["sample"]} == {
        one_id(project, "M1"),
        one_id(project, "M3"),
    }
    assert all("****" in r["phone"] for r in counted["sample"])
    shown = json.loads(
        run("segment", "--rule", "order_count >= 1", "--by", "city", "--json").stdout
    )
    by_city = {r["value"]: (r["audience"], r["base"], r["index"]) for r in shown["portrait"]}
    assert by_city == {"武汉": (1, 2, 67), "北京": (1, 1, 133), "上海": (1, 1, 133)}
    exported = run(
        "segment",
        "--rule",
        "tag('lifecycle') in ('active', 'at_risk')",
        "--export",
        "out.csv",
        "--fields",
        "one_id,phone,member_no,total_spent,lifecycle",
    )
    assert exported.exit_code == 0, exported.output
    with (project / "out.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["member_no"], r["phone"], r["lifecycle"]) for r in rows) == [
        ("M1", "+8613800000001", "active"),
        ("M2", "+8613800000002", "at_risk"),
    ]
    assert (
        run(
            "segment",
            "--rule",
            "order_count >= 1",
            "--export",
            "out.jsonl",
            "--fields",
            "one_id,total_spent",
        ).exit_code
        == 0
    )
    assert len((project / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    bad = run("segment", "--rule", "totl_spent > 1")
    assert (bad.exit_code, bad.stderr) == (
        2,
        "Error: unknown field 'totl_spent' (did you mean 'total_spent'?)\n",
    )
    unknown_field = run(
        "segment", "--rule", "order_count >= 1", "--export", "x.csv", "--fields", "phnoe"
    )
    assert (unknown_field.exit_code, unknown_field.stderr) == (
        2,
        "Error: unknown field 'phnoe' (did you mean 'phone'?)\n",
    )


def test_segment_fields_look_identifiers_up_by_customer(run, project):
    """A phone or member number in a sample or export is found through the customer's
    identifiers, not by scanning every identifier of that type for each customer."""
    import sqlite3
    from datetime import date

    from cdp_cli.rules.book import load_rulebook
    from cdp_cli.rules.vocabulary import BASE_FROM, RuleContext
    from cdp_cli.segments import _select

    assert run("tag", "--as-of", AS_OF).exit_code == 0
    context = RuleContext(load_rulebook(project / "tag_rules"), date(2026, 11, 15))
    columns, params = _select(["one_id", "phone", "member_no"], context)
    conn = sqlite3.connect(project / "cdp.db")
    plan = conn.execute(
        f"EXPLAIN QUERY PLAN SELECT {', '.join(columns)} FROM {BASE_FROM}", params
    ).fetchall()
    conn.close()
    lookups = [row[-1] for row in plan if " i " in f" {row[-1]} "]
    assert len(lookups) == 2 and all("identifiers_one_id" in step for step in lookups), plan


def test_named_segments_and_in_segment(run, project):
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    winback = json.loads(run("segment", "winback", "--json").stdout)
    assert winback["customers"] == 0  # M2 is at risk but spent 80 < 300
    inside = json.loads(
        run("segment", "--rule", "in_segment('wuhan_skincare') or city = '上海'", "--json").stdout
    )
    assert {r["one_id"] for r in inside["sample"]} == {one_id(project, "M1"), one_id(project, "M4")}
    missing = run("segment", "nope")
    assert missing.exit_code == 2 and "no segment named 'nope'" in missing.stderr


def test_rules_compile_for_duckdb_too():
    duckdb = pytest.importorskip("duckdb")
    from datetime import date

    from cdp_cli.rules.book import load_rulebook
    from cdp_cli.rules.compiler import compile_rule
    from cdp_cli.rules.vocabulary import RuleContext

    book = load_rulebook(REPO / "tag_rules")
    context = RuleContext(book, date(2026, 11, 15))
    rule = compile_rule(
        "total_spent_365d >= 1000 and city in ('武汉', '北京') and not (order_count = 0)",
        context.schema(),
        dialect="duckdb",
    )
    con = duckdb.connect()
    con.execute("CREATE TABLE profiles (one_id TEXT, city TEXT)")
    con.execute(
        "CREATE TABLE profile_features (one_id TEXT, total_spent_365d DOUBLE, order_count INTEGER)"
    )
    con.execute("INSERT INTO profiles VALUES ('a', '武汉'), ('b', '北京'), ('c', '上海')")
    con.execute("INSERT INTO profile_features VALUES ('a', 1500, 3), ('b', 900, 2), ('c', 5000, 9)")
    rows = con.execute(
        f"SELECT p.one_id FROM profiles p JOIN profile_features f ON f.one_id = p.one_id WHERE {rule.sql}",
        rule.params,
    ).fetchall()
    assert rows == [("a",)]


@pytest.mark.parametrize("path", sorted((REPO / "tag_rules").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_tag_file_is_valid(path, tmp_path):
    from datetime import date

    from cdp_cli.rules.book import load_rulebook
    from cdp_cli.tags import compile_tags

    shutil.copytree(REPO / "tag_rules", tmp_path / "tag_rules")
    book = load_rulebook(tmp_path / "tag_rules")
    names = {t.name for t in book.tags.values() if t.path.endswith(path.name)}
    names |= {s.name for s in book.segments.values() if s.path.endswith(path.name)}
    assert names, f"{path.name} defines nothing"
    compiled = compile_tags(book, date(2026, 11, 15))
    assert {c.tag.name for c in compiled} == set(book.tags)


def test_every_feature_is_documented():
    from cdp_cli.features import FEATURES

    text = (REPO / "docs" / "features.md").read_text(encoding="utf-8")
    assert [name for name in FEATURES if f"`{name}`" not in text] == []


def test_tag_warns_when_batches_are_not_resolved(run, project, write):
    write(
        "more.csv",
        "member,name,phone,city,birthday,registered\nM9,赵六,13800000009,成都,,2026-11-01 10:00:00\n",
    )
    assert run("ingest", "more.csv", "-s", "crm").exit_code == 0
    result = run("tag", "--as-of", AS_OF)
    assert result.exit_code == 0
    assert "1 ingested batches are not resolved yet: run `cdp resolve` first" in result.stderr


LIFECYCLE_VALUES = "its values: new, active, at_risk, churned, prospect"


def test_tag_values_no_customer_can_have_are_warnings_naming_file_and_line(run, project, write):
    """A tag rule, a named segment or an ad-hoc rule comparing a tag with a value it never
    takes selects no one without an error: each says so, and still runs."""
    write(
        "tag_rules/typo.yaml",
        "- name: typo\n  when: \"tag('lifecycle') = 'actve'\"\n"
        "- name: fine\n  when: \"tag('lifecycle') = 'active'\"\n",
    )
    with (project / "tag_rules/segments.yaml").open("a") as f:
        f.write("\n- name: typo_segment\n  rule: \"tag('dormant') = 'yes'\"\n")
    lines = (project / "tag_rules/segments.yaml").read_text().splitlines()
    line = lines.index("- name: typo_segment") + 1
    tag_warning = (
        "tag_rules/typo.yaml:1: tag typo: tag lifecycle never takes the value 'actve' "
        f"(did you mean 'active'?); {LIFECYCLE_VALUES}"
    )
    result = run("tag", "--as-of", AS_OF, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["warnings"] == [tag_warning]
    assert result.stderr == f"Warning: {tag_warning}\n"
    again = run("tag", "--as-of", AS_OF, "--silent", "--json")  # nothing new: still checked
    assert json.loads(again.stdout)["warnings"] == [tag_warning] and again.stderr == ""

    rule = "tag('lifecycle') in ('active', 'at-risk')"
    typo = run("segment", "--rule", rule, "--json")
    assert typo.exit_code == 0
    segment_warning = (
        "tag lifecycle never takes the value 'at-risk' (did you mean 'at_risk'?); "
        + LIFECYCLE_VALUES
    )
    assert json.loads(typo.stdout)["warnings"] == [segment_warning]
    assert typo.stderr == f"Warning: {segment_warning}\n"
    right = run("segment", "--rule", "tag('lifecycle') = 'active'", "--json")
    assert json.loads(right.stdout)["customers"] == json.loads(typo.stdout)["customers"]
    assert "warnings" not in json.loads(right.stdout) and right.stderr == ""
    named = run("segment", "typo_segment", "--sample", "0")
    assert named.exit_code == 0
    assert named.stderr == (
        f"Warning: tag_rules/segments.yaml:{line}: segment typo_segment: tag dormant never "
        "takes the value 'yes'; its values: true\n"
    )


def test_cdp_run_passes_on_the_tag_rules_warnings(run, project, write):
    write("tag_rules/typo.yaml", "- name: typo\n  when: \"tag('lifecycle') = 'actve'\"\n")
    result = run("run", "--as-of", AS_OF, "--json")
    assert result.exit_code == 0, result.output
    tag_stage = next(s for s in json.loads(result.stdout)["stages"] if s["stage"] == "tag")
    assert tag_stage["details"] == {
        "warnings": [
            "tag_rules/typo.yaml:1: tag typo: tag lifecycle never takes the value 'actve' "
            f"(did you mean 'active'?); {LIFECYCLE_VALUES}"
        ]
    }
    assert "Warning: tag: tag_rules/typo.yaml:1: tag typo: tag lifecycle never takes" in (
        result.stderr
    )


def test_segments_and_journeys_say_when_customers_lag_the_data(run, project, write):
    """Each reads features and tags: as the last resolve and `cdp tag` left them."""
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    segment = ("segment", "--rule", "city = '武汉'", "--sample", "0", "--json")
    assert run(*segment).stderr == "" and run("journey", "run", "--dry-run").stderr == ""
    write(
        "more.csv",
        "member,name,phone,city,birthday,registered\nM9,赵六,13800000009,武汉,,2026-11-01 10:00:00\n",
    )
    assert run("ingest", "more.csv", "-s", "crm").exit_code == 0
    unresolved = "1 ingested batches are not resolved yet: run `cdp resolve` first\n"
    assert run(*segment).stderr == unresolved
    assert run("journey", "run", "--dry-run").stderr == unresolved
    assert run("resolve").exit_code == 0
    untagged = (
        "customers were resolved after the last `cdp tag`: run `cdp tag` for their features\n"
    )
    before = json.loads(run(*segment).stdout)["customers"]
    assert run(*segment).stderr == untagged
    assert run("journey", "run", "--dry-run").stderr == untagged
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    after = run(*segment)
    assert after.stderr == "" and json.loads(after.stdout)["customers"] == before + 1


# Four amounts that add up to each edge exactly, but not in floating point in most orders.
EDGE_AMOUNTS = {
    "300.00": ("16.57", "10.53", "4.44", "268.46"),
    "299.99": ("140.39", "103.33", "33.44", "22.83"),
    "300.01": ("4.43", "5.59", "16.59", "273.40"),
}
SPEND_BANDS = """
- name: spend_band
  category: rule
  description: buckets on either side of 300
  cases:
    - {value: over,    when: "total_spent >= 300.01"}
    - {value: exactly, when: "total_spent >= 300"}
    - {value: edge,    when: "total_spent >= 299.99"}
    - {value: under,   when: "total_spent < 299.99"}
"""


def expected_band(total: Decimal) -> str:
    edges = [("over", "300.01"), ("exactly", "300"), ("edge", "299.99")]
    return next((value for value, edge in edges if total >= Decimal(edge)), "under")


def test_money_at_bucket_edges_sums_exactly_in_any_order(run, write, tmp_path):
    """Each edge's amounts go in, in every order, one customer per order: every customer's
    total is the exact decimal sum, and lands in the bucket Decimal puts it in."""
    write("cdp.yaml", CONFIG)
    write("tag_rules/bands.yaml", SPEND_BANDS)
    crm, orders, totals = ["member,name,phone,city,birthday,registered"], [], {}
    for edge, amounts in EDGE_AMOUNTS.items():
        for n, ordering in enumerate(itertools.permutations(amounts)):
            member = f"E{edge.replace('.', '')}-{n}"
            crm.append(f"{member},客户,,武汉,,2026-01-01 10:00:00")
            totals[member] = sum(Decimal(a) for a in ordering)
            for day, amount in enumerate(ordering, start=1):
                orders.append(
                    {"order_id": f"{member}-{day}", "member": member, "amount": float(amount),
                     "at": f"2026-11-{day:02d} 10:00:00", "channel": "store"}
                )  # fmt: skip
    write("crm.csv", "\n".join(crm) + "\n")
    write("orders.jsonl", "".join(json.dumps(o) + "\n" for o in orders))
    assert run("ingest", "crm.csv", "-s", "crm").exit_code == 0
    assert run("ingest", "orders.jsonl", "-s", "orders").exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    rows = query(
        tmp_path / "cdp.db",
        """SELECT m.key, f.total_spent, f.total_spent_30d, f.avg_order_value, f.rfm_monetary,
                  f.monetary_value, t.value
           FROM id_mapping m JOIN profile_features f USING (one_id)
           LEFT JOIN profile_tags t ON t.one_id = f.one_id AND t.tag = 'spend_band'
           WHERE m.source = 'crm'""",
    )
    assert len(rows) == 72
    for member, total, total_30d, average, monetary, repeat_mean, band in rows:
        exact = totals[member]
        assert (total, total_30d, monetary) == (float(exact),) * 3, member
        assert average == float((exact / 4).quantize(Decimal("0.0001"), ROUND_HALF_UP)), member
        assert band == expected_band(exact), (member, total, band)
        assert repeat_mean >= 0
    bands = {band for *_, band in rows}
    assert bands == {"over", "exactly", "edge"}


@pytest.mark.parametrize(
    "change",
    ["new batch", "rules", "as-of date", "forget"],
)
def test_a_tag_run_is_skipped_only_when_nothing_it_reads_has_changed(run, write, project, change):
    assert run("tag", "--as-of", AS_OF).exit_code == 0
    args = ["tag", "--as-of", AS_OF, "--json"]
    if change == "new batch":
        order = {"order_id": "O99", "member": "M1", "amount": 50, "at": "2026-11-10 10:00:00"}
        write("more.jsonl", json.dumps(order) + "\n")
        assert run("ingest", "more.jsonl", "-s", "orders").exit_code == 0
        assert run("resolve").exit_code == 0
    elif change == "rules":
        rules = project / "tag_rules" / "extra.yaml"
        rules.write_text("- name: big_spender\n  when: total_spent > 100\n", encoding="utf-8")
    elif change == "as-of date":
        args[2] = "2026-11-16"
    else:
        assert run("forget", one_id(project, "M4"), "--yes").exit_code == 0
    result = json.loads(run(*args).stdout)
    assert result["unchanged_since"] is None, change
    assert query(project / "cdp.db", "SELECT count(*) FROM tag_runs") == [(2,)]
