"""What the reports share: the label of a missing value and durations in days."""

from __future__ import annotations

from datetime import timedelta

NONE = "(none)"  # a customer without a value, in lifecycle flows and funnel groups


def as_days(duration: timedelta | None) -> float | None:
    """A duration as days, for people reading a report."""
    return None if duration is None else duration.total_seconds() / 86400
