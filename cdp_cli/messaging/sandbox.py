"""The bounded Jinja sandbox message templates render in, and its limits.

What a template may not do:

- see internals: Jinja's sandbox refuses attributes that start with '_' and the internal
  attributes of functions and frames, and a printed value must be text, a number or a date;
- change its data: ImmutableSandboxedEnvironment refuses append, update, pop and the like;
- run away: every call, operator, filter, loop step and printed value is metered against
  Limits (time, size of any value, text built, range() length, call depth, output per part),
  and a render that goes over fails that one message (Refused, which the store turns into a
  TemplateError naming the file and line).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import FILTERS
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from cdp_cli.messaging.filters import (
    default_name,
    format_date,
    mask_email_filter,
    mask_phone_filter,
    money,
)

# Jinja's filters that a message needs; the rest (random, pprint, urlize, xmlattr,
# filesizeformat, lipsum) make messages unrepeatable, print internals or are not for messages.
KEPT_FILTERS = (
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string",
    "striptags", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode",
    "wordcount", "wordwrap",
)  # fmt: skip
# str methods a template may call; the others (expandtabs, encode, translate) are not for
# messages, and expandtabs would let one call build gigabytes.
STR_METHODS = frozenset((
    "capitalize", "casefold", "center", "count", "endswith", "find", "format", "format_map",
    "isalnum", "isalpha", "isdigit", "islower", "isnumeric", "isspace", "istitle", "isupper",
    "join", "ljust", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "replace",
    "rfind", "rjust", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith",
    "strip", "swapcase", "title", "upper", "zfill",
))  # fmt: skip
# A printed Python object, raw or HTML-escaped: the last guard against leaking internals.
PYTHON_REPR = re.compile(
    r"(?:<|&lt;)(?:class |function |built-in |bound method |method |module |generator |"
    r"Macro |LoopContext|TemplateReference|Namespace|jinja2\.)|\bobject at 0x[0-9a-fA-F]+"
)


def printed_object(text: str) -> re.Match[str] | None:
    """Where `text` prints a Python object (PYTHON_REPR), if it does. Every match starts with
    `<` or `&lt;`, or holds `object at 0x`: a text without them, which most messages are, is
    not searched (the search took 3 s of a million SMS's rendering)."""
    if "<" not in text and "&lt;" not in text and "object at 0x" not in text:
        return None
    return PYTHON_REPR.search(text)


@dataclass(frozen=True)
class Limits:
    """How much one message may take; a template that needs more fails that one message."""

    seconds: float = 1.0  # to render every part of one message
    part_bytes: int = 64 * 1024  # rendered size of one part, in UTF-8 bytes
    value_chars: int = 64 * 1024  # any one string, list or dict a template builds
    built_chars: int = 1024 * 1024  # all values built by calls, filters and operators
    range_items: int = 10_000  # range() length
    call_depth: int = 50  # macros calling macros
    int_bits: int = 4096  # integers made by * and **
    timeouts_in_a_row: int = 5  # then the rest of the run fails the template's messages at once


class Refused(Exception):
    """A template went over a limit or asked for something templates may not do."""


TOO_NESTED = (
    "blocks or brackets nest too deeply to compile ({% if %}, {% for %} or ( ) in one another)"
)


# ---------------------------------------------------------------------------------------------
# The budget of one render, reachable from every hook of the sandbox


class Budget:
    """Time, text built and call depth used so far by the message being rendered."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.built = 0
        self.depth = 0
        self.timed_out = False

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            raise Refused(
                f"took more than {self.limits.seconds:g} s to render "
                "(a loop or recursion that is too large?)"
            )

    def check_size(self, size: int, what: str = "a value") -> None:
        if size > self.limits.value_chars:
            raise Refused(
                f"builds {what} of {size:,} characters or items, more than the "
                f"{self.limits.value_chars:,} a template may"
            )

    def built_value(self, value: Any) -> Any:
        """Count a value a call, filter or operator made; refuse one too large."""
        if isinstance(value, (str, list, tuple, dict, set, frozenset)):
            self.check_size(len(value))
            self.built += len(value)
            if self.built > self.limits.built_chars:
                raise Refused(
                    f"builds more than {self.limits.built_chars:,} characters or items in all"
                )
        return value

    def metered(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.tick()
            yield item


BUDGET: ContextVar[Budget | None] = ContextVar("cdp_template_budget", default=None)


def _budget() -> Budget:
    budget = BUDGET.get()
    if budget is None:
        # Jinja may try to evaluate constant expressions while compiling; refusing makes it
        # leave them to render time, where they are metered.
        raise Refused("template code runs only while a message is rendered")
    return budget


# ---------------------------------------------------------------------------------------------
# Checks on what templates build


def _format_size(template: str, values: Iterable[Any]) -> int:
    """An upper bound on the length of `template` % values or template.format(values)."""
    values = list(values)
    widths = sum(int(d) if len(d) <= 6 else 10**6 for d in re.findall(r"\d+", template))
    if "*" in template or re.search(r"\{[^{}]*\{", template):  # '%*s', '{:{}}': widths as values
        widths += sum(abs(v) for v in values if isinstance(v, int))
    fields = template.count("{") + template.count("%")
    longest = max((len(str(v)) for v in values), default=0)
    return len(template) + widths + fields * longest


def _format_values(args: Any) -> list[Any]:
    if isinstance(args, Mapping):
        return list(args.values())
    return list(args) if isinstance(args, tuple) else [args]


def _check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    limits = budget.limits
    sized = (str, list, tuple)
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > limits.int_bits:
                raise Refused(f"multiplies numbers larger than {limits.int_bits} bits")
        elif isinstance(left, sized) and isinstance(right, int):
            budget.check_size(len(left) * max(right, 0))
        elif isinstance(right, sized) and isinstance(left, int):
            budget.check_size(len(right) * max(left, 0))
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right > 0 and right * left.bit_length() > limits.int_bits:
            raise Refused(f"raises a number to a power larger than {limits.int_bits} bits")
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        budget.check_size(len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        budget.check_size(_format_size(left, _format_values(right)))


def _check_method(budget: Budget, func: Any, args: tuple[Any, ...]) -> None:
    """str methods: only STR_METHODS, and none that would build a value too large."""
    owner = getattr(func, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(func, "__name__", "")
    if name not in STR_METHODS:
        raise Refused(f"str.{name}() is not available in templates")
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        budget.check_size(args[0])
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        times = owner.count(old) if old else len(owner) + 1
        budget.check_size(len(owner) + times * max(len(new) - len(old), 0))
    elif name == "join" and args:
        if not hasattr(args[0], "__len__"):
            raise Refused("str.join() needs a list; write items|join(', ') instead")
        budget.check_size(len(owner) * max(len(args[0]) - 1, 0))


def _printable(value: Any) -> Any:
    """Text, a number or a date, as a message may print; None and objects are refused."""
    if isinstance(value, jinja2.Undefined):
        return value  # printing it raises Jinja's own, clearer error
    if isinstance(value, bool):
        raise Refused(f"prints {value}; print text instead, e.g. {{{{ '是' if x else '否' }}}}")
    if isinstance(value, (str, int, float, Decimal, date)):
        if isinstance(value, str):
            _budget().check_size(len(value), "text")
        return value
    if value is None:
        raise Refused(
            "prints None (the customer has no such value); give a fallback, "
            "e.g. {{ customer.city or '您所在的城市' }}"
        )
    if isinstance(value, Mapping):
        kind = "a mapping"
    elif isinstance(value, (list, tuple, set)):
        kind = "a list"
    else:
        kind = "a Python object"
    raise Refused(f"prints {kind}; print one of its values instead")


@jinja2.pass_context
def _finalize(context: Context, value: Any) -> Any:
    """Every {{ }}: printable, and in .json templates escaped for use inside a JSON string."""
    _budget().tick()
    value = _printable(value)
    if context.name and context.name.endswith(".json") and not isinstance(value, Markup):
        return json.dumps(str(value), ensure_ascii=False)[1:-1]  # tojson's Markup is JSON
    return value


# ---------------------------------------------------------------------------------------------
# The sandbox


class _Meter(NodeTransformer):
    """Puts a budget check on every loop step and every `~` join of a template."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter_node(node.iter, "_metered")
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [_filter_node(part, "_printable") for part in node.nodes]
        return _filter_node(node, "_checked")


def _filter_node(node: nodes.Node, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _MeteredCode(CodeGenerator):
    """Jinja's code generator, after _Meter: a loop over a ready list runs no sandbox hook."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Meter().visit(node)
        super().visit_Template(node, frame)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with every call and size-changing operator metered."""

    code_generator_class = _MeteredCode
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        _check_method(budget, obj, args)
        if budget.depth >= budget.limits.call_depth:
            raise Refused(
                f"calls nest more than {budget.limits.call_depth} deep (a macro calling itself?)"
            )
        budget.depth += 1
        try:
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return budget.built_value(result)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        _check_binop(budget, operator, left, right)
        return budget.built_value(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template, is_map = value.__self__, value.__name__ == "format_map"

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            values = _format_values(args[0]) if is_map and args else [*args, *kwargs.values()]
            _budget().check_size(_format_size(template, values))
            return wrapped(*args, **kwargs)

        return bounded_format


class RootLoader(jinja2.FileSystemLoader):
    """Loads templates from one folder and nothing outside it, symlinks included."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), encoding="utf-8")
        self.root = root.resolve()
        self.served: set[str] = set()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        problem = name_problem(template)
        if problem:
            raise Refused(f"template name {template!r} {problem}")
        source, filename, uptodate = super().get_source(environment, template)
        if filename is None or not Path(filename).resolve().is_relative_to(self.root):
            raise Refused(f"template {template!r} is outside the templates folder")
        self.served.add(filename)
        return source, filename, uptodate


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a file inside the templates folder, or None when it can."""
    if "\\" in name:
        return "contains a backslash; write paths with /"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        return "is an absolute path; name templates relative to the templates folder"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the templates folder with '..'"
    return None


# ---------------------------------------------------------------------------------------------
# Jinja's filters, bounded, and ours


def _bounded(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    """Jinja's filter `name`, after `check` has seen its arguments."""
    original = FILTERS[name]

    @functools.wraps(original)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(_budget(), *_filter_args(original, args), **kwargs)
        return original(*args, **kwargs)

    return bounded


def _filter_args(original: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The filter's own arguments, without the context Jinja passes to some filters first."""
    return args[1:] if getattr(original, "jinja_pass_arg", None) else args


def _check_center(budget: Budget, value: Any, width: int = 80) -> None:
    budget.check_size(width if isinstance(width, int) else 0)


def _check_indent(
    budget: Budget, s: Any, width: Any = 4, first: bool = False, blank: bool = False
) -> None:
    prefix = width if isinstance(width, int) else len(str(width))
    lines = str(s).count("\n") + 1
    budget.check_size(len(str(s)) + lines * prefix)


def _check_wordwrap(
    budget: Budget,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> None:
    text = str(s)
    breaks = len(text) // max(width if isinstance(width, int) else 1, 1) + text.count("\n") + 1
    budget.check_size(len(text) + breaks * len(str(wrapstring or "\n")))


def _check_replace(budget: Budget, s: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old, new = str(s), str(old), str(new)
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int):
        times = min(times, max(count, 0))
    budget.check_size(len(text) + times * max(len(new) - len(old), 0))


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    """Jinja's join, refusing a separator repeated into a value too large."""
    items = list(value)
    _budget().check_size(len(str(d)) * max(len(items) - 1, 0))
    return FILTERS["join"](eval_ctx, items, d, attribute)


def _check_format(budget: Budget, value: Any, *args: Any, **kwargs: Any) -> None:
    budget.check_size(_format_size(str(value), [*args, *kwargs.values()]))


def _check_tojson(budget: Budget, value: Any, indent: Any = None) -> None:
    if isinstance(indent, int) and indent > 8:
        raise Refused("tojson: indent at most 8")


def _check_batch(budget: Budget, value: Any, linecount: Any, fill_with: Any = None) -> None:
    budget.check_size(linecount if isinstance(linecount, int) else 0)


def _check_slice(budget: Budget, value: Any, slices: Any, fill_with: Any = None) -> None:
    budget.check_size(slices if isinstance(slices, int) else 0)


def _metered(iterable: Any) -> Iterator[Any]:
    return _budget().metered(iterable)


def _checked(value: Any) -> Any:
    return _budget().built_value(value)


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that ticks the budget and counts what it builds."""

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes the context
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        return budget.built_value(func(*args, **kwargs))

    return guarded


def _remembered(func: Callable[..., str]) -> Callable[..., str]:
    """A pure filter whose answers are kept: a run formats the same coupon value and expiry
    date for every customer. Unhashable arguments are simply not remembered."""
    remembered = functools.lru_cache(maxsize=1024, typed=True)(func)  # True is not 1

    @functools.wraps(func)
    def filter_(*args: Any, **kwargs: Any) -> str:
        try:
            return remembered(*args, **kwargs)
        except TypeError as exc:
            if "unhashable" not in str(exc):
                raise
            return func(*args, **kwargs)

    return filter_


def _filters() -> dict[str, Callable[..., Any]]:
    filters: dict[str, Callable[..., Any]] = {name: FILTERS[name] for name in KEPT_FILTERS}
    checks: dict[str, Callable[..., None]] = {
        "center": _check_center, "indent": _check_indent, "wordwrap": _check_wordwrap,
        "replace": _check_replace, "format": _check_format,
        "tojson": _check_tojson, "batch": _check_batch, "slice": _check_slice,
    }  # fmt: skip
    filters.update({name: _bounded(name, check) for name, check in checks.items()})
    filters.update(
        join=_join, money=_remembered(money), date=_remembered(format_date),
        default_name=default_name,
        mask_phone=mask_phone_filter, mask_email=mask_email_filter,
    )  # fmt: skip
    guarded = {name: _guarded(func) for name, func in filters.items()}
    # Inserted by _Meter, not written by people.
    guarded.update(_metered=_metered, _printable=_printable, _checked=_checked)
    return guarded


def _range(*args: int) -> range:
    budget = _budget()
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = budget.limits.range_items + 1
    if size > budget.limits.range_items:
        raise Refused(
            f"range() of {size:,} numbers; a template may use at most {budget.limits.range_items:,}"
        )
    return numbers


def environment(loader: RootLoader) -> _Sandbox:
    env = _Sandbox(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=lambda name: bool(name) and name.endswith(".html"),
        finalize=_finalize,
        optimized=False,  # no constant folding: template code runs only when rendered
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # a store lives for one command: no stat of every file per render
    )
    env.filters = _filters()
    env.globals = {
        "range": _range,
        "dict": dict,
        "cycler": jinja2.utils.Cycler,
        "joiner": jinja2.utils.Joiner,
        "namespace": jinja2.utils.Namespace,
    }
    return env
