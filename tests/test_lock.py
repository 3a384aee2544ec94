"""One writer at a time: the store's lock, with real processes holding it, waiting and killed."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from cdp_cli import lock
from cdp_cli.errors import StoreBusy, StoreError
from tests.conftest import SAMPLE_DATA, query
from tests.ops_helpers import ENV, cdp, drop, hold_lock, sample_run_once

# The sample's POS export under new order numbers: a new file for the inbox.
NEW_POS = SAMPLE_DATA.joinpath("pos_orders.csv").read_bytes().replace(b"-2024", b"-3024")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return sample_run_once(tmp_path_factory)


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def holder(project):
    """Another process holding the store's lock for the length of the test."""
    proc = hold_lock(project / "cdp.db")
    yield proc
    stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


WRITERS = [
    ["ingest"],
    ["resolve"],
    ["tag", "--as-of", "2026-11-15"],
    ["journey", "run", "--now", "2026-11-15 10:30"],
    ["run", "--now", "2026-11-15 10:30"],
    ["consent", "--phone", "13800138000", "--channel", "sms", "--opt-out"],
]


@pytest.mark.parametrize("args", WRITERS, ids=lambda a: " ".join(a[:2]))
def test_a_writer_started_while_another_writes_exits_1_at_once(run, project, holder, args):
    drop(project / "inbox/pos/new.csv", NEW_POS)
    runs = "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM resolve_runs), "
    runs += "(SELECT count(*) FROM tag_runs), (SELECT count(*) FROM journey_runs), "
    runs += "(SELECT count(*) FROM consents)"
    before = query(project / "cdp.db", runs)
    started = time.monotonic()
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cdp.db: store is busy (pid {holder.pid} since 20")
    assert result.stderr.endswith(", running `cdp test-holder`); --wait SECONDS waits for it\n")
    assert time.monotonic() - started < 2
    assert result.stdout == ""
    assert query(project / "cdp.db", runs) == before
    assert (project / "inbox/pos/new.csv").exists()


READERS = [
    ["status"],
    ["profile", "--phone", "13800138000"],
    ["segment", "winback"],
    ["tag", "--list"],
    ["resolve", "--explain", "C000000001"],
    ["journey", "status", "winback"],
    ["journey", "validate"],
    ["consent", "--phone", "13800138000"],
]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_readers_work_while_a_writer_holds_the_lock(run, project, holder, args):
    result = run(*args)
    assert result.exit_code == 0, result.output


def test_readers_read_while_a_writer_is_inside_a_write_transaction(run, project):
    writer = sqlite3.connect(project / "cdp.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM profiles")
    try:
        started = time.monotonic()
        result = run("status", "--json")
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started < 5  # no waiting on the writer
        assert json.loads(result.stdout)["tables"]["profiles"] > 0  # the committed snapshot
        assert run("profile", "--phone", "13800138000").exit_code == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_wait_lets_a_writer_start_when_the_holder_finishes(run, project):
    proc = hold_lock(project / "cdp.db", seconds=1.5)
    try:
        started = time.monotonic()
        result = run("resolve", "--wait", "30")
        assert result.exit_code == 0, result.output
        assert 0.5 < time.monotonic() - started < 20
    finally:
        stop(proc)


def test_wait_gives_up_after_the_time_given(run, project, holder):
    started = time.monotonic()
    result = run("tag", "--as-of", "2026-11-15", "--wait", "0.6")
    assert result.exit_code == 1
    assert "running `cdp test-holder`); waited 0.6s\n" in result.stderr
    assert time.monotonic() - started >= 0.6


def test_the_lock_of_a_killed_process_is_taken_over(run, project):
    proc = hold_lock(project / "cdp.db")
    info = json.loads((project / "cdp.db.lock").read_text())
    assert (info["pid"], info["command"]) == (proc.pid, "cdp test-holder")
    assert run("resolve").exit_code == 1
    proc.send_signal(signal.SIGKILL)
    stop(proc)
    # the file still names the dead holder; the kernel dropped its lock
    assert json.loads((project / "cdp.db.lock").read_text())["pid"] == proc.pid
    result = run("resolve")
    assert result.exit_code == 0, result.output
    assert (project / "cdp.db.lock").read_text() == ""  # released: it names no one


def test_a_cdp_run_killed_midway_leaves_a_store_the_next_run_completes(project):
    drop(project / "inbox/pos/new.csv", NEW_POS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp_cli", "run", "--now", "2026-11-15 10:30"], cwd=project,
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = cdp(project, "run", "--now", "2026-11-15 10:30", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [s["status"] for s in report["stages"]] == ["done"] * 4
    done = "SELECT count(*) FROM batches WHERE file LIKE '%inbox/pos/new.csv' AND status = 'done'"
    assert query(project / "cdp.db", done) == [(1,)]
    assert (project / "inbox/pos/done/new.csv").exists()


def test_a_busy_refusal_is_logged(run, project, holder):
    assert run("run").exit_code == 1
    log = (project / "logs/cdp.log").read_text(encoding="utf-8")
    busy = 'stage=lock status=busy command="cdp run" wait=0.000 error="cdp.db: store is busy (pid'
    assert f"{busy} {holder.pid} since " in log


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    store = tmp_path / "cdp.db"
    busy = r"store is busy \(pid \d+ since .*running `first`"
    with lock.acquire(store, command="first"), pytest.raises(StoreBusy, match=busy):
        lock.acquire(store)
    with lock.acquire(store):  # released on leaving the block
        pass


def test_a_store_in_a_missing_folder_is_one_clear_line(tmp_path):
    with pytest.raises(StoreError, match=r"folder .*/nowhere does not exist"):
        lock.acquire(tmp_path / "nowhere" / "cdp.db")
