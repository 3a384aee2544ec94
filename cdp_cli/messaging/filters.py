"""The filters a message template may use besides Jinja's own: money, date, default_name and
the masks. Plain functions of their arguments, so they are tested and benchmarked alone; the
sandbox (sandbox.py) meters them when a template calls them."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import jinja2

from cdp_cli.privacy import mask_email, mask_phone, mask_value

DEFAULT_NAME = "顾客"
CURRENCIES = {"CNY": "¥", "RMB": "¥", "USD": "$", "HKD": "HK$", "EUR": "€"}
DATE_FORMATS = {"long": "{y}年{m}月{d}日", "short": "{m}月{d}日", "datetime": "{y}年{m}月{d}日 {t}"}


def _shown(value: Any) -> str:
    """A value a filter could not use, for its error: text masked (privacy.mask_value), as it
    is most often the customer's own (a name, a date of birth) and the error becomes a skipped
    message's reason, which reports and `journey status` print."""
    return repr(mask_value(value) if isinstance(value, str) else value)


def money(value: Any, currency: str = "CNY", digits: int | None = 2) -> str:
    """1299 -> '¥1,299.00'; money('USD') -> '$1,299.00'; money(digits=0) -> '¥1,299';
    money(digits=None) drops the cents of a whole amount: 30 -> '¥30', 9.9 -> '¥9.90'."""
    symbol = CURRENCIES.get(str(currency).upper())
    if symbol is None:
        raise ValueError(
            f"money: unknown currency {currency!r}; use one of {', '.join(CURRENCIES)}"
        )
    if isinstance(value, bool) or value is None:
        raise ValueError(f"money: {_shown(value)} is not an amount")
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"money: {_shown(value)} is not an amount") from None
    if digits is None:
        digits = 0 if amount.is_finite() and amount == amount.to_integral_value() else 2
    if not amount.is_finite() or not 0 <= digits <= 4:
        raise ValueError(f"money: cannot show {_shown(value)} with {digits} digits")
    rounded = amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}{symbol}{abs(rounded):,.{digits}f}"


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        text = value.strip().replace("/", "-")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"date: cannot read {_shown(value)} as a date or an ISO timestamp")


def format_date(value: Any, format: str = "long") -> str:
    """'2026-11-15' -> '2026年11月15日'; 'short' -> '11月15日'; 'datetime' adds the time;
    any other format is a strftime format ('%Y-%m-%d'). The date is the one written, in its
    own timezone."""
    moment = _as_datetime(value)
    if format in DATE_FORMATS:
        return DATE_FORMATS[format].format(
            y=moment.year, m=moment.month, d=moment.day, t=moment.strftime("%H:%M")
        )
    if "%" not in format or re.search(r"%[-_0^#]*\d", format):
        raise ValueError(
            f"date: format {format!r} is not one of {', '.join(DATE_FORMATS)} "
            "nor a strftime format without widths"
        )
    return moment.strftime(format)


def default_name(value: Any, fallback: str = DEFAULT_NAME) -> str:
    """The customer's name, or '顾客' when they have none."""
    if isinstance(value, jinja2.Undefined) or value is None:
        return fallback
    return str(value).strip() or fallback


def mask_phone_filter(value: Any) -> str:
    return mask_phone(str(value))


def mask_email_filter(value: Any) -> str:
    return mask_email(str(value))
