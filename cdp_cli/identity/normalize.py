"""Identifier normalization: the one written form of a phone number or an email address.

Each distinct raw value is normalized once per run (the Normalizer's cache, per type),
whatever the number of records that carry it; lookups of one value at a time (`cdp profile
--phone`) have an LRU cache. A value that cannot be normalized is None: it stays on its
record as written but never identifies anyone.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, final

import phonenumbers

from cdp_cli.identity.junk import JUNK_RULES
from cdp_cli.identity.settings import IdentityRules

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
            # str(int()): the library's own view of the digits (ASCII, whatever was written)
            number_type = _CN_TYPES.number_type(str(int(match[1])))
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


class _NumberTypes:
    """phonenumbers.number_type for the national numbers of one country, its checks
    compiled once: the library compiles each pattern again on every call (~20 µs a number,
    the most of a fast-path parse). The checks and their order are the library's
    (_number_type_helper), read from its metadata; a test holds the two equal."""

    _ORDER = (
        ("premium_rate", phonenumbers.PhoneNumberType.PREMIUM_RATE),
        ("toll_free", phonenumbers.PhoneNumberType.TOLL_FREE),
        ("shared_cost", phonenumbers.PhoneNumberType.SHARED_COST),
        ("voip", phonenumbers.PhoneNumberType.VOIP),
        ("personal_number", phonenumbers.PhoneNumberType.PERSONAL_NUMBER),
        ("pager", phonenumbers.PhoneNumberType.PAGER),
        ("uan", phonenumbers.PhoneNumberType.UAN),
        ("voicemail", phonenumbers.PhoneNumberType.VOICEMAIL),
    )

    def __init__(self, region: str) -> None:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            raise ValueError(f"phonenumbers has no metadata for {region}")
        self.general = self._check(metadata.general_desc)
        self.special = [
            (check, kind)
            for name, kind in self._ORDER
            if (check := self._check(getattr(metadata, name))) is not None
        ]
        self.fixed_line = self._check(metadata.fixed_line)
        self.mobile = self._check(metadata.mobile)
        self.same_mobile_and_fixed_line = metadata.same_mobile_and_fixed_line_pattern

    @staticmethod
    def _check(
        desc: phonenumbers.PhoneNumberDesc | None,
    ) -> tuple[frozenset[int], re.Pattern[str]] | None:
        """(possible lengths, pattern) of a description; None when it matches nothing."""
        if desc is None or not desc.national_number_pattern:
            return None
        return frozenset(desc.possible_length or ()), re.compile(desc.national_number_pattern)

    @staticmethod
    def _matches(check: tuple[frozenset[int], re.Pattern[str]] | None, national: str) -> bool:
        if check is None:
            return False
        lengths, pattern = check
        if lengths and len(national) not in lengths:
            return False
        return pattern.fullmatch(national) is not None

    def number_type(self, national: str) -> int:
        matches = self._matches
        if not matches(self.general, national):
            return phonenumbers.PhoneNumberType.UNKNOWN
        for check, kind in self.special:
            if matches(check, national):
                return kind
        if matches(self.fixed_line, national):
            if self.same_mobile_and_fixed_line or matches(self.mobile, national):
                return phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE
            return phonenumbers.PhoneNumberType.FIXED_LINE
        if not self.same_mobile_and_fixed_line and matches(self.mobile, national):
            return phonenumbers.PhoneNumberType.MOBILE
        return phonenumbers.PhoneNumberType.UNKNOWN


_CN_TYPES = _NumberTypes("CN")


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
        entries = [e for e in rules.blocklist if not e.startswith("re:")]
        project_values = {e.strip().lower() for e in entries}
        for entry in entries:  # a blocked phone or email blocks all its written forms
            for normalized in (normalize_phone(entry, region), email_key(entry)):
                if normalized:
                    project_values.add(normalized.lower())
        # A project's own patterns one by one: joined with | their groups would collide.
        project_patterns = tuple(
            re.compile(e[3:], re.IGNORECASE) for e in rules.blocklist if e.startswith("re:")
        )
        self._project = _Check(PROJECT_BLOCKLIST, frozenset(project_values), project_patterns)
        self._junk_rules = [r for r in JUNK_RULES if r.name not in rules.default_blocklist_off]
        self._junk_patterns = {r.name: re.compile(r.pattern, re.IGNORECASE) for r in JUNK_RULES}
        self._checks: dict[str, list[_Check]] = {}  # per type, in the order they decide
        # Per type, the first check a normalized value fails: a phone's written forms share it.
        self._verdicts: dict[str, dict[str, int | None]] = {}
        # Per type: its fields, whether a row needs all of them (composites) or only the last
        # (an openid without its account is still an openid), and what its values gave: a
        # one-field type by the raw value, others by the tuple of parts. A value with no
        # detail is kept as its string, not a tuple (at 1M customers, 2.5M tuples: 160 MB).
        self._plan: list[tuple[str, tuple[str, ...], bool, dict[Any, Seen]]] = [
            (t.name, t.fields, len(t.fields) > 1 and t.name != "wechat_openid", {})
            for t in rules.types
        ]

    def forget_values(self) -> None:
        """Let go of every value normalized so far (the caches), keeping the rules."""
        for _, _, _, seen in self._plan:
            seen.clear()
        for verdicts in self._verdicts.values():
            verdicts.clear()

    def identifiers(
        self, fields: Mapping[str, str | None]
    ) -> tuple[list[tuple[str, str, str | None]], list[Rejected]]:
        """(type, value, detail) for every usable identifier; Rejected for the rest."""
        found: list[tuple[str, str, str | None]] = []
        rejected: list[Rejected] = []
        get = fields.get
        for name, names, needs_all, seen in self._plan:
            if len(names) == 1:
                raw = get(names[0])
                if raw is None:
                    continue
                result = seen.get(raw)
                if result is None:
                    result = seen[raw] = _kept(self._normalize(name, (raw,)))
            else:
                parts = tuple(map(get, names))
                if parts[-1] is None or (needs_all and None in parts):
                    continue
                result = seen.get(parts)
                if result is None:
                    result = seen[parts] = _kept(self._normalize(name, parts))
            if type(result) is Rejected:
                rejected.append(result)
            elif isinstance(result, str):
                found.append((name, result, None))
            else:
                found.append(result)
        return found, rejected

    def _normalize(self, type_name: str, parts: tuple[str | None, ...]) -> Normalized | Rejected:
        """(type, value, detail), or why the value identifies no one."""
        raw = (parts[0] or "") if len(parts) == 1 else "|".join(p or "" for p in parts)
        normalized, detail, reason = _NORMALIZERS.get(type_name, _composite)(parts, self.region)
        if normalized is None:
            return Rejected(type_name, raw, reason or "invalid")
        why = self.blocked(type_name, raw, normalized)
        if why:
            return Rejected(type_name, raw, f"blocklisted: {why}")
        return type_name, normalized, detail

    def blocked(self, type_name: str, raw: str, normalized: str) -> str | None:
        """Why a value of `type_name` is set aside by a blocklist (the project's, then the
        default rules that judge the type); None when it is not.

        A check judges the trimmed, lower-cased raw value and the normalized one, each also
        without separators; the first check (in order) that either fails decides."""
        checks = self._checks.get(type_name)
        if checks is None:
            checks = self._checks[type_name] = self._checks_of(type_name)
            self._verdicts[type_name] = {}
        if not checks:
            return None
        text = normalized.lower()
        bare = None
        verdicts = self._verdicts[type_name]
        # Keyed by the normalized value, not its lower case: the key is then the string the
        # identifier holds already (at 1M customers, 3M lower-cased copies held 200 MB).
        failed = verdicts.get(normalized, _UNSEEN)
        if failed is _UNSEEN:
            bare = _SEPARATORS.sub("", text)
            forms: tuple[str, ...] = (text,) if bare == text else (text, bare)
            failed = verdicts[normalized] = _first_failed(checks, text, forms)
        written = raw.strip().lower()
        if written != text:
            if bare is None:
                bare = _SEPARATORS.sub("", text)
            written_bare = _SEPARATORS.sub("", written)
            # Only the forms the normalized value did not have: the others fail as they did.
            other = _first_failed(checks, written, tuple({written, written_bare} - {text, bare}))
            if other is not None and (failed is None or other < failed):
                failed = other
        return None if failed is None else checks[failed].reason

    def _checks_of(self, type_name: str) -> list[_Check]:
        checks = [self._project] if self._project.values or self._project.patterns else []
        for rule in self._junk_rules:
            if rule.judges(type_name):
                patterns = (self._junk_patterns[rule.name],) if rule.pattern else ()
                reason = f"{rule.why} ({rule.name})"
                shortest = rule.min_length.get(type_name, 0)
                checks.append(_Check(reason, rule.values, patterns, shortest))
        return checks


@dataclass(frozen=True)
class _Check:
    """One blocklist check for one type: values matched whole, or patterns searched in each
    form at least `shortest` long."""

    reason: str
    values: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    shortest: int = 0


_UNSEEN: Any = object()


def _first_failed(checks: list[_Check], text: str, forms: tuple[str, ...]) -> int | None:
    """The index of the first check that fails `text` (matched whole against its values) or
    one of `forms` (searched with its patterns)."""
    for index, check in enumerate(checks):
        if text in check.values:
            return index
        shortest = check.shortest
        for pattern in check.patterns:
            for form in forms:
                if len(form) >= shortest and pattern.search(form):
                    return index
    return None


Normalized = tuple[str, str, "str | None"]  # (type, value, detail) of a usable identifier
Seen = Normalized | str | Rejected  # what the cache keeps of a raw value (see _kept)


def _kept(result: Normalized | Rejected) -> Seen:
    """What the cache keeps of a value's result: a value with no detail as its string."""
    if type(result) is tuple and result[2] is None:
        return result[1]
    return result


Parsed = tuple["str | None", "str | None", "str | None"]  # value, detail, reason if None


def _phone(parts: tuple[str | None, ...], region: str) -> Parsed:
    raw = parts[0] or ""
    if "*" in raw:
        return None, None, "masked"
    parsed = parse_phone.__wrapped__(raw, region)  # the Normalizer caches by raw value
    if parsed is None:
        return None, None, "not a valid phone number"
    return parsed[0], parsed[1], None


def _email(parts: tuple[str | None, ...], region: str) -> Parsed:
    value = email_key.__wrapped__(parts[0] or "")  # the Normalizer caches by raw value
    return (value, None, None) if value else (None, None, "not a valid email address")


def _id_number(parts: tuple[str | None, ...], region: str) -> Parsed:
    from stdnum.cn import ric  # 10 ms to import: only when there is an ID number to check

    raw = (parts[0] or "").strip()
    if not ric.is_valid(raw):
        return None, None, "not a valid resident ID number (checksum)"
    return ric.compact(raw), None, None


def _plain(parts: tuple[str | None, ...], region: str) -> Parsed:
    value = unicodedata.normalize("NFKC", parts[0] or "").strip()
    return (value, None, None) if value else (None, None, "empty")


def _device(parts: tuple[str | None, ...], region: str) -> Parsed:
    value = unicodedata.normalize("NFKC", parts[0] or "").strip().upper()
    return (value, None, None) if len(value) >= 6 else (None, None, "too short for a device id")


def _openid(parts: tuple[str | None, ...], region: str) -> Parsed:
    appid, openid = (p.strip() if p else "" for p in parts)
    if not openid:
        return None, None, "empty"
    # An openid means something only within its official account.
    return (f"{appid}:{openid}" if appid else openid), None, None


def _composite(parts: tuple[str | None, ...], region: str) -> Parsed:
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
# email-validator (slow: ~100 µs an address, and 20 ms to import, most of it compiling its
# regexes), which would accept it too: a property test holds the two equal. Anything else, IDN
# domains and quoted or unusual local parts among them, goes to the validator, imported then.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


# email-validator's SPECIAL_USE_DOMAIN_NAMES, which it refuses; here so that a plain address
# is judged without importing it (a test holds the two equal).
_SPECIAL_USE_DOMAINS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def _plain_email(text: str) -> str | None:
    lowered = text.lower()
    if not text.isascii() or len(lowered) > 254 or not _PLAIN_EMAIL.fullmatch(lowered):
        return None
    local, _, domain = lowered.partition("@")
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return None
    if domain in _SPECIAL_USE_DOMAINS or domain.rsplit(".", 1)[-1] in _SPECIAL_USE_DOMAINS:
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
    if "@" not in text:  # what the validator would say, without importing it: a blocklist's
        return None  # phone numbers and words are tried as emails on every resolve
    from email_validator import EmailNotValidError, validate_email

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
