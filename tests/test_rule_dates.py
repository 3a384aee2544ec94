"""Dates and times in rules: a value compared with a date or time field is written as the
store writes them, or the rule names the form to write (rules/dates.py)."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp_cli.errors import RuleError
from cdp_cli.rules.book import RuleBook
from cdp_cli.rules.dates import dated_value_problem
from cdp_cli.rules.vocabulary import DATED_FIELDS, RuleContext


def compile_rule(text: str) -> None:
    RuleContext(RuleBook(), date(2026, 11, 15)).compile(text)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("birthday < '1990/01/01'", "'1990/01/01' is not a date as the store writes them: write '1990-01-01'"),
        ("birthday >= '1990.1.5'", "'1990.1.5' is not a date as the store writes them: write '1990-01-05'"),
        ("birthday > '1990年5月1日'", "'1990年5月1日' is not a date as the store writes them: write '1990-05-01'"),
        ("birthday <= '19900501'", "'19900501' is not a date as the store writes them: write '1990-05-01'"),
        ("'2026/11/01' < registered_at", "'2026/11/01' is not a date as the store writes them: write '2026-11-01'"),
        (
            "last_order_at >= '2026-11-07 12:00'",
            "'2026-11-07 12:00' is not a time as the store writes them: write '2026-11-07T12:00'",
        ),
        ("birthday > '9999-99-99'", "'9999-99-99' is not a date: write one as YYYY-MM-DD, as in '2026-11-01'"),
        ("first_seen < '2026-02-30'", "'2026-02-30' is not a date: write one as YYYY-MM-DD, as in '2026-11-01'"),
        ("last_seen > 'yesterday'", "'yesterday' is not a date: write one as YYYY-MM-DD, as in '2026-11-01'"),
        ("birthday != ''", "'' is not a date: to select customers without one, write birthday is null"),
        (
            "last_order_at between '2026-10-01' and '2026/11/01'",
            "'2026/11/01' is not a date as the store writes them: write '2026-11-01'",
        ),
        (
            "birthday in ('1990-05-01', '1990/05/02')",
            "'1990/05/02' is not a date as the store writes them: write '1990-05-02'",
        ),
        (
            "registered_at = '2026-11-01'",
            "'2026-11-01' matches no one: registered_at holds times (2026-11-07T10:17:28+08:00); "
            "for that day, write registered_at >= '2026-11-01' and registered_at < '2026-11-02'",
        ),
        (
            "last_event_at in ('2026-12-31')",
            "'2026-12-31' matches no one: last_event_at holds times (2026-11-07T10:17:28+08:00); "
            "for that day, write last_event_at >= '2026-12-31' and last_event_at < '2027-01-01'",
        ),
    ],
)  # fmt: skip
def test_a_date_written_another_way_names_the_form_to_write(rule: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule(rule)
    assert caught.value.message == message
    value = message.split("'")[1]
    assert caught.value.column == rule.index(f"'{value}'") + 1  # at the value


@pytest.mark.parametrize(
    "rule",
    [
        "birthday = '1990-05-01'",
        "birthday between '1990-01-01' and '1999-12-31'",
        "last_order_at >= '2026-11-01' and last_order_at < '2026-11-02'",
        "last_order_at >= '2026-11-07T12:00'",
        "registered_at = '2026-11-07T10:17:28+08:00'",
        "first_seen > '2026-11-07T10:17:28.5+08:00'",
        "city = '2026/11/01'",  # not a date field: any text
        "birthday like '%-05-%'",
    ],
)
def test_dates_written_as_the_store_writes_them_compile(rule: str) -> None:
    compile_rule(rule)


def test_the_dated_fields_are_the_golden_dates_and_the_features_times() -> None:
    assert DATED_FIELDS == {
        "birthday": "date", "first_seen": "time", "last_seen": "time",
        "first_order_at": "time", "last_order_at": "time", "last_event_at": "time",
        "registered_at": "time",
    }  # fmt: skip


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)), st.times())
def test_what_a_problem_says_to_write_compares_as_the_stored_value_does(day, time) -> None:
    """The suggested form compares, as text, as the point in time it names does against the
    store's own values: the fix is right, not merely another spelling."""
    moment = datetime.combine(day, time.replace(second=0, microsecond=0))
    for written in (f"{day:%Y/%m/%d} {time:%H:%M}", f"{day:%Y.%m.%d} {time:%H:%M}"):
        problem = dated_value_problem(written, "last_order_at", "time", equal=False)
        assert problem is not None
        meant = problem.rsplit("'", 2)[1]
        assert dated_value_problem(meant, "last_order_at", "time", equal=False) is None
        conn = sqlite3.connect(":memory:")
        for stored in (moment - timedelta(minutes=1), moment + timedelta(minutes=1)):
            text = f"{stored.isoformat()}+08:00"
            as_text = conn.execute("SELECT ? >= ?", (text, meant)).fetchone()[0]
            assert as_text == (stored >= moment)
        conn.close()
