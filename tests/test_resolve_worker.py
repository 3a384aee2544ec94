"""A full resolve reads part of its keys in a second process (keys_worker.py) and stores what
one process stores: every resolved table, the profiles, the history, the notes.

The tests force the second process on the sample (`worker_from` 0, or the hidden
`cdp resolve --worker-from`); a spy on KeysWorker counts the keys it sent, so a run that fell
back to one process fails them.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.cli import cli
from cdp_cli.config import load_config
from cdp_cli.identity import keys, keys_worker
from cdp_cli.identity.keys_worker import KeysWorker
from cdp_cli.identity.resolve import resolve
from cdp_cli.ingest import ingest_file
from cdp_cli.store import open_store
from tests.conftest import REPO, built_once, ingest_declared_files, query
from tests.killharness import env, kill_beside_its_second_process
from tests.test_resolve_events import TABLES

HISTORY = "SELECT one_id, event, other_one_id FROM id_history ORDER BY id"


@pytest.fixture
def worker_keys(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The keys each second process sent, one count a run."""
    sent: list[int] = []
    ready, rest = KeysWorker.ready, KeysWorker.rest

    def counted_ready(self: KeysWorker) -> Iterator[Any]:
        for keyed in ready(self):
            self.counted = getattr(self, "counted", 0) + 1
            yield keyed

    def counted_rest(self: KeysWorker, forgotten: list[int]) -> Iterator[Any]:
        for keyed in rest(self, forgotten):
            self.counted = getattr(self, "counted", 0) + 1
            yield keyed
        sent.append(getattr(self, "counted", 0))

    monkeypatch.setattr(KeysWorker, "ready", counted_ready)
    monkeypatch.setattr(KeysWorker, "rest", counted_rest)
    return sent


def _ingested(factory: pytest.TempPathFactory) -> Path:
    """The sample project, every file ingested, nothing resolved (built once, copied)."""

    def build(folder: Path) -> None:
        text = (REPO / "cdp.yaml").read_text(encoding="utf-8")
        text = text.replace("sample_data/", f"{REPO / 'sample_data'}/")
        (folder / "cdp.yaml").write_text(text, encoding="utf-8")
        ingest_declared_files(folder / "cdp.yaml")

    return built_once(factory, "resolve-worker-ingested", build)


def _copy(built: Path, folder: Path) -> Path:
    shutil.copytree(built, folder)
    return folder / "cdp.yaml"


def _resolved(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: query(db, f"SELECT {columns} FROM {table} ORDER BY {columns}")
        for table, columns in TABLES.items()
    } | {"history": query(db, HISTORY), "rejects": query(db, "SELECT * FROM rejects")}


def _resolve(config_path: Path, worker_from: int | None, full: bool = False) -> dict[str, Any]:
    config = load_config(config_path)
    db = open_store(config.store)
    try:
        result = resolve(db, config, full=full, worker_from=worker_from).as_dict()
    finally:
        db.close()
    return {k: v for k, v in result.items() if k != "seconds"}


def test_two_processes_resolve_what_one_resolves(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, worker_keys: list[int]
) -> None:
    """A first run, then `--full` on the resolved store: the same tables, one_ids and notes.
    The sample holds invalid and blocklisted values (unusable_values), guarded links
    (refused_links), and keys in every kind table."""
    built = _ingested(tmp_path_factory)
    stores, results = [], []
    for name, worker_from in (("one", None), ("two", 0)):
        config = _copy(built, tmp_path / name)
        first = _resolve(config, worker_from)
        again = _resolve(config, worker_from, full=True)
        results.append((first, again))
        stores.append(_resolved(tmp_path / name / "cdp.db"))
    assert stores[1] == stores[0]
    assert results[1] == results[0]
    assert stores[0]["unusable_values"] and stores[0]["refused_links"]
    assert len(worker_keys) == 2 and all(worker_keys)
    assert worker_keys[0] == _keys_in(tmp_path / "one/cdp.db", keys_worker.split()[1])


def _keys_in(db: Path, segments: tuple[keys.Segment, ...]) -> int:
    """The keys a full run reads from these segments: one a (identity key, source)."""
    count = 0
    for table, low, high in segments:
        sql = (
            f"SELECT count(*) FROM (SELECT DISTINCT identity_key, source FROM {table} "
            "WHERE identity_key IS NOT NULL AND identity_key >= ? AND identity_key <= ?)"
        )
        low = -(2**63) if low is None else low
        high = 2**63 - 1 if high is None else high - 1
        count += query(db, sql, low, high)[0][0]
    return count


_ONE_PROCESS: dict[str, Any] = {}  # the sample resolved by one process, for every example


SPLITS = {"split_table": st.integers(0, len(keys.KIND_TABLES) - 1), "share": st.floats(0, 1)}


@settings(max_examples=4, deadline=None)
@given(**SPLITS)
def test_the_keys_can_be_split_anywhere(
    tmp_path_factory: pytest.TempPathFactory, split_table: int, share: float
) -> None:
    """Wherever the second process's keys start (any table, any share of its keys), the
    stores are the same."""
    _check_split(tmp_path_factory, split_table, share)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(**SPLITS)
def test_the_keys_can_be_split_anywhere_at_length(
    tmp_path_factory: pytest.TempPathFactory, split_table: int, share: float
) -> None:
    _check_split(tmp_path_factory, split_table, share)


def _check_split(factory: pytest.TempPathFactory, split_table: int, share: float) -> None:
    built = _ingested(factory)
    with tempfile.TemporaryDirectory() as folder:
        if not _ONE_PROCESS:
            config = _copy(built, Path(folder) / "one")
            _ONE_PROCESS.update(_resolve(config, None), stored=_resolved(config.parent / "cdp.db"))
        config = _copy(built, Path(folder) / "two")
        before = keys_worker.SPLIT_TABLE, keys_worker.FIRST_SHARE
        keys_worker.SPLIT_TABLE, keys_worker.FIRST_SHARE = split_table, share
        try:
            result = _resolve(config, 0)
        finally:
            keys_worker.SPLIT_TABLE, keys_worker.FIRST_SHARE = before
        assert _resolved(config.parent / "cdp.db") == _ONE_PROCESS["stored"]
    assert result == {k: v for k, v in _ONE_PROCESS.items() if k != "stored"}


def test_keys_of_the_second_process_taken_first_number_after_the_first_processes_keys(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first process takes whatever keys of the second's have come between its own: here
    every one of them, before its second key. They still number as one process numbers them
    (after every key of the first), so the one_ids handed out are the same."""
    built = _ingested(tmp_path_factory)
    one = _copy(built, tmp_path / "one")
    reference = _resolve(one, None)
    ready = KeysWorker.ready
    early: list[int] = []

    def all_at_once(self: KeysWorker) -> Iterator[Any]:
        self.process.wait()  # the worker has sent everything: the reader thread queues it
        self._thread.join()
        for keyed in ready(self):
            early.append(keyed[1])
            yield keyed

    monkeypatch.setattr(KeysWorker, "ready", all_at_once)
    two = _copy(built, tmp_path / "two")
    assert _resolve(two, 0) == reference
    assert _resolved(tmp_path / "two/cdp.db") == _resolved(tmp_path / "one/cdp.db")
    assert len(early) == _keys_in(tmp_path / "one/cdp.db", keys_worker.split()[1])


def test_both_processes_find_the_records_of_a_forgotten_person(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, worker_keys: list[int]
) -> None:
    """Orders that reached the store past ingest's screen (a caller of ingest_file without
    one) carrying a forgotten buyer's phone: the second process finds their keys, and the
    first erases them as one process does."""
    config_path = _copy(_ingested(tmp_path_factory), tmp_path / "first")
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config_path), "resolve"]).exit_code == 0
    (one_id,) = query(  # a buyer in the orders, which the second process reads
        tmp_path / "first/cdp.db",
        "SELECT k.one_id FROM orders o JOIN identity_keys k ON k.key = o.identity_key "
        "WHERE o.source = 'pos_orders' AND k.one_id IS NOT NULL ORDER BY o.id LIMIT 1",
    )[0]
    forgot = runner.invoke(cli, ["--config", str(config_path), "forget", one_id, "--yes"])
    assert forgot.exit_code == 0, forgot.output
    config = load_config(config_path)
    db = open_store(config.store)
    source = config.sources["pos_orders"]
    for path in config.files_of(source):  # no screen: the forgotten buyer's orders land
        assert ingest_file(db, source, path, force=True).status == "done"
    db.close()
    stores, results = [], []
    for name, worker_from in (("one", None), ("two", 0)):
        folder = tmp_path / name
        folder.mkdir()
        for path in (tmp_path / "first").glob("cdp.*"):
            shutil.copy(path, folder / path.name)
        shutil.copy(config_path, folder / "cdp.yaml")
        results.append(_resolve(folder / "cdp.yaml", worker_from, full=True))
        stores.append(_resolved(folder / "cdp.db"))
    assert stores[1] == stores[0]
    assert results[1] == results[0]
    erased = [n for n in results[0]["notes"] if "identifier of a forgotten person" in n]
    assert erased and not erased[0].startswith("0 ")
    assert len(worker_keys) == 1 and worker_keys[0]


def test_small_tables_are_read_by_one_process(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, worker_keys: list[int]
) -> None:
    config = _copy(_ingested(tmp_path_factory), tmp_path / "p")
    result = CliRunner().invoke(cli, ["--config", str(config), "resolve", "--json"])
    assert result.exit_code == 0, result.output
    assert worker_keys == []  # the sample's 40k rows, below WORKER_FROM_ROWS
    rows = query(tmp_path / "p/cdp.db", "SELECT max(rowid) FROM events")[0][0]
    assert rows < keys.WORKER_FROM_ROWS


def test_a_second_process_that_dies_fails_the_run_and_keeps_what_was_resolved(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _copy(_ingested(tmp_path_factory), tmp_path / "p")
    base = ["--config", str(config), "resolve"]
    runner = CliRunner()
    assert runner.invoke(cli, base).exit_code == 0
    before = _resolved(tmp_path / "p/cdp.db")
    ready = KeysWorker.ready

    def killed(self: KeysWorker) -> Iterator[Any]:
        self.process.kill()
        self.process.wait()
        yield from ready(self)

    monkeypatch.setattr(KeysWorker, "ready", killed)
    result = runner.invoke(cli, [*base, "--full", "--worker-from", "0"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert lines == [
        "Error: the second process reading identity keys ended (killed by signal 9); nothing "
        "was resolved: run `cdp resolve` again"
    ], result.output
    assert _resolved(tmp_path / "p/cdp.db") == before
    monkeypatch.setattr(KeysWorker, "ready", ready)
    assert runner.invoke(cli, [*base, "--full", "--worker-from", "0"]).exit_code == 0
    assert _resolved(tmp_path / "p/cdp.db") == before


@pytest.mark.slow  # 10 s; the default run kills an ingest beside its second process
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_resolve_leaves_no_second_process_behind(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """SIGKILL to `cdp resolve` while both processes read: the second one ends by itself (its
    pipe breaks), nothing is resolved, and a rerun resolves everything."""
    config = _copy(_ingested(tmp_path_factory), tmp_path / "p")
    db = tmp_path / "p/cdp.db"
    columns = "source, event, occurred_at, platform, properties, attrs, batch_id, line"
    with sqlite3.connect(db) as conn:  # 4 more copies of the sample's app events, each event
        for copy in range(1, 5):  # a device and key of its own: seconds of the second's work
            conn.execute(
                f"INSERT INTO events (key, device_id, identity_key, {columns}) "
                f"SELECT key || ?, device_id || ? || id, (? << 40) + id, {columns} FROM events "
                "WHERE key NOT LIKE '%#%'",
                (f"#{copy}", f"-{copy}-", copy),
            )
    args = [sys.executable, "-m", "cdp_cli", "--config", str(config), "resolve", "--silent"]
    kill_beside_its_second_process([*args, "--worker-from", "0"])
    assert query(db, "SELECT count(*) FROM identity_keys") == [(0,)]
    rerun = subprocess.run([*args, "--worker-from", "0"], env=env(), check=False)
    assert rerun.returncode == 0
    assert query(db, "SELECT count(*) FROM identity_keys")[0][0] > 0
