"""Streaming readers for CSV, JSON Lines and JSON exports.

Each reader yields `(line, row, error, raw)`. A row it could not read comes with the reason
instead of stopping the file, so the caller can quarantine it and keep the rest; `raw` is the
line as bytes where the format has lines. Nothing here holds a whole file in memory.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import charset_normalizer
import ijson

from cdp_cli.errors import IngestError

SAMPLE_BYTES = 256 * 1024
# Exports in the wild hold very long free-text cells; the csv module's 128 KiB default is not
# enough, but an unbounded one lets a broken quote swallow the whole file into one field.
csv.field_size_limit(min(sys.maxsize, 16 * 1024 * 1024))

RowResult = tuple[int, Any, "str | None", "bytes | None"]


def detect_encoding(path: Path, declared: str = "auto") -> str:
    """The codec to read a file with: the declared one, a BOM, UTF-8, else the best guess."""
    if declared and declared != "auto":
        try:
            return codecs.lookup(declared).name
        except LookupError:
            raise IngestError(f"{path}: unknown encoding {declared!r}") from None
    with path.open("rb") as f:
        sample = f.read(SAMPLE_BYTES)
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3:  # a character cut in half by the sample's end
            return "utf-8"
    best = charset_normalizer.from_bytes(sample).best()
    if best is None:
        return "utf-8"  # undecodable lines become rejects, the rest is kept
    name = codecs.lookup(best.encoding).name
    # GBK files are often guessed as a narrower Chinese codec; gb18030 decodes all of them.
    return "gb18030" if name in ("gbk", "gb2312", "hz", "cp936") else name


@dataclass
class Progress:
    """How far a reader is through its file, in bytes, for a progress bar."""

    raw: BinaryIO
    total: int

    @property
    def done(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return self.total


def _undecodable(values: list[str]) -> bool:
    """True when a row holds bytes that did not decode (kept as lone surrogates)."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_csv(
    stream: BinaryIO, encoding: str, delimiter: str = ","
) -> tuple[list[str], Iterator[RowResult]]:
    """The header and an iterator of rows as lists of strings, with their first line number."""
    text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter, strict=False)
    header: list[str] | None = None
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                header = [cell.strip().lstrip("\ufeff") for cell in row]
                break
    except csv.Error as exc:
        raise IngestError(f"line {reader.line_num}: cannot read the CSV header: {exc}") from None
    if header is None:
        return [], iter(())
    if _undecodable(header):
        raise IngestError(f"line {reader.line_num}: the header does not decode as {encoding}")
    duplicates = sorted({h for h in header if header.count(h) > 1 and h})
    if duplicates:
        raise IngestError(
            f"line {reader.line_num}: duplicate column names: {', '.join(duplicates)}"
        )
    return header, _csv_rows(reader, len(header), encoding)


def _csv_rows(reader: Any, width: int, encoding: str) -> Iterator[RowResult]:
    next_line = reader.line_num + 1
    while True:
        line = next_line
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            next_line = reader.line_num + 1
            yield line, None, f"unreadable CSV: {exc}", None
            continue
        next_line = reader.line_num + 1
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                yield line, None, None, None  # blank line
                continue
            yield line, row, f"expected {width} columns, found {len(row)}", None
        elif _undecodable(row):
            yield line, row, f"bytes that do not decode as {encoding}", None
        else:
            yield line, row, None, None


def read_jsonl(stream: BinaryIO, encoding: str) -> Iterator[RowResult]:
    """Objects from a JSON Lines file; a blank line yields (line, None, None)."""
    utf8 = encoding in ("utf-8", "utf-8-sig")
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            yield number, None, None, None
            continue
        try:
            value = json.loads(raw if utf8 else raw.decode(encoding))
        except UnicodeDecodeError:
            yield number, raw, f"bytes that do not decode as {encoding}", raw
            continue
        except json.JSONDecodeError as exc:
            yield number, raw, f"invalid JSON at column {exc.colno}: {exc.msg}", raw
            continue
        if not isinstance(value, dict):
            yield number, raw, f"expected a JSON object, got {_json_type(value)}", raw
            continue
        yield number, value, None, raw


def read_json(stream: BinaryIO, encoding: str) -> Iterator[RowResult]:
    """Objects from a JSON array, numbered by position (1 is the array's first item)."""
    head = stream.read(4096)
    stream.seek(0)
    if encoding in ("utf-8", "utf-8-sig"):
        head = head.removeprefix(codecs.BOM_UTF8).lstrip()
        if not head:
            return
        if not head.startswith(b"["):
            raise IngestError("expected a JSON array of objects at the top level")
    source: Any = (
        stream
        if encoding in ("utf-8", "utf-8-sig")
        else io.TextIOWrapper(stream, encoding=encoding)
    )
    position = 0
    try:
        for position, value in enumerate(ijson.items(source, "item", use_float=True), start=1):
            if isinstance(value, dict):
                yield position, value, None, None
            else:
                yield position, value, f"expected a JSON object, got {_json_type(value)}", None
    except ijson.JSONError as exc:
        yield position + 1, None, f"invalid JSON after item {position}: {exc}", None
    except UnicodeDecodeError as exc:
        yield position + 1, None, f"bytes that do not decode as {encoding}: {exc.reason}", None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
