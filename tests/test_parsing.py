"""Property tests for the value parsers and the readers: what goes in comes back out."""

from __future__ import annotations

import csv
import io
import json
import zoneinfo
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.mapping import _fast_number, _fast_timestamp
from cdp_cli.parsing import (
    TimestampParser,
    parse_date,
    parse_number,
    parse_timestamp,
)
from cdp_cli.readers import read_csv, read_jsonl

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
naive_datetimes = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31))


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_number_round_trips_through_its_text(value):
    assert parse_number(repr(value)) == value
    assert parse_number(f" ¥{value} ") == value


@given(st.integers(min_value=1000, max_value=10**12))
def test_thousands_separators(value):
    assert parse_number(f"{value:,}") == value
    assert parse_number(f"{value:,}.25") == value + 0.25


@pytest.mark.parametrize("text", ["N/A", "12,5x", "", "nan", "inf", "1e999", "1,2,3", "--1"])
def test_not_numbers(text):
    with pytest.raises(ValueError):
        parse_number(text)


@given(st.text(max_size=12))
def test_fast_number_agrees_with_parse_number(text):
    def general(raw, invalid):
        try:
            return parse_number(raw)
        except ValueError:
            return "refused"

    assert _fast_number(general)(text, {}) == general(text, {})


@given(naive_datetimes, st.sampled_from([SHANGHAI, NEW_YORK, timezone.utc]))
def test_timestamp_forms_agree(dt, zone):
    dt = dt.replace(microsecond=0)
    expected = parse_timestamp(dt.isoformat(), zone)
    assert datetime.fromisoformat(expected).utcoffset() is not None
    assert datetime.fromisoformat(expected).replace(tzinfo=None) == dt
    for text in (dt.strftime("%Y-%m-%d %H:%M:%S"), dt.strftime("%Y/%m/%d %H:%M:%S")):
        assert parse_timestamp(text, zone) == expected
        assert TimestampParser(zone)(text) == expected


@given(naive_datetimes)
def test_fast_timestamp_agrees_with_general(dt):
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    parser = TimestampParser(SHANGHAI)
    fast = _fast_timestamp(lambda raw, invalid: parse_timestamp(raw, SHANGHAI), parser)
    assert fast(text, {}) == parse_timestamp(text, SHANGHAI)


@given(st.integers(0, 10**13 - 1), st.sampled_from([SHANGHAI, NEW_YORK, timezone.utc]))
def test_fast_epoch_agrees_with_general(number, zone):
    assert TimestampParser(zone).epoch(number) == parse_timestamp(number, zone)


@given(st.datetimes(min_value=datetime(2001, 9, 10), max_value=datetime(2286, 11, 20)))
def test_epoch_seconds_and_milliseconds(dt):
    aware = dt.replace(tzinfo=timezone.utc, microsecond=dt.microsecond // 1000 * 1000)
    millis = round(aware.timestamp() * 1000)
    parsed = datetime.fromisoformat(parse_timestamp(millis, SHANGHAI))
    assert abs(parsed - aware) < timedelta(milliseconds=1)
    seconds = int(aware.timestamp())
    assert datetime.fromisoformat(parse_timestamp(str(seconds), SHANGHAI)).timestamp() == seconds


def test_explicit_offset_is_kept_and_zone_applies_to_naive():
    assert parse_timestamp("2025-06-01T14:03:22+02:00", SHANGHAI) == "2025-06-01T14:03:22+02:00"
    assert parse_timestamp("2025-06-01T06:03:22Z", SHANGHAI) == "2025-06-01T06:03:22+00:00"
    assert parse_timestamp("2025年6月1日", SHANGHAI) == "2025-06-01T00:00:00+08:00"
    assert parse_timestamp("2025-07-01 12:00:00", NEW_YORK) == "2025-07-01T12:00:00-04:00"
    assert parse_timestamp("2025-01-01 12:00:00", NEW_YORK) == "2025-01-01T12:00:00-05:00"
    with pytest.raises(ValueError):
        parse_timestamp("yesterday", SHANGHAI)


@given(st.dates(min_value=date(1900, 1, 1)))
def test_dates_in_every_usual_form(day):
    for text in (day.isoformat(), day.strftime("%Y/%m/%d"), day.strftime("%Y%m%d"),
                 f"{day.year}年{day.month}月{day.day}日", f"{day.year}/{day.month}/{day.day}"):  # fmt: skip
        assert parse_date(text) == day.isoformat()


@pytest.mark.parametrize("text", ["1990-02-30", "1990-13-01", "abc", "19901332"])
def test_impossible_dates(text):
    with pytest.raises(ValueError):
        parse_date(text)


cells = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@settings(max_examples=200)
@given(st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=20))
def test_csv_rows_come_back_as_written(rows):
    rows = [r for r in rows if any(c.strip() for c in r)]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([["a", "b", "c"], *rows])
    text = io.TextIOWrapper(io.BytesIO(buffer.getvalue().encode()), encoding="utf-8", newline="")
    header, read = read_csv(text, "utf-8")
    assert header == ["a", "b", "c"]
    assert [row for _, row, error, _ in read if row is not None] == rows


@settings(max_examples=200)
@given(
    st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers()), max_size=10)
)
def test_jsonl_objects_come_back_with_their_line_numbers(objects):
    data = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objects)
    rows = list(read_jsonl(io.BytesIO(data), "utf-8"))
    assert [(line, row) for line, row, _, _ in rows] == list(enumerate(objects, start=1))


_PLAIN = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='"\\'), max_size=8
)
_HALF_EMOJI = st.builds(
    lambda a, b: b'{"k": "' + a.encode() + b"\xed\xa0\xbd" + b.encode() + b'"}\n', _PLAIN, _PLAIN
)


@settings(max_examples=200)
@given(st.binary(max_size=200) | _HALF_EMOJI)
def test_any_bytes_as_jsonl_never_raise(data):
    """And every value read is text SQLite can store: UTF-8 with no lone surrogate, such as
    half an emoji written as its three bytes (b'\\xed\\xa0\\xbd', which json.loads lets through)."""
    for line, row, error, _raw in read_jsonl(io.BytesIO(data), "utf-8"):
        assert line >= 1
        assert (row is None and error is None) or error is not None or isinstance(row, dict)
        if row is not None and error is None:
            json.dumps(row, ensure_ascii=False).encode("utf-8")


def test_a_lone_surrogate_in_utf8_bytes_is_a_reject_not_a_crash():
    good = b'{"a": "\xe4\xbd\xa0"}\n'
    rows = list(read_jsonl(io.BytesIO(good + b'{"a": "x\xed\xa0\xbdy"}\n'), "utf-8"))
    assert [error for _, _, error, _ in rows] == [None, "bytes that do not decode as utf-8"]
    assert rows[0][1] == {"a": "\u4f60"}
