"""Turning the strings of an export into typed values: timestamps, dates, numbers.

Each parser raises ValueError with a short reason; the ingester decides whether that rejects
the row (a required field) or keeps the row and records the value as invalid.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

DEFAULT_TIMESTAMP_FORMATS = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y%m%d%H%M%S",
    "%Y%m%d",
    "%Y年%m月%d日 %H:%M:%S",
    "%Y年%m月%d日 %H:%M",
    "%Y年%m月%d日",
    "%Y.%m.%d",
    "%d/%m/%Y %H:%M:%S",
)
DEFAULT_DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y%m%d",
    "%Y年%m月%d日",
    "%Y.%m.%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_CURRENCY = "¥￥$ \u00a0"
# One encoder for every row: json.dumps with options builds a new one per call (~3 µs).
JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def parse_number(value: Any) -> float:
    """A finite number from 299, '299.00', '¥1,299.50'; '12,5x' and 'N/A' are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip().strip(_CURRENCY)
        try:
            number = float(text)
        except ValueError:
            if not _THOUSANDS.match(text):
                raise ValueError(f"{value!r} is not a number") from None
            number = float(text.replace(",", ""))
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a number")
    return number


def parse_integer(value: Any) -> int:
    number = parse_number(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def _from_epoch(number: float | int, zone: tzinfo) -> datetime:
    # 13 digits are milliseconds (JavaScript, app SDKs), 10 are seconds (WeChat, Unix tools).
    milliseconds = abs(number) >= 1e11
    if type(number) is int:  # exact integer arithmetic, and the C constructor: the usual case
        seconds, millis = divmod(number, 1000) if milliseconds else (number, 0)
        try:
            return datetime.fromtimestamp(seconds, zone).replace(microsecond=millis * 1000)
        except (OverflowError, OSError, ValueError):
            pass
    delta = timedelta(milliseconds=number) if milliseconds else timedelta(seconds=number)
    return (_EPOCH + delta).astimezone(zone)


def _epoch_like(text: str) -> bool:
    return text.isdigit() and len(text) in (10, 13)


def parse_timestamp(value: Any, zone: tzinfo, formats: tuple[str, ...] = ()) -> str:
    """ISO-8601 with an offset; a value without a zone is read in the source's timezone."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        dt = _from_epoch(value, zone)
    else:
        text = str(value).strip()
        if _epoch_like(text):
            dt = _from_epoch(int(text), zone)
        else:
            dt = _parse_datetime(text, formats)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=zone)
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")


class TimestampParser:
    """parse_timestamp for one zone and set of formats, fast for the common written forms.

    Most exports write 'YYYY-MM-DD HH:MM:SS'; for those the text is validated by the C parser
    and the zone's offset is looked up once per hour of the calendar instead of per value.
    """

    def __init__(self, zone: tzinfo, formats: tuple[str, ...] = ()) -> None:
        self.zone = zone
        self.formats = formats
        self._offsets: dict[str, str] = {}
        self._epoch_offsets: dict[int, tuple[int, str]] = {}

    def __call__(self, value: Any) -> str:
        if not self.formats and type(value) is str:
            fast = self.local(value)
            if fast is not None:
                return fast
        return parse_timestamp(value, self.zone, self.formats)

    def local(self, value: str) -> str | None:
        """'YYYY-MM-DD HH:MM[:SS]' (or with '/') in this zone, as ISO-8601 with offset; None
        for any other form, which the general parser then reads."""
        size = len(value)
        if size not in (16, 19) or value[10] not in " T" or value[4] != value[7]:
            return None
        if value[4] == "/":
            value = value.replace("/", "-")
        elif value[4] != "-":
            return None
        if size == 16:
            value += ":00"
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        hour = value[:13]
        offset = self._offsets.get(hour)
        if offset is None:
            offset = self.offset(dt)
            if len(self._offsets) > 100_000:
                self._offsets.clear()
            self._offsets[hour] = offset
        return f"{value[:10]}T{value[11:]}{offset}"

    def epoch(self, number: int) -> str:
        """An integer of epoch seconds or milliseconds, as parse_timestamp would write it,
        with the zone's offset looked up once per hour."""
        seconds, millis = divmod(number, 1000) if abs(number) >= 1e11 else (number, 0)
        hour = seconds // 3600
        cached = self._epoch_offsets.get(hour)
        if cached is None:
            offset = datetime.fromtimestamp(hour * 3600, self.zone).utcoffset() or timedelta()
            text = datetime.fromtimestamp(hour * 3600, self.zone).isoformat()[19:]
            cached = (int(offset.total_seconds()), text)
            if len(self._epoch_offsets) > 100_000:
                self._epoch_offsets.clear()
            self._epoch_offsets[hour] = cached
        local = (_NAIVE_EPOCH + timedelta(seconds=seconds + cached[0])).isoformat()
        return f"{local}.{millis:03d}{cached[1]}" if millis else f"{local}{cached[1]}"

    def offset(self, dt: datetime) -> str:
        """The zone's offset at a local time, as isoformat writes it ('+08:00')."""
        return dt.replace(tzinfo=self.zone).isoformat()[19:]


def _parse_datetime(text: str, formats: tuple[str, ...]) -> datetime:
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        pass
    for fmt in DEFAULT_TIMESTAMP_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    raise ValueError(f"{text!r} is not a date and time cdp can read")


def parse_date(value: Any, formats: tuple[str, ...] = ()) -> str:
    """A calendar date as YYYY-MM-DD; '1990-02-30' is refused."""
    text = str(value).strip()
    quick = _quick_date(text, formats)
    if quick is not None:
        return quick
    for fmt in formats + DEFAULT_DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            pass
    raise ValueError(f"{text!r} is not a date cdp can read")


def _quick_date(text: str, formats: tuple[str, ...]) -> str | None:
    """The forms that cannot mean anything else, without strptime (which is slow)."""
    digits = None
    if len(text) == 10 and text[4] == "-" and text[7] == "-" and text[:4].isdigit():
        try:  # already ISO: checked by the C parser, kept as written
            date.fromisoformat(text)
            return text
        except ValueError:
            pass
    if len(text) == 10 and text[4] in "-/" and text[7] == text[4]:
        digits = (text[:4], text[5:7], text[8:])
    elif len(text) == 8 and text.isdigit() and (not formats or "%Y%m%d" in formats):
        digits = (text[:4], text[4:6], text[6:])
    if digits is None or not all(d.isdigit() for d in digits):
        return None
    try:
        return date(int(digits[0]), int(digits[1]), int(digits[2])).isoformat()
    except ValueError:
        raise ValueError(f"{text!r} is not a date cdp can read") from None


def to_json(value: Any) -> str:
    """JSON text for a nested value; a string that already is JSON is kept as it is."""
    if isinstance(value, str):
        try:
            json.loads(value)
            return value
        except ValueError:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
