"""Events are read per distinct identity key (a walk of the events_identity index) when they
come from one source: resolve then writes what a scan of every event row writes, in a full
run and in an incremental one, and a second events source takes the scan again."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from cdp_cli.config import load_config
from cdp_cli.identity import keys as keys_module
from cdp_cli.identity import profiles
from cdp_cli.identity import resolve as resolve_module
from cdp_cli.ingest import ingest_file
from cdp_cli.store import open_store
from tests.conftest import REPO, SAMPLE_DATA, ingest_declared_files

TABLES = {  # what resolve writes, without the columns that hold the time of the run
    "identity_keys": "key, one_id",
    "identifiers": "id, type, value, detail, one_id, status, reason",
    "key_identifiers": "key, identifier_id",
    "unusable_values": "key, type, raw, reason",
    "refused_links": "key, identifier_id, reason",
    "profiles": "one_id, known, name, gender, birthday, city, phones, emails, identifiers, "
    "first_seen, last_seen, sources, records, lineage",
    "id_history": "one_id, event, other_one_id, run_id",
}
LATER = 400  # the newest events, ingested after the first resolve


def _project(folder: Path, second_source: bool) -> Path:
    """The repo's sample project without its newest events (written to later.jsonl); with
    `second_source`, the app events are declared again as web_events, which later.jsonl is
    ingested as."""
    (folder / "sample_data").mkdir(parents=True)
    for path in SAMPLE_DATA.iterdir():
        if path.is_file():
            shutil.copy(path, folder / "sample_data" / path.name)
    lines = (SAMPLE_DATA / "app_events.jsonl").read_text(encoding="utf-8").splitlines(True)
    (folder / "sample_data" / "app_events.jsonl").write_text("".join(lines[:-LATER]), "utf-8")
    (folder / "later.jsonl").write_text("".join(lines[-LATER:]), "utf-8")
    text = (REPO / "cdp.yaml").read_text(encoding="utf-8")
    if second_source:
        start = text.index("  app_events:\n")
        end = text.index("\n\n", start)
        block = text[start:end].replace("app_events:", "web_events:", 1)
        block = block.replace("    files: sample_data/app_events.jsonl\n", "")
        text = text[:end] + "\n" + block + text[end:]
    (folder / "cdp.yaml").write_text(text, encoding="utf-8")
    ingest_declared_files(folder / "cdp.yaml")
    return folder / "cdp.yaml"


def _resolve_and_read(config_path: Path, full: bool) -> tuple[str, dict[str, list[tuple]]]:
    config = load_config(config_path)
    db = open_store(config.store)
    try:
        mode = resolve_module.resolve(db, config, full=full).mode
    finally:
        db.close()
    conn = sqlite3.connect(config.store)
    try:
        return mode, {
            table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY {columns}").fetchall()
            for table, columns in TABLES.items()
        }
    finally:
        conn.close()


def _ingest_later(config_path: Path, source_name: str) -> None:
    config = load_config(config_path)
    db = open_store(config.store)
    result = ingest_file(db, config.sources[source_name], config_path.parent / "later.jsonl")
    db.close()
    assert result.status == "done"


@pytest.mark.parametrize("second_source", [False, True], ids=["one source", "two sources"])
def test_events_read_per_key_resolve_as_a_scan_of_every_row_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_source: bool
) -> None:
    per_key = _project(tmp_path / "per-key", second_source)
    shutil.copytree(tmp_path / "per-key", tmp_path / "scan")
    scan = tmp_path / "scan" / "cdp.yaml"
    later = "web_events" if second_source else "app_events"

    results = {}
    for name, config_path in (("per key", per_key), ("scan", scan)):
        with monkeypatch.context() as patch:
            if name == "scan":  # as if every table had several sources: the old statements
                patch.setattr(keys_module, "key_walk", lambda conn, table, covering=(): None)
                patch.setattr(profiles, "key_walk", lambda conn, table, covering=(): None)
            first = _resolve_and_read(config_path, full=False)
            rerun = _resolve_and_read(config_path, full=True)
            _ingest_later(config_path, later)
            incremental = _resolve_and_read(config_path, full=False)
        results[name] = (first, rerun, incremental)

    for step, (per_key_result, scan_result) in enumerate(zip(*results.values(), strict=True)):
        assert per_key_result[0] == scan_result[0], step
        for table in TABLES:
            assert per_key_result[1][table] == scan_result[1][table], (step, table)
    modes = [mode for mode, _ in results["per key"]]
    assert modes == ["full", "full", "incremental"]
    profiles_now = results["per key"][2][1]["profiles"]
    assert sum(p[12] for p in profiles_now) > 0  # records counted, events among them
