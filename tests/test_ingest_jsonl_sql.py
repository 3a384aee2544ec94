"""The set path for JSON Lines (ingest_set.JsonPlan) stores exactly what RowMapper would.

Random JSON Lines files, messy the way app logs are (values padded with any kind of space,
of any JSON type, timestamps as epoch seconds or milliseconds in and out of range or written
in many forms, nested values that are not objects, keys missing or repeated, columns cdp.yaml
does not map, lines that are not objects or not JSON), are ingested twice: once as set work,
once row by row with RowMapper. The stores must hold the same rows, rejects and batch
counts, and ingest must say the same. Sources in two time zones (one with summer time) and
one with a constant and a two-part key.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp_cli import ingest_set
from cdp_cli.config import load_config
from cdp_cli.mapping import RowMapper
from tests.ingest_compare import store_after

CONFIG = """
store: cdp.db
region: CN
timezone: Asia/Shanghai
sources:
  app_events:
    kind: events
    key: event_id
    fields:
      event: event
      occurred_at: ts
      device_id: device_id
      member_no: user_id
      phone: properties.phone
      platform: platform
      properties: properties
  web_events:
    kind: events
    timezone: America/New_York
    key: [device_id, event_id]
    fields:
      event: event
      occurred_at: ts
      user_id: user.id
      platform: "=web"
      device_id: site
"""

SPACES = st.sampled_from(["", "", "", " ", "\t", "\u3000", "\xa0", "\n"])
WORDS = st.sampled_from(["app_open", "login", "卸妆油", "O'Neil", "a,b", "", "\x00", "\ud83d"])


def padded(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(SPACES, values, SPACES).map("".join)


ODD = st.one_of(
    st.none(), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans(),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.just("a"), st.integers(0, 3)),
)  # fmt: skip
TEXT = st.one_of(padded(WORDS), padded(st.text(max_size=4)), ODD)
EPOCHS = st.one_of(
    st.integers(473_385_600, 1_956_528_000),  # 1985 to 2031, in seconds
    st.integers(473_385_600_000, 1_956_528_000_000),  # and in milliseconds
    st.sampled_from([0, -1, 99_999_999_999, 100_000_000_000, 10**13 - 1, 10**13, 2**63 - 1]),
    # Shanghai's summer time (1986-1991) and New York's around their changes
    st.sampled_from([515_520_000, 515_523_600, 1_710_054_000_000, 1_710_057_600_123]),
)
WRITTEN = st.sampled_from([
    "2024-12-22T02:08:38.345+08:00", "2024-12-22T02:08:38+08:00", "2024-12-22 02:08:38",
    "2024/12/22 02:08", "2024-12-22T02:08:38.000+08:00", "2024-12-22T02:08:38Z", "1731604005",
    "1731604005268", "2022-02-30 10:00:00", "x", "", "  1986-05-04 02:30:00 ",
])  # fmt: skip
TIMES = st.one_of(EPOCHS, padded(WRITTEN), st.floats(0, 2e12), ODD)
KEYS = st.one_of(padded(st.sampled_from(["E1", "E2", "E3", "e1"])), ODD)


@st.composite
def objects(draw: st.DrawFn, source: str) -> dict[str, Any]:
    """One event as an app writes it: some columns missing, some not mapped."""
    row: dict[str, Any] = {"event_id": draw(KEYS), "event": draw(TEXT), "ts": draw(TIMES)}
    if source == "app_events":
        row["device_id"] = draw(st.one_of(padded(st.sampled_from(["D1", "D2"])), ODD))
        row["user_id"] = draw(TEXT)
        row["platform"] = draw(TEXT)
        row["properties"] = draw(
            st.one_of(
                st.fixed_dictionaries({}, optional={"phone": TEXT, "query": WORDS}),
                st.just({}),
                ODD,
                padded(st.sampled_from(['{"phone": "1"}', "x"])),
            )
        )
    else:
        row["site"] = draw(padded(st.sampled_from(["cn", "us", ""])))
        row["user"] = draw(st.one_of(st.fixed_dictionaries({}, optional={"id": TEXT}), ODD))
    for column in draw(st.lists(st.sampled_from(list(row)), max_size=2)):
        row.pop(column, None)
    if draw(st.integers(0, 9)) == 0:
        row[draw(st.sampled_from(["extra", "properties.phone", "user.id"]))] = draw(TEXT)
    return row


@st.composite
def jsonl_files(draw: st.DrawFn, source: str) -> bytes:
    """A JSON Lines export: objects, and now and then a line that is not one."""
    lines = [json.dumps(draw(objects(source)))]  # an empty file is refused before mapping
    for _ in range(draw(st.integers(0, 12))):
        shape = draw(st.sampled_from(["object"] * 12 + ["blank", "array", "broken"]))
        if shape == "object":
            lines.append(json.dumps(draw(objects(source)), ensure_ascii=draw(st.booleans())))
        else:
            lines.append({"blank": "  ", "array": "[1, 2]", "broken": '{"event": '}[shape])
    # A lone surrogate as its JSON escape (as raw bytes, CESU-8, the reader rejects the line
    # before either path sees it: tests/test_parsing.py).
    return "\n".join(lines).encode("utf-8", "backslashreplace")


def check_same(source: str, files: list[bytes], by_key: bool = False) -> None:
    """The same store both ways; `by_key`: with every file written in key order, where a
    row's id is the only difference (new rows take theirs in key order, not line order)."""
    with tempfile.TemporaryDirectory() as folder:
        before = ingest_set.JSON_KEY_ORDER_FROM
        ingest_set.JSON_KEY_ORDER_FROM = 0 if by_key else before
        try:
            as_sets = store_after(Path(folder), CONFIG, source, files, "jsonl", set_work=True)
        finally:
            ingest_set.JSON_KEY_ORDER_FROM = before
        by_rows = store_after(Path(folder), CONFIG, source, files, "jsonl", set_work=False)
    if by_key:
        for stored in (as_sets, by_rows):
            ids = sorted(row[0] for row in stored["rows"])
            stored["rows"] = (ids, sorted(row[1:] for row in stored["rows"]))
    assert as_sets == by_rows


SOURCES = ["app_events", "web_events"]


@pytest.mark.parametrize("source", SOURCES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_json_set_path_stores_what_rowmapper_would(source: str, data: st.DataObject) -> None:
    files = data.draw(st.lists(jsonl_files(source), min_size=1, max_size=2))
    check_same(source, files, by_key=data.draw(st.booleans()))


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_json_set_path_stores_what_rowmapper_would_at_length(
    source: str, data: st.DataObject
) -> None:
    files = data.draw(st.lists(jsonl_files(source), min_size=1, max_size=3))
    check_same(source, files, by_key=data.draw(st.booleans()))


def test_the_json_set_path_takes_these_sources_and_plain_events(tmp_path: Path) -> None:
    """So that the comparison means something: both sources are planned, and a usual event
    (epoch or written time, phone in its properties) is mapped by SQL, not by RowMapper."""
    (tmp_path / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    config = load_config(tmp_path / "cdp.yaml")
    plans = {}
    for source in SOURCES:
        plan = ingest_set.json_plan_for(RowMapper(config.source(source), None))
        assert plan is not None, source
        plans[source] = plan
    event = {"event_id": " E1", "event": "login", "ts": 1731604005268, "device_id": "D1",
             "user_id": None, "platform": "ios", "properties": {"phone": "138"}}  # fmt: skip
    assert plans["app_events"].take(event, 1) is not None
    written = {**event, "ts": "2024-12-22T02:08:38.345+08:00"}
    assert plans["app_events"].take(written, 2) is not None
    web = {"event_id": "E1", "event": "view", "ts": 1731604005, "site": "cn", "user": {}}
    assert plans["web_events"].take(web, 3) is not None


def test_a_file_of_epoch_times_across_summer_time_lands_as_rowmapper_has_it() -> None:
    """New York's clocks went forward at 2024-03-10 07:00 UTC: the hours either side."""
    times = [1_710_053_999_999, 1_710_054_000_000, 1_710_054_000, 1_710_057_600_001, 0]
    content = "\n".join(
        json.dumps({"event_id": f"E{i}", "event": "open", "ts": t, "site": "us"})
        for i, t in enumerate(times)
    ).encode()
    check_same("web_events", [content])
    with tempfile.TemporaryDirectory() as folder:
        stored = store_after(Path(folder), CONFIG, "web_events", [content], "jsonl", set_work=True)
    assert [row[4] for row in stored["rows"]] == [
        "2024-03-10T01:59:59.999-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T04:00:00.001-04:00",
        "1969-12-31T19:00:00-05:00",
    ]
