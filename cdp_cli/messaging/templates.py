"""Message templates: Jinja files under templates/<channel>/, rendered in a bounded sandbox.

Journeys render one message per customer per send step with TemplateStore.render, which
renders every part of the template (Channel.parts) and builds the channel's payload. What a
template may not do:

- see internals: Jinja's sandbox refuses attributes that start with '_' and the internal
  attributes of functions and frames, and a printed value must be text, a number or a date;
- change its data: ImmutableSandboxedEnvironment refuses append, update, pop and the like;
- run away: every call, operator, filter, loop step and printed value is metered against
  Limits (time, size of any value, text built, range() length, call depth, output per part),
  and a render that goes over fails that one message with a TemplateError.

Every error names the template file and, when Jinja knows it, the line.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
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

from cdp_cli.errors import TemplateError
from cdp_cli.messaging import channels
from cdp_cli.messaging.channels import CHANNEL_NAMES, CHANNELS, Outbound, Rendered
from cdp_cli.privacy import mask_email, mask_phone

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # fullmatch: "$" would let a final "\n" in
DEFAULT_NAME = "顾客"
_DICT_METHODS = frozenset(dir(dict))
CURRENCIES = {"CNY": "¥", "RMB": "¥", "USD": "$", "HKD": "HK$", "EUR": "€"}
DATE_FORMATS = {"long": "{y}年{m}月{d}日", "short": "{m}月{d}日", "datetime": "{y}年{m}月{d}日 {t}"}
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


class _Refused(Exception):
    """A template went over a limit or asked for something templates may not do."""


_TOO_NESTED = (
    "blocks or brackets nest too deeply to compile ({% if %}, {% for %} or ( ) in one another)"
)


# ---------------------------------------------------------------------------------------------
# The budget of one render, reachable from every hook of the sandbox


class _Budget:
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
            raise _Refused(
                f"took more than {self.limits.seconds:g} s to render "
                "(a loop or recursion that is too large?)"
            )

    def check_size(self, size: int, what: str = "a value") -> None:
        if size > self.limits.value_chars:
            raise _Refused(
                f"builds {what} of {size:,} characters or items, more than the "
                f"{self.limits.value_chars:,} a template may"
            )

    def built_value(self, value: Any) -> Any:
        """Count a value a call, filter or operator made; refuse one too large."""
        if isinstance(value, (str, list, tuple, dict, set, frozenset)):
            self.check_size(len(value))
            self.built += len(value)
            if self.built > self.limits.built_chars:
                raise _Refused(
                    f"builds more than {self.limits.built_chars:,} characters or items in all"
                )
        return value

    def metered(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.tick()
            yield item


_BUDGET: ContextVar[_Budget | None] = ContextVar("cdp_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:
        # Jinja may try to evaluate constant expressions while compiling; refusing makes it
        # leave them to render time, where they are metered.
        raise _Refused("template code runs only while a message is rendered")
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


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    limits = budget.limits
    sized = (str, list, tuple)
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > limits.int_bits:
                raise _Refused(f"multiplies numbers larger than {limits.int_bits} bits")
        elif isinstance(left, sized) and isinstance(right, int):
            budget.check_size(len(left) * max(right, 0))
        elif isinstance(right, sized) and isinstance(left, int):
            budget.check_size(len(right) * max(left, 0))
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right > 0 and right * left.bit_length() > limits.int_bits:
            raise _Refused(f"raises a number to a power larger than {limits.int_bits} bits")
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        budget.check_size(len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        budget.check_size(_format_size(left, _format_values(right)))


def _check_method(budget: _Budget, func: Any, args: tuple[Any, ...]) -> None:
    """str methods: only STR_METHODS, and none that would build a value too large."""
    owner = getattr(func, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(func, "__name__", "")
    if name not in STR_METHODS:
        raise _Refused(f"str.{name}() is not available in templates")
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        budget.check_size(args[0])
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        times = owner.count(old) if old else len(owner) + 1
        budget.check_size(len(owner) + times * max(len(new) - len(old), 0))
    elif name == "join" and args:
        if not hasattr(args[0], "__len__"):
            raise _Refused("str.join() needs a list; write items|join(', ') instead")
        budget.check_size(len(owner) * max(len(args[0]) - 1, 0))


def _printable(value: Any) -> Any:
    """Text, a number or a date, as a message may print; None and objects are refused."""
    if isinstance(value, jinja2.Undefined):
        return value  # printing it raises Jinja's own, clearer error
    if isinstance(value, bool):
        raise _Refused(f"prints {value}; print text instead, e.g. {{{{ '是' if x else '否' }}}}")
    if isinstance(value, (str, int, float, Decimal, date)):
        if isinstance(value, str):
            _budget().check_size(len(value), "text")
        return value
    if value is None:
        raise _Refused(
            "prints None (the customer has no such value); give a fallback, "
            "e.g. {{ customer.city or '您所在的城市' }}"
        )
    if isinstance(value, Mapping):
        kind = "a mapping"
    elif isinstance(value, (list, tuple, set)):
        kind = "a list"
    else:
        kind = "a Python object"
    raise _Refused(f"prints {kind}; print one of its values instead")


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


def _filter_node(node: nodes.Expr, name: str) -> nodes.Filter:
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
            raise _Refused(
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


class _RootLoader(jinja2.FileSystemLoader):
    """Loads templates from one folder and nothing outside it, symlinks included."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), encoding="utf-8")
        self.root = root.resolve()
        self.served: set[str] = set()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        problem = name_problem(template)
        if problem:
            raise _Refused(f"template name {template!r} {problem}")
        source, filename, uptodate = super().get_source(environment, template)
        if filename is None or not Path(filename).resolve().is_relative_to(self.root):
            raise _Refused(f"template {template!r} is outside the templates folder")
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
# Filters


def money(value: Any, currency: str = "CNY", digits: int | None = 2) -> str:
    """1299 -> '¥1,299.00'; money('USD') -> '$1,299.00'; money(digits=0) -> '¥1,299';
    money(digits=None) drops the cents of a whole amount: 30 -> '¥30', 9.9 -> '¥9.90'."""
    symbol = CURRENCIES.get(str(currency).upper())
    if symbol is None:
        raise ValueError(
            f"money: unknown currency {currency!r}; use one of {', '.join(CURRENCIES)}"
        )
    if isinstance(value, bool) or value is None:
        raise ValueError(f"money: {value!r} is not an amount")
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"money: {value!r} is not an amount") from None
    if digits is None:
        digits = 0 if amount.is_finite() and amount == amount.to_integral_value() else 2
    if not amount.is_finite() or not 0 <= digits <= 4:
        raise ValueError(f"money: cannot show {value!r} with {digits} digits")
    rounded = amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}{symbol}{abs(rounded):,.{digits}f}"


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        text = value.strip().replace("/", "-")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"date: cannot read {value!r} as a date or an ISO timestamp")


def format_date(value: Any, format: str = "long") -> str:
    """'2026-11-15' -> '2026年11月15日'; 'short' -> '11月15日'; 'datetime' adds the time;
    any other format is a strftime format ('%Y-%m-%d'). The date is the one written, in its
    own timezone."""
    moment = _as_datetime(value)
    if format in DATE_FORMATS:
        return DATE_FORMATS[format].format(
            y=moment.year, m=moment.month, d=moment.day, t=moment.strftime("%H:%M")
        )
    if "%" not in format or re.search(r"%[-_0^#]*\d", format):
        raise ValueError(
            f"date: format {format!r} is not one of {', '.join(DATE_FORMATS)} "
            "nor a strftime format without widths"
        )
    return moment.strftime(format)


def default_name(value: Any, fallback: str = DEFAULT_NAME) -> str:
    """The customer's name, or '顾客' when they have none."""
    if isinstance(value, jinja2.Undefined) or value is None:
        return fallback
    return str(value).strip() or fallback


def _mask_phone(value: Any) -> str:
    return mask_phone(str(value))


def _mask_email(value: Any) -> str:
    return mask_email(str(value))


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


def _check_center(budget: _Budget, value: Any, width: int = 80) -> None:
    budget.check_size(width if isinstance(width, int) else 0)


def _check_indent(
    budget: _Budget, s: Any, width: Any = 4, first: bool = False, blank: bool = False
) -> None:
    prefix = width if isinstance(width, int) else len(str(width))
    lines = str(s).count("\n") + 1
    budget.check_size(len(str(s)) + lines * prefix)


def _check_wordwrap(
    budget: _Budget,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> None:
    text = str(s)
    breaks = len(text) // max(width if isinstance(width, int) else 1, 1) + text.count("\n") + 1
    budget.check_size(len(text) + breaks * len(str(wrapstring or "\n")))


def _check_replace(budget: _Budget, s: Any, old: Any, new: Any, count: Any = None) -> None:
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


def _check_format(budget: _Budget, value: Any, *args: Any, **kwargs: Any) -> None:
    budget.check_size(_format_size(str(value), [*args, *kwargs.values()]))


def _check_tojson(budget: _Budget, value: Any, indent: Any = None) -> None:
    if isinstance(indent, int) and indent > 8:
        raise _Refused("tojson: indent at most 8")


def _check_batch(budget: _Budget, value: Any, linecount: Any, fill_with: Any = None) -> None:
    budget.check_size(linecount if isinstance(linecount, int) else 0)


def _check_slice(budget: _Budget, value: Any, slices: Any, fill_with: Any = None) -> None:
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
    checks = {
        "center": _check_center, "indent": _check_indent, "wordwrap": _check_wordwrap,
        "replace": _check_replace, "format": _check_format,
        "tojson": _check_tojson, "batch": _check_batch, "slice": _check_slice,
    }  # fmt: skip
    filters.update({name: _bounded(name, check) for name, check in checks.items()})
    filters.update(
        join=_join, money=_remembered(money), date=_remembered(format_date),
        default_name=default_name,
        mask_phone=_mask_phone, mask_email=_mask_email,
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
        raise _Refused(
            f"range() of {size:,} numbers; a template may use at most {budget.limits.range_items:,}"
        )
    return numbers


def _environment(loader: _RootLoader) -> _Sandbox:
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


# ---------------------------------------------------------------------------------------------
# The store


class TemplateStore:
    """The templates of one project: templates/<channel>/<name>.<ext>."""

    def __init__(
        self,
        root: Path,
        *,
        limits: Limits | None = None,
        sms_max_segments: int = channels.SMS_MAX_SEGMENTS,
    ) -> None:
        self.root = Path(root)
        self.limits = limits or Limits()
        self.sms_max_segments = sms_max_segments
        self._loader = _RootLoader(self.root)
        self._files: dict[tuple[str, str], dict[str, str]] = {}
        self._paths: dict[tuple[str, str], dict[str, str]] = {}
        self._timeouts: dict[tuple[str, str], int] = {}  # messages in a row out of time
        self._env = _environment(self._loader)

    # -- finding templates

    def files(self, channel: str, name: str) -> dict[str, str]:
        """part -> path inside the root, for each part of this template; all must exist.

        Found once per store: a journey run renders the same template for every customer.
        """
        found = self._files.get((channel, name))
        if found is None:
            found = self._files[(channel, name)] = self._find(channel, name)
        return found

    def _find(self, channel: str, name: str) -> dict[str, str]:
        if channel not in CHANNELS:
            raise TemplateError(
                self.root, f"unknown channel {channel!r}; channels are {', '.join(CHANNEL_NAMES)}"
            )
        problem = name_problem(name)
        if problem:
            raise TemplateError(self.root / channel, f"template name {name!r} {problem}")
        if not NAME.fullmatch(name):
            raise TemplateError(
                self.root / channel,
                f"template name {name!r}: use lower-case letters, digits, _ and -",
            )
        parts = CHANNELS[channel].parts
        files = {part: f"{channel}/{name}{suffix}" for part, suffix in parts.items()}
        for part, relative in files.items():
            if not (self.root / relative).is_file():
                raise TemplateError(
                    self.root / relative, f"no such file: the {part} of {channel}/{name}"
                )
        return files

    def templates(self) -> list[tuple[str, str]]:
        """Every (channel, name) with a template; a file out of place is a TemplateError."""
        found, _ = self._scan()
        return sorted(found)

    def _scan(self) -> tuple[dict[tuple[str, str], list[Path]], list[Path]]:
        """Message templates by (channel, name), and partials (names starting with _)."""
        found: dict[tuple[str, str], list[Path]] = {}
        partials: list[Path] = []
        if not self.root.is_dir():
            return found, partials
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if path.is_dir() or relative.name.startswith(".") or path.suffix == ".md":
                continue
            channel, name = self._place(path, relative)
            if name.startswith("_"):
                partials.append(path)
            else:
                found.setdefault((channel, name), []).append(path)
        return found, partials

    def _place(self, path: Path, relative: Path) -> tuple[str, str]:
        if len(relative.parts) != 2 or relative.parts[0] not in CHANNELS:
            raise TemplateError(
                path,
                f"templates go in templates/<channel>/<name>.<ext>, channels being "
                f"{', '.join(CHANNEL_NAMES)}",
            )
        channel, filename = relative.parts
        suffixes = CHANNELS[channel].suffixes()
        suffix = next((s for s in suffixes if filename.endswith(s)), None)
        name = filename[: -len(suffix)] if suffix else ""
        if not suffix or not NAME.fullmatch(name.lstrip("_")):
            raise TemplateError(
                path,
                f"{channel} templates are named <name>{' / '.join(sorted(suffixes))}, "
                "the name in lower-case letters, digits, _ and -",
            )
        return channel, name

    # -- rendering

    def render(self, channel: str, name: str, context: Mapping[str, Any]) -> Outbound:
        """Render every part of channel/name for one customer and build the channel's payload.

        Raises TemplateError when the template fails or goes over its Limits.
        """
        files = self.files(channel, name)
        key, limit = (channel, name), self.limits.timeouts_in_a_row
        if self._timeouts.get(key, 0) >= limit:
            # A template that runs out of time for everyone would hold a cron run (and the
            # store's lock) for a second per message: after `limit` in a row, fail at once.
            raise TemplateError(
                self.root / next(iter(files.values())),
                f"not rendered: it took more than {self.limits.seconds:g} s for {limit} "
                "messages in a row in this run",
            )
        budget = _Budget(self.limits)
        try:
            parts = {
                part: self._render_part(relative, context, budget)
                for part, relative in files.items()
            }
        except TemplateError:
            self._timeouts[key] = self._timeouts.get(key, 0) + 1 if budget.timed_out else 0
            raise
        self._timeouts[key] = 0
        paths = self._paths.get((channel, name))
        if paths is None:
            paths = {part: str(self.root / relative) for part, relative in files.items()}
            self._paths[(channel, name)] = paths
        rendered = Rendered(parts, paths, context, self.sms_max_segments)
        message = CHANNELS[channel].payload(rendered)
        return replace(message, template=f"{channel}/{name}")

    def _render_part(self, relative: str, context: Mapping[str, Any], budget: _Budget) -> str:
        token = _BUDGET.set(budget)
        chunks: list[str] = []
        size, exact, limit = 0, 0, self.limits.part_bytes
        try:
            template = self._load(relative)
            with closing(template.generate(context)) as stream:  # closed while still metered
                for chunk in stream:
                    budget.tick()
                    chunks.append(chunk)
                    size += len(chunk)
                    # A character is at most 4 UTF-8 bytes: count bytes once that could matter.
                    if size * 4 > limit:
                        exact = (
                            exact + len(chunk.encode()) if exact else len("".join(chunks).encode())
                        )
                        if exact > limit:
                            raise _Refused(f"renders to more than {limit // 1024} KiB")
        except (jinja2.TemplateError, _Refused, RecursionError, MemoryError, SyntaxError) as exc:
            raise self._error(exc, relative) from None
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            # Raised by an expression or a filter the template wrote: 1/0, money('XYZ').
            raise self._error(exc, relative) from None
        finally:
            _BUDGET.reset(token)
        text = "".join(chunks)
        leak = PYTHON_REPR.search(text)
        if leak:
            raise TemplateError(
                self.root / relative,
                f"prints a Python object ({leak.group(0)!r}…); print one of its values instead",
                text[: leak.start()].count("\n") + 1,
            )
        return text

    def _error(self, exc: BaseException, relative: str) -> TemplateError:
        path, line = self._where(exc)
        path = path or str(self.root / relative)
        if isinstance(exc, jinja2.TemplateSyntaxError):
            return TemplateError(exc.filename or path, f"syntax error: {exc.message}", exc.lineno)
        if isinstance(exc, jinja2.UndefinedError):
            message = f"undefined: {exc.message}"
        elif isinstance(exc, jinja2.exceptions.SecurityError):
            message = f"refused by the sandbox: {exc.message}"
        elif isinstance(exc, jinja2.TemplateNotFound):
            message = (
                "no such file"
                if exc.name == relative
                else f"includes {exc.name!r}, which does not exist"
            )
        elif isinstance(exc, _Refused):
            message = str(exc)
        elif isinstance(exc, RecursionError):
            message = "macros or includes call each other too deeply"
        elif isinstance(exc, SyntaxError):  # Python's, compiling an included template
            message = _TOO_NESTED
        elif isinstance(exc, MemoryError):
            message = "ran out of memory"
        elif isinstance(exc, ValueError):
            message = str(exc)  # the filters' own messages name the filter
        else:
            message = f"{type(exc).__name__}: {exc}"
        return TemplateError(path, message, line)

    def _where(self, exc: BaseException) -> tuple[str | None, int | None]:
        """The innermost template file and line in the traceback Jinja rewrote."""
        where: tuple[str | None, int | None] = (None, None)
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename in self._loader.served:
                where = (filename, tb.tb_lineno)
            tb = tb.tb_next
        return where

    # -- validation

    def validate(
        self, channel: str, name: str, sample_context: Mapping[str, Any] | None = None
    ) -> Outbound:
        """Render with a sample customer; any failure or warning is a TemplateError."""
        context = example_context() if sample_context is None else sample_context
        message = self.render(channel, name, context)
        if message.warnings:
            first = next(iter(message.files.values()))
            raise TemplateError(first, message.warnings[0])
        return message

    def validate_all(self, sample_context: Mapping[str, Any] | None = None) -> list[Outbound]:
        """Check every file under the root: where it sits, its syntax, and a sample render."""
        found, partials = self._scan()
        for path in partials:
            self._compile(path)
        context = example_context() if sample_context is None else sample_context
        return [self.validate(channel, name, context) for channel, name in sorted(found)]

    def _compile(self, path: Path) -> None:
        relative = path.relative_to(self.root).as_posix()
        try:
            self._load(relative)
        except (jinja2.TemplateError, _Refused) as exc:
            raise self._error(exc, relative) from None

    def fields_used(self, channel: str, name: str, variable: str) -> set[str] | None:
        """The keys of `variable` (features, say) that a template reads, as `features.x` or
        `features['x']`; None when it may read any (it uses the whole value, a computed key,
        or another template), so that a run reads only the columns its messages print."""
        used: set[str] = set()
        for relative in self.files(channel, name).values():
            source = (self.root / relative).read_text(encoding="utf-8")
            try:
                tree = self._env.parse(source)
            except (jinja2.TemplateError, SyntaxError, RecursionError, MemoryError):
                return None  # rendering reports it
            if any(tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends))):
                return None
            named = [n for n in tree.find_all(nodes.Name) if n.name == variable]
            read = [
                n.attr if isinstance(n, nodes.Getattr) else n.arg.value
                for n in tree.find_all((nodes.Getattr, nodes.Getitem))
                if isinstance(n.node, nodes.Name) and n.node.name == variable
                and (isinstance(n, nodes.Getattr) or isinstance(n.arg, nodes.Const))
            ]  # fmt: skip
            if len(read) != len(named) or not all(isinstance(key, str) for key in read):
                return None
            if any(key in _DICT_METHODS for key in read):  # features.get('x'), .items()
                return None
            used.update(read)
        return used

    def _load(self, relative: str) -> jinja2.Template:
        """The compiled template. Python compiles the code Jinja makes of it, and refuses more
        than 20 loops or 100 blocks inside each other; deep brackets overflow the parser."""
        try:
            template = self._env.get_template(relative)
        except (SyntaxError, RecursionError, MemoryError):
            raise _Refused(_TOO_NESTED) from None
        if not isinstance(template.globals, dict):
            # Jinja chains the template's globals to the environment's, and walks the chain
            # twice for every message rendered; they never change here, so one plain dict.
            template.globals = dict(template.globals)
        return template


# ---------------------------------------------------------------------------------------------
# A sample customer, for validation and previews


def example_context() -> dict[str, Any]:
    """A realistic context for one customer of the sample brand, as a journey passes it."""
    return {
        "customer": {
            "one_id": "C000000042", "name": "李娜", "gender": "female", "birthday": "1992-11-16",
            "city": "武汉", "known": 1, "first_seen": "2025-03-08T20:15:00+08:00",
            "last_seen": "2026-08-02T21:40:12+08:00", "records": 4,
        },
        "features": sample_features(),
        "tags": {
            "lifecycle": "at_risk", "rfm_segment": "at_risk", "high_value": "true",
            "preferred_category": "护肤", "preferred_channel": "tmall",
            "birthday_this_month": "true",
        },
        "coupon": {"code": "HY-WB7K2Q", "face_value": 30.0, "expires_at": "2026-11-30 23:59:59"},
        "journey": {"name": "winback"},
        "step": {"name": "send_coupon"},
        "wechat": {"openid": "oXq3ZtZ9Y8TC8XTbcwT1W-lO3kJY", "appid": "wx8a3f5e2b1c9d4e70"},
        "device": "A8C13E74-23DC-41E1-8A3F-9E9D34761E67",
        "brand": {"name": "花漾", "url": "https://www.huayang.example.com"},
        "link": "https://hy.example.com/t/8Kq2xZ",
    }  # fmt: skip


def sample_features() -> dict[str, Any]:
    """Every feature of docs/features.md, for one customer who last bought 120 days ago."""
    return {
        "order_count": 6, "total_spent": 2486.0, "avg_order_value": 414.33,
        "first_order_at": "2025-03-10T12:05:00+08:00",
        "last_order_at": "2026-07-18T20:31:44+08:00",
        "days_since_first_order": 615, "days_since_last_order": 120,
        "order_count_30d": 0, "order_count_90d": 0, "order_count_365d": 3,
        "total_spent_30d": 0.0, "total_spent_90d": 0.0, "total_spent_365d": 1187.0,
        "order_days": 6, "repurchase_cycle_days": 97.2, "top_category": "护肤",
        "top_store": "武汉国广店", "top_channel": "tmall",
        "event_count": 58, "event_count_30d": 2, "event_count_90d": 9, "event_count_365d": 41,
        "last_event_at": "2026-11-02T09:12:30+08:00", "days_since_last_seen": 13,
        "registered_at": "2025-03-08T20:15:00+08:00", "days_since_registered": 617,
        "birthday_month": 11, "birthday_this_month": 1, "age": 34,
        "rfm_recency_days": 120, "rfm_frequency": 6, "rfm_monetary": 2486.0,
        "rfm_r_score": 2, "rfm_f_score": 4, "rfm_m_score": 5, "rfm_segment": "at_risk",
        "frequency": 5, "recency": 495, "T": 615, "monetary_value": 385.2,
    }  # fmt: skip
