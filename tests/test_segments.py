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
