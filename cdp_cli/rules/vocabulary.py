"""The vocabulary of rules: the columns and functions a rule may name, as SQL over one row
per customer (BASE_FROM). Tags, segments and journeys compile their rules against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from cdp_cli.errors import RuleError
from cdp_cli.features import FEATURES
from cdp_cli.predict.fields import SCORE_FIELDS, propensity_field, propensity_sql, score_sql
from cdp_cli.rules.book import RuleBook
from cdp_cli.rules.compiler import (
    CompiledRule,
    FunctionSpec,
    RuleSchema,
    compared_calls,
    compile_rule,
    parse_duration,
)
from cdp_cli.yamlfile import did_you_mean

# The rows a rule is evaluated over: one per customer.
BASE_FROM = "profiles p JOIN profile_features f ON f.one_id = p.one_id"
GOLDEN_FIELDS = {
    "one_id": "p.one_id", "name": "p.name", "gender": "p.gender", "birthday": "p.birthday",
    "city": "p.city", "known": "p.known", "first_seen": "p.first_seen", "last_seen": "p.last_seen",
    "records": "p.records",
}  # fmt: skip
# The fields holding a date ('1990-05-01') or a time ('2026-11-07T10:17:28+08:00').
DATED_FIELDS = {
    "birthday": "date",
    "first_seen": "time",
    "last_seen": "time",
    **{name: "time" for name in FEATURES if name.endswith("_at")},
}
EVENT_WINDOWS = {timedelta(days=n): f"days_{n}" for n in (30, 90, 365)}
READS = "r"  # the alias of temp.tag_reads in a tag run's evaluation
# in_segment() puts the segment's rule inside the rule that calls it. Segments that each call
# another twice would double the rule at every level (40 levels: a rule of 2**40 parts, and a
# command that never ends), so one rule may take in at most this many, nested ones counted.
MAX_INLINED_SEGMENTS = 100


class _TooManySegments(RuleError):
    """A rule takes in more segments than MAX_INLINED_SEGMENTS."""


@dataclass(frozen=True)
class Read:
    """A value per customer that tag rules read, gathered into one column of temp.tag_reads
    before their level is evaluated and joined once: a tag's value (kind 'tag', key the tag)
    or an event's count over a usual window (kind 'event', key the event, window the
    profile_event_counts column). One index lookup per customer and rule cost more."""

    column: str
    kind: str
    key: str
    window: str = ""


@dataclass
class RuleContext:
    """Builds the schema rules compile against, and notes which tags each rule reads."""

    book: RuleBook
    as_of: date
    known_tags: set[str] = field(default_factory=set)
    read_tags: set[str] = field(default_factory=set)
    _segment_stack: list[str] = field(default_factory=list)
    _inlined: int = 0  # segments taken into the rule being compiled
    # A tag run sets `joined`: tag(), has_tag() and the usual event_count() windows then read
    # columns of temp.tag_reads (see Read), and `gathered` notes the ones each rule reads.
    joined: dict[tuple[str, str, str], Read] | None = None
    gathered: set[Read] = field(default_factory=set)
    # A segment's rules run over the whole base: has_tag(), and tag() compared with text on a
    # selecting rule's and/or chain, then read the (tag, value) index once per query, as a
    # set of one_ids. Off, each customer looks its tags up: cheaper for a few customers
    # (one profile, a journey's batch), where a set would cost a read of every holder.
    whole_base: bool = False
    # The categories with a propensity score (predict.fields.predicted_categories): each adds
    # the field propensity_<category>. Known from the store; none where no store is at hand.
    predicted: frozenset[str] = frozenset()

    def schema(self) -> RuleSchema:
        fields = dict(GOLDEN_FIELDS)
        fields.update({name: f"f.{name}" for name in FEATURES})
        fields.update({name: score_sql(name) for name in SCORE_FIELDS})
        fields.update({propensity_field(c): propensity_sql(c) for c in sorted(self.predicted)})
        functions = {
            "tag": FunctionSpec(
                "tag", ("string",), self._tag_sql, self._check_tag, "string", self._tag_holds
            ),
            "has_tag": FunctionSpec(
                "has_tag", ("string",), self._has_tag_sql, self._check_tag, "boolean"
            ),
            "event_count": FunctionSpec(
                "event_count", ("string", "duration"), self._event_count_sql, None, "number"
            ),
            "in_segment": FunctionSpec(
                "in_segment",
                ("string",),
                self._segment_sql,
                self._check_segment,
                "boolean",
                self._segment_holds,
            ),
        }
        return RuleSchema(fields, functions, DATED_FIELDS)

    def compile(self, text: str, condition: bool = False) -> CompiledRule:
        """`condition`: the rule selects customers and is never read as a value (see
        compile_rule)."""
        if not self._segment_stack:
            self._inlined = 0
        return compile_rule(text, self.schema(), condition=condition)

    def _check_tag(self, args: list[Any]) -> str | None:
        name = args[0]
        names = set(self.book.tags) | self.known_tags
        if name not in names:
            return f"unknown tag {name!r}{did_you_mean(name, names)}"
        self.read_tags.add(name)
        return None

    def _read(self, kind: str, key: str, window: str = "") -> str:
        """The temp.tag_reads column a tag run gathers this value into, before the level."""
        assert self.joined is not None
        read = self.joined.setdefault(
            (kind, key, window), Read(f"c{len(self.joined)}", kind, key, window)
        )
        self.gathered.add(read)
        return f"{READS}.{read.column}"

    def _tag_sql(self, args: list[Any]) -> tuple[str, list[Any]]:
        if self.joined is not None:
            return self._read("tag", args[0]), []
        return "(SELECT t.value FROM profile_tags t WHERE t.one_id = p.one_id AND t.tag = ?)", [
            args[0]
        ]

    def _tag_holds(self, args: list[Any], texts: list[str] | None) -> tuple[str, list[Any]] | None:
        """tag('x') = 'a' or in ('a', 'b') over the whole base, where no tag and another value
        select alike (compile_rule's `condition`)."""
        if not self.whole_base or texts is None:
            return None
        marks = ", ".join("?" * len(texts))
        return (
            "p.one_id IN (SELECT t.one_id FROM profile_tags t WHERE t.tag = ? "
            f"AND t.value IN ({marks}))",
            [args[0], *texts],
        )

    def _has_tag_sql(self, args: list[Any]) -> tuple[str, list[Any]]:
        if self.joined is not None:  # a stored value is never null
            return f"{self._read('tag', args[0])} IS NOT NULL", []
        if self.whole_base:  # never null either way
            return "p.one_id IN (SELECT t.one_id FROM profile_tags t WHERE t.tag = ?)", [args[0]]
        return "EXISTS (SELECT 1 FROM profile_tags t WHERE t.one_id = p.one_id AND t.tag = ?)", [
            args[0]
        ]

    def _event_count_sql(self, args: list[Any]) -> tuple[str, list[Any]]:
        event, window = args[0], parse_duration(args[1]) if isinstance(args[1], str) else args[1]
        column = EVENT_WINDOWS.get(window)
        if column and self.joined is not None:
            return f"coalesce({self._read('event', event, column)}, 0)", []
        if column:  # the usual windows are counted once per run, in profile_event_counts
            return (
                f"coalesce((SELECT c.{column} FROM profile_event_counts c "
                "WHERE c.one_id = p.one_id AND c.event = ?), 0)",
                [event],
            )
        since = (self.as_of - window + timedelta(days=1)).isoformat()
        return (
            "(SELECT count(*) FROM events e JOIN identity_keys k ON k.key = e.identity_key "
            "WHERE k.one_id = p.one_id AND e.event = ? AND substr(e.occurred_at, 1, 10) >= ? "
            "AND substr(e.occurred_at, 1, 10) <= ?)",
            [event, since, self.as_of.isoformat()],
        )

    def _check_segment(self, args: list[Any]) -> str | None:
        name = args[0]
        if name not in self.book.segments:
            return f"unknown segment {name!r}{did_you_mean(name, self.book.segments)}"
        if name in self._segment_stack:
            return f"segment {name!r} refers to itself through {' -> '.join(self._segment_stack)}"
        return None

    def _segment_sql(self, args: list[Any]) -> tuple[str, list[Any]]:
        return self._inline(args[0], condition=False)

    def _segment_holds(
        self, args: list[Any], texts: list[str] | None
    ) -> tuple[str, list[Any]] | None:
        """in_segment() on a selecting rule's and/or chain: the segment's rule is one too."""
        return self._inline(args[0], condition=True) if texts is None else None

    def _inline(self, name: str, condition: bool) -> tuple[str, list[Any]]:
        """A segment's rule, compiled in place of in_segment('name')."""
        segment = self.book.segments[name]
        self._inlined += 1
        if self._inlined > MAX_INLINED_SEGMENTS:
            raise _TooManySegments(
                f"in_segment() takes more than {MAX_INLINED_SEGMENTS} segments into this rule, "
                "counting those they call (segments that each call another twice double at "
                "every level)"
            )
        self._segment_stack.append(segment.name)
        try:
            compiled = self.compile(segment.rule, condition)
        except _TooManySegments:
            raise  # said once, by the rule that was asked for, not once per level
        except RuleError as exc:
            raise RuleError(
                f"{segment.path}:{segment.line}: segment {segment.name}: {exc.message}"
            ) from None
        finally:
            self._segment_stack.pop()
        return f"({compiled.sql})", compiled.params


def unknown_tag_value(book: RuleBook, tag: str, value: str) -> str | None:
    """Why `tag('TAG') = 'VALUE'` can never hold (the tag never takes that value), naming the
    values it does take; None when it can, or when the tag's values are computed."""
    known = book.tags.get(tag)
    if known is None or known.values is None or value in known.values:
        return None
    suggestion = did_you_mean(value, known.values)
    return (
        f"tag {tag} never takes the value {value!r}{suggestion}; "
        f"its values: {', '.join(known.values)}"
    )


def unknown_tag_values(book: RuleBook, rule: str) -> list[str]:
    """Every tag value `rule` compares with that its tag never takes (see unknown_tag_value)."""
    found = (unknown_tag_value(book, tag, value) for tag, value in compared_calls(rule, "tag"))
    return [problem for problem in found if problem]


def rules_tag_value_warnings(book: RuleBook) -> list[str]:
    """A warning for each tag value a tag's rule compares with that its tag never takes
    (`tag('lifecycle') = 'actve'` holds for no one, without an error), naming the file, line
    and tag."""
    return [
        f"{tag.path}:{tag.line}: tag {tag.name}: {problem}"
        for tag in book.tags.values()
        for rule in tag.rules()
        for problem in unknown_tag_values(book, rule)
    ]
