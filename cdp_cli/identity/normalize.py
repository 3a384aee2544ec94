"""Identifier normalization: the one written form of a phone number or an email address.

Each distinct raw value is normalized once (an LRU cache), whatever the number of records
that carry it. A value that cannot be normalized is None: it stays on its record as written
but never identifies anyone.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import final

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from stdnum.cn import ric

from cdp_cli.config import IdentityRules
from cdp_cli.identity.junk import JUNK_RULES

CACHE_SIZE = 1 << 20


# CN mobiles as exports write them: 11 digits from 13 to 19, perhaps after +86, 0086 or 86.
# 179xx is left to the full parser: it may read those digits as a carrier-select prefix.
_CN_MOBILE = re.compile(r"(?:\+86|0086|86)?(1(?:[3-68]\d|7[0-8]|9\d)\d{8})")
_FORMATTING = str.maketrans("", "", " -().\u00a0\t")


@lru_cache(maxsize=CACHE_SIZE)
def parse_phone(raw: str, region: str = "CN") -> tuple[str, str] | None:
    """(E.164, type) for a valid number: ('+8613800138000', 'mobile'); None otherwise.

    Written CN mobiles skip phonenumbers.parse, the slow part, but not its judgement: the
    number is built from its digits and phonenumbers' own number_type decides, so the answer
    is the one parse would give (a property test holds them equal).
    """
    text = raw.strip()
    if not text or "*" in text:
        return None
    if region == "CN" or text.startswith(("+86", "0086")):
        match = _CN_MOBILE.fullmatch(text.translate(_FORMATTING))
        if match:
            number = phonenumbers.PhoneNumber(country_code=86, national_number=int(match[1]))
            number_type = phonenumbers.number_type(number)
            if number_type == phonenumbers.PhoneNumberType.UNKNOWN:
                return None
            return f"+86{match[1]}", _PHONE_TYPES.get(number_type, "other")
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return _judge(number)


def _judge(number: phonenumbers.PhoneNumber) -> tuple[str, str] | None:
    # number_type is UNKNOWN exactly when is_valid_number is False: one classification.
    number_type = phonenumbers.number_type(number)
    if number_type == phonenumbers.PhoneNumberType.UNKNOWN:
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, _PHONE_TYPES.get(number_type, "other")


def normalize_phone(raw: str, region: str = "CN") -> str | None:
    """E.164 for a valid number ('+8613800138000'); masked or invalid numbers give None."""
    parsed = parse_phone(raw, region)
    return parsed[0] if parsed else None


def identity_key(fields: Iterable[tuple[str, str | None]]) -> int | None:
    """A 64-bit key for a row's raw identity fields: rows that carry the same ones share it.

    Resolution works on distinct keys instead of rows (ten million events come from far fewer
    devices and accounts), and a row finds its one_id through its key. None when the row
    carries no identity field at all.
    """
    text = "\x1e".join([f"{name}\x1f{value}" for name, value in fields if value is not None])
    if not text:
        return None
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


_SEPARATORS = re.compile(r"[\s\-_.:+()/]")
PROJECT_BLOCKLIST = "in identity.blocklist of cdp.yaml"


@final  # no subclass: `type(x) is Rejected`, quick in the hot loop, tells it from a tuple
@dataclass(frozen=True)
class Rejected:
    """An identity value that cannot identify anyone, and why: shown by `cdp resolve --explain`."""

    type: str
    raw: str
    reason: str


class Normalizer:
    """Turns a row's identity fields into identifiers of the types the rules declare.

    Every distinct raw value is normalized once per type (a dict cache), so millions of rows
    that share a few hundred thousand phone numbers cost a few hundred thousand parses.
    """

    def __init__(self, rules: IdentityRules, region: str) -> None:
        self.rules = rules
        self.region = region
        self._cache: dict[
            tuple[str, tuple[str | None, ...]], tuple[str, str | None] | Rejected
        ] = {}
        entries = [e for e in rules.blocklist if not e.startswith("re:")]
        self._project_values = {e.strip().lower() for e in entries}
        for entry in entries:  # a blocked phone or email blocks all its written forms
            for normalized in (normalize_phone(entry, region), email_key(entry)):
                if normalized:
                    self._project_values.add(normalized.lower())
        # A project's own patterns one by one: joined with | their groups would collide.
        self._project_patterns = [
            re.compile(e[3:], re.IGNORECASE) for e in rules.blocklist if e.startswith("re:")
        ]
        self._junk_rules = [r for r in JUNK_RULES if r.name not in rules.default_blocklist_off]
        self._junk_patterns = {r.name: re.compile(r.pattern, re.IGNORECASE) for r in JUNK_RULES}
        # Per type: its fields, and whether a row needs all of them (composites) or only the
        # last (an openid without its account is still an openid).
        self._plan = [
            (t.name, t.fields, len(t.fields) > 1 and t.name != "wechat_openid") for t in rules.types
        ]

    def identifiers(
        self, fields: Mapping[str, str | None]
    ) -> tuple[list[tuple[str, str, str | None]], list[Rejected]]:
        """(type, value, detail) for every usable identifier; Rejected for the rest."""
        found: list[tuple[str, str, str | None]] = []
        rejected: list[Rejected] = []
        get = fields.get
        for name, names, needs_all in self._plan:
            parts = tuple(map(get, names))
            if parts[-1] is None or (needs_all and None in parts):
                continue
            cache_key = (name, parts)
            result = self._cache.get(cache_key)
            if result is None:
                result = self._normalize(name, parts)
                self._cache[cache_key] = result
            if type(result) is Rejected:
                rejected.append(result)
            else:
                found.append((name, *result))
        return found, rejected

    def _normalize(
        self, type_name: str, parts: tuple[str | None, ...]
    ) -> tuple[str, str | None] | Rejected:
        raw = "|".join(p or "" for p in parts)
        normalized, detail, reason = _NORMALIZERS.get(type_name, _composite)(parts, self.region)
        if normalized is None:
            return Rejected(type_name, raw, reason or "invalid")
        why = self.blocked(type_name, raw, normalized)
        if why:
            return Rejected(type_name, raw, f"blocklisted: {why}")
        return normalized, detail

    def blocked(self, type_name: str, raw: str, normalized: str) -> str | None:
        """Why a value of `type_name` is set aside by a blocklist (the project's, then the
        default rules that judge the type); None when it is not."""
        texts = {raw.strip().lower(), normalized.lower()}
        forms = texts | {_SEPARATORS.sub("", t) for t in texts}
        if texts & self._project_values or any(
            p.search(form) for p in self._project_patterns for form in forms
        ):
            return PROJECT_BLOCKLIST
        for rule in self._junk_rules:
            if not rule.judges(type_name):
                continue
            shortest = rule.min_length.get(type_name, 0)
            judged = [f for f in forms if len(f) >= shortest]
            if texts & rule.values or (
                rule.pattern and any(self._junk_patterns[rule.name].search(f) for f in judged)
            ):
                return f"{rule.why} ({rule.name})"
        return None


Normalized = tuple["str | None", "str | None", "str | None"]  # value, detail, reason if None


def _phone(parts: tuple[str | None, ...], region: str) -> Normalized:
    raw = parts[0] or ""
    if "*" in raw:
        return None, None, "masked"
    parsed = parse_phone(raw, region)
    if parsed is None:
        return None, None, "not a valid phone number"
    return parsed[0], parsed[1], None


def _email(parts: tuple[str | None, ...], region: str) -> Normalized:
    value = email_key(parts[0] or "")
    return (value, None, None) if value else (None, None, "not a valid email address")


def _id_number(parts: tuple[str | None, ...], region: str) -> Normalized:
    raw = (parts[0] or "").strip()
    if not ric.is_valid(raw):
        return None, None, "not a valid resident ID number (checksum)"
    return ric.compact(raw), None, None


def _plain(parts: tuple[str | None, ...], region: str) -> Normalized:
    value = unicodedata.normalize("NFKC", parts[0] or "").strip()
    return (value, None, None) if value else (None, None, "empty")


def _device(parts: tuple[str | None, ...], region: str) -> Normalized:
    value = unicodedata.normalize("NFKC", parts[0] or "").strip().upper()
    return (value, None, None) if len(value) >= 6 else (None, None, "too short for a device id")


def _openid(parts: tuple[str | None, ...], region: str) -> Normalized:
    appid, openid = (p.strip() if p else "" for p in parts)
    if not openid:
        return None, None, "empty"
    # An openid means something only within its official account.
    return (f"{appid}:{openid}" if appid else openid), None, None


def _composite(parts: tuple[str | None, ...], region: str) -> Normalized:
    cleaned = [_SPACES.sub("", unicodedata.normalize("NFKC", p or "")).casefold() for p in parts]
    if not all(cleaned):
        return None, None, "a part is empty"
    return "|".join(cleaned), None, None


_SPACES = re.compile(r"\s+")
_NORMALIZERS = {
    "phone": _phone,
    "email": _email,
    "id_number": _id_number,
    "member_no": _plain,
    "user_id": _plain,
    "wechat_unionid": _plain,
    "wechat_openid": _openid,
    "device_id": _device,
}


# Plain ASCII addresses as most exports hold them. One that matches is accepted without
# email-validator (slow: ~100 µs an address), which would accept it too: a property test holds
# the two equal. Anything else, IDN domains and quoted or unusual local parts among them, goes
# to the validator.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


def _plain_email(text: str) -> str | None:
    lowered = text.lower()
    if not text.isascii() or len(lowered) > 254 or not _PLAIN_EMAIL.fullmatch(lowered):
        return None
    local, _, domain = lowered.partition("@")
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return None
    if domain in SPECIAL_USE_DOMAIN_NAMES or domain.rsplit(".", 1)[-1] in SPECIAL_USE_DOMAIN_NAMES:
        return None
    return lowered


@lru_cache(maxsize=CACHE_SIZE)
def email_key(raw: str) -> str | None:
    """The form of an email that identifies its owner: lower case, the domain in IDNA ASCII."""
    text = raw.strip()
    if not text:
        return None
    plain = _plain_email(text)
    if plain is not None:
        return plain
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    return f"{checked.local_part.lower()}@{checked.ascii_domain.lower()}"


_PHONE_TYPES = {
    phonenumbers.PhoneNumberType.MOBILE: "mobile",
    phonenumbers.PhoneNumberType.FIXED_LINE: "fixed_line",
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    phonenumbers.PhoneNumberType.TOLL_FREE: "toll_free",
    phonenumbers.PhoneNumberType.VOIP: "voip",
}
