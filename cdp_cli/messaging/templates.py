"""Message templates: Jinja files under templates/<channel>/, found, rendered and checked.

Journeys render one message per customer per send step with TemplateStore.render, which
renders every part of the template (Channel.parts) in the bounded sandbox (sandbox.py) and
builds the channel's payload. Every error names the template file and, when Jinja knows it,
the line.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Mapping
from contextlib import closing
from pathlib import Path
from time import monotonic
from typing import Any, cast

import jinja2
from jinja2 import nodes

from cdp_cli.errors import TemplateError
from cdp_cli.messaging import channels
from cdp_cli.messaging.channel_names import unknown_channel
from cdp_cli.messaging.channels import CHANNEL_NAMES, CHANNELS, Outbound, Rendered
from cdp_cli.messaging.fixtures import example_context
from cdp_cli.messaging.sandbox import (
    BUDGET,
    TOO_NESTED,
    Budget,
    Limits,
    Refused,
    RootLoader,
    environment,
    name_problem,
    printed_object,
)
from cdp_cli.yamlfile import closest, did_you_mean, suggestion

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # fullmatch: "$" would let a final "\n" in
_DICT_METHODS = frozenset(dir(dict))


def template_name_problem(name: str) -> str | None:
    """Why `name` cannot name a message template, or None when it can: the one check of a
    journey's `template:` (when the journey file is read) and of the store's own guard."""
    problem = name_problem(name)
    if problem is None and not NAME.fullmatch(name):
        problem = "use lower-case letters, digits, _ and -, starting with a letter or digit"
    return problem


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
        self._loader = RootLoader(self.root)
        self._files: dict[tuple[str, str], dict[str, str]] = {}
        self._paths: dict[tuple[str, str], dict[str, str]] = {}
        self._timeouts: dict[tuple[str, str], int] = {}  # messages in a row out of time
        self._unsubscribe: dict[tuple[str, str], bool] = {}
        self._env = environment(self._loader)

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
                self.root, f"{unknown_channel(channel)}; channels are {', '.join(CHANNEL_NAMES)}"
            )
        problem = template_name_problem(name)
        if problem:
            raise TemplateError(self.root / channel, f"template name {name!r}: {problem}")
        parts = CHANNELS[channel].parts
        files = {part: f"{channel}/{name}{suffix}" for part, suffix in parts.items()}
        for part, relative in files.items():
            if not (self.root / relative).is_file():
                hint = did_you_mean(name, self._names(channel, parts[part]))
                raise TemplateError(
                    self.root / relative, f"no such file: the {part} of {channel}/{name}{hint}"
                )
        return files

    def _names(self, channel: str, suffix: str) -> list[str]:
        """The templates of a channel that have a file with this suffix, by name."""
        folder = self.root / channel
        found = folder.glob(f"*{suffix}") if folder.is_dir() else []
        return sorted(p.name[: -len(suffix)] for p in found if not p.name.startswith("_"))

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
        budget = Budget(self.limits)
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
        # Made directly: dataclasses.replace looks up the fields on every call (a million here).
        return Outbound(message.channel, message.body, message.warnings, f"{channel}/{name}",
                        message.files)  # fmt: skip

    def _render_part(self, relative: str, context: Mapping[str, Any], budget: Budget) -> str:
        token = BUDGET.set(budget)
        chunks: list[str] = []
        size, exact, limit = 0, 0, self.limits.part_bytes
        try:
            template = self._load(relative)
            stream = cast("Generator[str, None, None]", template.generate(context))
            deadline = budget.deadline
            with closing(stream):  # closed while still metered
                for chunk in stream:
                    if monotonic() > deadline:  # budget.tick() without a call per chunk
                        budget.tick()
                    chunks.append(chunk)
                    size += len(chunk)
                    # A character is at most 4 UTF-8 bytes: count bytes once that could matter.
                    if size * 4 > limit:
                        exact = (
                            exact + len(chunk.encode()) if exact else len("".join(chunks).encode())
                        )
                        if exact > limit:
                            raise Refused(f"renders to more than {limit // 1024} KiB")
        except (jinja2.TemplateError, Refused, RecursionError, MemoryError, SyntaxError) as exc:
            raise self._error(exc, relative, context) from None
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            # Raised by an expression or a filter the template wrote: 1/0, money('XYZ').
            raise self._error(exc, relative, context) from None
        finally:
            BUDGET.reset(token)
        text = "".join(chunks)
        leak = printed_object(text)
        if leak:
            raise TemplateError(
                self.root / relative,
                f"prints a Python object ({leak.group(0)!r}…); print one of its values instead",
                text[: leak.start()].count("\n") + 1,
            )
        return text

    def _error(
        self, exc: BaseException, relative: str, context: Mapping[str, Any] | None = None
    ) -> TemplateError:
        path, line = self._where(exc)
        path = path or str(self.root / relative)
        if isinstance(exc, jinja2.TemplateSyntaxError):
            message = f"syntax error: {exc.message}{self._filter_hint(exc.message or '')}"
            return TemplateError(exc.filename or path, message, exc.lineno)
        if isinstance(exc, jinja2.UndefinedError):
            message = f"undefined: {exc.message}{_name_hint(exc.message or '', context or {})}"
        elif isinstance(exc, jinja2.exceptions.SecurityError):
            message = f"refused by the sandbox: {exc.message}"
        elif isinstance(exc, jinja2.TemplateNotFound):
            message = (
                "no such file"
                if exc.name == relative
                else f"includes {exc.name!r}, which does not exist"
            )
        elif isinstance(exc, Refused):
            message = str(exc)
        elif isinstance(exc, RecursionError):
            message = "macros or includes call each other too deeply"
        elif isinstance(exc, SyntaxError):  # Python's, compiling an included template
            message = TOO_NESTED
        elif isinstance(exc, MemoryError):
            message = "ran out of memory"
        elif isinstance(exc, ValueError):
            message = str(exc)  # the filters' own messages name the filter
        else:
            message = f"{type(exc).__name__}: {exc}"
        return TemplateError(path, message, line)

    def _filter_hint(self, message: str) -> str:
        """' (did you mean 'upper'?)' for Jinja's "No filter named 'uper'."."""
        unknown = re.fullmatch(r"No filter named '(\w+)'\.?", message)
        return did_you_mean(unknown[1], self._env.filters) if unknown else ""

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
        except (jinja2.TemplateError, Refused) as exc:
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
            read = [key for n in tree.find_all((nodes.Getattr, nodes.Getitem))
                    if (key := _key_read(n, variable)) is not _NOT_READ]  # fmt: skip
            keys = [key for key in read if isinstance(key, str)]
            if len(keys) != len(named) or len(keys) != len(read):
                return None
            if any(key in _DICT_METHODS for key in keys):  # features.get('x'), .items()
                return None
            used.update(keys)
        return used

    def needs_unsubscribe(self, channel: str, name: str) -> bool:
        """Whether a message of channel/name needs its unsubscribe link: every email does (its
        List-Unsubscribe header), any other when its template may print `unsubscribe`. The
        link's code is a SHA-256 of the message id: a large run makes it only where it shows."""
        key = (channel, name)
        needed = self._unsubscribe.get(key)
        if needed is None:
            needed = channel == "email" or self.fields_used(channel, name, "unsubscribe") != set()
            self._unsubscribe[key] = needed
        return needed

    def _load(self, relative: str) -> jinja2.Template:
        """The compiled template. Python compiles the code Jinja makes of it, and refuses more
        than 20 loops or 100 blocks inside each other; deep brackets overflow the parser."""
        try:
            template = self._env.get_template(relative)
        except (SyntaxError, RecursionError, MemoryError):
            raise Refused(TOO_NESTED) from None
        if not isinstance(template.globals, dict):
            # Jinja chains the template's globals to the environment's, and walks the chain
            # twice for every message rendered; they never change here, so one plain dict.
            template.globals = dict(template.globals)
        return template


_NOT_READ = object()


def _key_read(node: nodes.Node, variable: str) -> object:
    """The key `variable.key` or `variable['key']` reads (any constant, checked by the caller
    to be text), or _NOT_READ when the node reads no constant key of `variable`."""
    if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
        return _NOT_READ
    if not (isinstance(node.node, nodes.Name) and node.node.name == variable):
        return _NOT_READ
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) else _NOT_READ


def _name_hint(message: str, context: Mapping[str, Any]) -> str:
    """The closest name a template could have meant, for Jinja's "'nmae' is undefined" (a
    variable of the context, else a key of one: customer.name) or "'dict object' has no
    attribute 'cdoe'" (a key of one of its values)."""
    nested: dict[str, str] = {}  # a key of two values is the customer's, if theirs
    for name, value in sorted(context.items(), key=lambda item: item[0] != "customer"):
        for key in value if isinstance(value, Mapping) else ():
            nested.setdefault(str(key), f"{name}.{key}")
    variable = re.fullmatch(r"'(\w+)' is undefined", message)
    if variable:
        meant = closest(variable[1], context)
        key = closest(variable[1], nested) if meant is None else None
        meant = nested[key] if key else meant
        return suggestion(meant)
    attribute = re.fullmatch(r"'dict object' has no attribute '(\w+)'", message)
    return did_you_mean(attribute[1], nested) if attribute else ""
