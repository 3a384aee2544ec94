"""What an ingest stored, to compare set work with row by row (tests/test_ingest_*sql.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdp_cli import ingest as ingest_module
from cdp_cli.config import load_config
from cdp_cli.ingest import ingest
from cdp_cli.store import open_store


def store_after(
    folder: Path,
    config_text: str,
    source: str,
    files: list[bytes],
    suffix: str,
    set_work: bool,
    worker_from: int | None = None,
) -> dict[str, Any]:
    """Ingest the files (named *.suffix) in turn, the first again at the end (forced), into a
    new store, as set work or row by row, and with a second process reading JSON Lines files
    of `worker_from` bytes or more: what the store then holds and what each ingest said."""
    config_path = folder / "cdp.yaml"
    config_path.write_text(config_text, encoding="utf-8")
    store = folder / f"{set_work}-{worker_from}.db"
    config = load_config(config_path, store)
    paths = []
    for number, content in enumerate(files):
        path = folder / f"{number}.{suffix}"
        path.write_bytes(content)
        paths.append(path)
    db = open_store(store)
    said: list[Any] = []
    before = ingest_module.SET_WORK
    ingest_module.SET_WORK = set_work
    try:
        for path in paths:
            said += ingest(db, config, source, [path], worker_from=worker_from)
        said += ingest(db, config, source, paths[:1], force=True, worker_from=worker_from)
    finally:
        ingest_module.SET_WORK = before
    table = config.source(source).kind.table
    stored = {
        "said": [{**r.as_dict(), "seconds": 0} if hasattr(r, "as_dict") else r for r in said],
        "rows": db.conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall(),
        "rejects": db.conn.execute("SELECT * FROM rejects ORDER BY id").fetchall(),
        "batches": db.conn.execute(
            "SELECT id, source, file, sha256, status, rows_read, rows_inserted, rows_updated, "
            "rows_unchanged, rows_rejected, rows_skipped, error FROM batches ORDER BY id"
        ).fetchall(),
        "replaced": db.conn.execute(
            "SELECT * FROM replaced_identity_keys ORDER BY 1, 2"
        ).fetchall(),
    }
    db.conn.close()
    return stored
