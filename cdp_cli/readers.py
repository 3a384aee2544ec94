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
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import charset_normalizer
import ijson

from cdp_cli.errors import IngestError

SAMPLE_BYTES = 256 * 1024
# Exports in the wild hold very long free-text cells; the csv module's 128 KiB default is not
# enough, but an unbounded one lets a broken quote swallow the whole file into one field.
csv.field_size_limit(min(sys.maxsize, 16 * 1024 * 1024))

FALLBACK_ENCODINGS = ("utf-8", "gb18030")
# A row nested deeper is a reject: no export needs more, and a parser's costs grow with depth.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")  # \ud800 to \udfff, in JSON text
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
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
    # UTF-8 or GBK (as gb18030, which decodes every GBK file) is what Chinese exports are
    # written in: the one with fewer lines that do not decode, if those are few (they become
    # rejects). Only then a detector, which takes a short GBK file for a Cyrillic code page.
    bad = {name: _bad_lines(sample, name) for name in FALLBACK_ENCODINGS}
    usual = min(FALLBACK_ENCODINGS, key=bad.__getitem__)
    if bad[usual] <= max(1, sample.count(b"\n") // 100):
        return usual
    best = charset_normalizer.from_bytes(sample).best()
    if best is None:
        # A few broken bytes make the detector give up: take whichever of the usual codecs
        # leaves fewest of them; the lines that still do not decode become rejects.
        return min(FALLBACK_ENCODINGS, key=lambda name: _decode_errors(sample, name))
    name = codecs.lookup(best.encoding).name
    # GBK files are often guessed as a narrower Chinese codec; gb18030 decodes all of them.
    return "gb18030" if name in ("gbk", "gb2312", "hz", "cp936") else name


def _bad_lines(sample: bytes, encoding: str) -> int:
    """Lines of the sample that do not decode; the last may be cut short, so is not counted."""
    lines = sample.split(b"\n")
    bad = 0
    for line in lines[:-1] if len(sample) == SAMPLE_BYTES else lines:
        try:
            line.decode(encoding)
        except UnicodeDecodeError:
            bad += 1
    return bad


def _decode_errors(sample: bytes, encoding: str) -> int:
    return sample.decode(encoding, errors="replace").count("\ufffd")


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


class _DecodeErrors:
    """Counts bytes that did not decode, so rows are checked only once there has been one."""

    count = 0

    @classmethod
    def handler(cls, exc: UnicodeError) -> tuple[str, int]:
        """Each byte as a lone surrogate, as surrogateescape writes bytes from 0x80; it refuses
        lower ones, which a UTF-16 file cut short leaves (b'\\x00' with no partner)."""
        if not isinstance(exc, UnicodeDecodeError):
            raise exc
        cls.count += 1
        bad = exc.object[exc.start : exc.end]
        return "".join(chr(0xDC00 + byte) for byte in bad), exc.end


codecs.register_error("cdp-surrogateescape", _DecodeErrors.handler)


def _undecodable(values: list[str]) -> bool:
    """True when a row holds bytes that did not decode (kept as lone surrogates)."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@contextmanager
def open_rows(
    path: Path, fmt: str, encoding: str, delimiter: str | None = ","
) -> Iterator[tuple[list[str] | None, Iterator[RowResult], Progress]]:
    """Open a file and yield its CSV header (None for JSON), its rows and its progress."""
    with path.open("rb") as stream:
        if _holds_nothing(stream, encoding):
            raise IngestError("the file is empty")
        stream.seek(0)
        progress = Progress(stream, path.stat().st_size)
        if fmt == "jsonl":
            yield None, read_jsonl(stream, encoding), progress
        elif fmt == "json" and encoding in ("utf-8", "utf-8-sig"):
            yield None, read_json(stream), progress
        else:
            errors = "cdp-surrogateescape" if fmt == "csv" else "strict"
            with io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline="") as text:
                if fmt == "csv":
                    header, rows = read_csv(text, encoding, delimiter)
                    yield header, rows, progress
                else:
                    yield None, read_json(text, encoding), progress


def _holds_nothing(stream: BinaryIO, encoding: str) -> bool:
    """True for a file of no bytes, or of only a BOM and whitespace: there is nothing to
    ingest, which the user should hear rather than see a batch of 0 rows (or a missing
    column). Reads only as far as the first character that is not white space."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    while chunk := stream.read(64 * 1024):
        if decoder.decode(chunk).replace("\ufeff", "").strip():
            return False
    return not decoder.decode(b"", final=True).replace("\ufeff", "").strip()


CANDIDATE_DELIMITERS = (",", ";", "\t", "|")


def csv_delimiter(header_line: str) -> str:
    """The delimiter a header line is written with: `,` unless the line holds no comma outside
    quotes and exactly one of the other candidates (`;`, a tab, `|`); with none or several of
    them it cannot be told, and `,` reads the header as one column."""
    counts = dict.fromkeys(CANDIDATE_DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    found = [d for d in CANDIDATE_DELIMITERS[1:] if counts[d]]
    return found[0] if counts[","] == 0 and len(found) == 1 else ","


def _first_line(text: TextIO) -> str:
    """The first line with more than white space and delimiters; the stream is rewound."""
    blank = "".join(CANDIDATE_DELIMITERS) + " \r\n\ufeff"
    line = ""
    while line := text.readline():
        if line.strip(blank):
            break
    text.seek(0)
    return line


def read_csv(
    text: TextIO, encoding: str, delimiter: str | None = ","
) -> tuple[list[str], Iterator[RowResult]]:
    """The header and an iterator of rows as lists of strings, with their first line number.

    `text` must decode with errors="cdp-surrogateescape", so that a row with bytes that do
    not decode is quarantined rather than stopping the file. With no `delimiter`, it is told
    from the header line (csv_delimiter); `text` must then be seekable.
    """
    errors_before = _DecodeErrors.count  # the text decodes ahead of the rows, so count from here
    if delimiter is None:
        delimiter = csv_delimiter(_first_line(text))
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
    return header, _csv_rows(reader, len(header), encoding, errors_before)


def _csv_rows(reader: Any, width: int, encoding: str, errors_before: int) -> Iterator[RowResult]:
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
        elif _DecodeErrors.count != errors_before and _undecodable(row):
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
        except RecursionError:
            yield number, raw, TOO_DEEP, raw
            continue
        if not isinstance(value, dict):
            yield number, raw, f"expected a JSON object, got {_json_type(value)}", raw
            continue
        if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _too_deep(value):
            yield number, raw, TOO_DEEP, raw
            continue
        if _SURROGATE_ESCAPE.search(raw):
            value = _whole_text(value)
        yield number, value, None, raw


def _whole_text(value: Any) -> Any:
    """The value with U+FFFD for each lone surrogate: JSON can escape half an emoji
    ("\\ud83d"), which is no character, and SQLite, storing UTF-8, refuses it."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_whole_text(item) for item in value]
    if isinstance(value, dict):
        return {_whole_text(key): _whole_text(item) for key, item in value.items()}
    return value


def _too_deep(value: Any) -> bool:
    """Whether a JSON value nests more than MAX_JSON_DEPTH levels (without recursing)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def read_json(stream: BinaryIO | io.TextIOWrapper, encoding: str = "utf-8") -> Iterator[RowResult]:
    """Objects from a JSON array, numbered by position (1 is the array's first item).

    Items are built from ijson's basic events: ijson.items keeps a path per event, which
    costs memory quadratic in the nesting depth (100 KB of brackets takes gigabytes). An item
    nested too deeply is passed over, not built, and comes back as a reject.
    """
    try:
        head = stream.read(4096)
    except UnicodeDecodeError as exc:
        raise IngestError(f"does not decode as {encoding} ({exc.reason})") from None
    stream.seek(0)
    if isinstance(head, bytes):
        head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    else:
        head = head.lstrip("\ufeff \t\r\n")
    if not head:
        return
    if head[:1] not in (b"[", "["):
        raise IngestError("expected a JSON array of objects at the top level")
    position = depth = 0
    builder, too_deep = ijson.ObjectBuilder(), False
    source = _AsUtf8(stream) if isinstance(stream, io.TextIOWrapper) else stream
    try:
        for event, value in ijson.basic_parse(source, use_float=True):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth == 1:  # the array of items itself
                    continue
                if depth == 2:
                    position += 1
                    builder, too_deep = ijson.ObjectBuilder(), False
                too_deep = too_deep or depth > MAX_JSON_DEPTH + 1
            elif event in ("end_map", "end_array"):
                depth -= 1
                if depth == 0:
                    continue
            elif depth == 1:  # an item that is a plain value
                position += 1
                yield position, value, f"expected a JSON object, got {_json_type(value)}", None
                continue
            if not too_deep:
                builder.event(event, value)
            if depth == 1:  # an item has just ended
                item = None if too_deep else builder.value
                if too_deep:
                    yield position, None, TOO_DEEP, None
                elif isinstance(item, dict):
                    yield position, item, None, None
                else:
                    yield position, item, f"expected a JSON object, got {_json_type(item)}", None
    except ijson.JSONError as exc:
        done = position - 1 if depth > 1 else position
        yield done + 1, None, f"invalid JSON after item {done}: {exc}", None
    except UnicodeDecodeError as exc:
        yield position + 1, None, f"bytes that do not decode as {encoding}: {exc.reason}", None


class _AsUtf8:
    """A text stream read as UTF-8 bytes: ijson reads bytes (text is deprecated there)."""

    def __init__(self, text: TextIO) -> None:
        self.text = text

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson asks for nothing first, to learn what the stream gives
            return b""
        return self.text.read(size if size < 0 else max(size // 4, 1)).encode("utf-8")


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
