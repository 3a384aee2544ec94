"""What journeys read from cdp.yaml when they send: each channel's quiet hours, cost and
account, the frequency cap, the global control group and the brand.

Parsed when cdp.yaml is read (config.load_config calls build_send_settings), so that
`cdp journey validate` and `cdp journey run` refuse the same mistakes, naming file and line.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from cdp_cli.errors import ConfigError
from cdp_cli.messaging.channel_names import CHANNEL_NAMES, SCOPED_BY_APPID, unknown_channel
from cdp_cli.yamlfile import YamlMap, check_keys

CHANNEL_KEYS = ("quiet_hours", "cost")  # and appid, for a channel scoped by its account
FREQUENCY_CAP_KEYS = ("per_day", "per_week")
CONTROL_GROUP_KEYS = ("share", "salt")


@dataclass(frozen=True)
class QuietHours:
    """A channel's quiet hours (`quiet_hours: "21:00-09:00"`), in a customer's local time."""

    start: time
    end: time

    def until(self, now: datetime) -> datetime | None:
        """The end of the quiet hours if `now` (a customer's local time) lies inside them."""
        local = now.time().replace(tzinfo=None)
        if self.start > self.end:
            inside = self.start <= local or local < self.end
        else:
            inside = self.start <= local < self.end
        if not inside:
            return None
        until = now.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        return until + timedelta(days=1) if until <= now else until


# Every channel's quiet hours for marketing unless cdp.yaml sets its own (or `off`).
DEFAULT_QUIET_HOURS = QuietHours(time(21, 0), time(9, 0))
QUIET_HOURS_OFF = (False, None, "off", "none")  # `quiet_hours: off`: the channel never waits
# What `datetime.strptime(text, "%H:%M")` accepts (its own patterns for %H and %M, the whole
# text), without importing _strptime and building its locale tables: 2 ms of every command.
_HOUR_MINUTE = re.compile(r"(2[0-3]|[0-1]\d|\d):([0-5]\d|\d)", re.IGNORECASE)


@dataclass(frozen=True)
class ChannelSettings:
    """One channel under `channels:` in cdp.yaml (a channel it does not list: the defaults)."""

    quiet_hours: QuietHours | None = DEFAULT_QUIET_HOURS
    quiet_hours_set: bool = False  # written in cdp.yaml: transactional messages keep it too
    cost: float = 0.0  # per message (an SMS: per segment), for reports' ROI
    appid: str | None = None  # WeChat: the official account that sends


@dataclass(frozen=True)
class SendSettings:
    """What journeys read when they send: `channels`, `frequency_cap`, `control_group` and
    `brand`, checked when cdp.yaml is read so that validating and running refuse alike."""

    timezone: str = "Asia/Shanghai"
    channels: dict[str, ChannelSettings] = field(default_factory=dict)  # as cdp.yaml lists them
    per_day: int | None = None  # marketing messages per customer; None: no cap
    per_week: int | None = None
    control_share: float = 0.0  # of all customers, sent no marketing
    control_salt: str = ""
    brand: dict[str, Any] = field(default_factory=lambda: {"name": "cdp", "url": ""})

    @functools.cached_property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def wechat_appid(self) -> str | None:
        wechat = self.channels.get("wechat")
        return wechat.appid if wechat else None

    def quiet_hours(self, channel: str, transactional: bool = False) -> QuietHours | None:
        """The hours a message on the channel waits out: those cdp.yaml sets for it, else
        DEFAULT_QUIET_HOURS for marketing; a transactional message obeys only those set."""
        settings = self.channels.get(channel) or ChannelSettings()
        if transactional and not settings.quiet_hours_set:
            return None
        return settings.quiet_hours

    def cost(self, channel: str) -> float:
        settings = self.channels.get(channel)
        return settings.cost if settings else 0.0


def build_send_settings(path: Path, data: YamlMap, timezone: str) -> SendSettings:
    channels = _mapping(path, data, "channels", "a mapping of channels")
    cap = _mapping(path, data, "frequency_cap", "{per_day: 1, per_week: 3}")
    check_keys(cap, FREQUENCY_CAP_KEYS, "frequency_cap")
    control = data.get("control_group") or YamlMap()
    if not isinstance(control, YamlMap):  # `control_group: 5%` is the share alone
        control = _yaml_map(path, data.line_of("control_group"), share=control)
    check_keys(control, CONTROL_GROUP_KEYS, "control_group")
    brand = _mapping(path, data, "brand", "a mapping such as {name: 花漾, url: ...}")
    return SendSettings(
        timezone=timezone,
        channels={str(name): _channel_settings(path, channels, str(name)) for name in channels},
        per_day=_cap(path, cap, "per_day"),
        per_week=_cap(path, cap, "per_week"),
        control_share=_control_share(path, control),
        control_salt=str(control.get("salt", "")),
        brand=dict(brand) if brand else {"name": "cdp", "url": ""},
    )


def _mapping(path: Path, data: YamlMap, key: str, expected: str) -> YamlMap:
    """data[key] as a mapping; absent or empty is an empty one."""
    value = data.get(key)
    if not value:
        return _yaml_map(path, data.line_of(key))
    if not isinstance(value, YamlMap):
        raise ConfigError(path, f"{key}: expected {expected}", data.line_of(key))
    return value


def _yaml_map(path: Path, line: int, **values: Any) -> YamlMap:
    mapping = YamlMap(values)
    mapping.path, mapping.line, mapping.key_lines = str(path), line, {}
    return mapping


def _channel_settings(path: Path, channels: YamlMap, name: str) -> ChannelSettings:
    where, line = f"channels.{name}", channels.line_of(name)
    if name not in CHANNEL_NAMES:
        raise ConfigError(
            path,
            f"channels: {unknown_channel(name)}; channels are {', '.join(CHANNEL_NAMES)}",
            line,
        )
    spec = channels[name] or _yaml_map(path, line)
    if not isinstance(spec, YamlMap):
        raise ConfigError(path, f"{where}: expected a mapping of settings", line)
    check_keys(spec, (*CHANNEL_KEYS, *(("appid",) if name in SCOPED_BY_APPID else ())), where)
    cost = spec.get("cost", 0)
    try:
        cost = float(cost or 0)
    except (TypeError, ValueError):
        raise ConfigError(
            path, f"{where}.cost: expected a number, got {cost!r}", spec.line_of("cost")
        ) from None
    appid = spec.get("appid")
    quiet_set = "quiet_hours" in spec
    return ChannelSettings(
        quiet_hours=_quiet_hours(path, spec, where) if quiet_set else DEFAULT_QUIET_HOURS,
        quiet_hours_set=quiet_set,
        cost=cost,
        appid=str(appid) if appid is not None else None,
    )


def _quiet_hours(path: Path, spec: YamlMap, where: str) -> QuietHours | None:
    """`quiet_hours: "21:00-09:00"`; `off` (or null) for none."""
    value = spec["quiet_hours"]
    if value in QUIET_HOURS_OFF:
        return None
    text = str(value)
    try:
        start, end = (_hour_minute(t.strip()) for t in text.split("-"))
    except ValueError:
        raise ConfigError(
            path,
            f"{where}.quiet_hours: expected a window such as 21:00-09:00, got {text!r}",
            spec.line_of("quiet_hours"),
        ) from None
    return QuietHours(start, end)


def _hour_minute(text: str) -> time:
    """'21:00' as a time, as strptime's %H:%M reads it (also '9:5'); ValueError otherwise."""
    match = _HOUR_MINUTE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a time: {text!r}")
    return time(int(match[1]), int(match[2]))


def _cap(path: Path, cap: YamlMap, key: str) -> int | None:
    """A frequency cap: absent, null or 0 is none."""
    value = cap.get(key)
    if value in (None, 0):
        return None
    if not isinstance(value, int) or value < 0:
        raise ConfigError(path, f"frequency_cap.{key}: expected a whole number", cap.line_of(key))
    return value


def _control_share(path: Path, control: YamlMap) -> float:
    """5%, or 0.05: the share of all customers in the global control group."""
    value = control.get("share", 0)
    text = str(value).strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share < 1:
        raise ConfigError(
            path,
            f"control_group.share: expected a share such as 5%, got {value!r}",
            control.line_of("share"),
        )
    return share
