"""The rule book: the tags and named segments a project writes in tag_rules/*.yaml.

A tag has a name, a category, a description and one of:
- `when:` a condition; customers who meet it have the tag (value 'true');
- `cases:` a list of {value, when}; the first case that matches gives the value;
- `value:` an expression whose value, when not null, is the tag's value.

segments.yaml holds named audiences, each a rule. Reading checks names, keys and duplicates;
the rules themselves are compiled by whoever uses them (tags, segments, journeys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdp_cli.errors import FileError
from cdp_cli.yamlfile import (
    NAME_RULE,
    YamlList,
    YamlMap,
    check_keys,
    did_you_mean,
    is_name,
    load_yaml,
)

CATEGORIES = ("attribute", "statistical", "rule", "predictive")
TAG_KEYS = ("name", "category", "description", "when", "cases", "value")
SEGMENTS_FILE = "segments.yaml"


@dataclass(frozen=True)
class Tag:
    """One tag as written in a tag file."""

    name: str
    category: str
    description: str
    path: str
    line: int
    when: str | None = None
    cases: tuple[tuple[str, str], ...] = ()
    value: str | None = None

    def rules(self) -> list[str]:
        return [r for r in (self.when, self.value) if r] + [when for _, when in self.cases]

    @property
    def values(self) -> tuple[str, ...] | None:
        """The values the tag can take: its cases', or 'true' for a `when:` tag; None for a
        `value:` tag, whose values are computed."""
        if self.cases:
            return tuple(value for value, _ in self.cases)
        return ("true",) if self.when is not None else None


@dataclass(frozen=True)
class Segment:
    """A named audience from tag_rules/segments.yaml."""

    name: str
    rule: str
    description: str
    path: str
    line: int


@dataclass
class RuleBook:
    """Every tag and named segment of a project, read and checked."""

    tags: dict[str, Tag] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)


def load_rulebook(folder: Path) -> RuleBook:
    """Read tag_rules/: every *.yaml holds tags, but segments.yaml, which holds segments."""
    book = RuleBook()
    if not folder.is_dir():
        return book
    for path in sorted(folder.glob("*.yaml")):
        data = load_yaml(path)
        if data is None:
            continue
        if path.name == SEGMENTS_FILE:
            for segment in _segments(path, data):
                _unique(book.segments, segment, "segment")
        else:
            for tag in _tags(path, data):
                _unique(book.tags, tag, "tag")
    return book


def _unique(found: dict[str, Any], item: Tag | Segment, what: str) -> None:
    if item.name in found:
        first = found[item.name]
        raise FileError(
            item.path,
            f"{what} {item.name!r} is defined twice (first at {first.path}:{first.line})",
            item.line,
        )
    found[item.name] = item


def _entries(path: Path, data: Any) -> YamlList:
    if not isinstance(data, YamlList):
        raise FileError(path, "expected a list of entries, each starting with '- name:'", 1)
    for entry in data:
        if not isinstance(entry, YamlMap):
            raise FileError(path, "each entry must be a mapping with a name", data.line)
    return data


def _name(path: Path, entry: YamlMap, what: str) -> str:
    name = entry.get("name")
    if not is_name(name):
        raise FileError(
            path,
            f"a {what} needs a name of {NAME_RULE} (got {name!r})",
            entry.line_of("name"),
        )
    return name


def _text(path: Path, entry: YamlMap, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise FileError(path, f"{where}: {key} must be a rule written as text", entry.line_of(key))
    return str(value)


def _tags(path: Path, data: Any) -> list[Tag]:
    tags = []
    for entry in _entries(path, data):
        name = _name(path, entry, "tag")
        where = f"tag {name}"
        check_keys(entry, TAG_KEYS, where)
        category = entry.get("category", "rule")
        if category not in CATEGORIES:
            raise FileError(
                path,
                f"{where}: category must be one of {', '.join(CATEGORIES)}, got {category!r}"
                + did_you_mean(str(category), CATEGORIES),
                entry.line_of("category"),
            )
        given = [k for k in ("when", "cases", "value") if k in entry]
        if len(given) != 1:
            raise FileError(path, f"{where}: give exactly one of when, cases or value", entry.line)
        cases: list[tuple[str, str]] = []
        for case in entry.get("cases") or []:
            if not isinstance(case, YamlMap) or set(case) != {"value", "when"}:
                raise FileError(
                    path,
                    f"{where}: each case needs a value and a when",
                    getattr(case, "line", entry.line),
                )
            cases.append((str(case["value"]), _text(path, case, "when", where)))
        if "cases" in entry and not cases:
            raise FileError(path, f"{where}: cases is empty", entry.line_of("cases"))
        tags.append(
            Tag(
                name=name,
                category=category,
                description=str(entry.get("description", "")),
                path=str(path),
                line=entry.line,
                when=_text(path, entry, "when", where) if "when" in entry else None,
                cases=tuple(cases),
                value=_text(path, entry, "value", where) if "value" in entry else None,
            )
        )
    return tags


def _segments(path: Path, data: Any) -> list[Segment]:
    segments = []
    for entry in _entries(path, data):
        name = _name(path, entry, "segment")
        check_keys(entry, ("name", "rule", "description"), f"segment {name}")
        segments.append(
            Segment(name, _text(path, entry, "rule", f"segment {name}"),
                    str(entry.get("description", "")), str(path), entry.line)
        )  # fmt: skip
    return segments
