"""The rule language: one expression syntax for tags, segments and journey conditions.

A rule is SQL expression syntax, parsed by sqlglot and then walked node by node here: only the
constructs this module names are accepted, and every literal becomes a `?` parameter. The SQL
that comes out therefore holds nothing a user typed; only the schema's field expressions and
function templates, operators and placeholders. It runs the same on SQLite and DuckDB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from cdp_cli.errors import RuleError
from cdp_cli.rules.dates import dated_value_problem
from cdp_cli.yamlfile import did_you_mean

MAX_LENGTH = 10_000
MAX_DEPTH = 50
DIALECTS = ("sqlite", "duckdb")
ARG_KINDS = ("string", "number", "duration")
BUILTINS = ("coalesce", "lower", "upper", "abs", "round")

# One grammar whatever engine runs the result: rules mean the same everywhere.
_READER = Dialect.get_or_raise("sqlite")
_INT64_MAX = 2**63 - 1
_DURATION = re.compile(r"([0-9]{1,9})([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PLAIN_SQL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
}  # fmt: skip
_ARITHMETIC: dict[type[exp.Expr], str] = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*"}
# Nodes that do not count as a level of nesting: names and values.
_LEAVES = (exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null)
_ARG_WORDS = {
    "string": "a quoted string",
    "number": "a number",
    "duration": "a duration, as in '30d'",
}
_NOT_LITERAL = object()
_BUILTIN_CALLS = (exp.Coalesce, exp.Lower, exp.Upper, exp.Abs, exp.Round)
_TOO_DEEP = f"rule is nested too deeply (more than {MAX_DEPTH} levels)"


@dataclass(frozen=True)
class FunctionSpec:
    """A function a rule may call: its argument kinds and how it becomes SQL."""

    name: str
    args: tuple[str, ...]  # each "string", "number" or "duration" ('30d', '12h', '2w'); literals
    # The literal arguments (str, int or float, timedelta) -> (SQL snippet with ?, params).
    to_sql: Callable[[list[Any]], tuple[str, list[Any]]]
    # The literal arguments -> an error message (e.g. "unknown tag 'x'") or None.
    check: Callable[[list[Any]], str | None] | None = None
    returns: str = "any"  # "boolean", "number", "string", "any" (for docs and error messages)
    # For a rule that selects rows (compile_rule's `condition`), a call on the rule's own
    # and/or chain, where false and null select alike: the literal arguments and the quoted
    # strings the call is compared with (`= 'a'`, `in ('a', 'b')`; None when it stands
    # alone) -> SQL that holds for the same rows (a set the planner can take from an index),
    # or None to compile as usual.
    holds: Callable[[list[Any], list[str] | None], tuple[str, list[Any]] | None] | None = None

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.args if kind not in ARG_KINDS]
        if unknown:
            raise ValueError(f"function {self.name}: unknown argument kind {unknown[0]!r}")


@dataclass(frozen=True)
class RuleSchema:
    """What rules may refer to: field name -> SQL expression, and the functions."""

    fields: dict[str, str]
    functions: dict[str, FunctionSpec]
    # The fields holding a date or a time: name -> "date" or "time". The quoted values they
    # are compared with are checked (rules/dates.py).
    dated: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CompiledRule:
    """A rule turned into a SQL expression, with what it reads."""

    text: str
    sql: str  # a SQL expression with ? placeholders
    params: list[Any]
    fields: frozenset[str]  # the fields it reads
    calls: frozenset[str]  # the schema's functions it calls


def compile_rule(
    text: str, schema: RuleSchema, dialect: str = "sqlite", condition: bool = False
) -> CompiledRule:
    """Check a rule against the schema and turn it into SQL for `dialect`; else RuleError.

    `condition`: the rule only selects rows (a WHERE), it is never read as a value, so the
    calls on its own and/or chain may compile by their function's `holds`."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    if len(text) > MAX_LENGTH:
        raise RuleError(
            f"rule is too long ({len(text)} characters; the limit is {MAX_LENGTH})", rule=text
        )
    tree = _parse(text)
    if _too_deep(tree):
        raise RuleError(_TOO_DEEP, rule=text)
    compiler = _Compiler(text, schema, dialect)
    part = compiler.compile(tree, holds=condition)
    return CompiledRule(
        text, part.sql, part.params, frozenset(compiler.fields), frozenset(compiler.calls)
    )


def compared_calls(text: str, function: str) -> list[tuple[str, str]]:
    """Each `function('a') = 'b'` in a rule (or `<>`, either side, or `in ('b', 'c')`) as
    ('a', 'b'): the text a rule compares a call's result with, for a check that knows the
    values the call can give (a tag's values). A rule that does not parse gives none."""
    try:
        tree = _parse(text)
    except RuleError:
        return []
    found = []
    for node in tree.find_all(exp.EQ, exp.NEQ, exp.In):
        if isinstance(node, exp.In):
            pairs = [(node.this, value) for value in node.expressions]
        else:
            pairs = [(node.this, node.expression), (node.expression, node.this)]
        for call, value in pairs:
            argument = _text_argument(call, function)
            if argument is not None and isinstance(value, exp.Literal) and value.is_string:
                found.append((argument, str(value.this)))
    return found


def _text_argument(node: exp.Expr, function: str) -> str | None:
    """'a' when `node` is `function('a')`, else None."""
    if not (isinstance(node, exp.Anonymous) and node.name.lower() == function):
        return None
    args = node.expressions
    if len(args) == 1 and isinstance(args[0], exp.Literal) and args[0].is_string:
        return str(args[0].this)
    return None


MAX_DURATION = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '2w' or '90m' (minutes) as a timedelta; RuleError otherwise."""
    match = _DURATION.fullmatch(text)
    if not match or int(match[1]) == 0:
        raise RuleError(
            f"invalid duration {text!r}: expected a whole number above 0 and a unit "
            "(m minutes, h hours, d days, w weeks), as in '30d'"
        )
    try:
        duration: timedelta | None = timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])})
    except OverflowError:  # past timedelta's own bound
        duration = None
    if duration is None or duration > MAX_DURATION:  # what a window or a wait reaches: a date
        raise RuleError(f"invalid duration {text!r}: too long (at most 100 years, 36500d)")
    return duration


# What a Chinese input method or a programmer's habit puts into a rule in place of the rule
# language's own characters, outside a quoted value: what to write instead.
LOOKALIKES = {
    "“": "'", "”": "'", "‘": "'", "’": "'", "＂": "'", "＇": "'",
    "≥": ">=", "≤": "<=", "≠": "!=", "＝": "=", "＞": ">", "＜": "<", "！": "!",
    "（": "(", "）": ")", "，": ",", "&&": "and",
}  # fmt: skip


def _check_lookalikes(text: str) -> None:
    """Refuse, naming the column and what to write, a character of LOOKALIKES outside a
    quoted value: the parser would report the text after it, or read “北京” as a field."""
    quoted = False
    for offset, char in enumerate(text):
        if char == "'":
            quoted = not quoted  # '' inside a value closes and reopens: the same here
            continue
        pair = text[offset : offset + 2]
        found = pair if pair in LOOKALIKES else char if char in LOOKALIKES else None
        if found and not quoted:
            raise RuleError(
                f"syntax error at {_where(text, offset)}: {found!r} is not part of the rule "
                f"language; write {LOOKALIKES[found]!r}",
                offset + 1,
                text,
            )


def _parse(text: str) -> exp.Expr:
    """One expression tree from the text; syntax errors name the column."""
    try:
        _check_lookalikes(text)
        tokens = _READER.tokenize(text)
        _check_tokens(text, tokens)
        trees = _READER.parser().parse(tokens, text)
    except TokenError:
        raise _token_error(text) from None
    except ParseError as exc:
        raise _parse_error(text, exc) from None
    except RecursionError:
        # sqlglot parses nesting by recursion; thousands of `(` or `not` exhaust the stack.
        raise RuleError(_TOO_DEEP, rule=text) from None
    if not trees or trees[0] is None:
        raise RuleError("rule is empty", rule=text)
    return trees[0]


def _check_tokens(text: str, tokens: list[Token]) -> None:
    """Refuse what the parser would quietly accept: a second statement, comments."""
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            raise RuleError(
                f"syntax error at {_where(text, token.start)}: unexpected ';' "
                "(a rule is a single expression)",
                token.start + 1,
                text,
            )
        if token.comments:
            raise RuleError("comments are not allowed in a rule", token.start + 1, text)


def _token_error(text: str) -> RuleError:
    quote = _unclosed_quote(text)
    if quote is None:
        return RuleError("syntax error: cannot read the rule", rule=text)
    return RuleError(f"syntax error at {_where(text, quote)}: unclosed quote", quote + 1, text)


def _unclosed_quote(text: str) -> int | None:
    """Where a quote that is never closed opens ('' inside a string closes and reopens)."""
    opened: int | None = None
    quote = ""
    for i, char in enumerate(text):
        if opened is None and char in "'\"`":
            opened, quote = i, char
        elif opened is not None and char == quote:
            opened = None
    return opened


def _parse_error(text: str, exc: ParseError) -> RuleError:
    if not exc.errors:
        return RuleError(f"syntax error: {str(exc).splitlines()[0]}", rule=text)
    error = exc.errors[0]
    description = str(error.get("description") or "")
    highlight = str(error.get("highlight") or "")
    if description.startswith("Invalid expression / Unexpected token"):
        what = f"unexpected {highlight!r}"
    elif description.startswith("Expecting )"):
        what = "missing ')'"
    elif description.startswith("Required keyword"):
        what = f"incomplete expression at {highlight!r}"
    elif description.startswith("The number of provided arguments"):
        what = "too many arguments"
    else:
        what = description[:1].lower() + description[1:]
    line, col = error.get("line"), error.get("col")
    if not line or not col:
        return RuleError(f"syntax error: {what}", rule=text)
    offset = _offset(text, line, col - len(highlight))
    return RuleError(f"syntax error at {_where(text, offset)}: {what}", offset + 1, text)


def _offset(text: str, line: int, column: int) -> int:
    """The 0-based position of a 1-based line and 0-based column."""
    start = sum(len(earlier) + 1 for earlier in text.split("\n")[: line - 1])
    return max(0, min(len(text), start + column))


def _where(text: str, offset: int) -> str:
    """'column 7', or 'line 2, column 3' for a rule written on several lines."""
    newline = "\n"
    column = offset - text.rfind(newline, 0, offset)
    if newline not in text:
        return f"column {column}"
    return f"line {text.count(newline, 0, offset) + 1}, column {column}"


def _too_deep(tree: exp.Expr) -> bool:
    """Whether a rule nests deeper than MAX_DEPTH; `a or b or c` counts once however long.

    Measured without recursion, so that the recursive walk after it stays shallow.
    """
    stack = [(tree, 0 if isinstance(tree, _LEAVES) else 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        for child in node.iter_expressions():
            chained = isinstance(node, (exp.And, exp.Or)) and type(child) is type(node)
            flat = isinstance(child, _LEAVES) or (chained and child is node.this)
            stack.append((child, depth if flat else depth + 1))
    return False


@dataclass
class _Part:
    """Compiled SQL for one node: self-delimiting text, its parameters, and its kind."""

    sql: str
    params: list[Any]
    kind: str = "any"


class _Compiler:
    """Walks a parsed rule and emits SQL, refusing every node it does not know."""

    def __init__(self, text: str, schema: RuleSchema, dialect: str) -> None:
        self.text = text
        self.schema = schema
        self.dialect = dialect
        self.fields: set[str] = set()
        self.calls: set[str] = set()

    def fail(self, message: str, node: exp.Expr | None = None) -> RuleError:
        start = _start(node) if node is not None else None
        # Messages quote what the user wrote, which may span lines; errors are one line.
        one_line = " ".join(message.splitlines())
        return RuleError(one_line, None if start is None else start + 1, self.text)

    def compile(self, node: exp.Expr, holds: bool = False) -> _Part:
        """`holds`: the node is on a selecting rule's own and/or chain (not under not, a
        comparison or a case), where false and null select alike."""
        if isinstance(node, exp.Paren):
            return self.compile(node.this, holds)
        if isinstance(node, (exp.Query, exp.Exists)):
            raise self.fail("subqueries are not allowed in a rule", node)
        if isinstance(node, (exp.And, exp.Or)):
            return self.connective(node, holds)
        held = self.holding(node) if holds else None
        if held is not None:
            return held
        if isinstance(node, exp.Not):
            inner = self.condition(node.this)
            return _Part(f"(NOT {inner.sql})", inner.params, "boolean")
        if type(node) in _COMPARISONS:
            return self.comparison(node)
        if type(node) in _ARITHMETIC or isinstance(node, exp.Div):
            return self.arithmetic(node)
        if isinstance(node, exp.Neg):
            return self.negation(node)
        if isinstance(node, exp.In):
            return self.in_list(node)
        if isinstance(node, exp.Between):
            return self.between(node)
        if isinstance(node, (exp.Is, exp.NullSafeEQ)):
            return self.is_null(node)
        if isinstance(node, exp.Like):
            return self.like(node)
        if isinstance(node, exp.Case):
            return self.case(node)
        if isinstance(node, exp.Column):
            return self.field(node)
        if isinstance(node, (exp.Literal, exp.Boolean, exp.Null)):
            value = self.literal(node)
            return _Part("?", [value], _kind_of(value))
        if isinstance(node, exp.Func) and "start" in node.meta:
            return self.call(node)
        raise self.refuse(node)

    def refuse(self, node: exp.Expr) -> RuleError:
        if isinstance(node, exp.Alias):
            alias = node.args.get("alias")
            offset = _start(alias) if alias is not None else None
            where = f" at {_where(self.text, offset)}" if offset is not None else ""
            return RuleError(
                f"syntax error{where}: unexpected {node.alias!r}",
                None if offset is None else offset + 1,
                self.text,
            )
        if isinstance(node, exp.Star):
            return self.fail("'*' is not allowed in a rule", node)
        if isinstance(node, exp.DPipe):
            return self.fail("'||' is not allowed in a rule", node)
        if isinstance(node, (exp.Placeholder, exp.Parameter)):
            return self.fail("parameters are not allowed in a rule; write the value itself", node)
        return self.fail(f"not allowed in a rule: {_snippet(node)}", node)

    def condition(self, node: exp.Expr, holds: bool = False) -> _Part:
        """An operand of and/or/not or a WHEN: anything but text, which DuckDB cannot test."""
        part = self.compile(node, holds)
        if part.kind == "string":
            snippet = _snippet(node)
            raise self.fail(
                f"{snippet} is text, not a condition; compare it, as in {snippet} = '...'", node
            )
        return part

    def connective(self, node: exp.Expr, holds: bool = False) -> _Part:
        op = "AND" if isinstance(node, exp.And) else "OR"
        parts = [self.condition(operand, holds) for operand in _chain(node)]
        return _Part(_balanced(op, [p.sql for p in parts]), _params(parts), "boolean")

    def comparison(self, node: exp.Expr) -> _Part:
        if type(node.this) in _COMPARISONS:
            raise self.fail(
                "comparisons cannot be chained; join them with and, as in 1 < x and x < 5", node
            )
        left, right = self.compile(node.this), self.compile(node.expression)
        equal = isinstance(node, exp.EQ)
        self.dated_values(node.this, [node.expression], equal)
        self.dated_values(node.expression, [node.this], equal)
        sql = f"({left.sql} {_COMPARISONS[type(node)]} {right.sql})"
        return _Part(sql, _params([left, right]), "boolean")

    def dated_values(self, operand: exp.Expr, values: list[exp.Expr], equal: bool = False) -> None:
        """Quoted values compared with a date or time field are written as the store writes
        them (rules/dates.py): text compares character by character. `equal`: = or in."""
        if not isinstance(operand, exp.Column) or operand.name not in self.schema.dated:
            return
        kind = self.schema.dated[operand.name]
        for value in values:
            if isinstance(value, exp.Literal) and value.is_string:
                problem = dated_value_problem(value.this, operand.name, kind, equal)
                if problem:
                    raise self.fail(f"'{value.this}' {problem}", value)

    def arithmetic(self, node: exp.Expr) -> _Part:
        left, right = self.number(node.this), self.number(node.expression)
        params = _params([left, right])
        if type(node) in _ARITHMETIC:
            return _Part(f"({left.sql} {_ARITHMETIC[type(node)]} {right.sql})", params, "number")
        # SQLite divides whole numbers to a whole number and DuckDB to a fraction; DuckDB's
        # x / 0 is infinity and SQLite's NULL. A marketer means a fraction, and NULL.
        if self.dialect == "sqlite":
            return _Part(f"(CAST({left.sql} AS REAL) / NULLIF({right.sql}, 0))", params, "number")
        return _Part(f"({left.sql} / NULLIF({right.sql}, 0))", params, "number")

    def number(self, node: exp.Expr) -> _Part:
        part = self.compile(node)
        if part.kind == "string":
            raise self.fail(f"cannot do arithmetic on text: {_snippet(node)}", node)
        return part

    def negation(self, node: exp.Neg) -> _Part:
        value = self.literal_value(node)
        if value is not _NOT_LITERAL:
            return _Part("?", [value], "number")
        inner = self.number(node.this)
        return _Part(f"(-{inner.sql})", inner.params, "number")

    def in_list(self, node: exp.In) -> _Part:
        if node.args.get("query") is not None:
            raise self.fail("subqueries are not allowed in a rule", node)
        if node.args.get("unnest") is not None or node.args.get("field") is not None:
            raise self.refuse(node)
        if not node.expressions:
            raise self.fail("in () needs at least one value", node)
        left = self.compile(node.this)
        values = []
        for item in node.expressions:
            value = self.literal_value(item)
            if value is _NOT_LITERAL:
                raise self.fail(
                    "in (...) takes a list of values, as in city in ('武汉', '北京')", item
                )
            values.append(value)
        self.dated_values(node.this, node.expressions, equal=True)
        marks = ", ".join(["?"] * len(values))
        return _Part(f"({left.sql} IN ({marks}))", left.params + values, "boolean")

    def between(self, node: exp.Between) -> _Part:
        if node.args.get("symmetric"):
            raise self.refuse(node)
        parts = [self.compile(node.this), self.compile(node.args["low"])]
        parts.append(self.compile(node.args["high"]))
        self.dated_values(node.this, [node.args["low"], node.args["high"]])
        value, low, high = (p.sql for p in parts)
        return _Part(f"({value} BETWEEN {low} AND {high})", _params(parts), "boolean")

    def is_null(self, node: exp.Expr) -> _Part:
        # sqlglot reads `x is 'a'` (and `<=>`) as a null-safe comparison: refused alike.
        if not isinstance(node, exp.Is) or not isinstance(node.expression, exp.Null):
            raise self.fail("'is' only tests for null: write x is null or x is not null", node)
        inner = self.compile(node.this)
        test = "IS NOT NULL" if node.args.get("negate") else "IS NULL"
        return _Part(f"({inner.sql} {test})", inner.params, "boolean")

    def like(self, node: exp.Like) -> _Part:
        left, right = self.compile(node.this), self.compile(node.expression)
        # SQLite's LIKE ignores the case of ASCII letters, DuckDB's does not; ILIKE does.
        op = "LIKE" if self.dialect == "sqlite" else "ILIKE"
        if node.args.get("negate"):
            op = f"NOT {op}"
        return _Part(f"({left.sql} {op} {right.sql})", _params([left, right]), "boolean")

    def case(self, node: exp.Case) -> _Part:
        parts: list[_Part] = []
        sql = "CASE"
        if node.this is not None:
            parts.append(self.compile(node.this))
            sql += f" {parts[-1].sql}"
        for when in node.args.get("ifs") or []:
            if not isinstance(when, exp.If) or when.args.get("false") is not None:
                raise self.refuse(when)
            test = self.compile(when.this) if node.this is not None else self.condition(when.this)
            then = self.compile(when.args["true"])
            parts += [test, then]
            sql += f" WHEN {test.sql} THEN {then.sql}"
        default = node.args.get("default")
        if default is not None:
            parts.append(self.compile(default))
            sql += f" ELSE {parts[-1].sql}"
        return _Part(f"{sql} END", _params(parts))

    def field(self, node: exp.Column) -> _Part:
        if isinstance(node.this, exp.Star):
            raise self.refuse(node.this)
        name = ".".join(part.name for part in node.parts)
        if node.args.get("table") is not None:
            raise self.fail(
                f"qualified name {name!r} is not allowed; write the field name alone", node
            )
        if not isinstance(node.this, exp.Identifier):
            raise self.refuse(node)
        if node.this.quoted:
            written = _source(self.text, node.this)
            if name in self.schema.fields:
                raise self.fail(f"write field names without quotes: {name}, not {written}", node)
            raise self.fail(f"{written} is not a field; text goes in single quotes: '{name}'", node)
        if name not in self.schema.fields:
            if name.lower() in self.schema.functions:
                raise self.fail(f"{name} is a function; call it as {name}(...)", node)
            suggestion = did_you_mean(name, self.schema.fields)
            raise self.fail(f"unknown field {name!r}{suggestion}", node)
        self.fields.add(name)
        return _Part(_atom(self.schema.fields[name]), [])

    def holding(self, node: exp.Expr) -> _Part | None:
        """A call on a selecting rule's and/or chain, alone or compared with quoted strings,
        as its function's `holds` SQL; None when it has none (then it compiles as usual)."""
        compared = _compared_with_text(node)
        call, texts = compared if compared else (node, None)
        if not (isinstance(call, exp.Func) and "start" in call.meta) or isinstance(
            call, _BUILTIN_CALLS
        ):
            return None
        spec = self.schema.functions.get(_call_name(self.text, call).lower())
        if spec is None or spec.holds is None:
            return None
        held = spec.holds(self.schema_call(call)[1], texts)
        if held is None:
            return None
        self.calls.add(spec.name)
        return _Part(_atom(held[0]), list(held[1]), "boolean")

    def call(self, node: exp.Func) -> _Part:
        if isinstance(node, _BUILTIN_CALLS):
            return self.builtin(node)
        spec, values = self.schema_call(node)
        sql, params = spec.to_sql(values)
        self.calls.add(spec.name)
        return _Part(_atom(sql), list(params), spec.returns)

    def schema_call(self, node: exp.Func) -> tuple[FunctionSpec, list[Any]]:
        """A call of a schema function, checked: the function and its literal arguments."""
        name = _call_name(self.text, node)
        spec = self.schema.functions.get(name.lower())
        if spec is None:
            known = [*self.schema.functions, *BUILTINS]
            raise self.fail(f"unknown function {name!r}{did_you_mean(name.lower(), known)}", node)
        args = node.expressions if isinstance(node, exp.Anonymous) else _func_args(node)
        if len(args) != len(spec.args):
            raise self.fail(_arity(spec, len(args)), node)
        values = [
            self.argument(spec, i, kind, arg)
            for i, (kind, arg) in enumerate(zip(spec.args, args, strict=True), 1)
        ]
        problem = spec.check(values) if spec.check else None
        if problem:
            raise self.fail(problem, node)
        return spec, values

    def builtin(self, node: exp.Func) -> _Part:
        if isinstance(node, exp.Coalesce):
            parts = [self.compile(arg) for arg in [node.this, *node.expressions]]
            kinds = [p.kind for p in parts if p.kind != "any"]
            sql = ", ".join(p.sql for p in parts)
            return _Part(f"coalesce({sql})", _params(parts), kinds[0] if kinds else "any")
        if isinstance(node, exp.Round):
            if node.args.get("truncate") is not None:
                raise self.fail("round() takes 1 or 2 arguments", node)
            parts = [self.number(node.this)]
            if node.args.get("decimals") is not None:
                parts.append(self.number(node.args["decimals"]))
            return _Part(f"round({', '.join(p.sql for p in parts)})", _params(parts), "number")
        if isinstance(node, exp.Abs):
            inner = self.number(node.this)
            return _Part(f"abs({inner.sql})", inner.params, "number")
        function = "lower" if isinstance(node, exp.Lower) else "upper"
        inner = self.compile(node.this)
        return _Part(f"{function}({inner.sql})", inner.params, "string")

    def argument(self, spec: FunctionSpec, position: int, kind: str, node: exp.Expr) -> Any:
        """A literal argument of a schema function, as the kind it declares."""
        value = self.literal_value(node)
        if kind == "string" and isinstance(value, str):
            return value
        if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if kind == "duration" and isinstance(value, str):
            try:
                return parse_duration(value)
            except RuleError as exc:
                raise self.fail(f"{spec.name}() argument {position}: {exc.message}", node) from None
        words = _ARG_WORDS[kind]
        if kind == "string":
            example = node.name if isinstance(node, exp.Column) else "vip"
            words += f", as in '{example}'"
        raise self.fail(f"{spec.name}() argument {position} must be {words}", node)

    def literal(self, node: exp.Expr) -> Any:
        value = self.literal_value(node)
        if value is _NOT_LITERAL:
            raise self.refuse(node)
        return value

    def literal_value(self, node: exp.Expr) -> Any:
        """The Python value of a literal (a string, number, true/false, null, -number)."""
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Neg):
            inner = node.this
            if isinstance(inner, exp.Literal) and not inner.is_string:
                return -self.number_value(inner)
            return _NOT_LITERAL
        if isinstance(node, exp.Literal):
            return node.this if node.is_string else self.number_value(node)
        return _NOT_LITERAL

    def number_value(self, node: exp.Literal) -> int | float:
        text = node.this
        if text.isdigit() and text.isascii():
            value = int(text)
            if value > _INT64_MAX:
                raise self.fail(f"number too large: {text}", node)
            return value
        try:
            number = float(text)
        except ValueError:
            raise self.fail(f"invalid number: {text}", node) from None
        if not math.isfinite(number):
            raise self.fail(f"number too large: {text}", node)
        return number


def _call_name(text: str, node: exp.Func) -> str:
    """The name a call was written with."""
    return node.name if isinstance(node, exp.Anonymous) else _source(text, node)


def _compared_with_text(node: exp.Expr) -> tuple[exp.Expr, list[str]] | None:
    """(x, ['a']) for `x = 'a'` or `'a' = x`, (x, ['a', 'b']) for `x in ('a', 'b')`: an
    expression compared with quoted strings only; else None."""
    if isinstance(node, exp.EQ):
        for side, other in ((node.this, node.expression), (node.expression, node.this)):
            if _is_text(other):
                return side, [other.this]
        return None
    if not isinstance(node, exp.In) or not node.expressions:
        return None
    plain = not any(node.args.get(key) is not None for key in ("query", "unnest", "field"))
    if plain and all(_is_text(item) for item in node.expressions):
        return node.this, [item.this for item in node.expressions]
    return None


def _is_text(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal) and node.is_string


def _chain(node: exp.Expr) -> list[exp.Expr]:
    """The operands of `a or b or c`, left to right, without recursing down the chain."""
    operands = []
    kind = type(node)
    while type(node) is kind:
        operands.append(node.expression)
        node = node.this
    operands.append(node)
    return operands[::-1]


def _balanced(op: str, parts: list[str]) -> str:
    """Join with `op` as a balanced tree: SQLite refuses expressions deeper than 1000."""
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_balanced(op, parts[:middle])} {op} {_balanced(op, parts[middle:])})"


def _params(parts: list[_Part]) -> list[Any]:
    return [value for part in parts for value in part.params]


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "any"


def _atom(sql: str) -> str:
    """Schema SQL as one operand: a plain (dotted) name as it is, anything else in brackets."""
    return sql if _PLAIN_SQL.fullmatch(sql) else f"({sql})"


def _start(node: exp.Expr) -> int | None:
    """Where a node starts in the rule (0-based), from the positions sqlglot keeps."""
    starts = [n.meta["start"] for n in node.walk() if "start" in n.meta]
    return min(starts) if starts else None


def _source(text: str, node: exp.Expr) -> str:
    """The text a node was written as, for names and quoted identifiers."""
    return text[node.meta["start"] : node.meta["end"] + 1] if "start" in node.meta else node.name


def _snippet(node: exp.Expr) -> str:
    """A node written back out, short enough for a one-line message."""
    text = node.sql(dialect="sqlite", normalize_functions="lower")
    return text if len(text) <= 60 else text[:57] + "..."


def _func_args(node: exp.Func) -> list[exp.Expr]:
    """A call's arguments in order, for a schema function whose name sqlglot also knows
    (it parses `left(...)` or `date(...)` into its own node types rather than Anonymous)."""
    args: list[exp.Expr] = []
    for key in type(node).arg_types:
        value = node.args.get(key)
        values = value if isinstance(value, list) else [value]
        args += [v for v in values if isinstance(v, exp.Expr)]
    return args


def _arity(spec: FunctionSpec, given: int) -> str:
    if not spec.args:
        return f"{spec.name}() takes no arguments, got {given}"
    count = f"{len(spec.args)} argument{'s' if len(spec.args) != 1 else ''}"
    return f"{spec.name}() takes {count} ({', '.join(spec.args)}), got {given}"
