"""What the reports share: the label of a missing value, durations in days, and times in the
project's timezone."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

NONE = "(none)"  # a customer without a value, in lifecycle flows and funnel groups


def as_days(duration: timedelta | None) -> float | None:
    """A duration as days, for people reading a report."""
    return None if duration is None else duration.total_seconds() / 86400


def in_zone(moment: str | None, timezone: str) -> str | None:
    """An ISO time with an offset, as the same moment in the project's timezone (cdp.yaml's
    `timezone`): what cdp stamped with the server's clock reads like every other time."""
    if not moment:
        return moment
    try:
        then = datetime.fromisoformat(moment)
    except ValueError:
        return moment
    if then.tzinfo is None:  # a wall-clock time: already the project's, as sources read
        return moment
    return then.astimezone(ZoneInfo(timezone)).isoformat(timespec="seconds")


def now_in(timezone: str) -> str:
    """The current time in the project's timezone, to the second."""
    return datetime.now(ZoneInfo(timezone)).isoformat(timespec="seconds")
