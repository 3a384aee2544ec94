"""The channels cdp sends on (CHANNELS, the one list of them: channel_names holds their names
alone, for what needs no more), and the payload each one takes.

For each channel the registry says what a journey, the outbox, consent, reports and templates
need to know of it: the identifier type it is addressed by and which of those identifiers reach
a customer, the outbound file format, the template parts, and the payload builder.

A template renders to one or more parts (Channel.parts); the channel's builder turns them into
the object that channel's API takes. Problems that make a message unsendable (invalid JSON, a
missing key, a subject on two lines) raise TemplateError naming the file; problems that still
let it go out (an SMS of too many segments, a WeChat field WeChat will cut) are warnings on the
Outbound, which validation treats as errors.

SMS length follows GSM 03.38: GSM-7 with its extension table (an extension character such as
'€' or '[' takes two septets) while every character is in it, else UCS-2, counted in UTF-16
code units (an emoji takes two). A message that fits one segment takes 160 septets or 70 units;
a longer one is split into parts of 153 septets or 67 units, never inside an escape pair or a
surrogate pair.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdp_cli.errors import TemplateError
from cdp_cli.messaging.channel_names import CHANNEL_NAMES as CHANNEL_NAMES
from cdp_cli.messaging.channel_names import CONSENT_CHANNELS as CONSENT_CHANNELS
from cdp_cli.messaging.channel_names import CONSENT_PURPOSES as CONSENT_PURPOSES

EMAIL_PARTS = {"subject": ".subject.txt", "html": ".html", "text": ".txt"}
SMS_MAX_SEGMENTS = 3
SMS_PHONE_KINDS = frozenset({"mobile", "fixed_line_or_mobile"})  # a landline takes no SMS

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
# (encoding, units in a single-segment message, units per part of a longer one)
GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION
GSM7 = ("GSM-7", 160, 153)
UCS2 = ("UCS-2", 70, 67)
# Stops at the first character outside GSM-7: at once, in Chinese text.
_NOT_GSM7 = re.compile("[^" + "".join(re.escape(c) for c in sorted(GSM7_ALL)) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")  # two UCS-2 units each (an emoji)

WECHAT_KEYS = ("touser", "template_id", "url", "miniprogram", "data", "appid")
# Since May 2023 WeChat shows at most 20 characters of a template-message field.
WECHAT_FIELD_CHARS = 20
COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
PUSH_KEYS = ("title", "body", "device", "url")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Outbound:
    """One rendered message as its channel's API takes it, and what looks wrong with it."""

    channel: str
    body: dict[str, Any]
    warnings: tuple[str, ...] = ()
    template: str = ""  # 'sms/welcome', set by the template store
    files: dict[str, str] = field(default_factory=dict)  # part -> the file it came from

    @property
    def billed_parts(self) -> int:
        """What the operator bills: an SMS per segment (part), any other message once."""
        return int(self.body.get("segments") or 1) if self.channel == "sms" else 1


# ---------------------------------------------------------------------------------------------
# SMS


def sms_encoding(text: str) -> str:
    """'GSM-7' when every character is in the GSM 03.38 tables, else 'UCS-2'."""
    return UCS2[0] if _NOT_GSM7.search(text) else GSM7[0]


def _units(char: str, encoding: str) -> int:
    if encoding == GSM7[0]:
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1


def split_sms(text: str) -> list[str]:
    """The parts a phone receives `text` in: one when it fits, else parts of 153 / 67 units."""
    encoding = sms_encoding(text)
    _, single, per_part = GSM7 if encoding == GSM7[0] else UCS2
    if sum(_units(c, encoding) for c in text) <= single:
        return [text] if text else []
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for char in text:
        units = _units(char, encoding)
        if used + units > per_part:  # a two-unit character never straddles two parts
            parts.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += units
    parts.append("".join(current))
    return parts


def sms_segments(text: str) -> tuple[int, str]:
    """How many SMS segments `text` is billed as, and its encoding ('GSM-7' or 'UCS-2')."""
    encoding = sms_encoding(text)
    _, single, per_part = GSM7 if encoding == GSM7[0] else UCS2
    if encoding == GSM7[0]:
        simple = GSM7_EXTENSION.isdisjoint(text)
    else:
        simple = _ASTRAL.search(text) is None
    if not simple:  # two-unit characters may not straddle parts: count by splitting
        return len(split_sms(text)), encoding
    if not text:
        return 0, encoding
    return (1 if len(text) <= single else -(-len(text) // per_part)), encoding


def sms_message(text: str, *, max_segments: int = SMS_MAX_SEGMENTS, file: str = "sms") -> Outbound:
    """{text, segments, encoding}; a message longer than `max_segments` gets a warning."""
    text = text.strip()
    if not text:
        raise TemplateError(file, "renders to an empty SMS")
    count, encoding = sms_segments(text)
    warnings = []
    if count > max_segments:
        warnings.append(
            f"the SMS is {count} segments ({len(text)} characters, {encoding}), "
            f"more than the {max_segments} allowed"
        )
    body = {"text": text, "segments": count, "encoding": encoding}
    return Outbound("sms", body, tuple(warnings), files={"text": file})


# ---------------------------------------------------------------------------------------------
# Email


def email_message(
    subject: str,
    html: str,
    text: str,
    *,
    files: Mapping[str, str] | None = None,
    unsubscribe: str | None = None,
) -> Outbound:
    """{subject, html, text}: a one-line subject (a line break would forge headers).

    With an `unsubscribe` URL both bodies must show it, and the payload carries the
    `List-Unsubscribe` header value (and RFC 8058's one-click `List-Unsubscribe-Post`), so a
    mail client offers its own unsubscribe button.
    """
    files = dict(files or {part: part for part in EMAIL_PARTS})
    subject = subject.strip()
    if not subject:
        raise TemplateError(files["subject"], "renders to an empty subject")
    if CONTROL.search(subject):
        raise TemplateError(
            files["subject"], "the subject must be one line, without control characters"
        )
    for part, content in (("html", html), ("text", text)):
        if not content.strip():
            raise TemplateError(files[part], f"renders to an empty {part} body")
    body = {"subject": subject, "html": html, "text": text.strip() + "\n"}
    if unsubscribe:
        for part, content in (("html", html), ("text", text)):
            if unsubscribe not in content:
                raise TemplateError(
                    files[part], "carries no unsubscribe link: print {{ unsubscribe }}"
                )
        body["list_unsubscribe"] = f"<{unsubscribe}>"
        body["list_unsubscribe_post"] = "List-Unsubscribe=One-Click"
    return Outbound("email", body, files=files)


# ---------------------------------------------------------------------------------------------
# JSON payloads: WeChat template messages and app push


def _json_object(rendered: str, file: str) -> dict[str, Any]:
    try:
        data = json.loads(rendered)
    except json.JSONDecodeError as exc:
        raise TemplateError(
            file,
            f"renders to invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno} "
            "of the rendered text)",
        ) from None
    if not isinstance(data, dict):
        raise TemplateError(file, "renders to JSON that is not an object {...}")
    return data


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], file: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise TemplateError(file, f"unknown key {unknown[0]!r}; keys are {', '.join(allowed)}")


def _text_value(data: Mapping[str, Any], key: str, file: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TemplateError(file, f"{key} must be non-empty text")
    return value


PLACEHOLDER_PREFIX = "REPLACE_ME"  # the shipped WeChat templates' template_id, to be replaced


def placeholder_problem(channel: str, template: str, body: dict[str, Any]) -> str | None:
    """Why a rendered message must not go: a WeChat template_id still the shipped placeholder
    (WeChat refuses it for every customer). None when it may go."""
    template_id = body.get("template_id") if channel == "wechat" else None
    if isinstance(template_id, str) and template_id.startswith(PLACEHOLDER_PREFIX):
        return (
            f"template wechat/{template}: template_id {template_id} is a placeholder "
            "(replace it with your official account's template ID)"
        )
    return None


def wechat_message(
    rendered: str, *, openid: str | None, appid: str | None = None, file: str = "wechat"
) -> Outbound:
    """The official-account template message {touser, template_id, url, data}.

    touser must be this customer's openid in the account that sends (write
    "{{ wechat.openid }}"), so a test openid left in a template never receives everyone's
    messages. An optional "appid" names the account the template_id belongs to; it is checked
    against the account the customer follows and left out of the payload.
    """
    data = _json_object(rendered, file)
    _check_keys(data, WECHAT_KEYS, file)
    touser = _text_value(data, "touser", file)
    if not openid:
        raise TemplateError(file, "the customer has no openid for this official account")
    if touser != openid:
        raise TemplateError(
            file,
            f'touser is {touser!r}, not the customer\'s openid: write "{{{{ wechat.openid }}}}"',
        )
    account = data.pop("appid", None)
    if account is not None and account != appid:
        raise TemplateError(
            file,
            f"the template belongs to official account {account!r}, but the customer's "
            f"openid is for {appid!r}",
        )
    _text_value(data, "template_id", file)
    if "url" not in data and "miniprogram" not in data:
        raise TemplateError(file, "give a url (or a miniprogram) for the message to open")
    if "url" in data:
        _text_value(data, "url", file)
    warnings = _wechat_fields(data.get("data"), file)
    return Outbound("wechat", data, tuple(warnings), files={"json": file})


def _wechat_fields(fields: Any, file: str) -> list[str]:
    if not isinstance(fields, dict) or not fields:
        raise TemplateError(file, 'data must be an object of fields: {"thing1": {"value": "…"}}')
    warnings = []
    for name, entry in fields.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
            raise TemplateError(file, f'data.{name} must be {{"value": "…"}}')
        extra = [k for k in entry if k not in ("value", "color")]
        if extra:
            raise TemplateError(
                file, f"data.{name} has unknown key {extra[0]!r}; keys are value, color"
            )
        color = entry.get("color")
        if color is not None and not (isinstance(color, str) and COLOR.fullmatch(color)):
            raise TemplateError(file, f"data.{name}.color must look like #FF6600, got {color!r}")
        value = entry["value"]
        if not value.strip():
            warnings.append(f"data.{name} is empty")
        elif len(value) > WECHAT_FIELD_CHARS:
            warnings.append(
                f"data.{name} is {len(value)} characters; WeChat shows {WECHAT_FIELD_CHARS} "
                f"and cuts the rest: {value!r}"
            )
        if CONTROL.search(value):
            warnings.append(f"data.{name} holds a line break or control character")
    return warnings


def push_message(rendered: str, *, device: str | None, file: str = "push") -> Outbound:
    """An app push {title, body, device, url?}; device must be the customer's device id."""
    data = _json_object(rendered, file)
    _check_keys(data, PUSH_KEYS, file)
    _text_value(data, "title", file)
    _text_value(data, "body", file)
    target = _text_value(data, "device", file)
    if not device:
        raise TemplateError(file, "the customer has no device to push to")
    if target != device:
        raise TemplateError(
            file, f'device is {target!r}, not the customer\'s device: write "{{{{ device }}}}"'
        )
    if "url" in data:
        _text_value(data, "url", file)
    return Outbound("push", data, files={"json": file})


# ---------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Rendered:
    """A template's parts rendered for one customer: what a channel builds its payload from."""

    parts: Mapping[str, str]  # part -> rendered text
    files: Mapping[str, str]  # part -> the file it came from, for errors
    context: Mapping[str, Any]  # what the template was given (the customer's openid, device)
    sms_max_segments: int = SMS_MAX_SEGMENTS


@dataclass(frozen=True)
class Channel:
    """Everything cdp knows about one channel, in one place."""

    name: str
    address_type: str  # the identifier type a message on this channel is addressed to
    file_format: str  # of its outbound files: csv or jsonl
    parts: Mapping[str, str]  # template part -> file suffix
    payload: Callable[[Rendered], Outbound]
    file_columns: tuple[str, ...] = ()  # csv: the payload's keys, in their columns' order
    address_kinds: frozenset[str] | None = None  # the identifier details that reach (SMS)
    scoped_by_appid: bool = False  # only identifiers of the sending account reach (WeChat)

    @property
    def address_noun(self) -> str:
        """'wechat openid': what a customer lacks when the channel cannot reach them."""
        return self.address_type.replace("_", " ")

    def reaches(self, type_name: str, value: str, detail: str | None, appid: str | None) -> bool:
        """Whether a linked identifier (type, value, detail) addresses a message on this
        channel; `appid` is the sending WeChat account of cdp.yaml (channels.wechat.appid).

        An openid is stored as '<appid>:<openid>', and an account's openids mean nothing to
        another account: the prefix must be the sending account's, exactly (case included).
        """
        if type_name != self.address_type:
            return False
        if self.address_kinds is not None and detail not in self.address_kinds:
            return False
        return not (self.scoped_by_appid and appid and not value.startswith(f"{appid}:"))

    def suffixes(self) -> list[str]:
        """The file suffixes of its parts, longest first (.subject.txt before .txt)."""
        return sorted(set(self.parts.values()), key=len, reverse=True)


def _sms_payload(rendered: Rendered) -> Outbound:
    return sms_message(
        rendered.parts["text"],
        max_segments=rendered.sms_max_segments,
        file=rendered.files["text"],
    )


def _email_payload(rendered: Rendered) -> Outbound:
    parts = rendered.parts
    return email_message(
        parts["subject"],
        parts["html"],
        parts["text"],
        files=rendered.files,
        unsubscribe=rendered.context.get("unsubscribe"),
    )


def _wechat_payload(rendered: Rendered) -> Outbound:
    wechat = rendered.context.get("wechat") or {}
    return wechat_message(
        rendered.parts["json"],
        openid=wechat.get("openid"),
        appid=wechat.get("appid"),
        file=rendered.files["json"],
    )


def _push_payload(rendered: Rendered) -> Outbound:
    return push_message(
        rendered.parts["json"], device=rendered.context.get("device"), file=rendered.files["json"]
    )


CHANNELS: dict[str, Channel] = {
    channel.name: channel
    for channel in (
        Channel(
            "sms", "phone", "csv", {"text": ".txt"}, _sms_payload,
            file_columns=("text", "segments", "encoding"), address_kinds=SMS_PHONE_KINDS,
        ),
        Channel("email", "email", "jsonl", EMAIL_PARTS, _email_payload),
        Channel("wechat", "wechat_openid", "jsonl", {"json": ".json"}, _wechat_payload,
                scoped_by_appid=True),
        Channel("push", "device_id", "jsonl", {"json": ".json"}, _push_payload),
    )
}  # fmt: skip
# CHANNEL_NAMES, CONSENT_CHANNELS and CONSENT_PURPOSES: messaging.channel_names, which reading
# cdp.yaml and opening the store import without this module.
ADDRESS_TYPES = tuple(channel.address_type for channel in CHANNELS.values())


def purposes_obeyed(transactional: bool) -> tuple[str | None, ...]:
    """The purposes of the consents a journey obeys (None: a consent that names none)."""
    return (None, "all", "service" if transactional else "marketing")


def opted_out_channels(consent_channel: str) -> tuple[str, ...]:
    """The channels an opt-out recorded for `consent_channel` ('all' or one) covers."""
    return CHANNEL_NAMES if consent_channel == "all" else (consent_channel,)
