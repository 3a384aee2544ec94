"""The store at size: its page cache, indexes built after a first load, conversion once per
distinct value, and `cdp status` on a sample of a big table (issue 13)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cdp_cli import Project
from cdp_cli import status as status_module
from cdp_cli.errors import IngestError
from cdp_cli.ingest import ingest_file
from cdp_cli.mapping import _per_distinct_value
from cdp_cli.store import DEFAULT_CACHE_MB, one_checkpoint, open_read_only, open_store
from tests.conftest import query

CRM = """
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: id, phone: mobile, birthday: born, city: city}
"""


@pytest.mark.parametrize("value", ["big", "0", "-5", "1.5", "true"])
def test_store_cache_mb_is_checked_with_file_and_line(run, write, value):
    write("cdp.yaml", f"region: CN\nstore_cache_mb: {value}\n" + CRM)
    result = run("ingest")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "Error: cdp.yaml:2: store_cache_mb: expected a whole number of megabytes, 1 or more"
    )


def test_the_page_cache_is_sized_from_cdp_yaml(tmp_path, write):
    write("default/cdp.yaml", CRM)
    write("small/cdp.yaml", "store_cache_mb: 16\n" + CRM)
    with Project(tmp_path / "default/cdp.yaml").store() as db:
        assert db.conn.execute("PRAGMA cache_size").fetchone()[0] == -DEFAULT_CACHE_MB * 1024
    with Project(tmp_path / "small/cdp.yaml").store() as db:
        assert db.conn.execute("PRAGMA cache_size").fetchone()[0] == -16 * 1024
    # A store that cannot be written is read through a read-only connection: sized the same.
    reader = open_read_only(tmp_path / "small/cdp.db", 16)
    assert reader.conn.execute("PRAGMA cache_size").fetchone()[0] == -16 * 1024
    reader.close()


def test_the_temp_database_frees_pages_without_zeroing_them(tmp_path, write):
    """Zeroing freed temp pages guards nothing (the file goes unzeroed at close) and costs
    seconds at size; the store itself keeps SQLite's own setting, which erasure relies on."""
    write("cdp.yaml", CRM)
    built_in = sqlite3.connect(":memory:").execute("PRAGMA secure_delete").fetchone()[0]
    with Project(tmp_path / "cdp.yaml").store() as db:
        assert db.conn.execute("PRAGMA temp.secure_delete").fetchone()[0] == 0
        assert db.conn.execute("PRAGMA main.secure_delete").fetchone()[0] == built_in
    reader = open_read_only(tmp_path / "cdp.db", 16)
    assert reader.conn.execute("PRAGMA temp.secure_delete").fetchone()[0] == 0
    reader.close()


def _traced_ingest(project: Project, path: Path) -> list[str]:
    """Ingest one file as crm; the statements that dropped or made an index."""
    statements: list[str] = []
    with project.store() as db:
        db.conn.set_trace_callback(statements.append)
        try:
            ingest_file(db, project.config.source("crm"), path)
        finally:
            db.conn.set_trace_callback(None)
    return [s for s in statements if "INDEX" in s.upper() and "SELECT" not in s.upper()]


def test_a_first_load_builds_secondary_indexes_once_at_the_end(tmp_path, write):
    write("cdp.yaml", CRM)
    first = write("a.csv", "id,mobile,born,city\nM1,13800138000,1990-01-02,北京\n")
    second = write("b.csv", "id,mobile,born,city\nM2,13800138001,1990-01-03,上海\n")
    project = Project(tmp_path / "cdp.yaml")
    assert _traced_ingest(project, first) == [
        'DROP INDEX "customers_identity"',
        "CREATE INDEX customers_identity ON customers (identity_key, registered_at)",
    ]
    assert _traced_ingest(project, second) == []  # the table holds rows: inserted into as usual
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'customers'"
    assert ("customers_identity",) in query(tmp_path / "cdp.db", indexes)


def test_a_failed_first_load_leaves_the_indexes_as_they_were(tmp_path, write):
    write("cdp.yaml", CRM)
    bad = write("a.csv", "id,phone_number\nM1,13800138000\n")  # no `mobile` column
    project = Project(tmp_path / "cdp.yaml")
    with project.store() as db, pytest.raises(IngestError, match="mobile"):
        ingest_file(db, project.config.source("crm"), bad)
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'customers'"
    assert ("customers_identity",) in query(tmp_path / "cdp.db", indexes)


def test_values_are_converted_once_per_distinct_value_but_invalid_ones_every_time():
    calls: list[str] = []

    def convert(raw: Any, invalid: dict[str, Any]) -> Any:
        calls.append(raw)
        if raw == "bad":
            invalid["field"] = raw
            return None
        return raw.upper()

    cached = _per_distinct_value(convert)
    rows = [{} for _ in range(6)]
    results = [
        cached(raw, inv) for raw, inv in zip(["a", "a", "bad", "b", "bad", "a"], rows, strict=True)
    ]
    assert results == ["A", "A", None, "B", None, "A"]
    assert calls == ["a", "bad", "b", "bad"]
    assert [r for r in rows if r] == [{"field": "bad"}, {"field": "bad"}]


def test_repeated_values_map_as_before_with_rejects_and_invalid_per_row(run, write, tmp_path):
    write("cdp.yaml", CRM)
    rows = ["M1,13800138000,1990-02-30,北京", "M2,13800138001,1990-02-30,北京"]
    rows += ["M3,13800138002,1990-01-02,北京", "M4,13800138003,1990-01-02,北京"]
    write("a.csv", "id,mobile,born,city\n" + "\n".join(rows) + "\n")
    assert run("ingest", "a.csv", "-s", "crm").exit_code == 0
    assert query(tmp_path / "cdp.db", "SELECT key, birthday, attrs FROM customers") == [
        ("M1", None, '{"_invalid":{"birthday":"1990-02-30"}}'),
        ("M2", None, '{"_invalid":{"birthday":"1990-02-30"}}'),
        ("M3", "1990-01-02", None),
        ("M4", "1990-01-02", None),
    ]


@pytest.fixture
def small_sample(monkeypatch):
    """Sample above 40 rows, 4 runs of 4: the big-store path on a store of a test's size."""
    monkeypatch.setattr(status_module, "SAMPLE_ABOVE", 40)
    monkeypatch.setattr(status_module, "SAMPLE_RUNS", 4)
    monkeypatch.setattr(status_module, "SAMPLE_RUN_ROWS", 4)


TWO_SOURCES = (
    CRM
    + """
  shop:
    kind: customers
    key: member_no
    fields: {member_no: id, city: city}
"""
)


def test_status_samples_a_big_table_and_says_so(run, write, small_sample):
    write("cdp.yaml", TWO_SOURCES)
    # every other row has a city, every fourth a masked phone: the sample sees the same shares
    lines = [
        f"M{i},{'138****0000' if i % 4 == 0 else f'1380013{i:04d}'},,{'北京' if i % 2 else ''}"
        for i in range(200)
    ]
    write("big.csv", "id,mobile,born,city\n" + "\n".join(lines) + "\n")
    write("small.csv", "id,city\nS1,上海\nS2,\n")
    assert run("ingest", "big.csv", "-s", "crm").exit_code == 0
    assert run("ingest", "small.csv", "-s", "shop").exit_code == 0
    status = json.loads(run("status", "--json").stdout)
    fields = {(q["source"], q["field"]): q for q in status["fields"]}
    city, phone = fields["crm", "city"], fields["crm", "phone"]
    assert (city["rows"], city["sampled"], city["filled"], city["fill_rate"]) == (200, 16, 100, 0.5)
    assert (phone["filled"], phone["invalid"], phone["invalid_rate"]) == (200, 50, 0.25)
    shop = fields["shop", "city"]  # a small source beside a big one is read whole
    assert "sampled" not in shop and (shop["rows"], shop["filled"]) == (2, 1)
    assert status["sources"][0]["rows"] == 200
    assert "Field quality (rows sampled: crm 16 of 200)" in run("status").stdout


def test_status_reads_a_small_table_whole(run, write):
    write("cdp.yaml", CRM)
    write("a.csv", "id,mobile,born,city\nM1,13800138000,,北京\nM2,,,\n")
    assert run("ingest", "a.csv", "-s", "crm").exit_code == 0
    status = json.loads(run("status", "--json").stdout)
    assert all("sampled" not in q for q in status["fields"])
    assert "sampled" not in run("status").stdout


def test_no_index_that_no_query_uses(tmp_path):
    with Project(tmp_path / "none.yaml", tmp_path / "cdp.db").store() as db:
        indexes = {
            r[0] for r in db.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert "rejects_batch" not in indexes
    assert {"batches_source_sha256", "customers_identity", "events_identity"} <= indexes


def test_one_checkpoint_copies_the_wal_into_the_store_once_at_the_end(tmp_path):
    db = open_store(tmp_path / "cdp.db")
    conn = db.conn
    conn.execute("CREATE TABLE t (x TEXT)")
    wal = tmp_path / "cdp.db-wal"

    def commit_pages() -> None:  # more pages than the automatic checkpoint lets pile up
        with conn:
            conn.executemany("INSERT INTO t VALUES (?)", [("x" * 3000,)] * 1500)

    default = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    with one_checkpoint(conn):
        commit_pages()
        commit_pages()
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        # two commits and no checkpoint: the WAL holds both (a checkpoint would have let the
        # second commit write from the WAL's start again)
        assert wal.stat().st_size > 2 * 1500 * 4096
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == default
    # Copied into the store at the end: the next commit writes from the WAL's start again.
    size = wal.stat().st_size
    commit_pages()
    assert wal.stat().st_size == size
    db.close()


@pytest.mark.parametrize("scoped", [False, True])
def test_a_tag_run_reads_registrations_from_the_index_alone(tmp_path, scoped):
    """The earliest registration per customer, in a full run and in one of changed customers,
    reads customers_identity and no customer row."""
    from cdp_cli.features import _parts_sql

    with Project(tmp_path / "none.yaml", tmp_path / "cdp.db").store() as db:
        db.conn.execute("CREATE TEMP TABLE dirty (one_id TEXT PRIMARY KEY)")
        sql = _parts_sql(scoped)["reg"][1]
        plan = [row[3] for row in db.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert any("USING COVERING INDEX customers_identity" in step for step in plan), plan
