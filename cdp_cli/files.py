"""Writing files: whole or not at all, and rows as CSV or JSON Lines by the file's suffix.

Every file cdp writes (exports, outbound files, reports, QR codes, rewritten files after an
erasure) goes through `atomic_write`: a temporary file beside the target, flushed to disk,
renamed into place, and the folder synced, so a killed run or a power cut leaves either the
old file or the whole new one, never half of one.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from cdp_cli.csvsafe import safe_row
from cdp_cli.errors import UsageError

ROW_FORMATS = (".csv", ".jsonl")
TEMP_SUFFIX = ".tmp"


def temp_path(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """Where `atomic_write` writes before the rename: hidden, beside the target."""
    return path.with_name(f".{path.name}{suffix}")


@contextmanager
def atomic_write(
    path: Path, mode: Literal["w", "wb"] = "w", temp_suffix: str = TEMP_SUFFIX
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success, sync it and rename it over `path`.

    On an error the temporary file is removed and `path` is left as it was.
    """
    tmp = temp_path(path, temp_suffix)
    text = mode == "w"
    try:
        with tmp.open(mode, encoding="utf-8" if text else None, newline="" if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_text(path: Path, text: str, temp_suffix: str = TEMP_SUFFIX) -> None:
    """Write `text` as UTF-8, whole or not at all."""
    with atomic_write(path, temp_suffix=temp_suffix) as f:
        f.write(text)


def row_format(path: Path) -> str:
    """The format rows are written in, from the suffix: '.csv' or '.jsonl'; else a UsageError."""
    suffix = path.suffix.lower()
    if suffix not in ROW_FORMATS:
        raise UsageError(f"{path}: the export is written as .csv or .jsonl")
    return suffix


def write_rows(path: Path, fields: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write rows as CSV (with a header) or JSON Lines (an object per row), by the suffix.

    For files people open: CSV cells a spreadsheet would run as a formula are neutralised
    (csvsafe). Returns the number of rows written.
    """
    suffix = row_format(path)
    count = 0
    with atomic_write(path) as f:
        if suffix == ".csv":
            writer = csv.writer(f)
            writer.writerow(fields)
            for row in rows:
                writer.writerow(safe_row(row))
                count += 1
        else:
            for row in rows:
                record = dict(zip(fields, row, strict=True))
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    return count


def _sync_folder(folder: Path) -> None:
    """Make the rename itself survive a power cut (where the filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse to sync a folder; the rename is still atomic
    finally:
        os.close(fd)
