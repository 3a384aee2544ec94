"""Write docs/cli.md from the commands' own --help, so the reference cannot drift from them.

python docs/cli_reference.py          rewrite docs/cli.md
python docs/cli_reference.py --check  exit 1 if docs/cli.md is stale (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cdp_cli.cli import cli

TARGET = Path(__file__).with_name("cli.md")


def _commands(group: click.Group, prefix: list[str]) -> list[tuple[list[str], click.Command]]:
    found = []
    ctx = click.Context(group, info_name=" ".join(prefix))
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        found.append(([*prefix, name], command))
        if isinstance(command, click.Group):
            found += _commands(command, [*prefix, name])
    return found


def help_text(path: list[str], command: click.Command) -> str:
    parent = None
    for i in range(1, len(path)):
        parent = click.Context(cli, info_name=path[i - 1], parent=parent)  # one level each
    ctx = click.Context(command, info_name=path[-1] if parent else "cdp", parent=parent)
    ctx.terminal_width = 100
    ctx.max_content_width = 100
    return command.get_help(ctx)


def render() -> str:
    lines = [
        "# cdp command reference",
        "",
        "Generated from each command's `--help` by `python docs/cli_reference.py`; "
        "a test fails when it is stale.",
        "",
        "## cdp",
        "",
        "```",
        help_text(["cdp"], cli),
        "```",
    ]
    for path, command in _commands(cli, ["cdp"]):
        lines += ["", f"## {' '.join(path)}", "", "```", help_text(path, command), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.exists() and TARGET.read_text(encoding="utf-8") == text else 1)
    TARGET.write_text(text, encoding="utf-8")
