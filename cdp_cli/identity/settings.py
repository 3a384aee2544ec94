"""The `identity:` section of cdp.yaml: identifier types and their guards, the blocklist,
source priority and probabilistic matching.

Parsed when cdp.yaml is read (config.load_config calls build_identity), so that every command
refuses the same mistakes, naming file and line.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdp_cli.canonical import IDENTITY_FIELDS, KINDS
from cdp_cli.errors import ConfigError
from cdp_cli.identity.junk import JUNK_RULE_NAMES
from cdp_cli.yamlfile import YamlMap, check_keys, did_you_mean, string_list

IDENTITY_KEYS = ("blocklist", "default_blocklist", "priority", "source_priority", "match")
MATCH_KEYS = (
    "fields", "sources", "threshold", "review_threshold", "blocking", "max_comparisons",
)  # fmt: skip
TYPE_KEYS = ("join", "max_per_profile", "max_profiles_per_value", "fields", "sources")
# Each source of cdp.yaml by name, with the fields it maps (canonical ones and a project's own).
SourceFields = dict[str, set[str]]


@dataclass(frozen=True)
class IdentifierType:
    """A kind of identifier: the canonical fields it is read from and its guards."""

    name: str
    fields: tuple[str, ...]
    joins: bool = True
    max_per_profile: int | None = None
    max_profiles_per_value: int | None = None
    sources: tuple[str, ...] = ()  # for declared types: the sources it applies to; () is all


@dataclass(frozen=True)
class MatchRules:
    """Probabilistic matching (`identity.match:`): which fields a Fellegi-Sunter model compares,
    whose records it matches, the blocking rules that choose the pairs, and the thresholds.

    A pair whose match probability reaches `threshold` is linked (unless a guard refuses);
    one from `review_threshold` up to it waits in the review queue for a person."""

    fields: tuple[str, ...]
    sources: tuple[str, ...] = ()  # the sources whose records need matching; () is every one
    threshold: float = 0.95
    review_threshold: float = 0.5
    # Each rule: the fields that must agree exactly (as compared) for a pair to be scored.
    blocking: tuple[tuple[str, ...], ...] = ()
    max_comparisons: int = 20_000_000


# Built-in identifier types, strongest first: the order decides which link is kept when a
# limit would break. A customer holds one member number and one ID number; a device seen
# with more than one known customer (a store tablet) joins none of them.
BUILTIN_TYPES = (
    IdentifierType("member_no", ("member_no",), max_per_profile=1),
    IdentifierType("id_number", ("id_number",), max_per_profile=1),
    IdentifierType("wechat_unionid", ("wechat_unionid",), max_per_profile=1),
    IdentifierType("user_id", ("user_id",), max_per_profile=2),
    IdentifierType("phone", ("phone",), max_per_profile=3),
    IdentifierType("email", ("email",), max_per_profile=5),
    IdentifierType("wechat_openid", ("wechat_appid", "wechat_openid"), max_per_profile=10),
    IdentifierType("device_id", ("device_id",), max_per_profile=10, max_profiles_per_value=1),
)


@dataclass(frozen=True)
class IdentityRules:
    """How records join into customers: the `identity:` section of cdp.yaml."""

    types: tuple[IdentifierType, ...] = BUILTIN_TYPES
    blocklist: tuple[str, ...] = ()
    source_priority: tuple[str, ...] = ()
    # The default blocklist's rules turned off (identity.junk.JUNK_RULES names them).
    default_blocklist_off: tuple[str, ...] = ()
    match: MatchRules | None = None

    def type(self, name: str) -> IdentifierType:
        return next(t for t in self.types if t.name == name)

    def fields_for(self, source: str, mapped: set[str]) -> tuple[str, ...]:
        """The canonical fields whose values identify a row of `source`."""
        fields = [f.name for f in IDENTITY_FIELDS]
        for t in self.types:
            if t.sources and source not in t.sources:
                continue
            if all(f in mapped for f in t.fields):
                fields += [f for f in t.fields if f not in fields]
        if self.matches(source):
            fields += [f for f in self.match.fields if f in mapped and f not in fields]  # type: ignore[union-attr]
        return tuple(fields)

    def matches(self, source: str) -> bool:
        """Whether probabilistic matching looks for the customers of this source's records."""
        return self.match is not None and (not self.match.sources or source in self.match.sources)


def custom_field_names(identity: Any) -> set[str]:
    """The names that `identity:` declares as fields of its own identifiers or of matching:
    a source may map them though they are no canonical field. Any other unknown name in a
    source's `fields:` stays an error (most are typos)."""
    if not isinstance(identity, YamlMap):
        return set()
    names: set[str] = set()
    for name, spec in identity.items():
        if isinstance(spec, YamlMap) and (name not in IDENTITY_KEYS or name == "match"):
            fields = spec.get("fields")
            if isinstance(fields, str):
                fields = [fields]
            if isinstance(fields, list):
                names.update(f for f in fields if isinstance(f, str))
    return names


def match_line(identity: Any) -> int:
    if not isinstance(identity, YamlMap) or not isinstance(identity.get("match"), YamlMap):
        return 0
    match = identity["match"]
    return match.line_of("blocking") or identity.line_of("match")


def _limit(path: Path, spec: YamlMap, key: str, where: str, default: int | None) -> int | None:
    """A guard's limit: absent keeps the default, `null` removes it, else a whole number >= 1."""
    if key not in spec:
        return default
    value = spec[key]
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            path, f"{where}.{key}: expected a whole number of 1 or more", spec.line_of(key)
        )
    return value


def build_identity(path: Path, spec: Any, line: int, sources: SourceFields) -> IdentityRules:
    """`identity:`; `sources` names each source of cdp.yaml with the fields it maps."""
    if spec is None:
        return IdentityRules()
    if not isinstance(spec, YamlMap):
        raise ConfigError(path, "identity: expected a mapping", line)
    builtin = {t.name: t for t in BUILTIN_TYPES}
    types: dict[str, IdentifierType] = dict(builtin)
    known_fields = {f.name for kind in KINDS.values() for f in kind.all_fields}
    known_fields |= {f for fields in sources.values() for f in fields}  # and a project's own
    for name, tspec in spec.items():
        if name in IDENTITY_KEYS:
            continue
        where = f"identity.{name}"
        if not isinstance(tspec, YamlMap):
            raise ConfigError(path, f"{where}: expected a mapping of settings", spec.line_of(name))
        check_keys(tspec, TYPE_KEYS, where)
        base = builtin.get(name)
        if base is None and "fields" not in tspec:
            raise ConfigError(
                path,
                f"{where}: not a built-in identifier{did_you_mean(str(name), builtin)}; "
                "a new one needs `fields:`",
                spec.line_of(name),
            )
        fields = _names(path, tspec, "fields", where, known_fields, "unknown field")
        fields = fields or (base.fields if base else ())
        type_sources = _source_names(path, tspec, "sources", where, sources)
        types[str(name)] = IdentifierType(
            name=str(name),
            fields=fields,
            joins=bool(tspec.get("join", True)),
            max_per_profile=_limit(
                path, tspec, "max_per_profile", where, base.max_per_profile if base else None
            ),
            max_profiles_per_value=_limit(
                path,
                tspec,
                "max_profiles_per_value",
                where,
                base.max_profiles_per_value if base else None,
            ),
            sources=type_sources,
        )
    priority = _names(path, spec, "priority", "identity", types, "unknown identifier")
    ordered = [types[n] for n in priority] + [t for n, t in types.items() if n not in priority]
    source_priority = _source_names(path, spec, "source_priority", "identity", sources)
    blocklist = tuple(str(v) for v in (spec.get("blocklist") or []))
    off = _default_blocklist_off(path, spec)
    match = _build_match(path, spec, sources)
    return IdentityRules(tuple(ordered), blocklist, source_priority, off, match)


def _source_names(
    path: Path, spec: YamlMap, key: str, where: str, sources: SourceFields
) -> tuple[str, ...]:
    """The list of source names at `key`, each one a source of cdp.yaml."""
    return _names(path, spec, key, where, sources, "no source named")


def _names(
    path: Path, spec: YamlMap, key: str, where: str, known: Collection[str], unknown: str
) -> tuple[str, ...]:
    """The list of names at `key`, each one of `known`; else the error says `unknown` and
    the name."""
    names = string_list(spec, key, where)
    for name in names:
        if name not in known:
            raise ConfigError(
                path, f"{where}.{key}: {unknown} {name!r}{did_you_mean(name, known)}",
                spec.line_of(key),
            )  # fmt: skip
    return names


def _build_match(path: Path, identity: YamlMap, sources: SourceFields) -> MatchRules | None:
    """`identity.match: {fields: [...], sources: [...], threshold: 0.95, ...}`."""
    spec = identity.get("match")
    if spec is None:
        return None
    where = "identity.match"
    if not isinstance(spec, YamlMap):
        raise ConfigError(
            path, f"{where}: expected a mapping such as {{fields: [name, birthday]}}",
            identity.line_of("match"),
        )  # fmt: skip
    check_keys(spec, MATCH_KEYS, where)
    fields = string_list(spec, "fields", where)
    line = spec.line_of("fields") or identity.line_of("match")
    if len(fields) < 2:
        raise ConfigError(path, f"{where}.fields: name at least two fields to compare", line)
    names = _source_names(path, spec, "sources", where, sources)
    mapped = {f for fields in sources.values() for f in fields}
    for f in fields:
        if f not in mapped:
            raise ConfigError(
                path, f"{where}.fields: no source maps a field {f!r}{did_you_mean(f, mapped)}",
                line,
            )  # fmt: skip
    matched = [sources[n] for n in names] if names else list(sources.values())
    if not any(f in mapped_by for mapped_by in matched for f in fields):
        raise ConfigError(path, f"{where}.sources: none of them maps any of the fields", line)
    threshold = _probability(path, spec, "threshold", MatchRules.threshold)
    review = _probability(path, spec, "review_threshold", MatchRules.review_threshold)
    if review > threshold:
        raise ConfigError(
            path, f"{where}.review_threshold: {review} is above threshold {threshold}",
            spec.line_of("review_threshold"),
        )  # fmt: skip
    blocking = _blocking(path, spec, fields)
    limit = _limit(path, spec, "max_comparisons", where, MatchRules.max_comparisons)
    return MatchRules(
        fields, names, threshold, review, blocking, limit or MatchRules.max_comparisons
    )


def _probability(path: Path, spec: YamlMap, key: str, default: float) -> float:
    """A match probability: a number in (0, 1]."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(
            path,
            f"identity.match.{key}: expected a probability above 0 and at most 1 (got {value!r})",
            spec.line_of(key),
        )
    return float(value)


def _blocking(path: Path, spec: YamlMap, fields: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """`blocking: [[birthday], [name, city]]`: each rule the fields that must agree for a pair
    to be compared. By default every two of the match fields. A rule of no field would compare
    every record with every other: refused."""
    rules = spec.get("blocking")
    where, line = "identity.match.blocking", spec.line_of("blocking")
    if rules is None:
        return tuple((a, b) for i, a in enumerate(fields) for b in fields[i + 1 :])
    if not isinstance(rules, list) or not rules:
        raise ConfigError(path, f"{where}: expected a list of rules such as [[birthday]]", line)
    built = []
    for number, rule in enumerate(rules, 1):
        names = [rule] if isinstance(rule, str) else rule
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(path, f"{where}: rule {number} is not a list of fields", line)
        if not names:
            raise ConfigError(
                path,
                f"{where}: rule {number} names no field, so it would compare every record "
                "with every other",
                line,
            )
        for name in names:
            if name not in fields:
                raise ConfigError(
                    path,
                    f"{where}: rule {number} names {name!r}, not one of the match fields"
                    f"{did_you_mean(name, fields)}",
                    line,
                )
        built.append(tuple(names))
    return tuple(built)


def _default_blocklist_off(path: Path, spec: YamlMap) -> tuple[str, ...]:
    """`default_blocklist: {repeated_character: false}`: the default rules a project turns off."""
    rules = spec.get("default_blocklist")
    if rules is None:
        return ()
    where = "identity.default_blocklist"
    if not isinstance(rules, YamlMap):
        raise ConfigError(
            path,
            f"{where}: expected a mapping of rule: true or false",
            spec.line_of("default_blocklist"),
        )
    for name, on in rules.items():
        if name not in JUNK_RULE_NAMES:
            raise ConfigError(
                path,
                f"{where}: no rule named {name!r}{did_you_mean(str(name), JUNK_RULE_NAMES)}"
                f" (rules: {', '.join(JUNK_RULE_NAMES)})",
                rules.line_of(name),
            )
        if not isinstance(on, bool):
            raise ConfigError(path, f"{where}.{name}: expected true or false", rules.line_of(name))
    return tuple(name for name in JUNK_RULE_NAMES if rules.get(name) is False)
