"""What the rows of an export become, read by either process (ingest_worker): each row the
row to upsert or its reject with the reason, in chunks, and what one file's ingest did."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cdp_cli import readers
from cdp_cli.identity.tombstones import FORGOTTEN_RAW, Tombstones
from cdp_cli.mapping import RowMapper, RowRejected

CHUNK_ROWS = 5000


@dataclass
class IngestResult:
    """What one file's ingest did; `status` is done, skipped (seen before) or failed."""

    source: str
    file: str
    status: str
    batch_id: int | None = None
    encoding: str | None = None
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0
    message: str = ""
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RowMapping:
    """A row as the row path maps it: the row to upsert, or its reject with the reason."""

    def __init__(self, mapper: RowMapper, result: IngestResult, tombstones: Tombstones | None):
        self.mapper = mapper
        self.result = result
        self.tombstones = tombstones

    def map(
        self, line: int, row: Any, error: str | None, raw: Any, rejects: list[tuple[Any, ...]]
    ) -> tuple[Any, ...] | None:
        """The row to upsert (source, key, values, attrs, batch, line), or None with its
        reject appended to `rejects`."""
        mapper, tombstones = self.mapper, self.tombstones
        name, batch_id = mapper.source.name, self.result.batch_id
        try:
            if error is not None:
                raise RowRejected(_problem_of(error), error)
            key, values, attrs = mapper.map(row)
            if tombstones is not None:
                hit = tombstones.row_hit(values[-1], mapper.identity_fields(values))
                if hit:
                    raise RowRejected("forgotten", f"carries a forgotten {hit}", hit)
            if key is None:
                key = _content_key(values, attrs)
            return (name, key, *values, attrs, batch_id, line)
        except RowRejected as rejected:
            # A row too large is not kept whole a second time: its line finds it.
            too_large = rejected.problem == "too_large"
            raw_text = None if too_large else _raw_text(raw or row, mapper.header)
            if tombstones is not None and (
                rejected.problem == "forgotten" or tombstones.mentioned_in(raw_text or "")
            ):
                raw_text = FORGOTTEN_RAW  # never the forgotten person's bytes
            rejects.append(
                (batch_id, name, line, rejected.problem, rejected.field, rejected.reason,
                 raw_text)
            )  # fmt: skip
            reasons = self.result.reject_reasons
            reasons[rejected.problem] = reasons.get(rejected.problem, 0) + 1
            return None


def map_chunks(
    rows: Iterator[Any],
    take: Callable[[dict[str, Any], int], tuple[Any, ...] | None] | None,
    mapping: RowMapping,
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """A file's rows in chunks of up to CHUNK_ROWS: those `take` took for SQL to map (a JSON
    Lines plan's; none without one), those RowMapper mapped (RowMapping.map's rows), and the
    rejects; counted into the mapping's result as they are read. The one loop of a JSON
    Lines file, in either process (ingest_worker), and of the row path."""
    result = mapping.result
    taken: list[tuple[Any, ...]] = []
    mapped: list[tuple[Any, ...]] = []
    rejects: list[tuple[Any, ...]] = []
    for line, row, error, raw in rows:
        if row is None and error is None:
            result.skipped += 1
            continue
        result.rows_read += 1
        values = take(row, line) if take is not None and error is None else None
        if values is not None:
            taken.append(values)
        else:
            one = mapping.map(line, row, error, raw, rejects)
            if one is not None:
                mapped.append(one)
        if len(taken) >= CHUNK_ROWS or len(mapped) >= CHUNK_ROWS or len(rejects) >= CHUNK_ROWS:
            yield taken, mapped, rejects
            taken, mapped, rejects = [], [], []
    yield taken, mapped, rejects


def _problem_of(error: str) -> str:
    if error.startswith(readers.TOO_LARGE):
        return "too_large"
    if error.startswith("bytes that do not decode"):
        return "undecodable"
    if error.startswith("expected") and "columns" in error:
        return "column_count"
    if error.startswith("expected a JSON object"):
        return "not_an_object"
    return "invalid_json" if "JSON" in error else "unreadable"


def _content_key(values: list[Any], attrs: str | None) -> str:
    """A key for rows without a natural one: the same content is the same row."""
    return hashlib.blake2b(repr((values, attrs)).encode(), digest_size=12).hexdigest()


def _raw_text(row: Any, header: list[str] | None) -> str | None:
    """The row as it was read, for the rejects table; undecodable bytes are shown escaped."""
    if row is None:
        return None
    if isinstance(row, bytes):
        return row.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    if isinstance(row, list) and header is not None:
        text = ",".join(row)
    else:
        text = json.dumps(row, ensure_ascii=False)
    return _SURROGATE.sub(_escaped, text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    """A byte that did not decode (kept as U+DC00 + byte) as \\xNN; any other lone
    surrogate as \\uXXXX: SQLite stores UTF-8, which has no room for them."""
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC00 <= code <= 0xDCFF else f"\\u{code:04x}"
