"""Outbound files: what a sender picks up, one file per journey run and channel.

outbound/<channel>/<journey>-<run time>-<run id>.<csv|jsonl>, one message id per row so a sender
can deduplicate. A file is written whole under a temporary name, synced and renamed; then, in one
transaction, its messages are marked written and the file is logged with its customers
(exports.py). A run killed in between writes the same file again next time, with the same rows,
so no message ever appears twice and no file ever holds a partial row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from cdp_cli.config import Config
from cdp_cli.exports import OUTBOUND, Export, Members, record_export
from cdp_cli.files import atomic_write, ensure_folder
from cdp_cli.messaging.channels import CHANNELS, Channel
from cdp_cli.store import now_iso, transaction

# A CSV file's columns: these, with the channel's file_columns (from the payload) after "to".
LEADING_COLUMNS = ("message_id", "to")
TRAILING_COLUMNS = ("journey", "step", "one_id", "coupon", "link")
OUTBOUND_FILES = "the journeys' outbound files"  # what goes in outbound/, for error messages


def write_outbound(db: sqlite_utils.Database, config: Config) -> list[str]:
    """Write every queued message to its outbound file; the paths written."""
    groups = db.conn.execute(
        "SELECT DISTINCT m.run_id, m.journey, m.channel, r.now FROM messages m "
        "JOIN journey_runs r ON r.id = m.run_id WHERE m.status = 'queued' ORDER BY m.run_id"
    ).fetchall()
    written = []
    for run_id, journey, channel, now in groups:
        stamp = datetime.fromisoformat(now).strftime("%Y%m%dT%H%M%S")
        folder = config.outbound_folder / channel
        ensure_folder(folder, OUTBOUND_FILES)
        path = folder / f"{journey}-{stamp}-{run_id}.{CHANNELS[channel].file_format}"
        # A group's rows are all queued until the UPDATE below marks them all written. In the
        # order they were queued, through the index of queued messages, never a table scan.
        logged = Members(db.conn)
        rows = db.conn.execute(
            "SELECT id, journey, step, one_id, address, payload, coupon_code, link_url "
            "FROM messages WHERE run_id = ? AND status = 'queued' AND journey = ? "
            "AND channel = ? ORDER BY rowid",
            (run_id, journey, channel),
        )
        count = _write_file(path, CHANNELS[channel], logged.taken_from(rows, at=3))
        with transaction(db) as conn:
            conn.execute(
                "UPDATE messages SET status = 'written', file = ?, written_at = ? "
                "WHERE run_id = ? AND journey = ? AND channel = ? AND status = 'queued'",
                (str(path), now_iso(), run_id, journey, channel),
            )
            audience = f"journey {journey}, channel {channel}"
            record_export(conn, path, Export(OUTBOUND, audience), count, logged)
        written.append(str(path))
    return written


def _write_file(path: Path, channel: Channel, rows: Iterable[Sequence[Any]]) -> int:
    """Write one outbound file whole; the messages in it."""
    count = 0
    with atomic_write(path) as f:
        if channel.file_format == "csv":
            writer = csv.writer(f)
            writer.writerow((*LEADING_COLUMNS, *channel.file_columns, *TRAILING_COLUMNS))
            for id_, journey, step, one_id, address, payload, coupon, link in rows:
                body = json.loads(payload)
                values = (body.get(column) for column in channel.file_columns)
                writer.writerow((id_, address, *values, journey, step, one_id, coupon, link))
                count += 1
        else:
            for id_, journey, step, one_id, address, payload, coupon, link in rows:
                record = {"message_id": id_, "to": address, "journey": journey, "step": step,
                          "one_id": one_id, "coupon": coupon, "link": link}  # fmt: skip
                record.update(json.loads(payload))
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    return count
