"""Faults a box will meet: a full disk, a read-only store, folder or outbound/, another
program's write lock, a symlinked store, a pipe given to ingest. Each ends in one line and
exit 1 (never cdp's "internal error"), the store still holds what it held, and the same command
run again once the fault is gone does the work.

A full disk is SQLite's own SQLITE_FULL, made by `PRAGMA max_page_count` (SQLite's test suite
does the same), a write to /dev/full, or a file size limit (RLIMIT_FSIZE) in a process of its
own. Read-only files and folders are real file modes; as root, which ignores them, cdp runs in
a process that has dropped the capabilities that let it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cdp_cli import lock
from cdp_cli.cli import cli
from cdp_cli.errors import StoreBusy, system_fault
from cdp_cli.files import temp_path
from tests.conftest import query
from tests.ops_helpers import ENV, drop

CONFIG = """\
store: cdp.db
log: cdp.log
brand: {name: 花漾, url: "https://hy.example.com"}
channels:
  sms: {cost: 0.04}
sources:
  crm:
    kind: customers
    inbox: inbox
    key: member
    fields: {member_no: member, name: name, phone: phone}
"""
TEMPLATE = "【花漾】{{ customer.name|default_name }}, 你好"
JOURNEY = """name: {name}
entry: {{when: "name is not null"}}
steps: [{{send: {{channel: sms, template: hello}}}}]
"""
NOW = "2026-11-15 10:30"
LATER = "2026-11-16 10:30"  # the clock of the runs the tests make
AGAIN = "then run the command again"


def members(first: int, count: int) -> str:
    rows = [f"M{n:05d},客户{n},1380000{n:04d}" for n in range(first, first + count)]
    return "member,name,phone\n" + "\n".join(rows) + "\n"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 customers ingested, resolved, tagged and sent journey hi; journey hi2, not run yet,
    would send each of them one more message."""
    folder = tmp_path_factory.mktemp("base")
    files = {
        "cdp.yaml": CONFIG, "crm.csv": members(1, 100), "templates/sms/hello.txt": TEMPLATE,
        "journeys/hi.yaml": JOURNEY.format(name="hi"),
    }  # fmt: skip
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "inbox").mkdir()
    config = ["--config", str(folder / "cdp.yaml")]
    for args in (
        ["ingest", str(folder / "crm.csv"), "-s", "crm"], ["resolve"], ["tag"],
        ["journey", "run", "--now", NOW],
    ):  # fmt: skip
        result = invoke(*config, *args)
        assert result.exit_code == 0, result.output
    (folder / "journeys/hi2.yaml").write_text(JOURNEY.format(name="hi2"), encoding="utf-8")
    return folder


@pytest.fixture
def project(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def contents(store: Path) -> dict[str, list[tuple]]:
    """Every row of every table: what "the store still holds what it held" compares."""
    conn = sqlite3.connect(store)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}"), key=repr) for t in tables}
    finally:
        conn.close()


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, a store opened in this process cannot grow by a page: SQLite fails a write
    that needs one with SQLITE_FULL, "database or disk is full", as on a full disk."""
    connect = sqlite3.connect

    def connect_to_a_full_disk(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect_to_a_full_disk)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    fill_the_disk(monkeypatch)


# ---------------------------------------------------------------------------------------------
# A full disk


def test_ingest_on_a_full_disk_says_so_keeps_the_store_and_records_why(project, full_disk):
    (project / "new.csv").write_text(members(101, 2000), encoding="utf-8")
    before = contents(project / "cdp.db")
    result = invoke("ingest", "new.csv", "-s", "crm")
    line = f"cdp.db: the disk is full; free some space in {project}, {AGAIN}"
    assert (result.exit_code, result.stderr) == (1, f"Error: {line}\n")
    last = "SELECT id, source, status, error FROM batches ORDER BY id DESC LIMIT 1"
    assert query(project / "cdp.db", last) == [(len(before["batches"]) + 1, "crm", "failed", line)]
    after = contents(project / "cdp.db")
    assert {**after, "batches": before["batches"]} == before  # no row of the file landed


def test_a_full_disk_names_sqlites_temporary_folder_when_it_is_on_another_disk(
    tmp_path, monkeypatch
):
    """A full resolve at 1M customers sorts gigabytes in SQLite's temporary files: when they
    are on another disk than the store, the line names both places."""
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no folder on another filesystem here")
    full = sqlite3.OperationalError("database or disk is full")
    monkeypatch.setenv("SQLITE_TMPDIR", str(tmp_path))
    assert str(system_fault(full, tmp_path / "cdp.db")) == (
        f"cdp.db: the disk is full; free some space in {tmp_path}, {AGAIN}"
    )
    monkeypatch.setenv("SQLITE_TMPDIR", str(other))
    assert str(system_fault(full, tmp_path / "cdp.db")) == (
        f"cdp.db: the disk is full; free some space in {tmp_path} and in {other} "
        f"(SQLite's temporary files), {AGAIN}"
    )


def test_ingest_runs_again_once_there_is_room(project, monkeypatch):
    (project / "new.csv").write_text(members(101, 2000), encoding="utf-8")
    with monkeypatch.context() as full:
        fill_the_disk(full)
        assert invoke("ingest", "new.csv", "-s", "crm").exit_code == 1
    result = invoke("ingest", "new.csv", "-s", "crm", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["inserted"] == 2000
    statuses = query(project / "cdp.db", "SELECT status FROM batches ORDER BY id")
    assert statuses == [("done",), ("failed",), ("done",)]


def test_a_journey_run_on_a_full_disk_changes_nothing(project, full_disk):
    before = contents(project / "cdp.db"), files_under(project / "outbound")
    result = invoke("journey", "run", "hi2", "--now", LATER)
    assert (result.exit_code, result.stderr) == (
        1, f"Error: cdp.db: the disk is full; free some space in {project}, {AGAIN}\n"
    )  # fmt: skip
    assert (contents(project / "cdp.db"), files_under(project / "outbound")) == before


def test_an_outbound_file_on_a_full_disk_keeps_its_messages_queued_for_the_next_run(project):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here to fill a disk with")
    path = Path("outbound/sms/hi2-20261116T103000-2.csv")
    temp_path(path).symlink_to("/dev/full")  # what atomic_write writes first: ENOSPC
    result = invoke("journey", "run", "hi2", "--now", LATER)
    folder = project / "outbound/sms"
    line = f"cannot write {path}: the disk is full; free some space in {folder}, {AGAIN}"
    assert (result.exit_code, result.stderr) == (1, f"Error: {line}\n")
    assert not path.exists() and not temp_path(path).is_symlink()
    queued = "SELECT status, count(*) FROM messages WHERE journey = 'hi2' GROUP BY status"
    assert query(project / "cdp.db", queued) == [("queued", 100)]  # the journey moved on
    result = invoke("journey", "run", "hi2", "--now", LATER)  # room again: the next run
    assert result.exit_code == 0, result.output
    assert query(project / "cdp.db", queued) == [("written", 100)]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1 + 100


def test_cdp_run_on_a_full_disk_leaves_the_inbox_file_for_the_next_run(project, full_disk):
    inbox_file = drop(project / "inbox/new.csv", members(101, 2000).encode())
    result = invoke("run", "--now", LATER, "--json")
    line = f"cdp.db: the disk is full; free some space in {project}, {AGAIN}"
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: ingest: crm: new.csv: {line}; journeys: ")
    [entry] = json.loads(result.stdout)["files"]
    assert (entry["status"], entry["message"], entry["moved_to"]) == ("failed", line, None)
    assert inbox_file.exists()  # not moved to failed/: the file is not at fault
    log = (project / "cdp.log").read_text(encoding="utf-8")
    assert "file=new.csv status=failed seconds=" in log
    assert 'error="cdp.db: the disk is full"' in log


LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no kill
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["cdp", *sys.argv[2:]]
runpy.run_module("cdp_cli", run_name="__main__")
"""


def test_forget_stopped_by_the_disk_before_its_vacuum_finishes_on_the_next_run(project):
    # Room for the erasure, not for the VACUUM that rewrites the whole store.
    limit = str((project / "cdp.db").stat().st_size // 2)
    args = ["forget", "--phone", "13800000007", "--yes"]
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, limit, *args], cwd=project, env=ENV,
        capture_output=True, text=True,
    )  # fmt: skip
    line = f"cdp.db: disk I/O error; check that {project} has free space and its disk is healthy"
    assert (result.returncode, result.stderr) == (1, f"Error: {line}, {AGAIN}\n")
    assert invoke("profile", "--phone", "13800000007").exit_code == 1  # erased, committed
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Forgotten already" in result.stdout
    assert "Store VACUUMed and its WAL truncated" in result.stderr


# ---------------------------------------------------------------------------------------------
# Read-only files and folders

AS_USER = """
import ctypes, os, sys
if os.geteuid() == 0:  # root ignores file modes: drop the capabilities that let it
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP: gone after the exec
            sys.exit(77)
os.execv(sys.executable, [sys.executable, "-m", "cdp_cli", *sys.argv[1:]])
"""


def as_user(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`cdp ARGS` in its own process, bound by file modes even when the tests run as root."""
    result = subprocess.run(
        [sys.executable, "-c", AS_USER, *args], cwd=folder, env=ENV, capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode == 77:
        pytest.skip("root here cannot drop the capabilities that ignore file modes")
    return result


@pytest.fixture
def read_only(project: Path) -> Iterator[list[Path]]:
    """Paths the test makes read-only (0o555 folders, 0o444 files), writable again after it."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        path.chmod(0o755 if path.is_dir() else 0o644)


def make_read_only(paths: list[Path], path: Path) -> None:
    path.chmod(0o555 if path.is_dir() else 0o444)
    paths.append(path)


def test_a_read_only_store_is_read_and_a_writer_says_it_is_read_only(project, read_only):
    before = contents(project / "cdp.db")
    make_read_only(read_only, project / "cdp.db")
    result = as_user(project, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tables"]["customers"] == 100
    result = as_user(project, "resolve")
    line = "cdp.db: cannot write the store: the file is read-only; make it writable by the "
    line += "user running cdp (chmod u+w cdp.db)"
    assert (result.returncode, result.stderr) == (1, f"Error: {line}\n")
    assert contents(project / "cdp.db") == before


@pytest.mark.parametrize(
    "args",
    [["status", "--json"], ["profile", "--phone", "13800000007", "--json"]],
    ids=lambda a: a[0],
)  # fmt: skip
def test_readers_read_a_store_in_a_read_only_folder(project, read_only, args):
    make_read_only(read_only, project)
    result = as_user(project, *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)


def test_a_writer_in_a_read_only_folder_says_so_and_changes_nothing(project, read_only):
    before = contents(project / "cdp.db"), sorted(os.listdir(project))
    make_read_only(read_only, project)
    result = as_user(project, "journey", "run", "hi2", "--now", LATER)
    line = f"cdp.db: cannot write the store: its folder {project} is read-only, and SQLite "
    line += "writes its journal (cdp.db-wal and -shm) beside the store; make the folder "
    line += "writable by the user running cdp"
    assert (result.returncode, result.stderr) == (1, f"Error: {line}\n")
    assert (contents(project / "cdp.db"), sorted(os.listdir(project))) == before


def test_a_read_only_outbound_folder_stops_a_journey_run_before_it_changes_anything(
    project, read_only
):
    before = contents(project / "cdp.db")
    make_read_only(read_only, project / "outbound")
    result = as_user(project, "journey", "run", "hi2", "--now", LATER)
    line = "outbound is read-only, and the journeys' outbound files go there; make it writable "
    line += f"by the user running cdp, {AGAIN}"
    assert (result.returncode, result.stderr) == (1, f"Error: {line}\n")
    assert contents(project / "cdp.db") == before


def test_an_outbound_that_is_a_file_stops_a_journey_run_before_it_changes_anything(project):
    before = contents(project / "cdp.db")
    shutil.rmtree(project / "outbound")
    (project / "outbound").write_text("not a folder", encoding="utf-8")
    result = invoke("journey", "run", "hi2", "--now", LATER)
    line = "outbound is not a folder, and the journeys' outbound files go there; move that file "
    line += f"away, {AGAIN}"
    assert (result.exit_code, result.stderr) == (1, f"Error: {line}\n")
    assert contents(project / "cdp.db") == before


# A private mount namespace (as root, or as a user in a user namespace of their own) in which
# the project is seen through a read-only bind mount: a read-only filesystem, as after a disk
# error or on a read-only share, for one process.
READ_ONLY_MOUNT = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" || exit 77; cd "$2"'


def on_read_only_filesystem(project: Path, seen_at: Path, *args: str):
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    script = f'{READ_ONLY_MOUNT}; shift 2; exec "$@"'
    command = [*unshare, "sh", "-c", script, "sh", str(project), str(seen_at)]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here to mount a read-only filesystem with")
    result = subprocess.run(
        [*command, sys.executable, "-m", "cdp_cli", *args], env=ENV, capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode == 77 or "unshare failed" in result.stderr:
        pytest.skip(f"cannot mount a read-only filesystem here: {result.stderr.strip()}")
    return result


def test_a_store_on_a_read_only_filesystem_is_read_and_a_writer_says_so(project, tmp_path_factory):
    seen_at = tmp_path_factory.mktemp("read-only")
    result = on_read_only_filesystem(project, seen_at, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tables"]["customers"] == 100
    result = on_read_only_filesystem(project, seen_at, "resolve")
    line = f"cannot write {seen_at / 'cdp.db.lock'}: the filesystem is mounted read-only; "
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: {line}remount it read-write, {AGAIN}\n",
    )


# ---------------------------------------------------------------------------------------------
# Another program's write lock; the store's own lock through a symlink

BUSY = (
    "Error: cdp.db: the store is busy: another program holds a write lock (a sqlite3 shell, "
    "a backup?); let it finish, or give --wait SECONDS\n"
)


@contextmanager
def write_lock_held(store: Path, seconds: float = 60) -> Iterator[threading.Thread]:
    """Another program's `BEGIN IMMEDIATE` on the store, from a thread: held for `seconds`,
    or until the `with` block ends."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(store, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        done.wait(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        yield thread
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("wait", ["0", "1.5"])
def test_another_programs_write_lock_is_waited_for_then_a_busy_store(project, wait):
    before = contents(project / "cdp.db")
    (project / "new.csv").write_text(members(101, 10), encoding="utf-8")
    with write_lock_held(project / "cdp.db"):
        started = time.monotonic()
        result = invoke("ingest", "new.csv", "-s", "crm", "--wait", wait)
        waited = time.monotonic() - started
    assert (result.exit_code, result.stderr) == (1, BUSY)
    assert max(float(wait), 1) <= waited < 5  # --wait, or a second's grace; not 30 s
    assert contents(project / "cdp.db") == before


def test_a_writer_waiting_for_another_program_goes_on_when_it_lets_go(project):
    with write_lock_held(project / "cdp.db", seconds=0.5):
        result = invoke("journey", "run", "hi2", "--now", LATER, "--wait", "10")
    assert result.exit_code == 0, result.output
    assert Path("outbound/sms/hi2-20261116T103000-2.csv").exists()


def test_a_symlinked_store_takes_the_real_stores_lock(project):
    (project / "link.db").symlink_to(project / "cdp.db")
    assert lock.lock_path(project / "link.db") == project / "cdp.db.lock"
    with lock.acquire(project / "cdp.db", command="the other writer"):
        with pytest.raises(StoreBusy, match="running `the other writer`"):
            lock.acquire(project / "link.db")
        result = invoke("--db", "link.db", "resolve")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: link.db: store is busy (pid ")


# ---------------------------------------------------------------------------------------------
# Paths that are not what they are given as


@pytest.mark.parametrize("name", ["fifo", "/dev/null"])
def test_ingest_of_a_pipe_or_a_device_says_it_is_not_a_regular_file(project, name):
    path = project / name
    if name == "fifo":
        os.mkfifo(path)
    before = contents(project / "cdp.db")
    result = invoke("ingest", str(path), "-s", "crm")
    line = f"{path}: not a regular file; save the export to a file and ingest that"
    assert (result.exit_code, result.stderr) == (1, f"Error: {line}\n")
    assert contents(project / "cdp.db") == before


@pytest.mark.parametrize("args", [["resolve"], ["status"]])
def test_a_db_that_names_a_folder_says_so_and_creates_nothing(project, args):
    (project / "stores").mkdir()
    result = invoke("--db", "stores", *args)
    line = "stores is a folder, not a store: --db (or $CDP_DB, or store: in cdp.yaml) names "
    line += "the store's file, such as stores/cdp.db"
    assert (result.exit_code, result.stderr) == (1, f"Error: {line}\n")
    assert not (project / "stores.lock").exists() and not list((project / "stores").iterdir())
