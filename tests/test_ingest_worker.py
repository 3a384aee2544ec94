"""A large JSON Lines file read by two processes (ingest_worker) stores what one process stores.

The tests force the second process on small files (`worker_from` 1 byte, or the hidden
`--worker-from 1`) and move the split anywhere in the file (FIRST_SHARE_*): the store must hold
the same rows with the same ids, the same rejects in the same order, and the same batch
counts, for sources the set path maps (events) and the row path maps (orders with items).
A spy on MapWorker counts the rows the second process sent, so a test whose file was read by
one process after all fails instead of passing by default.
"""

from __future__ import annotations

import json
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp_cli import ingest_worker
from cdp_cli.cli import cli
from cdp_cli.identity.tombstones import FORGOTTEN_RAW
from cdp_cli.ingest_worker import MapWorker
from tests.ingest_compare import store_after
from tests.killharness import REPO, env, kill_beside_its_second_process
from tests.test_ingest_jsonl_sql import CONFIG as EVENTS_CONFIG
from tests.test_ingest_jsonl_sql import ODD, TEXT, jsonl_files, padded

CONFIG = (
    EVENTS_CONFIG
    + """
  shop_orders:
    kind: orders
    key: order_id
    fields:
      order_id: order_id
      phone: buyer.mobile
      ordered_at: created
      amount: payment
      status: status
      channel: platform
    items:
      from: items
      fields: {sku: sku, price: price, quantity: qty}
"""
)


@pytest.fixture
def worker_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each second process sent (taken, mapped and rejected), one count a file."""
    sent: list[int] = []
    rest = MapWorker.rest

    def counted_rest(self: MapWorker) -> Iterator[Any]:
        yield from rest(self)
        sent.append(self.rows_read)

    monkeypatch.setattr(MapWorker, "rest", counted_rest)
    return sent


ITEMS = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {"sku": padded(st.sampled_from(["SK-1", "SK-2", ""])), "qty": st.integers(-1, 3)},
            optional={"price": st.one_of(st.floats(0, 500), st.just("12.5"), st.just("x"))},
        ),
        max_size=3,
    ),
    ODD,
)


@st.composite
def orders(draw: st.DrawFn) -> dict[str, Any]:
    """One shop order as a marketplace exports it: numbers as text or not at all, a status
    the project may not know, items of any shape, keys nobody maps."""
    row: dict[str, Any] = {
        "order_id": draw(st.one_of(st.sampled_from(["SO1", "SO2", "SO3", " SO1 "]), ODD)),
        "created": draw(st.sampled_from(["2024-11-15T11:15:11+08:00", "2024-11-15", "x", ""])),
        "payment": draw(st.one_of(st.sampled_from(["598.00", "1,200", "-3", "x"]), ODD)),
        "status": draw(st.sampled_from(["paid", "refunded", "PAID", "已付款", "lost"])),
        "platform": draw(TEXT),
        "buyer": draw(st.fixed_dictionaries({}, optional={"mobile": TEXT, "nick": TEXT})),
        "items": draw(ITEMS),
    }
    for column in draw(st.lists(st.sampled_from(list(row)), max_size=2)):
        row.pop(column, None)
    if draw(st.booleans()):
        row["shipping"] = {"city": draw(TEXT)}
    return row


@st.composite
def order_files(draw: st.DrawFn) -> bytes:
    lines = [json.dumps(draw(orders()), ensure_ascii=draw(st.booleans()))]
    for _ in range(draw(st.integers(0, 12))):
        shape = draw(st.sampled_from(["object"] * 10 + ["blank", "array", "broken"]))
        if shape == "object":
            lines.append(json.dumps(draw(orders()), ensure_ascii=draw(st.booleans())))
        else:
            lines.append({"blank": "", "array": "[1]", "broken": '{"order_id": "SO9'}[shape])
    return "\n".join(lines).encode("utf-8", "backslashreplace")


SOURCES = ["app_events", "web_events", "shop_orders"]


def files_of(source: str) -> st.SearchStrategy[bytes]:
    return order_files() if source == "shop_orders" else jsonl_files(source)


def check_same(source: str, files: list[bytes], share: float, sent: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        one = store_after(Path(folder), CONFIG, source, files, "jsonl", set_work=True)
        shares = ingest_worker.FIRST_SHARE_SET, ingest_worker.FIRST_SHARE_ROWS
        ingest_worker.FIRST_SHARE_SET = ingest_worker.FIRST_SHARE_ROWS = share
        try:
            two = store_after(Path(folder), CONFIG, source, files, "jsonl", True, worker_from=1)
        finally:
            ingest_worker.FIRST_SHARE_SET, ingest_worker.FIRST_SHARE_ROWS = shares
    assert two == one
    # A file split is read by two processes, unless it is seen before (skipped); the first
    # file is ingested again, forced, at the end.
    read = [f for number, f in enumerate(files) if f not in files[:number]] + files[:1]
    assert len(sent) == sum(_splits(f, share) for f in read)


def _splits(content: bytes, share: float) -> bool:
    """Whether a file of these bytes has a line starting at or after `share` of them."""
    at = max(int(len(content) * share) - 1, 0)
    newline = content.find(b"\n", at)
    return newline != -1 and newline + 1 < len(content)


@pytest.mark.parametrize("source", SOURCES)
@settings(
    max_examples=4,  # the slow run has 40 a source
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_two_processes_store_what_one_stores(
    source: str, data: st.DataObject, worker_rows: list[int]
) -> None:
    worker_rows.clear()
    files = data.draw(st.lists(files_of(source), min_size=1, max_size=2))
    check_same(source, files, data.draw(st.floats(0.0, 1.0)), worker_rows)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
@settings(
    max_examples=40,  # each example starts a process per file: about 1.5 s
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_two_processes_store_what_one_stores_at_length(
    source: str, data: st.DataObject, worker_rows: list[int]
) -> None:
    worker_rows.clear()
    files = data.draw(st.lists(files_of(source), min_size=1, max_size=3))
    check_same(source, files, data.draw(st.floats(0.0, 1.0)), worker_rows)


# ---------------------------------------------------------------------------------------------
# The sample data, as a user runs it


def _project(folder: Path) -> Path:
    text = (REPO / "cdp.yaml").read_text(encoding="utf-8")
    text = text.replace("sample_data/", f"{REPO / 'sample_data'}/")
    (folder / "cdp.yaml").write_text(text, encoding="utf-8")
    return folder / "cdp.yaml"


def _stored(db: Path) -> dict[str, list[Any]]:
    with sqlite3.connect(db) as conn:
        return {
            "orders": conn.execute("SELECT * FROM orders ORDER BY id").fetchall(),
            "events": conn.execute("SELECT * FROM events ORDER BY id").fetchall(),
            "rejects": conn.execute("SELECT * FROM rejects ORDER BY id").fetchall(),
            "batches": conn.execute(
                "SELECT source, rows_read, rows_inserted, rows_updated, rows_unchanged, "
                "rows_rejected, rows_skipped, inserted_after FROM batches ORDER BY id"
            ).fetchall(),
        }


def test_the_sample_exports_land_the_same_from_two_processes(
    tmp_path: Path, worker_rows: list[int]
) -> None:
    """`cdp ingest` of the sample's shop orders (row path) and app events (set path)."""
    stored = []
    for name, extra in (("one", []), ("two", ["--worker-from", "1"])):
        folder = tmp_path / name
        folder.mkdir()
        config = _project(folder)
        for source in ("shop_orders", "app_events"):
            args = ["--config", str(config), "ingest", "-s", source, "--json", *extra]
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        stored.append(_stored(folder / "cdp.db"))
    assert stored[1] == stored[0]
    assert len(stored[0]["orders"]) > 2000 and len(stored[0]["events"]) > 20_000
    assert stored[0]["rejects"]  # the sample's bad orders, rejected alike
    assert len(worker_rows) == 2 and all(worker_rows)


def test_a_file_below_the_size_is_read_by_one_process(
    tmp_path: Path, worker_rows: list[int]
) -> None:
    config = _project(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(config), "ingest", "-s", "app_events"])
    assert result.exit_code == 0, result.output
    assert worker_rows == []  # the sample's 5 MB, below WORKER_FROM_BYTES
    size = (REPO / "sample_data/app_events.jsonl").stat().st_size
    assert size < ingest_worker.WORKER_FROM_BYTES


def test_both_processes_refuse_the_rows_of_a_forgotten_person(
    tmp_path: Path, worker_rows: list[int]
) -> None:
    """The tombstones go to the second process too: a forgotten buyer's orders, in either
    part of the file, are rejected alike and their lines are not kept."""
    first = tmp_path / "first"
    first.mkdir()
    base = ["--config", str(_project(first))]
    runner = CliRunner()
    for args in (["ingest", "-s", "crm_members"], ["ingest", "-s", "shop_orders"], ["resolve"]):
        assert runner.invoke(cli, [*base, *args]).exit_code == 0
    with sqlite3.connect(first / "cdp.db") as conn:
        (one_id,) = conn.execute(  # the buyer of the file's last order: the second's part
            "SELECT k.one_id FROM orders o JOIN identity_keys k ON k.key = o.identity_key "
            "WHERE o.source = 'shop_orders' AND k.one_id IS NOT NULL ORDER BY o.line DESC LIMIT 1"
        ).fetchone()
    assert runner.invoke(cli, [*base, "forget", one_id, "--yes"]).exit_code == 0
    stored = []
    for name, extra in (("one", []), ("two", ["--worker-from", "1"])):
        folder = tmp_path / name
        folder.mkdir()
        for path in first.glob("cdp.db*"):
            shutil.copy(path, folder / path.name)
        args = ["--config", str(_project(folder)), "ingest", "-s", "shop_orders", "--force"]
        result = runner.invoke(cli, [*args, "--silent", *extra])
        assert result.exit_code == 0, result.output
        stored.append(_stored(folder / "cdp.db"))
    assert stored[1] == stored[0]
    forgotten = [r for r in stored[0]["rejects"] if r[4] == "forgotten"]
    assert forgotten and all(r[-1] == FORGOTTEN_RAW for r in forgotten)
    assert len(worker_rows) == 1 and worker_rows[0]


def test_a_second_process_that_dies_fails_the_file_and_keeps_what_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _project(tmp_path)
    base = ["--config", str(config)]
    runner = CliRunner()
    assert runner.invoke(cli, [*base, "ingest", "-s", "shop_orders", "--silent"]).exit_code == 0
    before = _stored(tmp_path / "cdp.db")
    ready = MapWorker.ready

    def killed_ready(self: MapWorker) -> Iterator[Any]:
        self.process.kill()
        self.process.wait()
        yield from ready(self)

    monkeypatch.setattr(MapWorker, "ready", killed_ready)
    args = [*base, "ingest", "-s", "app_events", "--silent", "--worker-from", "1"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert (
        "app_events.jsonl: the second process reading the file ended (killed by signal 9)"
        in (lines[0])
    )
    assert "nothing of this file was kept: ingest it again" in lines[0]
    after = _stored(tmp_path / "cdp.db")
    assert after["orders"] == before["orders"] and after["events"] == []
    assert after["rejects"] == before["rejects"]
    monkeypatch.setattr(MapWorker, "ready", ready)
    assert runner.invoke(cli, args).exit_code == 0
    assert len(_stored(tmp_path / "cdp.db")["events"]) == 22_500


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_ingest_leaves_no_second_process_behind(tmp_path: Path) -> None:
    """SIGKILL to `cdp ingest` while both processes read: the second one ends by itself (its
    pipe breaks), the store holds nothing of the file, and a rerun ingests it whole."""
    config = _project(tmp_path)
    events = [e for e in (REPO / "sample_data/app_events.jsonl").read_bytes().splitlines() if e]
    assert all(e.startswith(b'{"event_id": "') for e in events)
    big = tmp_path / "big.jsonl"
    with big.open("wb") as out:
        for copy in range(5):  # 112,500 events: seconds of work for each process
            prefix = b'{"event_id": "%d-' % copy
            out.write(b"".join(prefix + e[len(b'{"event_id": "') :] + b"\n" for e in events))
    args = ["--config", str(config), "ingest", str(big), "-s", "app_events", "--silent"]
    kill_beside_its_second_process([sys.executable, "-m", "cdp_cli", *args, "--worker-from", "1"])
    with sqlite3.connect(tmp_path / "cdp.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    rerun = subprocess.run(
        [sys.executable, "-m", "cdp_cli", *args, "--worker-from", "1"], env=env(), check=False
    )
    assert rerun.returncode == 0
    with sqlite3.connect(tmp_path / "cdp.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (112_500,)
        statuses = conn.execute("SELECT status FROM batches ORDER BY id").fetchall()
    assert statuses == [("aborted",), ("done",)]
