"""YAML files that remember where each value came from, so errors can name file and line."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from cdp_cli.errors import FileError


class YamlMap(dict):
    """A mapping read from YAML; `line_of(key)` is the 1-based line the key was written on."""

    path: str = ""
    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class YamlList(list):
    """A sequence read from YAML, with the line it starts on."""

    path: str = ""
    line: int = 0


class _Loader(yaml.SafeLoader):
    """SafeLoader that records lines and refuses duplicate keys (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> YamlMap:
        self.flatten_mapping(node)
        result = YamlMap()
        result.path = self.name
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in result:
                raise FileError(
                    self.name, f"duplicate key {key!r}", line=key_node.start_mark.line + 1
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> YamlList:
        result = YamlList(self.construct_object(child, deep=True) for child in node.value)
        result.path = self.name
        result.line = node.start_mark.line + 1
        return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _Loader.construct_sequence)


def load_yaml(path: Path) -> Any:
    """Read one YAML document; any problem is a FileError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise FileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise FileError(path, exc.strerror or str(exc)) from None
    if _libyaml_reads_alike(text):
        try:
            return _load_with_libyaml(text, str(path))
        except yaml.YAMLError:  # the pure-Python loader says what is wrong, in its words
            pass
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, such as NUL
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise FileError(
            path, f"invalid YAML, column {column}: character {char!r} is not allowed", line
        ) from None
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at_line = mark.line + 1 if mark else None
        at_column = f", column {mark.column + 1}" if mark else ""
        raise FileError(path, f"invalid YAML{at_column}: {exc.problem or exc}", at_line) from None
    except yaml.YAMLError as exc:
        raise FileError(path, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


if yaml.__with_libyaml__:  # PyYAML built with libyaml, as its wheels are

    class _CLoader(yaml.CSafeLoader):
        """_Loader's constructor over libyaml's parser (PyYAML's CSafeLoader, with
        _Loader's mappings and sequences): the same values and lines, read 15 times faster."""

        yaml_constructors = _Loader.yaml_constructors
        construct_mapping = _Loader.construct_mapping
        construct_sequence = _Loader.construct_sequence

        def __init__(self, text: str, name: str) -> None:
            super().__init__(text)
            self.name = name


# Characters libyaml reads otherwise than PyYAML's own reader, or may: tabs, other line breaks,
# a byte-order mark or an ideographic space inside the text; and those PyYAML refuses as
# unprintable (its reader's own pattern). A text with any of them is left to PyYAML alone.
_NOT_FOR_LIBYAML = "\t\r\x85\u2028\u2029\u3000\ufeff"
# Tokens libyaml and PyYAML scan differently, or may: tags (`key: !`), anchors and aliases,
# directives, block scalars (`|#`), explicit keys (`? `), plain scalars with a ? (PyYAML ends
# one at a ? in a flow collection, libyaml does not) or that start with :.
_NOT_FOR_LIBYAML_TOKENS = (
    yaml.tokens.DirectiveToken,
    yaml.tokens.TagToken,
    yaml.tokens.AnchorToken,
    yaml.tokens.AliasToken,
)


def _libyaml_reads_alike(text: str) -> bool:
    """Whether libyaml may read this text: it has none of the characters and tokens above
    (libyaml scans it; a text it cannot scan is left to PyYAML)."""
    if not yaml.__with_libyaml__ or any(char in text for char in _NOT_FOR_LIBYAML):
        return False
    if yaml.reader.Reader.NON_PRINTABLE.search(text):
        return False
    scanner = _CLoader(text, "")
    try:
        while (token := scanner.get_token()) is not None:
            if isinstance(token, _NOT_FOR_LIBYAML_TOKENS):
                return False
            if isinstance(token, yaml.tokens.ScalarToken) and (
                token.style in ("|", ">")  # a block scalar
                or (token.plain and ("?" in token.value or text[token.start_mark.index] == ":"))
            ):
                return False
            if isinstance(token, yaml.tokens.KeyToken) and text[token.start_mark.index] == "?":
                return False
    except (yaml.YAMLError, IndexError):  # libyaml cannot scan it: PyYAML says why
        return False
    finally:
        scanner.dispose()
    return True


def _load_with_libyaml(text: str, name: str) -> Any:
    loader = _CLoader(text, name)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # fullmatch: "$" would let a final "\n" in
NAME_RULE = "lower-case letters, digits and _"


def is_name(value: object) -> TypeGuard[str]:
    """A name a user gives a tag, a journey or a segment: safe in SQL, files and URLs."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for a misspelt name, or an empty string."""
    return suggestion(closest(word, choices))


def suggestion(meant: str | None) -> str:
    """The ' (did you mean 'x'?)' suffix for a name meant, found however; "" for None."""
    return f" (did you mean {meant!r}?)" if meant else ""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a misspelt name most likely means, if one is close enough."""
    import difflib  # only for a mistake: 1 ms of every command otherwise

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def check_keys(mapping: YamlMap, allowed: Iterable[str], where: str) -> None:
    """Refuse keys cdp does not know: a typo must not silently turn a setting off."""
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            raise FileError(
                mapping.path,
                f"{where}: unknown key {key!r}{did_you_mean(str(key), allowed)}",
                line=mapping.line_of(key),
            )


def string_list(mapping: YamlMap, key: str, where: str) -> tuple[str, ...]:
    """The string, or list of strings, at `key`; () when it is absent."""
    value = mapping.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise FileError(
        mapping.path, f"{where}.{key}: expected a string or a list of strings", mapping.line_of(key)
    )
