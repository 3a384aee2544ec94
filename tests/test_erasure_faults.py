"""Faults a box will meet, for erasure: `cdp forget` while another program reads the store, and
the export log that says which files cdp wrote a person into."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cdp_cli.exports import SEGMENT, Export, Members, write_logged_rows
from cdp_cli.store import open_store
from tests.conftest import query
from tests.test_privacy import (
    CONFIG,
    CRM,
    CRM_HEADER,
    NOW,
    ORDERS,
    TEMPLATE,
    journey,
    ok,
    one_id_of,
    store_bytes,
)

PHONE = "13800000001"  # M1's, in crm.csv and on order O2
THEIR_BYTES = (b"13800000001", b"+8613800000001", b"nana.oy@qq.com")
READER = """
import sqlite3, sys, time
reader = sqlite3.connect(sys.argv[1])
reader.execute("BEGIN")
reader.execute("SELECT count(*) FROM customers").fetchone()
print("reading", flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.readline()
else:
    time.sleep(float(sys.argv[2]))
reader.close()
"""


@pytest.fixture
def project(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("orders.csv", ORDERS)
    write("templates/sms/hello.txt", TEMPLATE)
    write("tag_rules/t.yaml", "- name: wuhan\n  when: \"city = '武汉'\"\n")
    ok(run("ingest", "crm.csv", "-s", "crm"))
    ok(run("ingest", "orders.csv", "-s", "orders"))
    ok(run("resolve"))
    ok(run("tag", "--as-of", "2026-11-15"))
    return tmp_path


@contextmanager
def reader_of(store: Path, until: str) -> Iterator[subprocess.Popen[str]]:
    """Another program with a read open on the store: until it is told (`stdin`: on leaving
    the block) or for a number of seconds."""
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store), until],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdin is not None and reader.stdout is not None
    try:
        assert reader.stdout.readline() == "reading\n"
        yield reader
    finally:
        reader.stdin.close()  # the line it waits for: end of input
        reader.wait(timeout=20)
        reader.stdout.close()


def holds_their_bytes(folder: Path) -> bool:
    raw = store_bytes(folder)
    return any(value in raw for value in THEIR_BYTES)


# ---------------------------------------------------------------------------------------------
# A reader holds the store


def test_a_reader_in_another_process_keeps_their_bytes_and_forget_says_who_and_exits_1(
    run, project, tmp_path
):
    assert holds_their_bytes(tmp_path)
    with reader_of(tmp_path / "cdp.db", "stdin") as reader:
        result = run("forget", "--phone", PHONE, "--yes", "--json")
        assert result.exit_code == 1
        report = json.loads(result.stdout)
        # What it says is so: the erasure is committed, their old bytes are still on disk.
        assert holds_their_bytes(tmp_path)
        assert query(tmp_path / "cdp.db", "SELECT count(*) FROM identifiers WHERE value = ?",
                     "+86" + PHONE) == [(0,)]  # fmt: skip
    assert (report["purged"], report["vacuumed"], report["wal_truncated"]) == (False, True, False)
    assert report["waited"] >= 2  # --wait 0: the checkpoint is still retried for 2 s
    assert [h["pid"] for h in report["held_by"]] == [reader.pid]
    assert "cdp.db" in report["bytes_left_in"]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "the erasure is committed, but the old pages that held them stay in cdp.db" in error
    assert f"open in pid {reader.pid} `{sys.executable} -c" in error
    assert "run `cdp forget --finish` to finish" in error
    finished = ok(run("forget", "--finish"))
    assert "the erased bytes are gone from disk" in finished.stderr
    assert not holds_their_bytes(tmp_path)
    assert ok(run("forget", "--finish", "--json")).stdout  # nothing left: still exit 0


def test_rerunning_the_same_forget_after_the_reader_lets_go_completes_the_purge(
    run, project, tmp_path
):
    """A reader in this very process: no other process holds the store, and cdp says so."""
    import sqlite3

    reader = sqlite3.connect(tmp_path / "cdp.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM profiles").fetchone()
    try:
        result = run("forget", "--phone", PHONE, "--yes")
    finally:
        reader.close()
    assert result.exit_code == 1
    assert "Forgotten: " in result.stdout  # what was erased is shown before the error
    assert "read holds the store (another program or connection; waited 2s)" in result.stderr
    assert "gone from disk" not in result.stderr
    again = ok(run("forget", "--phone", PHONE, "--yes"))
    assert "Forgotten already" in again.stdout and "gone from disk" in again.stderr
    assert not holds_their_bytes(tmp_path)


def test_forget_waits_for_a_reader_that_ends_within_wait(run, project, tmp_path):
    with reader_of(tmp_path / "cdp.db", "3"):
        started = time.monotonic()
        result = ok(run("forget", "--phone", PHONE, "--yes", "--wait", "20", "--json"))
    report = json.loads(result.stdout)
    assert report["purged"] and report["held_by"] == []
    assert time.monotonic() - started >= 2.5  # it waited for the reader, past the 2 s floor
    assert not holds_their_bytes(tmp_path)


def test_their_email_inside_another_customers_email_is_not_their_bytes(run, write, project):
    """After the purge the file holds what the tables hold: `na@qq.com` is in `nana@qq.com`."""
    write("more.csv", CRM_HEADER + "M8,新客,13800000008,na@qq.com,武汉,,\n"
          "M9,老客,13800000009,nana@qq.com,北京,,\n")  # fmt: skip
    ok(run("ingest", "more.csv", "-s", "crm"))
    ok(run("resolve"))
    report = json.loads(ok(run("forget", "--email", "na@qq.com", "--yes", "--json")).stdout)
    assert report["purged"] and report["bytes_left_in"] == []


# ---------------------------------------------------------------------------------------------
# The export log


def exports(folder: Path) -> list[tuple]:
    return query(
        folder / "cdp.db", "SELECT id, path, kind, audience, rows FROM exports ORDER BY id"
    )


def members_of(folder: Path, export_id: int) -> set[str]:
    rows = query(folder / "cdp.db", "SELECT one_id FROM export_members WHERE export_id = ?",
                 export_id)  # fmt: skip
    return {one_id for (one_id,) in rows}


def test_every_file_with_customers_in_it_is_logged_with_who_was_in_it(
    run, write, project, tmp_path
):
    m1, m2 = one_id_of(tmp_path, "M1"), one_id_of(tmp_path, "M2")
    customers = {one_id for (one_id,) in query(tmp_path / "cdp.db", "SELECT one_id FROM profiles")}
    ok(run("segment", "--rule", "city = '武汉'", "--export", "wuhan.csv", "--fields", "name,city"))
    ok(run("segment", "--rule", f"one_id in ('{m1}', '{m2}')", "--export", "two.jsonl"))
    ok(run("segment", "--rule", "true", "--export", "ads.csv", "--hashed"))
    ok(run("resolve", "--export", "mapping.csv"))
    write("journeys/hello.yaml", journey("hello"))
    ok(run("journey", "run", "hello", "--now", NOW))
    [outbound] = sorted((tmp_path / "outbound").rglob("*.csv"))
    logged = exports(tmp_path)
    assert [(Path(p), kind, audience, rows) for _, p, kind, audience, rows in logged] == [
        (tmp_path / "wuhan.csv", "segment", "rule: city = '武汉'", 1),
        (tmp_path / "two.jsonl", "segment", f"rule: one_id in ('{m1}', '{m2}')", 2),
        (tmp_path / "ads.csv", "hashed_segment", "rule: true", 3),  # M4 has no phone or email
        (tmp_path / "mapping.csv", "id_mapping", None, 7),
        (outbound.resolve(), "outbound", "journey hello, channel sms", 3),
    ]
    ids = [row[0] for row in logged]
    assert members_of(tmp_path, ids[0]) == {m1}  # the file has no one_id column; the log does
    assert members_of(tmp_path, ids[1]) == {m1, m2}
    assert members_of(tmp_path, ids[3]) == customers
    assert members_of(tmp_path, ids[4]) == {row["one_id"] for row in csv_dicts(outbound)}


def csv_dicts(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_forget_lists_the_files_they_were_in_and_erases_only_the_link(
    run, write, project, tmp_path
):
    m1 = one_id_of(tmp_path, "M1")
    ok(run("segment", "--rule", "city = '武汉'", "--export", "wuhan.csv"))
    ok(run("segment", "--rule", f"one_id = '{m1}'", "--export", "just-her.csv"))
    ok(run("segment", "--rule", "city = '北京'", "--export", "beijing.csv"))  # M2 only
    write("journeys/hello.yaml", journey("hello"))
    ok(run("journey", "run", "hello", "--now", NOW))
    [outbound] = sorted((tmp_path / "outbound").rglob("*.csv"))
    before = exports(tmp_path)
    result = ok(run("forget", m1, "--yes", "--json"))
    report = json.loads(result.stdout)
    listed = [(Path(e["path"]), e["kind"], e["rows"], e["rewritten"]) for e in report["exports"]]
    assert listed == [
        (tmp_path / "wuhan.csv", "segment", 1, False),
        (tmp_path / "just-her.csv", "segment", 1, False),
        (outbound.resolve(), "outbound", 3, True),  # not picked up yet: rewritten without her
    ]
    assert all(e["written_at"] for e in report["exports"])
    # The rule that named her is erased from the log; each file keeps its path, time and count.
    assert report["exports"][1]["audience"] == "rule: (erased: it named a forgotten person)"
    after = exports(tmp_path)
    assert [row[:3] + row[4:] for row in after] == [row[:3] + row[4:] for row in before]
    assert after[1][3] == "rule: (erased: it named a forgotten person)"
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM export_members WHERE one_id = ?",
                 m1) == [(0,)]  # fmt: skip
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM exports WHERE instr(audience, ?)",
                 m1) == [(0,)]  # fmt: skip


def test_forget_says_cdp_cannot_erase_the_files_that_left_it(run, project, tmp_path):
    ok(run("resolve", "--export", "mapping.csv"))
    result = ok(run("forget", "--phone", PHONE, "--yes"))
    assert "Files cdp wrote with them in" in result.stdout
    assert str((tmp_path / "mapping.csv").resolve()) in result.stdout
    assert "NOT erased" in result.stdout
    assert "cdp cannot erase files it no longer controls" in result.stderr
    assert "13800000001" not in result.output


def test_a_million_row_file_is_logged_in_bulk_not_held_in_memory(tmp_path):
    """Members are gathered in chunks into a temporary table: 25,000 rows, three chunks."""
    db = open_store(tmp_path / "cdp.db")
    try:
        logged = Members(db.conn)
        rows = ((f"C{n:09d}", n) for n in range(25_000))
        written = write_logged_rows(
            db, tmp_path / "big.csv", ["n"], rows, Export(SEGMENT, "big"), logged, 0, hidden=True
        )
        assert written == 25_000
        assert (tmp_path / "big.csv").read_text().splitlines()[:2] == ["n", "0"]
        [(export_id, rows_logged)] = db.conn.execute("SELECT id, rows FROM exports").fetchall()
        assert rows_logged == 25_000
        assert db.conn.execute(
            "SELECT count(*), count(DISTINCT one_id) FROM export_members WHERE export_id = ?",
            (export_id,),
        ).fetchone() == (25_000, 25_000)
        assert db.conn.execute("SELECT count(*) FROM temp.export_one_ids").fetchone() == (0,)
    finally:
        db.close()
