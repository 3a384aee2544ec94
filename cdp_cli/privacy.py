"""Personal data in what people see: which fields are personal, and their masked forms.

Commands show phones, emails and ID numbers masked unless asked (--unmask); the masked_*
functions return a masked copy of what a command shows and leave the original as it was. A
message that quotes cells of a data row (an error on stderr, which cron mails; a reject's
reason, which `cdp status` shows) quotes them through `quote_cells`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

# The golden record's lists of personal values, and the type of each.
PERSONAL_PROFILE_FIELDS = {"phones": "phone", "emails": "email"}
# The canonical fields whose values identify or describe a person. A reject's reason quotes
# only values of required fields (one that does not parse) and of fields whose unknown values
# reject the row; none is personal (tests/test_input_limits.py holds it to that).
PERSONAL_FIELDS = frozenset(
    ("name", "birthday", "phone", "email", "id_number", "member_no", "user_id", "device_id",
     "wechat_openid", "wechat_unionid")
)  # fmt: skip
_EMAIL_IN_TEXT = re.compile(r"[^\s@,;:<>()\[\]\"]+@[\w-]+(?:\.[\w-]+)+")
# A run of digits, perhaps split by single spaces, dashes or dots, perhaps with a leading +,
# standing on its own: digits glued to a name before them (pos-20261118.csv, M0000001) stay.
_NUMBER_IN_TEXT = re.compile(r"(?<![\w-])\+?\d(?:[ .-]?\d)+[Xx]?")


def mask_phone(value: str) -> str:
    """'+8613800138000' -> '138****8000': enough to recognise, not enough to call."""
    import phonenumbers  # here: the modules that mask other things need not load it

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


# The identifier types whose values are personal, each with its mask.
MASKS: dict[str, Callable[[str], str]] = {
    "phone": mask_phone,
    "email": mask_email,
    "id_number": mask_id_number,
}
PERSONAL_TYPES = tuple(MASKS)


def mask(type_name: str, value: Any) -> Any:
    """The masked form of an identifier of a personal type; other values unchanged."""
    if not isinstance(value, str) or type_name not in MASKS:
        return value
    return MASKS[type_name](value)


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


def mask_value(value: str) -> str:
    """A cell of a row with nothing to say which field it holds: any may be personal, so an
    email or a phone number gets its mask and any other value keeps only its first character
    ('M0000001' -> 'M***', '李娜' -> '李***')."""
    masked = mask_text(value)
    if masked != value or not value.strip():
        return masked
    return f"{value.strip()[:1]}***"


def quote_cells(cells: Iterable[str], header: bool) -> str:
    """Cells of a row for a message, joined by ', '. Those of a known `header` (column names)
    are shown with only emails and numbers masked; any others as `mask_value` masks them."""
    return ", ".join(map(mask_text if header else mask_value, cells))


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


def masked_items(
    items: Iterable[dict[str, Any]], value: str = "value", type_key: str = "type"
) -> list[dict[str, Any]]:
    """Copies of rows that each carry an identifier, `value` masked by its `type_key`."""
    return [{**item, value: mask(item[type_key], item[value])} for item in items]


def masked_row(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a row whose fields are named for identifier types (a segment's sample)."""
    return {field: mask(field, value) for field, value in row.items()}


def masked_explain(report: dict[str, Any]) -> dict[str, Any]:
    """`cdp resolve --explain`'s report with the identifiers' values masked."""
    return {
        **report,
        "identifiers": masked_items(report["identifiers"]),
        "refused_links": masked_items(report["refused_links"]),
        "unusable_values": masked_items(report["unusable_values"], value="raw"),
    }


def mask_field(value: str) -> str:
    """A name, a date or an address in a review: '张伟' -> '张*', '1990-05-12' -> '1990-**-**'."""
    if len(value) == 10 and value[4] == "-" and value[:4].isdigit():
        return f"{value[:4]}-**-**"
    return value[:1] + "*" * min(len(value) - 1, 6)


def masked_review(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`cdp resolve --review`'s pairs with both records' values masked."""
    return [
        {
            **pair,
            "shown_a": {f: mask_field(v) if v else v for f, v in pair["shown_a"].items()},
            "shown_b": {f: mask_field(v) if v else v for f, v in pair["shown_b"].items()},
        }
        for pair in pairs
    ]


def masked_forgotten(result: dict[str, Any]) -> dict[str, Any]:
    """What `cdp forget` erased, with the erased identifiers masked."""
    return {**result, "identifiers": masked_items(result["identifiers"])}


def masked_consent(recorded: dict[str, Any]) -> dict[str, Any]:
    """A consent `cdp consent` recorded, with the identifier it was linked by masked."""
    return masked_items([recorded], value="identifier", type_key="identifier_type")[0]
