"""Personal data in what people see: masked by default in terminal output."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import phonenumbers

MASKED_TYPES = ("phone", "email", "id_number")
_EMAIL_IN_TEXT = re.compile(r"[^\s@,;:<>()\[\]\"]+@[\w-]+(?:\.[\w-]+)+")
# A run of digits, perhaps split by single spaces, dashes or dots, perhaps with a leading +,
# standing on its own: digits glued to a name before them (pos-20261118.csv, M0000001) stay.
_NUMBER_IN_TEXT = re.compile(r"(?<![\w-])\+?\d(?:[ .-]?\d)+[Xx]?")


def mask_phone(value: str) -> str:
    """'+8613800138000' -> '138****8000': enough to recognise, not enough to call."""
    try:
        number = phonenumbers.parse(value, None)
        national = str(number.national_number)
    except phonenumbers.NumberParseException:
        national = "".join(c for c in value if c.isdigit())
    if len(national) < 7:
        return "*" * len(national)
    return f"{national[:3]}{'*' * (len(national) - 7)}{national[-4:]}"


def mask_email(value: str) -> str:
    """'li.na@example.com' -> 'l***@example.com'."""
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_id_number(value: str) -> str:
    return f"{value[:3]}{'*' * max(len(value) - 7, 0)}{value[-4:]}" if len(value) > 7 else "***"


def mask(type_name: str, value: Any) -> Any:
    """The masked form of an identifier of this type; other values unchanged."""
    if not isinstance(value, str):
        return value
    if type_name == "phone":
        return mask_phone(value)
    if type_name == "email":
        return mask_email(value)
    if type_name == "id_number":
        return mask_id_number(value)
    return value


def _identifying_number(text: str) -> bool:
    """Phones and ID numbers: 7+ digits in one run, or 9+ split up (dates have 8: 2026-11-15)."""
    digits = sum(c.isdigit() for c in text)
    plain = text.lstrip("+").rstrip("Xx").isdigit()
    return (plain and digits >= 7) or digits >= 9


def replace_identifiers(
    text: str, email: Callable[[str], str], number: Callable[[str], str]
) -> str:
    """Free text that may quote a data row, with each email address and phone or ID number in
    it replaced by what `email` or `number` makes of it."""
    text = _EMAIL_IN_TEXT.sub(lambda m: email(m.group()), text)
    return _NUMBER_IN_TEXT.sub(
        lambda m: number(m.group()) if _identifying_number(m.group()) else m.group(), text
    )


def mask_text(text: str) -> str:
    """Free text (a headerless file's first line, say) masked for the terminal."""
    return replace_identifiers(text, mask_email, mask_phone)


def masked_lookup(
    one_id: str | None = None,
    phone: str | None = None,
    email: str | None = None,
    device: str | None = None,
) -> str:
    """How a customer was asked for, for a message: `phone 138****8000`, `one_id C000000042`."""
    if phone:
        return f"phone {mask_phone(phone)}"
    if email:
        return f"email {mask_email(email.strip())}"
    if device:
        return f"device id {device.strip()}"
    return f"one_id {one_id}"
