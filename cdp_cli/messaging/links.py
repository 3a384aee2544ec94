"""Tracked links: a short code per message, a URL that carries it, a QR code, and the clicks.

A send step that has a link gives each message its own code. The code rides in the link as
`c=CODE` beside the UTM parameters, so a click or a QR scan that comes back as an ordinary
event (`click`, `link_click` or `qr_scan`, with the code in its properties as `code`, or a `url`
that holds `c=CODE`) names the message it came from, and through it the journey, step, variant
and customer, whoever's device it was clicked on.

Codes are the first 8 characters of the base32 (Crockford's alphabet, lower case: no i, l, o,
u, so a printed code reads back unambiguously) of the SHA-256 of the message id: short,
URL-safe and the same on every run. Two message ids whose first 8 characters agree (about one
pair in a million messages) are told apart by `assign_code`, which lengthens the newer one's
code a character at a time until no other message holds it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import segno

from cdp_cli.files import atomic_write

CODE_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case
CODE_LENGTH = 8
CODE_PARAMETER = "c"
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
CLICK_EVENTS = ("click", "link_click", "qr_scan")


def short_code(message_id: str, length: int = CODE_LENGTH) -> str:
    """The message's code: `length` base32 characters of the SHA-256 of its id."""
    if not 1 <= length <= 51:  # 256 bits make 51 whole base32 characters
        raise ValueError(f"a code has 1 to 51 characters, not {length}")
    number = int.from_bytes(hashlib.sha256(message_id.encode("utf-8")).digest(), "big")
    characters = []
    for _ in range(length):
        number, digit = divmod(number, 32)
        characters.append(CODE_ALPHABET[digit])
    return "".join(characters)


def unsubscribe_url(brand_url: str | None, message_id: str) -> str | None:
    """'<brand url>/unsubscribe?m=<code>': the page that opts the message's customer out.

    The code is short_code(message_id), so the outbound row (message_id, one_id) tells the
    brand's site whom to opt out; no brand url, no unsubscribe link.
    """
    if not brand_url:
        return None
    return f"{brand_url.rstrip('/')}/unsubscribe?m={short_code(message_id)}"


def assign_code(conn: sqlite3.Connection, message_id: str, pending: set[str] | None = None) -> str:
    """The message's code, lengthened while another message holds it.

    Another message means one in the outbox, or one of `pending`: the codes given out in this
    batch but not inserted yet (the set is updated). Call it inside the transaction that
    inserts the message, so no other run can take the same code in between.
    """
    pending = set() if pending is None else pending
    for length in range(CODE_LENGTH, 52):
        code = short_code(message_id, length)
        taken = (
            code in pending
            or conn.execute(
                "SELECT 1 FROM messages WHERE link_code = ? AND id != ?", (code, message_id)
            ).fetchone()
        )
        if not taken:
            pending.add(code)
            return code
    raise ValueError(f"no free code for message {message_id!r}")  # 2^255 messages: never


@dataclass(frozen=True)
class Link:
    """A message's tracked link: its code, the URL that carries it, and its QR image if any."""

    code: str
    url: str
    qr: Path | None = None


def message_link(
    conn: sqlite3.Connection,
    message_id: str,
    base_url: str,
    utm: Mapping[str, str],
    pending: set[str] | None = None,
    qr_folder: Path | None = None,
) -> Link:
    """The tracked link of one message; with `qr_folder`, its QR code as qr_folder/CODE.png."""
    code = assign_code(conn, message_id, pending)
    url = tracked_url(base_url, code, utm)
    qr = None
    if qr_folder is not None:
        qr_folder.mkdir(parents=True, exist_ok=True)
        qr = qr_folder / f"{code}.png"
        write_qr(url, qr)
    return Link(code, url, qr)


def link_utm(
    journey: str, channel: str, content: str | None, given: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The UTM parameters of a journey's link: ours by default, the step's own where given.

    utm_source is cdp, utm_medium the channel, utm_campaign the journey and utm_content the
    variant or step, so web analytics can group visits the way `cdp report` does.
    """
    utm = {"utm_source": "cdp", "utm_medium": channel, "utm_campaign": journey}
    if content:
        utm["utm_content"] = content
    utm.update(given or {})
    return utm


def tracked_url(base_url: str, code: str, utm: Mapping[str, str]) -> str:
    """`base_url` with the UTM parameters and `c=CODE` added; its own query and fragment kept.

    A parameter of the base URL that we set as well (a utm_ key, or `c`) is replaced, so a
    landing page that was already tagged by hand is not counted twice.
    """
    unknown = sorted(set(utm) - set(UTM_KEYS))
    if unknown:
        raise ValueError(
            f"not a UTM parameter: {', '.join(unknown)} (known: {', '.join(UTM_KEYS)})"
        )
    parts = urlsplit(base_url)
    ours = {k: v for k, v in utm.items() if v not in (None, "")}
    ours[CODE_PARAMETER] = code
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    added = [(k, ours[k]) for k in (*UTM_KEYS, CODE_PARAMETER) if k in ours]
    return urlunsplit(parts._replace(query=urlencode(kept + added)))


def code_of(properties: Mapping[str, Any] | None) -> str | None:
    """The link code a click event carries: `code`, else the `c` parameter of its `url`."""
    if not properties:
        return None
    code = properties.get("code")
    if isinstance(code, str) and code.strip():
        return code.strip().lower()  # a code read off a poster may be typed in capitals
    url = properties.get("url")
    if isinstance(url, str):
        for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if key == CODE_PARAMETER and value.strip():
                return value.strip().lower()
    return None


def write_qr(url: str, path: Path, scale: int = 8) -> None:
    """A QR code of `url` as a PNG (or SVG, by the file's suffix), for print and posters.

    Error correction level M survives a smudge; the file is written whole, under a temporary
    name first, so a killed run leaves no half image.
    """
    qr = segno.make(url, error="m", micro=False)
    with atomic_write(path, "wb") as f:
        qr.save(f, kind=path.suffix.lstrip(".").lower() or "png", scale=scale, border=4)


def clicks_by_code(rows: Iterable[tuple[str | None, str | None]]) -> dict[str, list[str]]:
    """Group click events by the code they carry: {code: [one_id or '' per click]}.

    `rows` are (properties JSON, one_id) of events whose type is in CLICK_EVENTS.
    """
    found: dict[str, list[str]] = {}
    for properties, one_id in rows:
        try:
            data = json.loads(properties) if properties else None
        except ValueError:
            continue
        code = code_of(data) if isinstance(data, dict) else None
        if code:
            found.setdefault(code, []).append(one_id or "")
    return found
