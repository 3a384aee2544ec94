"""segments.py through the library: describe, count, sample, portrait and export of audiences
on the sample data, checked against SQL over the same store."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import pytest
import sqlite_utils

from cdp_cli import Project, segments
from cdp_cli.errors import RuleError, UsageError
from cdp_cli.identity.resolve import resolve
from cdp_cli.ingest import ingest
from cdp_cli.rules.book import RuleBook, load_rulebook
from cdp_cli.rules.vocabulary import BASE_FROM
from cdp_cli.scaffold import init_project
from cdp_cli.tags import run_tags

DAY = date(2026, 11, 15)  # the sample's last day
WUHAN = "city = '武汉'"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The sample project ingested, resolved and tagged as of DAY; built once, read-only."""
    folder = tmp_path_factory.mktemp("segments")
    init_project(folder)
    project = Project(folder / "cdp.yaml")
    with project.store() as db:
        ingest(db, project.config)
        resolve(db, project.config)
        run_tags(db, project.tag_rules_folder, DAY)
    return project


@pytest.fixture
def db(sample: Project):
    with sample.store(create=False) as db:
        yield db


@pytest.fixture
def book(sample: Project) -> RuleBook:
    return load_rulebook(sample.tag_rules_folder)


def sql_count(db: sqlite_utils.Database, where: str, *params: object) -> int:
    return db.conn.execute(
        f"SELECT count(*) FROM profiles p JOIN profile_features f USING (one_id) WHERE {where}",
        params,
    ).fetchone()[0]


def test_counts_are_the_customers_the_rule_selects(db, book):
    wuhan = segments.audience(db, book, DAY, WUHAN, None)
    customers, base = segments.count(db, wuhan)
    assert customers == sql_count(db, "p.city = ?", "武汉") > 0
    assert base == db.conn.execute("SELECT count(*) FROM profile_features").fetchone()[0]
    assert customers < base
    winback = segments.audience(db, book, DAY, None, "winback")
    expected = sql_count(
        db,
        "f.total_spent >= 300 AND EXISTS (SELECT 1 FROM profile_tags t WHERE t.one_id = "
        "p.one_id AND t.tag = 'lifecycle' AND t.value = 'at_risk')",
    )
    assert segments.count(db, winback)[0] == expected > 0


def test_describe_reports_only_what_was_asked_in_the_json_shape(db, book):
    wuhan = segments.audience(db, book, DAY, WUHAN, None)
    bare = segments.describe(db, book, DAY, wuhan)
    assert bare.as_dict() == {
        "segment": None, "rule": WUHAN, "customers": bare.customers, "base": bare.base,
    }  # fmt: skip
    assert bare.share == pytest.approx(bare.customers / bare.base)
    full = segments.describe(db, book, DAY, wuhan, by="gender", sample_size=3)
    assert list(full.as_dict()) == ["segment", "rule", "customers", "base", "by", "portrait",
                                    "sample"]  # fmt: skip
    assert sum(row["audience"] for row in full.portrait) == full.customers
    assert sum(row["base"] for row in full.portrait) == full.base
    assert [list(row) for row in full.sample] == [list(segments.SAMPLE_FIELDS)] * 3
    assert all(row["city"] == "武汉" for row in full.sample)
    ids = [row["one_id"] for row in full.sample]
    assert ids == sorted(ids)
    named = segments.describe(db, book, DAY, segments.audience(db, book, DAY, None, "vip"))
    assert named.segment == "vip" and named.rule == book.segments["vip"].rule


def test_portrait_index_compares_the_audience_with_the_base(db, book):
    wuhan = segments.audience(db, book, DAY, WUHAN, None)
    rows = segments.portrait(db, book, DAY, wuhan, "city")
    [in_wuhan] = [r for r in rows if r["value"] == "武汉"]
    assert in_wuhan["audience_share"] == 1.0
    assert in_wuhan["index"] == round(100 / in_wuhan["base_share"])
    assert all(r["audience"] == 0 for r in rows if r["value"] != "武汉")
    with pytest.raises(RuleError, match=r"^--by: "):
        segments.portrait(db, book, DAY, wuhan, "no_such_field")


def test_export_csv_and_jsonl_hold_the_audience(db, book, tmp_path):
    wuhan = segments.audience(db, book, DAY, WUHAN, None)
    customers, _ = segments.count(db, wuhan)
    fields = ["one_id", "city", "phone", "total_spent"]
    assert segments.export(db, book, DAY, wuhan, tmp_path / "w.csv", fields) == customers
    with (tmp_path / "w.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == customers and list(rows[0]) == fields
    assert {r["city"] for r in rows} == {"武汉"}
    assert segments.export(db, book, DAY, wuhan, tmp_path / "w.jsonl", fields) == customers
    lines = (tmp_path / "w.jsonl").read_text(encoding="utf-8").splitlines()
    objects = [json.loads(line) for line in lines]
    assert [o["one_id"] for o in objects] == [r["one_id"] for r in rows]
    assert isinstance(objects[0]["total_spent"], float | int)
    phone = objects[0]["phone"]
    linked = db.conn.execute(
        "SELECT count(*) FROM identifiers WHERE one_id = ? AND type = 'phone' AND value = ?",
        (objects[0]["one_id"], phone),
    ).fetchone()[0]
    assert phone is None or linked == 1


def test_a_bad_suffix_or_field_is_a_usage_error_and_writes_nothing(db, book, tmp_path):
    wuhan = segments.audience(db, book, DAY, WUHAN, None)
    with pytest.raises(UsageError, match=r"\.csv or \.jsonl"):
        segments.export(db, book, DAY, wuhan, tmp_path / "w.xlsx", ["one_id"])
    with pytest.raises(UsageError, match="unknown field 'citty' \\(did you mean 'city'\\?\\)"):
        segments.export(db, book, DAY, wuhan, tmp_path / "w.csv", ["one_id", "citty"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="no segment named 'vipp'"):
        segments.audience(db, book, DAY, None, "vipp")


def test_formula_cells_are_neutralised_in_csv_but_not_in_jsonl(sample, book, tmp_path):
    with sample.store(create=False) as db:
        wuhan = segments.audience(db, book, DAY, WUHAN, None)
        [(one_id,)] = db.conn.execute(
            "SELECT p.one_id FROM profiles p WHERE p.city = '武汉' ORDER BY p.one_id LIMIT 1"
        ).fetchall()
        name = db.conn.execute("SELECT name FROM profiles WHERE one_id = ?", (one_id,)).fetchone()
        db.conn.execute(
            "UPDATE profiles SET name = ? WHERE one_id = ?", ('=HYPERLINK("x")', one_id)
        )
        try:
            segments.export(db, book, DAY, wuhan, tmp_path / "w.csv", ["one_id", "name"])
            segments.export(db, book, DAY, wuhan, tmp_path / "w.jsonl", ["one_id", "name"])
        finally:
            db.conn.execute("UPDATE profiles SET name = ? WHERE one_id = ?", (name[0], one_id))
    with (tmp_path / "w.csv").open(encoding="utf-8", newline="") as f:
        cells = {r["one_id"]: r["name"] for r in csv.DictReader(f)}
    assert cells[one_id] == '\'=HYPERLINK("x")'
    first = json.loads(Path(tmp_path / "w.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == {"one_id": one_id, "name": '=HYPERLINK("x")'}  # data, not for a spreadsheet


SET_RULES = [  # each tag they read is a set of one_ids, from the (tag, value) index
    "has_tag('high_value') and tag('lifecycle') in ('active', 'new')",  # vip
    "tag('lifecycle') = 'at_risk' and total_spent >= 300",  # winback
    "total_spent_365d >= 1000 and city in ('武汉', '北京') and not has_tag('dormant')",
    "in_segment('wuhan_skincare') or 'at_risk' = tag('lifecycle')",
]
VALUE_RULES = [  # no tag and another value differ here: each customer's value is read
    "not tag('preferred_category') = '护肤'",
    "tag('preferred_category') = '护肤' or not in_segment('wuhan_skincare')",
    "case when tag('lifecycle') = 'active' then 1 else 0 end = 1",
]


def traced(db: sqlite_utils.Database) -> list[str]:
    """The statements the connection runs from now on (until the next traced() call)."""
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    return statements


def test_stored_tags_are_read_once_per_command_from_the_index(db, book, tmp_path):
    statements = traced(db)
    try:
        chosen = segments.audience(db, book, DAY, SET_RULES[0], None)
        segments.describe(db, book, DAY, chosen, by="tag('preferred_category')", sample_size=3)
        segments.export(db, book, DAY, chosen, tmp_path / "vip.csv", ["one_id", "lifecycle"])
    finally:
        db.conn.set_trace_callback(None)
    reads = [s for s in statements if "FROM profile_tags" in s and "min(tag)" in s]
    assert len(reads) == 1
    assert not [s for s in statements if "DISTINCT tag" in s]
    stored = db.conn.execute("SELECT DISTINCT tag FROM profile_tags").fetchall()
    assert chosen.known_tags == {row[0] for row in stored} != set()


def count_plan(db: sqlite_utils.Database, chosen: segments.Audience) -> list[str]:
    sql = f"EXPLAIN QUERY PLAN SELECT count(*) FROM {BASE_FROM} WHERE {chosen.where}"
    return [row[-1] for row in db.conn.execute(sql, chosen.compiled.params)]


@pytest.mark.parametrize("rule", SET_RULES + VALUE_RULES)
def test_tags_over_the_base_are_sets_from_the_tag_index_with_the_same_audience(db, book, rule):
    over_base = segments.audience(db, book, DAY, rule, None)
    per_customer = segments.audience(db, book, DAY, rule, None, whole_base=False)
    plan, lookups = count_plan(db, over_base), count_plan(db, per_customer)
    assert any("CORRELATED" in step for step in lookups), lookups
    if rule in SET_RULES:
        assert any("profile_tags_tag" in step for step in plan), plan
        assert not any("CORRELATED" in step for step in plan), plan
    assert segments.count(db, over_base) == segments.count(db, per_customer)
    described = [
        segments.describe(db, book, DAY, chosen, by="city", sample_size=5).as_dict()
        for chosen in (over_base, per_customer)
    ]
    assert described[0] == described[1]


def test_one_customers_segments_are_those_whose_audience_holds_them(db, book):
    members = {
        name: {
            row[0] for row in segments.members(
                db, book, DAY, segments.audience(db, book, DAY, None, name), ["one_id"]
            )[1]
        }
        for name in book.segments
    }  # fmt: skip
    customers = sorted(set().union(*members.values()))[:5]
    customers += [r[0] for r in db.conn.execute("SELECT one_id FROM profiles LIMIT 3")]
    for one_id in customers:
        expected = [name for name in book.segments if one_id in members[name]]
        assert segments.segments_of(db, book, DAY, one_id) == expected


@pytest.mark.parametrize("size", [1, 3, 12])
def test_the_sample_is_the_first_customers_by_one_id_however_many_match(db, book, size):
    """Many matches: the one_id index is walked; few or none: the one pass over the base that
    finds them all both counts them and gives the sample."""
    rules = {"many": "total_spent >= 0", "few": "total_spent >= 10000", "none": "total_spent < 0"}
    walks = set()
    for name, rule in rules.items():
        chosen = segments.audience(db, book, DAY, rule, None)
        customers, _ = segments.count(db, chosen)
        statements = traced(db)
        try:
            report = segments.describe(db, book, DAY, chosen, sample_size=size)
        finally:
            db.conn.set_trace_callback(None)
        expected = db.conn.execute(
            f"SELECT p.one_id FROM {BASE_FROM} WHERE {chosen.where} ORDER BY p.one_id LIMIT ?",
            [*chosen.compiled.params, size],
        ).fetchall()
        assert report.customers == customers
        assert report.sample is not None
        assert [row["one_id"] for row in report.sample] == [row[0] for row in expected]
        assert len(report.sample) == min(size, customers)
        over_rule = [s for s in statements if "WHERE (f.total_spent" in s]  # the rule
        walks |= {name for s in over_rule if "ORDER BY p.one_id LIMIT" in s}
        if customers < segments.SAMPLE_WALK_MATCHES * size:
            assert len(over_rule) == 1, over_rule  # counted and sampled in one pass
    assert walks == {"many"}


def test_no_sample_is_looked_for_when_none_is_shown(db, book):
    chosen = segments.audience(db, book, DAY, WUHAN, None)
    statements = traced(db)
    try:
        report = segments.describe(db, book, DAY, chosen, sample_size=0)
    finally:
        db.conn.set_trace_callback(None)
    assert report.sample == [] and report.as_dict()["sample"] == []
    assert not [s for s in statements if "ORDER BY" in s or "LIMIT" in s]


def test_an_event_window_past_a_century_is_a_rule_error_not_a_crash(db, book):
    century = segments.audience(db, book, DAY, "event_count('view_item', '36500d') > 0", None)
    assert segments.count(db, century)[0] > 0
    with pytest.raises(RuleError) as caught:
        segments.audience(db, book, DAY, "event_count('view_item', '999999d') > 0", None)
    assert caught.value.message == (
        "event_count() argument 2: invalid duration '999999d': too long (at most 100 years, 36500d)"
    )
