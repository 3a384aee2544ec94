"""Writing files: whole or not at all, and rows as CSV or JSON Lines by the file's suffix.

Every file cdp writes (exports, outbound files, reports, QR codes, rewritten files after an
erasure) goes through `atomic_write`: a temporary file beside the target, flushed to disk,
renamed into place, and the folder synced, so a killed run or a power cut leaves either the
old file or the whole new one, never half of one. A file SQLite writes (`cdp backup`) is made
the same way, and put in place by `move_into_place`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from cdp_cli.csvsafe import safe_row
from cdp_cli.errors import CdpError, SystemFault, UsageError, system_fault

ROW_FORMATS = (".csv", ".jsonl")
HTML_FORMATS = (".html", ".htm")
TEMP_SUFFIX = ".tmp"


def temp_path(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """Where `atomic_write` writes before the rename: hidden, beside the target."""
    return path.with_name(f".{path.name}{suffix}")


@contextmanager
def atomic_write(
    path: Path, mode: Literal["w", "wb"] = "w", temp_suffix: str = TEMP_SUFFIX
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success, sync it and rename it over `path`.

    On an error the temporary file is removed and `path` is left as it was. A file that cannot
    be made, written or put in place (no such folder, no permission, a full disk) is a CdpError
    naming it.
    """
    tmp = temp_path(path, temp_suffix)
    text = mode == "w"
    try:
        f = tmp.open(mode, encoding="utf-8" if text else None, newline="" if text else None)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a write() that failed
            raise _cannot_write(path, exc) from None
        raise
    _sync_folder(path.parent)


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename a finished and synced temporary file (from `temp_path`) over `path`, and sync
    the folder: for files something else writes, such as SQLite for `cdp backup`."""
    _replace(tmp, path)
    _sync_folder(path.parent)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> CdpError:
    """The one line for a file that could not be written, named as the caller knows it (not
    its temporary name): the machine's fault said as such (errors.system_fault), anything else
    in the system's words."""
    fault = system_fault(OSError(exc.errno, exc.strerror, str(path)))
    return fault or CdpError(f"cannot write {path}: {exc.strerror or exc}")


def ensure_folder(folder: Path, what: str) -> None:
    """Make `folder` (and its parents) if missing; a CdpError when it is not a folder or
    cannot be written, before a command has done anything that needs it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SystemFault(
            f"{folder} is not a folder, and {what} go there; move that file away, then run the "
            "command again"
        ) from None
    except OSError as exc:
        raise _cannot_write(folder, exc) from None
    if not os.access(folder, os.W_OK):
        raise SystemFault(
            f"{folder} is read-only, and {what} go there; make it writable by the user running "
            "cdp, then run the command again"
        )


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


def check_output(
    path: Path,
    formats: Sequence[str],
    kept_files: Mapping[Path, str] | None = None,
    kept_folders: Mapping[Path, str] | None = None,
    any_new_name: bool = False,
) -> None:
    """Refuse, before any work is done, an output file the user named that cannot or must not
    be written: in a folder that does not exist, over one of `kept_files` or into one of
    `kept_folders` (the project's own: each with what it is, for the message), or over an
    existing file not of one of `formats` (`--html cdp.yaml`). A new file's name must end in
    one of them too, unless `any_new_name`.

    Symlinks are resolved first: a link to the store is the store.
    """
    kinds = " or ".join(formats)
    if not any_new_name and path.suffix.lower() not in formats:
        raise UsageError(f"{path}: the export is written as {kinds}")
    target = path.resolve()
    linked = target != Path(os.path.abspath(path))
    shown = f"{path} (which is {target})" if linked else str(path)
    if not target.parent.is_dir():
        folder = target.parent if linked else path.parent
        missing = (
            f"the folder {folder} does not exist"
            if not folder.exists()
            else f"{folder} is not a folder"
        )
        raise UsageError(f"{shown}: {missing}")
    for kept, what in (kept_files or {}).items():
        if target == kept.resolve():
            raise UsageError(f"{shown} is {what}; an output never overwrites it")
    for folder, what in (kept_folders or {}).items():
        if target.is_relative_to(folder.resolve()):
            raise UsageError(f"{shown} is in {what}; an output is never written there")
    if target.exists() and target.suffix.lower() not in formats:
        raise UsageError(f"{shown} exists and is not a {kinds} file; an output never overwrites it")


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
