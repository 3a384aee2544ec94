"""Streaming readers for CSV, JSON Lines and JSON exports.

Each reader yields `(line, row, error, raw)`. A row it could not read comes with the reason
instead of stopping the file, so the caller can quarantine it and keep the rest; `raw` is the
line as bytes where the format has lines. Nothing here holds a whole file in memory, nor a
whole line: a row, a value or a JSON array's item past the source's `limits:` is read no
further than the limit (config.Limits).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import charset_normalizer
import ijson

from cdp_cli.config import DEFAULT_LIMITS, Limits
from cdp_cli.errors import IngestError
from cdp_cli.privacy import quote_cells

SAMPLE_BYTES = 256 * 1024
SKIP_CHUNK = 1 << 20  # how much of a line too long to keep is read at a time, to pass it by

FALLBACK_ENCODINGS = ("utf-8", "gb18030")
# A row nested deeper is a reject: no export needs more, and a parser's costs grow with depth.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")  # \ud800 to \udfff, in JSON text
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
RowResult = tuple[int, Any, "str | None", "bytes | None"]


TOO_LARGE = "too large: "  # how the reason of a reject past a limit starts (problem too_large)


def over_limit(key: str, limit: int, unit: str = "bytes") -> str:
    """'over limits.row_bytes in cdp.yaml (1,048,576 bytes)', for a message."""
    return f"over limits.{key} in cdp.yaml ({limit:,} {unit})"


def row_too_large(limits: Limits) -> str:
    return f"{TOO_LARGE}a row {over_limit('row_bytes', limits.row_bytes)}"


def value_too_large(limits: Limits) -> str:
    return f"{TOO_LARGE}a value {over_limit('field_chars', limits.field_chars, 'characters')}"


class RowTooLarge(Exception):
    """A row past limits.row_bytes: what _BoundedLines raises into csv.reader, and
    _ItemBudget into ijson, to stop them reading it."""


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
    path: Path,
    fmt: str,
    encoding: str,
    delimiter: str | None = ",",
    limits: Limits = DEFAULT_LIMITS,
    columns: Collection[str] = (),
    end: int | None = None,
) -> Iterator[tuple[list[str] | None, Iterator[RowResult], Progress]]:
    """Open a file and yield its CSV header (None for JSON), its rows and its progress.

    `columns` are those the source maps: a CSV header with none of them may be a row of data,
    and is quoted masked (see is_known_header). A JSON Lines file is read up to `end`, a line's
    start (ingest_worker.split_point), where one is given."""
    with path.open("rb") as stream, _csv_field_limit(limits.field_chars):
        if _holds_nothing(stream, encoding):
            raise IngestError("the file is empty")
        stream.seek(0)
        what = not_an_export(stream.read(16))
        if what:
            raise IngestError(f"the file is {what}")
        stream.seek(0)
        progress = Progress(stream, path.stat().st_size)
        if fmt == "jsonl":
            yield None, read_jsonl(stream, encoding, limits, end=end), progress
        elif fmt == "json" and encoding in ("utf-8", "utf-8-sig"):
            yield None, read_json(stream, limits=limits), progress
        else:
            errors = "cdp-surrogateescape" if fmt == "csv" else "strict"
            with io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline="") as text:
                if fmt == "csv":
                    header, rows = read_csv(text, encoding, delimiter, limits, columns)
                    yield header, rows, progress
                else:
                    yield None, read_json(text, encoding, limits), progress


# Files that are not text, by their first bytes: what a user gives cdp in place of an export,
# and what to do instead. Read as text, each fails on a garbled header or line, which names
# neither.
NOT_EXPORTS = (
    (b"PK\x03\x04", "a ZIP archive, as an Excel .xlsx workbook is: save the sheet as CSV UTF-8 "
                     "(Excel: File > Save As), or unzip it"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (.xls): save the sheet as "
                                         "CSV UTF-8 (Excel: File > Save As)"),
    (b"\x1f\x8b", "compressed with gzip: decompress it first (gunzip)"),
    (b"SQLite format 3\x00", "a SQLite database (a cdp store?), not an export"),
    (b"%PDF-", "a PDF document, not an export"),
)  # fmt: skip


def not_an_export(head: bytes) -> str | None:
    """What a file is (NOT_EXPORTS) when its first bytes say it is no export, else None."""
    return next((what for magic, what in NOT_EXPORTS if head.startswith(magic)), None)


@contextmanager
def _csv_field_limit(chars: int) -> Iterator[None]:
    """csv.field_size_limit set to `chars` while a file is read: it is the csv module's one
    setting for every reader in the process, so it is put back after."""
    before = csv.field_size_limit(chars)
    try:
        yield
    finally:
        csv.field_size_limit(before)


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


def _first_line(text: TextIO, limit: int) -> str:
    """The first line with more than white space and delimiters, or its first `limit`
    characters; the stream is rewound."""
    blank = "".join(CANDIDATE_DELIMITERS) + " \r\n\ufeff"
    line = ""
    while line := text.readline(limit):
        if line.strip(blank):
            break
    text.seek(0)
    return line


def is_known_header(header: list[str], columns: Collection[str]) -> bool:
    """Whether a CSV header holds one of the `columns` a source maps, as a cell or as part of
    one split at a candidate delimiter (a header split on the wrong one). One that holds none
    may be a row of data, the first of a file without its header row: messages mask it."""
    wanted = set(columns)
    split = re.compile("|".join(map(re.escape, CANDIDATE_DELIMITERS)))
    return any(part.strip() in wanted for cell in header for part in split.split(cell))


class _BoundedLines:
    """The lines of a CSV text, as csv.reader takes them, read `limit` characters at most.

    csv.reader holds a whole line, and a row whose quoted cells span lines: a line or a row
    longer than the limit is read no further (the rest of the line is passed by) and raises
    RowTooLarge out of the reader, which then starts afresh on the next line. `number` counts
    the lines read, which csv.reader's line_num misses for that line; `row_chars` is what the
    row being read has taken so far, for its reader to reset.
    """

    def __init__(self, text: TextIO, limit: int) -> None:
        self._readline = text.readline
        self._max = limit + 2  # a line of `limit` and its \r\n
        self._after_cr = False
        self.number = 0
        self.row_chars = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self._readline(self._max)
        if self._after_cr:  # a line passed by ended at a \r: the \n after it is no line
            self._after_cr = False
            if line == "\n":
                line = self._readline(self._max)
        if not line:
            raise StopIteration
        self.number += 1
        self.row_chars += len(line)
        # Past the limit: a row of several lines, or one line cut short (a line of exactly
        # `limit` and its \r\n is not).
        if self.row_chars >= self._max and (self.row_chars > self._max or line[-1] != "\n"):
            self._pass_by(line)
        return line

    def _pass_by(self, line: str) -> None:
        """Read past the rest of a line too long, and stop the row it belongs to."""
        while line[-1] not in "\r\n" and (chunk := self._readline(SKIP_CHUNK)):
            line = chunk
        self._after_cr = line[-1] == "\r"
        raise RowTooLarge


def read_csv(
    text: TextIO,
    encoding: str,
    delimiter: str | None = ",",
    limits: Limits = DEFAULT_LIMITS,
    columns: Collection[str] = (),
) -> tuple[list[str], Iterator[RowResult]]:
    """The header and an iterator of rows as lists of strings, with their first line number.

    `text` must decode with errors="cdp-surrogateescape", so that a row with bytes that do
    not decode is quarantined rather than stopping the file. With no `delimiter`, it is told
    from the header line (csv_delimiter); `text` must then be seekable. The caller sets
    csv.field_size_limit (open_rows sets it to limits.field_chars).
    """
    errors_before = _DecodeErrors.count  # the text decodes ahead of the rows, so count from here
    if delimiter is None:
        delimiter = csv_delimiter(_first_line(text, limits.row_bytes))
    lines = _BoundedLines(text, limits.row_bytes)
    reader = csv.reader(lines, delimiter=delimiter, strict=False)
    header: list[str] | None = None
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                header = [cell.strip().lstrip("\ufeff") for cell in row]
                break
            lines.row_chars = 0
    except RowTooLarge:
        too_long = over_limit("row_bytes", limits.row_bytes)
        raise IngestError(f"line {lines.number}: the header is {too_long}") from None
    except csv.Error as exc:
        problem = _csv_problem(exc, limits)
        raise IngestError(f"line {lines.number}: cannot read the CSV header: {problem}") from None
    if header is None:
        return [], iter(())
    if _undecodable(header):
        raise IngestError(f"line {lines.number}: the header does not decode as {encoding}")
    duplicates = sorted({h for h in header if header.count(h) > 1 and h})
    if duplicates:
        shown = quote_cells(duplicates, header=is_known_header(header, columns))
        raise IngestError(f"line {lines.number}: duplicate column names: {shown}")
    return header, _csv_rows(reader, lines, len(header), encoding, errors_before, limits)


def _csv_problem(exc: csv.Error, limits: Limits) -> str:
    """What a csv.Error says, for a reject's reason; a cell over the field limit is too large."""
    if str(exc).startswith("field larger than field limit"):
        return value_too_large(limits)
    return f"unreadable CSV: {exc}"


def _csv_rows(
    reader: Any,
    lines: _BoundedLines,
    width: int,
    encoding: str,
    errors_before: int,
    limits: Limits,
) -> Iterator[RowResult]:
    row_bytes = limits.row_bytes
    while True:
        line = lines.number + 1
        lines.row_chars = 0
        try:
            row = next(reader)
        except StopIteration:
            return
        except RowTooLarge:
            yield line, None, row_too_large(limits), None
            continue
        except csv.Error as exc:
            yield line, None, _csv_problem(exc, limits), None
            continue
        # A character is 1 to 4 bytes in UTF-8: count them only where that could matter.
        if lines.row_chars * 4 > row_bytes and _utf8_size(row) > row_bytes:
            yield line, None, row_too_large(limits), None
            continue
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                yield line, None, None, None  # blank line
                continue
            yield line, row, f"expected {width} columns, found {len(row)}", None
        elif _DecodeErrors.count != errors_before and _undecodable(row):
            yield line, row, f"bytes that do not decode as {encoding}", None
        else:
            yield line, row, None, None


def _utf8_size(row: list[str]) -> int:
    """A CSV row's size in bytes as UTF-8: its cells and the delimiters between them."""
    return sum(len(cell.encode("utf-8", "surrogatepass")) for cell in row) + len(row) - 1


def read_jsonl(
    stream: BinaryIO,
    encoding: str,
    limits: Limits = DEFAULT_LIMITS,
    *,
    first_line: int = 1,
    end: int | None = None,
) -> Iterator[RowResult]:
    """Objects from a JSON Lines file; a blank line yields (line, None, None).

    Each line is read limits.row_bytes at most: one longer is passed by and rejected. The
    stream may start at a later line, numbered `first_line`, and stop at `end`, a line's start
    (a part of the file, see ingest_worker)."""
    longest = limits.row_bytes + 2  # a line of row_bytes and its \r\n
    number = first_line - 1
    while (end is None or stream.tell() < end) and (raw := stream.readline(longest)):
        number += 1
        if len(raw) == longest and not raw.endswith(b"\n"):  # the line goes on
            while (chunk := stream.readline(SKIP_CHUNK)) and not chunk.endswith(b"\n"):
                pass
            yield number, None, row_too_large(limits), None
            continue
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if len(raw) > limits.row_bytes:
            yield number, None, row_too_large(limits), None
            continue
        if not raw.strip():
            yield number, None, None, None
            continue
        try:
            # Decoded here, strictly: json.loads would take the bytes of half an emoji
            # (b"\xed\xa0\xbd") as a lone surrogate, which SQLite cannot store.
            value = json.loads(raw.decode(encoding))
        except UnicodeDecodeError:
            yield number, raw, f"bytes that do not decode as {encoding}", raw
            continue
        except json.JSONDecodeError as exc:
            yield number, raw, f"invalid JSON at column {exc.colno}: {exc.msg}", raw
            continue
        except ValueError:  # an integer longer than Python converts
            digits = sys.get_int_max_str_digits()
            yield number, raw, f"invalid JSON: a number of more than {digits:,} digits", raw
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
        # A string holds fewer characters than the line has bytes: look only in long lines.
        if len(raw) > limits.field_chars and _too_long(value, limits.field_chars):
            yield number, None, value_too_large(limits), None
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


def _too_long(value: Any, limit: int) -> bool:
    """Whether a JSON value holds a string (or a key) longer than `limit` characters."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) > limit:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _ItemBudget:
    """The stream ijson reads from, counted, so that an item that grows past limits.row_bytes
    stops the parse (RowTooLarge): ijson builds a value whole before it hands it over.

    ijson reads a chunk, then hands over all its events before it reads the next, so when it
    reads, every byte since the chunk in which the last item ended is the current item's."""

    def __init__(self, stream: BinaryIO | _AsUtf8, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.read_bytes = 0
        self.item_start = 0

    def read(self, size: int = -1) -> bytes:
        if self.read_bytes - self.item_start > self.limit:
            raise RowTooLarge
        data = self.stream.read(size)
        self.read_bytes += len(data)
        return data

    def item_ended(self) -> None:
        self.item_start = self.read_bytes


def read_json(
    stream: BinaryIO | io.TextIOWrapper, encoding: str = "utf-8", limits: Limits = DEFAULT_LIMITS
) -> Iterator[RowResult]:
    """Objects from a JSON array, numbered by position (1 is the array's first item).

    Items are built from ijson's basic events: ijson.items keeps a path per event, which
    costs memory quadratic in the nesting depth (100 KB of brackets takes gigabytes). An item
    nested too deeply, or with a string over limits.field_chars, is passed over, not built,
    and comes back as a reject. An item over limits.row_bytes fails the file: the items after
    it cannot be found without reading it.
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
    builder, problem = ijson.ObjectBuilder(), None
    budget = _ItemBudget(_AsUtf8(stream) if isinstance(stream, io.TextIOWrapper) else stream,
                         limits.row_bytes)  # fmt: skip
    longest = limits.field_chars
    try:
        for event, value in ijson.basic_parse(budget, use_float=True):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth == 1:  # the array of items itself
                    continue
                if depth == 2:
                    position += 1
                    builder, problem = ijson.ObjectBuilder(), None
                if depth > MAX_JSON_DEPTH + 1:
                    problem = problem or TOO_DEEP
            elif event in ("end_map", "end_array"):
                depth -= 1
                if depth == 0:
                    continue
            elif depth == 1:  # an item that is a plain value
                position += 1
                budget.item_ended()
                yield position, value, f"expected a JSON object, got {_json_type(value)}", None
                continue
            elif type(value) is str and len(value) > longest:  # a string, or a key
                problem = problem or value_too_large(limits)
            if problem is None:
                builder.event(event, value)
            if depth == 1:  # an item has just ended
                budget.item_ended()
                item = None if problem else builder.value
                if problem:
                    yield position, None, problem, None
                elif isinstance(item, dict):
                    yield position, item, None, None
                else:
                    yield position, item, f"expected a JSON object, got {_json_type(item)}", None
    except RowTooLarge:
        at = position if depth > 1 else position + 1
        raise IngestError(
            f"item {at} of the JSON array is {over_limit('row_bytes', limits.row_bytes)}, and "
            "the items after it cannot be reached without reading it whole: raise the limit, "
            "or export JSON Lines (one object a line), where a row too large is one reject "
            "and the rest is kept"
        ) from None
    except ijson.JSONError as exc:
        done = position - 1 if depth > 1 else position
        yield done + 1, None, f"invalid JSON after item {done}: {_first_line_of(exc)}", None
    except UnicodeDecodeError as exc:
        yield position + 1, None, f"bytes that do not decode as {encoding}: {exc.reason}", None


def _first_line_of(exc: Exception) -> str:
    """What a JSON parser says went wrong, without the text it quotes after: that is a row."""
    text = str(exc)
    if text.startswith(("b'", 'b"')):  # ijson's C backend gives bytes
        text = text[2:]
    return text.split("\n", 1)[0].split("\\n", 1)[0].strip()


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
