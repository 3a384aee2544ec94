"""Identifier normalization: the one written form of a phone number or an email address.

Each distinct raw value is normalized once (an LRU cache), whatever the number of records
that carry it. A value that cannot be normalized is None: it stays on its record as written
but never identifies anyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

CACHE_SIZE = 1 << 20


@lru_cache(maxsize=CACHE_SIZE)
def normalize_phone(raw: str, region: str = "CN") -> str | None:
    """E.164 for a valid number ('+8613800138000'); masked or invalid numbers give None."""
    text = raw.strip()
    if not text or "*" in text:
        return None
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=CACHE_SIZE)
def normalize_email(raw: str) -> str | None:
    """Trimmed, lower-cased, syntax-checked email with an IDNA-normalized domain, or None."""
    text = raw.strip()
    if not text:
        return None
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.normalized.lower()


def identity_key(fields: Iterable[tuple[str, str | None]]) -> int | None:
    """A 64-bit key for a row's raw identity fields: rows that carry the same ones share it.

    Resolution works on distinct keys instead of rows (ten million events come from far fewer
    devices and accounts), and a row finds its one_id through its key. None when the row
    carries no identity field at all.
    """
    text = "\x1e".join(f"{name}\x1f{value}" for name, value in fields if value is not None)
    if not text:
        return None
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )
