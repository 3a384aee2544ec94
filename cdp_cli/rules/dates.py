"""A date or time a rule compares a field with, written as the store writes them.

The store keeps dates as '1990-05-01' and times as '2026-11-07T10:17:28+08:00', and a rule
compares them as text, character by character. So `birthday < '1990/01/01'` or
`last_order_at >= '2026-11-07 12:00'` run without a word and select the wrong customers ('-'
sorts before '/', ' ' before 'T'). A value compared with a date or time field is checked here,
and one written another way is named with the form to write.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

# A date, then perhaps a time (minutes, seconds, a fraction) and an offset: the store's forms.
_STORED = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:\d{2})?)?"
)
# Dates as people write them: 2026/11/01, 2026.11.01, 2026年11月1日, 20261101; a time after.
_WRITTEN = re.compile(
    r"(\d{4})\s*(?:[/.年-]\s*(\d{1,2})\s*[/.月-]\s*(\d{1,2})\s*日?|(\d{2})(\d{2}))"
    r"(?:(?:\s+|T)(\d{1,2}):(\d{2})(?::(\d{2}))?)?"
)
EXAMPLE = "'2026-11-01'"


def dated_value_problem(text: str, field: str, kind: str, equal: bool) -> str | None:
    """What is wrong with `text` compared with `field`, which holds a date or a time (`kind`),
    with what to write; None when it is written as the store writes them. `equal`: by = or
    in, where a day alone matches none of a time field's values."""
    if not text.strip():
        return f"is not a date: to select customers without one, write {field} is null"
    stored = _STORED.fullmatch(text)
    if stored:
        if not _valid(stored[1], stored[2]):
            return f"is not a date: write one as YYYY-MM-DD, as in {EXAMPLE}"
        if equal and kind == "time" and not stored[2]:
            after = (date.fromisoformat(text) + timedelta(days=1)).isoformat()
            return (
                f"matches no one: {field} holds times (2026-11-07T10:17:28+08:00); for that "
                f"day, write {field} >= '{text}' and {field} < '{after}'"
            )
        return None
    meant = _meant(text)
    if meant is None:
        return f"is not a date: write one as YYYY-MM-DD, as in {EXAMPLE}"
    what = "time" if "T" in meant else "date"
    return f"is not a {what} as the store writes them: write '{meant}'"


def _valid(day: str, time: str | None) -> bool:
    try:
        date.fromisoformat(day)
        if time:
            datetime.fromisoformat(f"{day}T{time}")
    except ValueError:
        return False
    return True


def _meant(text: str) -> str | None:
    """The store's form of a date or time written another way, when it is a real one."""
    written = _WRITTEN.fullmatch(text.strip())
    if not written:
        return None
    year, month, day = written[1], written[2] or written[4], written[3] or written[5]
    meant = f"{year}-{int(month):02d}-{int(day):02d}"
    if written[6]:
        meant += f"T{int(written[6]):02d}:{written[7]}" + (f":{written[8]}" if written[8] else "")
    time = meant[11:] or None
    return meant if _valid(meant[:10], time) else None
