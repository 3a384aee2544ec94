"""Journeys as written in journeys/*.yaml: entry, re-entry, exit, goal, holdout and steps.

A journey is a small state machine that `cdp journey run` advances (see engine.py). This module
reads and checks the files only; every mistake names the file, line and step.

    name: winback
    entry: {when: "tag('lifecycle') = 'at_risk'", reentry: 90d}
    exit: "has_tag('dormant')"
    goal: {event: order, within: 14d}
    holdout: 10%
    steps:
      - send: {channel: wechat, fallback: [sms], template: winback_coupon, coupon: WINBACK20}
      - wait: 3d
      - branch:
          when: "not converted"
          then: [{send: {channel: sms, template: winback_reminder}}]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

from cronsim import CronSim, CronSimError

from cdp_cli.errors import FileError, NotFound, RuleError
from cdp_cli.messaging.channel_names import unknown_channel
from cdp_cli.messaging.channels import CHANNEL_NAMES
from cdp_cli.messaging.links import UTM_KEYS
from cdp_cli.messaging.templates import template_name_problem
from cdp_cli.rules.compiler import parse_duration
from cdp_cli.yamlfile import (
    NAME_RULE,
    YamlList,
    YamlMap,
    check_keys,
    did_you_mean,
    is_name,
    load_yaml,
)

STEP_KINDS = ("send", "wait", "branch", "split", "end")
JOURNEY_KEYS = ("name", "description", "entry", "exit", "goal", "holdout", "transactional", "steps")
# Conditions a branch may test about the enrolment itself, besides any customer rule.
JOURNEY_CONDITIONS = ("converted", "received", "opened", "clicked")


@dataclass(frozen=True)
class TrackedLink:
    """A link of the message's own: the URL, UTM parameters over ours, and a QR image or not."""

    url: str
    utm: tuple[tuple[str, str], ...] = ()
    qr: bool = False


COUPON_MIN_DAYS_LEFT = 3  # a coupon's default least validity left when it is sent
COUPON_KEYS = ("pool", "min_days_left")


@dataclass(frozen=True)
class Send:
    """Send one message; if the channel cannot reach the customer, try the fallbacks."""

    key: str
    line: int
    channel: str
    template: str
    fallback: tuple[str, ...] = ()
    coupon: str | None = None  # the campaign whose pool gives each message a code
    # A code is drawn only if it is still valid this many days after the send.
    coupon_min_days_left: int = COUPON_MIN_DAYS_LEFT
    link: TrackedLink | None = None
    name: str = ""  # the name: the steps may carry, shown instead of the key


@dataclass(frozen=True)
class Wait:
    """Wait a duration, or until the next time of day (in the project's timezone)."""

    key: str
    line: int
    duration: timedelta | None = None
    until: time | None = None
    name: str = ""  # the name: the steps may carry, shown instead of the key


@dataclass(frozen=True)
class Branch:
    """Go down `then` when the condition holds, else down `otherwise`."""

    key: str
    line: int
    when: str
    then: tuple[Step, ...] = ()
    otherwise: tuple[Step, ...] = ()
    name: str = ""  # the name: the steps may carry, shown instead of the key


@dataclass(frozen=True)
class Split:
    """A/B/n: each customer goes down one variant, chosen by a hash and kept on re-entry."""

    key: str
    line: int
    variants: tuple[tuple[str, float, tuple[Step, ...]], ...] = ()
    name: str = ""  # the name: the steps may carry, shown instead of the key


@dataclass(frozen=True)
class End:
    key: str
    line: int
    name: str = ""  # the name: the steps may carry, shown instead of the key


Step = Union[Send, Wait, Branch, Split, End]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class Entry:
    """Who enters: customers matching a rule, or who did an event, or whose tag changed; or,
    for a broadcast, everyone (or those matching `when`) at each time of its schedule."""

    when: str | None = None
    event: str | None = None
    tag: str | None = None
    tag_value: str | None = None
    reentry: timedelta | None = None  # None: a customer enters once
    schedule: datetime | str | None = None  # a one-off time, or a cron expression
    late: timedelta = timedelta(hours=6)  # an occurrence missed by more than this is not sent

    @property
    def recurring(self) -> bool:
        return isinstance(self.schedule, str)


@dataclass(frozen=True)
class Journey:
    name: str
    path: str
    line: int
    entry: Entry
    steps: tuple[Step, ...]
    description: str = ""
    exit: str | None = None
    goal_event: str | None = None
    goal_within: timedelta | None = None
    holdout: float = 0.0
    transactional: bool = False
    index: dict[str, Step] = field(default_factory=dict, compare=False)
    # step key -> the key of the step that follows it when it is done (None: the journey ends)
    following: dict[str, str | None] = field(default_factory=dict, compare=False)

    @property
    def first(self) -> str:
        return self.steps[0].key

    def sends(self) -> list[Send]:
        return [s for s in self.index.values() if isinstance(s, Send)]

    def label(self, key: str) -> str:
        """A step's name when it has one, else its key (steps[0].split.a.steps[1])."""
        step = self.index.get(key)
        return step.name if step is not None and step.name else key


def _link(steps: tuple[Step, ...], after: str | None, following: dict[str, str | None]) -> None:
    """Each step is followed by the next in its list; the last by what follows the list."""
    for i, step in enumerate(steps):
        following[step.key] = steps[i + 1].key if i + 1 < len(steps) else after
        if isinstance(step, Branch):
            _link(step.then, following[step.key], following)
            _link(step.otherwise, following[step.key], following)
        elif isinstance(step, Split):
            for _, _, variant in step.variants:
                _link(variant, following[step.key], following)


# ---------------------------------------------------------------------------------------------
# Reading


def load_journeys(folder: Path) -> dict[str, Journey]:
    """Every journeys/*.yaml, checked; a file holds one journey."""
    journeys: dict[str, Journey] = {}
    if not folder.is_dir():
        return journeys
    for path in sorted(folder.glob("*.yaml")):
        journey = _journey(path, load_yaml(path))
        if journey.name in journeys:
            first = journeys[journey.name]
            raise FileError(path, f"journey {journey.name!r} is also defined in {first.path}", 1)
        journeys[journey.name] = journey
    return journeys


def named_journey(journeys: dict[str, Journey], name: str, folder: Path) -> Journey:
    """The journey called `name` (load_journeys); NotFound naming the folder and the
    closest name."""
    if name not in journeys:
        raise NotFound(f"no journey named {name!r} in {folder}{did_you_mean(name, journeys)}")
    return journeys[name]


def _journey(path: Path, data: Any) -> Journey:
    if not isinstance(data, YamlMap):
        raise FileError(path, "expected a journey: a mapping with name, entry and steps", 1)
    check_keys(data, JOURNEY_KEYS, "journey")
    name = data.get("name")
    if not is_name(name):
        raise FileError(
            path,
            f"name must be {NAME_RULE} (got {name!r})",
            data.line_of("name"),
        )
    for required in ("entry", "steps"):
        if required not in data:
            raise FileError(path, f"journey {name}: {required} is missing", data.line)
    index: dict[str, Step] = {}
    steps = _steps(path, data["steps"], "steps", index)
    _check_step_names(path, index)
    following: dict[str, str | None] = {}
    _link(steps, None, following)
    goal = data.get("goal")
    goal_event = goal_within = None
    if goal is not None:
        if not isinstance(goal, YamlMap) or set(goal) != {"event", "within"}:
            raise FileError(
                path, "goal: expected {event: EVENT, within: DURATION}", data.line_of("goal")
            )
        goal_event, goal_within = str(goal["event"]), _duration(path, goal, "within", "goal")
    return Journey(
        name=name,
        path=str(path),
        line=data.line,
        entry=_entry(path, data["entry"], data.line_of("entry")),
        steps=steps,
        description=str(data.get("description", "")),
        exit=_rule_text(path, data, "exit") if "exit" in data else None,
        goal_event=goal_event,
        goal_within=goal_within,
        holdout=_share(path, data.get("holdout", 0), data.line_of("holdout"), "holdout"),
        transactional=bool(data.get("transactional", False)),
        index=index,
        following=following,
    )


def _check_step_names(path: Path, index: dict[str, Step]) -> None:
    """Two steps of one journey with the same name would merge in status and reports."""
    seen: dict[str, Step] = {}
    for step in index.values():
        if step.name and step.name in seen:
            raise FileError(
                path,
                f"{step.key}: name {step.name!r} is taken by {seen[step.name].key}",
                step.line,
            )
        if step.name:
            seen[step.name] = step


def _rule_text(path: Path, spec: YamlMap, key: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FileError(path, f"{key}: expected a rule written as text", spec.line_of(key))
    return value


def _duration(path: Path, spec: YamlMap, key: str, where: str) -> timedelta:
    try:
        return parse_duration(str(spec.get(key)))
    except RuleError as exc:
        raise FileError(path, f"{where}.{key}: {exc.message}", spec.line_of(key)) from None


def _share(path: Path, value: Any, line: int, where: str) -> float:
    """'10%', 10% written as 0.1, or 10 (percent)."""
    text = str(value).strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise FileError(
            path, f"{where}: expected a share such as 10%, got {value!r}", line
        ) from None
    if not text.endswith("%") and share > 1:  # 10 means 10%
        share /= 100
    if not 0 <= share <= 1:
        raise FileError(path, f"{where}: a share lies between 0% and 100%, got {value!r}", line)
    return share


def _entry(path: Path, spec: Any, line: int) -> Entry:
    if not isinstance(spec, YamlMap):
        raise FileError(path, "entry: expected a mapping with when, event, tag or schedule", line)
    check_keys(spec, ("when", "event", "tag", "value", "reentry", "schedule", "late"), "entry")
    given = [k for k in ("when", "event", "tag") if k in spec]
    if "schedule" in spec:
        if "event" in spec or "tag" in spec:
            raise FileError(
                path, "entry: a schedule takes an audience rule (when), not event or tag", spec.line
            )
    elif len(given) != 1:
        raise FileError(
            path, "entry: give exactly one of when (a rule), event, tag or schedule", spec.line
        )
    elif "late" in spec:
        raise FileError(path, "entry.late: only a schedule can be late", spec.line_of("late"))
    # A broadcast enrols again at each occurrence; anything else enters once unless told.
    reentry: timedelta | None = timedelta(0) if "schedule" in spec else None
    if spec.get("reentry", "never") != "never":
        reentry = _duration(path, spec, "reentry", "entry")
    return Entry(
        when=_rule_text(path, spec, "when") if "when" in spec else None,
        event=str(spec["event"]) if "event" in spec else None,
        tag=str(spec["tag"]) if "tag" in spec else None,
        tag_value=str(spec["value"]) if "value" in spec else None,
        reentry=reentry,
        schedule=_schedule(path, spec) if "schedule" in spec else None,
        late=_duration(path, spec, "late", "entry") if "late" in spec else timedelta(hours=6),
    )


def _schedule(path: Path, spec: YamlMap) -> datetime | str:
    """A one-off time (2026-12-12 10:00, in the project's timezone) or a cron expression."""
    value, line = spec["schedule"], spec.line_of("schedule")
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp itself
        return value.replace(tzinfo=None) if value.tzinfo is None else value
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        CronSim(text, datetime(2026, 1, 1))
    except CronSimError as exc:
        raise FileError(
            path,
            f"entry.schedule: expected a time such as 2026-12-12 10:00 or a cron expression "
            f"such as '0 10 * * MON' ({exc})",
            line,
        ) from None
    return text


def _steps(path: Path, data: Any, where: str, index: dict[str, Step]) -> tuple[Step, ...]:
    if not isinstance(data, YamlList) or not data:
        line = getattr(data, "line", 1)
        raise FileError(path, f"{where}: expected a list of steps", line)
    return tuple(
        _step(path, item, f"{where}[{i}]", index, data.line) for i, item in enumerate(data)
    )


def _step(path: Path, item: Any, key: str, index: dict[str, Step], line: int) -> Step:
    if item == "end":
        step: Step = End(key, line)
        index[key] = step
        return step
    if not isinstance(item, YamlMap) or len([k for k in item if k != "name"]) != 1:
        raise FileError(
            path, f"{key}: a step is one of {', '.join(STEP_KINDS)}", getattr(item, "line", line)
        )
    kind, spec = next((k, v) for k, v in item.items() if k != "name")
    line = item.line
    name = item.get("name", "")
    if "name" in item and not is_name(name):
        raise FileError(
            path, f"{key}.name must be {NAME_RULE} (got {name!r})", item.line_of("name")
        )
    if kind not in STEP_KINDS:
        raise FileError(
            path, f"{key}: unknown step {kind!r}{did_you_mean(str(kind), STEP_KINDS)}", line
        )
    if kind == "send":
        step = _send(path, spec, key, line)
    elif kind == "wait":
        step = _wait(path, spec, key, line)
    elif kind == "branch":
        step = _branch(path, spec, key, line, index)
    elif kind == "split":
        step = _split(path, spec, key, line, index)
    else:
        step = End(key, line)
    if name:
        step = replace(step, name=name)
    index[key] = step
    return step


def _send(path: Path, spec: Any, key: str, line: int) -> Send:
    if not isinstance(spec, YamlMap):
        raise FileError(path, f"{key}.send: expected {{channel, template}}", line)
    check_keys(spec, ("channel", "template", "fallback", "coupon", "link"), f"{key}.send")
    channels = [spec.get("channel"), *_fallback(path, spec.get("fallback"), key, line)]
    for channel in channels:
        if channel not in CHANNEL_NAMES:
            raise FileError(path, f"{key}.send: {unknown_channel(channel)}", line)
    template = spec.get("template")
    if not isinstance(template, str) or not template:
        raise FileError(path, f"{key}.send: template is missing", line)
    problem = template_name_problem(template)
    if problem:
        raise FileError(
            path,
            f"{key}.send: template {template!r} names no file in the templates folder: {problem}",
            line,
        )
    coupon, min_days_left = _coupon(path, spec.get("coupon"), f"{key}.send.coupon", line)
    link = _tracked_link(path, spec["link"], f"{key}.send.link", line) if "link" in spec else None
    return Send(key, line, channels[0], template, tuple(channels[1:]), coupon, min_days_left, link)


def _fallback(path: Path, spec: Any, key: str, line: int) -> list[Any]:
    """`fallback: [sms, email]`, or one channel alone (`fallback: sms`, which read as a list
    would be the channels s, m and s)."""
    if spec is None or isinstance(spec, str):
        return [spec] if spec else []
    if not isinstance(spec, list):
        raise FileError(path, f"{key}.send.fallback: expected a channel or a list of them", line)
    return spec


def _coupon(path: Path, spec: Any, where: str, line: int) -> tuple[str | None, int]:
    """`coupon: CAMPAIGN`, or `coupon: {pool: CAMPAIGN, min_days_left: 5}`."""
    if not spec:
        return None, COUPON_MIN_DAYS_LEFT
    if not isinstance(spec, YamlMap):
        return str(spec), COUPON_MIN_DAYS_LEFT
    check_keys(spec, COUPON_KEYS, where)
    pool = spec.get("pool")
    if not isinstance(pool, str) or not pool.strip():
        raise FileError(path, f"{where}: pool is missing (the coupons' campaign)", line)
    days = spec.get("min_days_left", COUPON_MIN_DAYS_LEFT)
    if not isinstance(days, int) or isinstance(days, bool) or days < 0:
        raise FileError(
            path, f"{where}.min_days_left: expected a whole number of days, 0 or more", line
        )
    return pool.strip(), days


def _tracked_link(path: Path, spec: Any, where: str, line: int) -> TrackedLink:
    """`link: URL`, or `link: {url, qr, utm_campaign, ...}`."""
    if isinstance(spec, str):
        return TrackedLink(_url(path, spec, where, line))
    if not isinstance(spec, YamlMap):
        raise FileError(path, f"{where}: expected a URL or {{url, qr, utm_...}}", line)
    check_keys(spec, ("url", "qr", *UTM_KEYS), where)
    url = _url(path, str(spec.get("url") or ""), where, spec.line)
    qr = spec.get("qr", False)
    if not isinstance(qr, bool):
        raise FileError(path, f"{where}.qr: expected true or false", spec.line_of("qr"))
    utm = tuple((k, str(spec[k])) for k in UTM_KEYS if spec.get(k) not in (None, ""))
    return TrackedLink(url, utm, qr)


def _url(path: Path, url: str, where: str, line: int) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FileError(path, f"{where}.url: expected an http(s) URL, got {url!r}", line)
    return url


def _wait(path: Path, spec: Any, key: str, line: int) -> Wait:
    if isinstance(spec, YamlMap):
        check_keys(spec, ("until",), f"{key}.wait")
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(spec.get("until", "")))
        if not match:
            raise FileError(path, f"{key}.wait.until: expected a time of day such as 10:00", line)
        return Wait(key, line, until=time(int(match[1]), int(match[2])))
    try:
        return Wait(key, line, duration=parse_duration(str(spec)))
    except RuleError as exc:
        raise FileError(path, f"{key}.wait: {exc.message}", line) from None


def _branch(path: Path, spec: Any, key: str, line: int, index: dict[str, Step]) -> Branch:
    if not isinstance(spec, YamlMap) or "when" not in spec or "then" not in spec:
        raise FileError(path, f"{key}.branch: expected when, then and perhaps else", line)
    check_keys(spec, ("when", "then", "else"), f"{key}.branch")
    then = _steps(path, spec["then"], f"{key}.then", index)
    otherwise = _steps(path, spec["else"], f"{key}.else", index) if "else" in spec else ()
    return Branch(key, line, _rule_text(path, spec, "when"), then, otherwise)


def _split(path: Path, spec: Any, key: str, line: int, index: dict[str, Step]) -> Split:
    if not isinstance(spec, YamlMap) or len(spec) < 2:
        raise FileError(
            path, f"{key}.split: expected two or more variants, each {{share, steps}}", line
        )
    variants = []
    for name, variant in spec.items():
        where = f"{key}.split.{name}"
        if not isinstance(variant, YamlMap) or set(variant) != {"share", "steps"}:
            raise FileError(path, f"{where}: expected {{share, steps}}", spec.line_of(name))
        share = _share(path, variant["share"], variant.line_of("share"), where)
        variants.append((str(name), share, _steps(path, variant["steps"], f"{where}.steps", index)))
    total = sum(share for _, share, _ in variants)
    if abs(total - 1) > 1e-9:
        raise FileError(path, f"{key}.split: the shares add up to {total:.0%}, not 100%", line)
    return Split(key, line, tuple(variants))
