"""Terminal output for the CLI: rich tables on a terminal, plain text under cron, JSON on ask.

stdout carries data and nothing else; notes and progress go to stderr. Only cdp_cli/cli/ knows
about click and rich. rich is imported where it draws, so that a command that prints JSON does
not load it.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


@functools.cache
def _unprintable() -> re.Pattern[str]:
    """Control characters, line separators and lone surrogates (bytes that did not decode);
    compiled on first use: its table of 64k characters takes 0.7 ms, and most runs print
    nothing that needs it."""
    return re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    """Text with control characters written as escapes (\\n, \\x1b): a value from a data
    file stays on its line, and no escape sequence in it reaches the terminal."""
    return _unprintable().sub(lambda m: repr(m.group())[1:-1], text)


def stdout() -> Console:
    from rich.console import Console

    console = Console(file=sys.stdout, soft_wrap=True, highlight=False)
    if not console.is_terminal:  # a pipe or a log file: no wrapping at 80 columns
        console.width = 400
    return console


def stderr() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def heading(text: str) -> None:
    """A section heading on stdout: a rule on a terminal, a plain line otherwise."""
    console = stdout()
    if console.is_terminal:
        console.rule(f"[bold]{text}", style="cyan")
    else:
        console.print(f"\n== {text} ==")


def emit(data: T, as_json: bool, printer: Callable[[T], None]) -> None:
    """A command's data on stdout: JSON under --json, else what `printer` makes of it.

    In JSON an object stands as its as_dict(), and a date or a path as its text.
    """
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=_jsonable))
    else:
        printer(data)


def _jsonable(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else str(value)


def print_table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric: int = 0
) -> None:
    """A table on stdout: boxed on a terminal, plain aligned columns in a pipe or under cron.

    `numeric` right-aligns that many trailing columns.
    """
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    console = stdout()
    table = Table(
        title=title if console.is_terminal else None,
        box=box.SIMPLE_HEAVY if console.is_terminal else None,
        show_edge=False,
        pad_edge=False,
    )
    cells = [["" if v is None else printable(str(v)) for v in row] for row in rows]
    for i, name in enumerate(columns):
        right = i >= len(columns) - numeric
        widest = max([cell_len(name), *(cell_len(row[i]) for row in cells)])
        # One line per row. Numbers keep their full width; on a narrow terminal long text
        # (file names, descriptions) is shortened with … rather than folded.
        table.add_column(
            name,
            justify="right" if right else "left",
            overflow="ellipsis",
            no_wrap=True,
            min_width=widest if right else min(widest, 12),
        )
    for row in cells:
        table.add_row(*map(Text, row))  # Text: a value such as "[/]" is not read as markup
    if title and not console.is_terminal:
        console.print(f"# {title}")
    console.print(table)


def note(message: str, silent: bool = False) -> None:
    """A line for the person running the command, on stderr."""
    if not silent:
        stderr().print(printable(message), markup=False, highlight=False)


@contextmanager
def progress_bars(
    silent: bool = False,
) -> Iterator[Callable[[str, int], Callable[[int, int], None]]]:
    """Yields `start(label, total) -> update(done, total)`; draws only when stderr is a terminal."""
    console = stderr()
    if silent or not console.is_terminal:
        yield lambda label, total: lambda done, total: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bars:

        def start(label: str, total: int) -> Callable[[int, int], None]:
            task = bars.add_task(label, total=total)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield start


def fmt_int(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def fmt_count(value: int, noun: str) -> str:
    """'1 probable link', '2 probable links' (English nouns that take an s)."""
    return f"{value:,} {noun}{'' if value == 1 else 's'}"


def fmt_pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def fmt_money(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def fmt_age(hours: float | None) -> str:
    if hours is None:
        return "never"
    if hours < 1:
        return f"{round(hours * 60)} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"
