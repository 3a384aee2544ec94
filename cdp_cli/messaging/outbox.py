"""Outbound files: what a sender picks up, one file per journey run and channel.

outbound/<channel>/<journey>-<run time>-<run id>.<csv|jsonl>, one message id per row so a sender
can deduplicate. A file is written whole under a temporary name, synced and renamed; once all of
a command's files are, in one transaction, their messages are marked written and each file is
logged with its customers (exports.py); a file a killed run left to write, in one of its own.
A run killed in between writes the same files again next time, with the same rows, so no
message ever appears twice and no file ever holds a partial row.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cdp_cli.config import Config
from cdp_cli.errors import CdpError
from cdp_cli.exports import OUTBOUND, Export, Members, record_export
from cdp_cli.files import atomic_write, ensure_folder
from cdp_cli.messaging.channels import CHANNELS, Channel
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso, transaction

# A CSV file's columns: these, with the channel's file_columns (from the payload) after "to".
LEADING_COLUMNS = ("message_id", "to")
TRAILING_COLUMNS = ("journey", "step", "one_id", "coupon", "link")
OUTBOUND_FILES = "the journeys' outbound files"  # what goes in outbound/, for error messages


class Spool:
    """The outbound lines of this command's runs, kept from when their messages are queued
    until their files are written after the commit: a file is written from them, never from
    reading back what was just queued. Each group (run, journey, channel) goes to an unnamed
    temporary file in its channel's folder (gone with the process, whatever kills it), so
    memory does not grow with the audience."""

    def __init__(self, outbound_folder: Path) -> None:
        self.folder = outbound_folder
        self.groups: dict[tuple[int, str, str], SpooledGroup] = {}

    def add(self, run_id: int, journey: str, lines: list[tuple[str, bytes]]) -> None:
        """Lines of one batch, in the order they were queued: (channel, line in UTF-8)."""
        for channel, line in lines:
            key = (run_id, journey, channel)
            group = self.groups.get(key)
            if group is None:
                folder = self.folder / channel
                ensure_folder(folder, OUTBOUND_FILES)
                group = self.groups[key] = SpooledGroup(tempfile.TemporaryFile(dir=folder))  # noqa: SIM115 (closed by close())
            group.file.write(line)
            group.count += 1

    def discard(self, run_id: int) -> None:
        """Forget a run's lines: its transaction was rolled back."""
        for key in [k for k in self.groups if k[0] == run_id]:
            self.groups.pop(key).file.close()

    def close(self) -> None:
        for group in self.groups.values():
            group.file.close()
        self.groups.clear()


class SpooledGroup:
    """One outbound file's lines, spooled, and how many."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.count = 0


def file_line(channel: Channel, head: Sequence[Any], body: dict[str, Any]) -> str:
    """A message's line in its outbound file. head: message_id, to, journey, step, one_id,
    coupon, link; body: its payload."""
    id_, address, journey, step, one_id, coupon, link = head
    if channel.file_format == "csv":
        values = (body.get(column) for column in channel.file_columns)
        return _csv_line((id_, address, *values, journey, step, one_id, coupon, link))
    record = {"message_id": id_, "to": address, "journey": journey, "step": step,
              "one_id": one_id, "coupon": coupon, "link": link}  # fmt: skip
    record.update(body)
    return json.dumps(record, ensure_ascii=False) + "\n"


_CSV_BUFFER = io.StringIO()
_CSV_WRITER = csv.writer(_CSV_BUFFER)


def _csv_line(row: Sequence[Any]) -> str:
    _CSV_BUFFER.seek(0)
    _CSV_BUFFER.truncate()
    _CSV_WRITER.writerow(row)
    return _CSV_BUFFER.getvalue()


def write_outbound(
    db: sqlite_utils.Database, config: Config, spool: Spool | None = None
) -> list[str]:
    """Write every queued message to its outbound file; the paths written. A group this
    command queued is written from the spool; one a killed run left queued, from the store.

    The spooled groups' files are all written first, then marked written and logged in one
    transaction: a million messages of two channels share the outbox's pages, and a
    transaction per file wrote (and checkpointed) most of those pages twice. A run killed in
    between writes the same files again, whole, under the same names."""
    groups = db.conn.execute(
        "SELECT DISTINCT m.run_id, m.journey, m.channel, r.now FROM messages m "
        "JOIN journey_runs r ON r.id = m.run_id WHERE m.status = 'queued' ORDER BY m.run_id"
    ).fetchall()
    written, copied = [], []
    for run_id, journey, channel, now in groups:
        path = _outbound_path(config, journey, channel, now, run_id)
        group = OutboundGroup(run_id, journey, channel, path)
        spooled = spool.groups.get((run_id, journey, channel)) if spool else None
        if spooled is not None:
            copied.append((group, _copy_file(group.path, CHANNELS[channel], spooled)))
        else:
            # A group's rows are all queued until they are marked written. In the order they
            # were queued, through the index of queued messages, never a scan.
            logged = Members(db.conn)
            rows = db.conn.execute(
                "SELECT id, address, journey, step, one_id, coupon_code, link_url, payload "
                f"FROM messages WHERE {QUEUED_IN_GROUP} ORDER BY rowid",
                group.params(),
            )
            count = _write_file(group.path, CHANNELS[channel], logged.taken_from(rows, at=4))
            with transaction(db) as conn:
                _mark_written(conn, group, count, logged)
        written.append(str(group.path))
    if copied:
        with transaction(db) as conn:
            for group, count in copied:
                logged = Members(conn)
                select = f"SELECT one_id FROM messages WHERE {QUEUED_IN_GROUP}"
                logged.add_selected(select, group.params())
                _mark_written(conn, group, count, logged)
    return written


# A group's queued messages, through the index of queued messages (OutboundGroup.params).
QUEUED_IN_GROUP = "run_id = ? AND status = 'queued' AND journey = ? AND channel = ?"


@dataclass(frozen=True)
class OutboundGroup:
    """One outbound file: a run's queued messages of one journey and channel, and its path."""

    run_id: int
    journey: str
    channel: str
    path: Path

    def params(self) -> tuple[int, str, str]:
        return (self.run_id, self.journey, self.channel)


def _outbound_path(config: Config, journey: str, channel: str, now: str, run_id: int) -> Path:
    stamp = datetime.fromisoformat(now).strftime("%Y%m%dT%H%M%S")
    folder = config.outbound_folder / channel
    ensure_folder(folder, OUTBOUND_FILES)
    return folder / f"{journey}-{stamp}-{run_id}.{CHANNELS[channel].file_format}"


def _mark_written(
    conn: sqlite3.Connection, group: OutboundGroup, count: int, logged: Members
) -> None:
    """Log the group's file with its customers, then mark its messages written (inside the
    caller's transaction): `count` of them, or nothing is kept."""
    audience = f"journey {group.journey}, channel {group.channel}"
    record_export(conn, group.path, Export(OUTBOUND, audience), count, logged)  # reads them queued
    marked = conn.execute(
        f"UPDATE messages SET status = 'written', file = ?, written_at = ? WHERE {QUEUED_IN_GROUP}",
        (str(group.path), now_iso(), *group.params()),
    ).rowcount
    if marked != count:  # the spool and the outbox disagree: keep them queued
        raise CdpError(f"{group.path}: {count} messages written, {marked} queued")


def _copy_file(path: Path, channel: Channel, spooled: SpooledGroup) -> int:
    """Write one outbound file whole from its spooled lines; the messages in it."""
    spooled.file.flush()
    spooled.file.seek(0)
    with atomic_write(path, "wb") as f:
        if channel.file_format == "csv":
            f.write(_header(channel).encode())
        shutil.copyfileobj(spooled.file, f)
    return spooled.count


def _header(channel: Channel) -> str:
    return _csv_line((*LEADING_COLUMNS, *channel.file_columns, *TRAILING_COLUMNS))


def _write_file(path: Path, channel: Channel, rows: Iterable[Sequence[Any]]) -> int:
    """Write one outbound file whole from the outbox; the messages in it."""
    count = 0
    with atomic_write(path) as f:
        if channel.file_format == "csv":
            f.write(_header(channel))
        for row in rows:
            f.write(file_line(channel, row[:7], json.loads(row[7])))
            count += 1
    return count
