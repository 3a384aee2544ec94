"""SQLite's sorter threads (store.SORTER_THREADS) change nothing cdp stores.

With helper threads, rows that tie in a sort can come out in another order once the sort
spills to disk, and not the same order from one run to the next (100k rows of 50 keys under
a 64 KiB cache: 5 runs of 6 differed from the order without threads), so no test here can
show it reliably. Every sort cdp runs with them (under store.sorting_cache) must end with a
unique column or read ties alike; that is read in the code. The last test runs the pipeline
on generated data twice, with a sorting cache small enough that its sorts spill, once
without helper threads and once with them, and compares every table.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdp_cli import ingest_set, store
from cdp_cli.cli import cli
from tests.conftest import REPO
from tests.test_generator import gen

TINY_CACHE_KIB = 64  # a sort of more than this spills to disk in runs of about this size
# Columns that differ between two runs of the same data: wall-clock times.
WALL_CLOCK = {"at", "since", "pid", "seconds"}
RANDOM = {"tombstone_salt"}  # drawn for each new store
TIMED = re.compile(r'seconds": [0-9.]+')  # in a run's results (JSON): "seconds", "…_seconds"


def test_sorting_cache_sets_the_cache_and_threads_back(tmp_path):
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("PRAGMA cache_size=-131072")
    with store.sorting_cache(conn):
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -store.SORT_CACHE_KIB
        assert conn.execute("PRAGMA threads").fetchone()[0] == store.SORTER_THREADS
    with pytest.raises(sqlite3.OperationalError), store.sorting_cache(conn):
        conn.execute("SELECT * FROM no_such_table")
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -131072
    assert conn.execute("PRAGMA threads").fetchone()[0] == 0


def _run_pipeline(root: Path) -> dict[str, list[tuple]]:
    """ingest, resolve and tag the project at `root` into a new store; every table after."""
    for path in root.glob("cdp.db*"):
        path.unlink()
    for args in (["ingest"], ["resolve"], ["tag", "--as-of", "2026-11-15", "--silent"]):
        result = CliRunner().invoke(cli, ["--config", str(root / "cdp.yaml"), *args])
        assert result.exit_code == 0, result.output
    conn = sqlite3.connect(root / "cdp.db")
    try:
        return _every_table(conn)
    finally:
        conn.close()


def _every_table(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Each table's rows, sorted, without the columns that record wall-clock times."""
    names = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        if name not in RANDOM
    ]
    found = {}
    for name in names:
        columns = [
            f'"{column}"'
            for _, column, *_ in conn.execute(f'PRAGMA table_info("{name}")')
            if column not in WALL_CLOCK and not column.endswith("_at")
        ]
        rows = [
            tuple(TIMED.sub("", v) if isinstance(v, str) else v for v in row)
            for row in conn.execute(f'SELECT {", ".join(columns)} FROM "{name}"')
        ]
        found[name] = sorted(rows, key=repr)
    return found


def test_a_pipeline_stores_the_same_with_helper_threads(tmp_path, monkeypatch):
    gen.generate(tmp_path / "data", customers=300, events=6000, seed=11)
    text = (REPO / "cdp.yaml").read_text(encoding="utf-8").replace("sample_data/", "data/")
    (tmp_path / "cdp.yaml").write_text(text, encoding="utf-8")
    shutil.copytree(REPO / "tag_rules", tmp_path / "tag_rules")
    monkeypatch.setattr(store, "SORT_CACHE_KIB", TINY_CACHE_KIB)
    monkeypatch.setattr(ingest_set, "JSON_KEY_ORDER_FROM", 0)  # events written in key order
    monkeypatch.setattr(store, "SORTER_THREADS", 0)
    alone = _run_pipeline(tmp_path)
    monkeypatch.setattr(store, "SORTER_THREADS", 2)
    helped = _run_pipeline(tmp_path)
    assert alone["events"] and alone["profiles"] and alone["profile_tags"]
    assert alone.keys() == helped.keys()
    assert [name for name in alone if alone[name] != helped[name]] == []
