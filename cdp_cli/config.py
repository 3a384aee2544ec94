"""cdp.yaml: where data comes from, how it maps onto canonical fields, and project settings."""

from __future__ import annotations

import os
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from cdp_cli.canonical import BUILTIN_VALUES, ITEM_FIELDS, KINDS, Field, Kind
from cdp_cli.errors import ConfigError, FileError, NotFound, UsageError
from cdp_cli.yamlfile import YamlMap, check_keys, did_you_mean, load_yaml

DEFAULT_CONFIG = "cdp.yaml"
FORMATS = ("csv", "json", "jsonl")
# Settings that later stages read; accepted here so that a project can declare them early.
TOP_LEVEL_KEYS = (
    "store", "region", "timezone", "sources", "identity", "channels", "frequency_cap",
    "control_group", "log",
)  # fmt: skip
SOURCE_KEYS = (
    "kind", "format", "encoding", "delimiter", "files", "key", "fields", "items", "timezone",
    "timestamp_formats", "description",
)  # fmt: skip
FIELD_KEYS = ("from", "value", "values", "formats")


@dataclass(frozen=True)
class FieldMapping:
    """Where one canonical field comes from: a column or JSON path, or a constant."""

    name: str
    column: str | None = None
    constant: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class ItemsMapping:
    """For orders: the list of items inside a row, and how each item's fields map."""

    column: str
    fields: dict[str, FieldMapping]


@dataclass(frozen=True)
class Source:
    """One export cdp reads, as declared under `sources:` in cdp.yaml."""

    name: str
    kind: Kind
    fields: dict[str, FieldMapping]
    key: tuple[FieldMapping, ...] = ()
    format: str | None = None
    encoding: str = "auto"
    delimiter: str = ","
    files: tuple[str, ...] = ()
    items: ItemsMapping | None = None
    timezone: str = "UTC"
    timestamp_formats: tuple[str, ...] = ()

    def format_for(self, path: Path) -> str:
        """The declared format, else the one the file's extension says."""
        if self.format:
            return self.format
        suffix = path.suffix.lower().lstrip(".")
        if suffix == "ndjson":
            return "jsonl"
        if suffix in FORMATS:
            return suffix
        raise NotFound(
            f"{path}: cannot tell the format from the extension; "
            f"set format: csv, json or jsonl on source {self.name!r}"
        )


@dataclass(frozen=True)
class Config:
    """A loaded cdp.yaml. `settings` keeps the raw mapping for the later stages' sections."""

    path: Path
    store: Path
    region: str = "CN"
    timezone: str = "Asia/Shanghai"
    sources: dict[str, Source] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def source(self, name: str) -> Source:
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none"
            raise UsageError(
                f"{self.path}: no source named {name!r}{did_you_mean(name, self.sources)}"
                f" (sources: {known})"
            )
        return self.sources[name]

    def files_of(self, source: Source) -> list[Path]:
        """The files a source's `files:` globs match now, relative to cdp.yaml, in order."""
        found: list[Path] = []
        for pattern in source.files:
            matches = (
                sorted(self.root.glob(pattern))
                if not Path(pattern).is_absolute()
                else (sorted(Path("/").glob(pattern.lstrip("/"))))
            )
            found.extend(m for m in matches if m.is_file() and m not in found)
        return found


def config_path(explicit: str | None) -> Path:
    """--config, else $CDP_CONFIG, else ./cdp.yaml."""
    return Path(explicit or os.environ.get("CDP_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path, store_override: str | None = None) -> Config:
    """Read and validate cdp.yaml; every mistake is a ConfigError naming file and line."""
    if not path.exists():
        raise ConfigError(path, "not found; run `cdp init` to create a project here")
    try:
        data = load_yaml(path)
    except FileError as exc:
        raise ConfigError(exc.path, exc.message, exc.line) from None
    if data is None:
        data = YamlMap()
        data.path, data.key_lines = str(path), {}
    if not isinstance(data, YamlMap):
        raise ConfigError(path, "expected a mapping of settings at the top level", line=1)
    try:
        return _build_config(path, data, store_override)
    except FileError as exc:
        raise ConfigError(exc.path, exc.message, exc.line) from None


def _build_config(path: Path, data: YamlMap, store_override: str | None) -> Config:
    check_keys(data, TOP_LEVEL_KEYS, "top level")
    region = str(data.get("region", "CN")).upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(path, f"region: unknown region {region!r}", data.line_of("region"))
    timezone = str(data.get("timezone", "Asia/Shanghai"))
    _check_timezone(path, timezone, data.line_of("timezone"), "timezone")
    store = Path(store_override or os.environ.get("CDP_DB") or data.get("store") or "cdp.db")
    if not store.is_absolute() and not (store_override or os.environ.get("CDP_DB")):
        store = path.parent / store
    sources_data = data.get("sources") or YamlMap()
    if not isinstance(sources_data, YamlMap):
        raise ConfigError(
            path, "sources: expected a mapping of source names", data.line_of("sources")
        )
    sources = {
        str(name): _build_source(path, str(name), spec, sources_data.line_of(name), timezone)
        for name, spec in sources_data.items()
    }
    settings = {k: v for k, v in data.items() if k not in ("sources",)}
    return Config(path, store, region, timezone, sources, settings)


def _check_timezone(path: Path, name: str, line: int, where: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(path, f"{where}: unknown timezone {name!r}", line) from None


def _build_source(path: Path, name: str, spec: Any, line: int, default_tz: str) -> Source:
    where = f"sources.{name}"
    if not isinstance(spec, YamlMap):
        raise ConfigError(path, f"{where}: expected a mapping", line)
    check_keys(spec, SOURCE_KEYS, where)
    kind_name = spec.get("kind")
    if kind_name not in KINDS:
        raise ConfigError(
            path,
            f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind_name!r}"
            + did_you_mean(str(kind_name), KINDS),
            spec.line_of("kind"),
        )
    kind = KINDS[kind_name]
    fmt = spec.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(
            path,
            f"{where}.format: expected csv, json or jsonl, got {fmt!r}",
            spec.line_of("format"),
        )
    fields_spec = spec.get("fields") or YamlMap()
    if not isinstance(fields_spec, YamlMap):
        raise ConfigError(path, f"{where}.fields: expected a mapping", spec.line_of("fields"))
    fields = {}
    for fname, fspec in fields_spec.items():
        field_def = kind.field(str(fname))
        if fname == "items":
            raise ConfigError(
                path, f"{where}.fields: map items under `items:`", fields_spec.line_of(fname)
            )
        if field_def is None:
            known = [f.name for f in kind.all_fields]
            raise ConfigError(
                path,
                f"{where}.fields: {fname!r} is not a field of kind {kind.name}"
                f"{did_you_mean(str(fname), known)}",
                fields_spec.line_of(fname),
            )
        fields[str(fname)] = _build_field(
            path, field_def, kind, fspec, fields_spec.line_of(fname), f"{where}.fields.{fname}"
        )
    missing = [f.name for f in kind.fields if f.required and f.name not in fields]
    if missing:
        raise ConfigError(
            path, f"{where}.fields: kind {kind.name} needs a mapping for {', '.join(missing)}", line
        )
    key = _build_key(path, spec, fields, where)
    timezone = str(spec.get("timezone", default_tz))
    _check_timezone(path, timezone, spec.line_of("timezone"), f"{where}.timezone")
    return Source(
        name=name,
        kind=kind,
        fields=fields,
        key=key,
        format=fmt,
        encoding=str(spec.get("encoding", "auto")),
        delimiter=_delimiter(path, spec, where),
        files=_strings(path, spec, "files", where),
        items=_build_items(path, spec, kind, where),
        timezone=timezone,
        timestamp_formats=_strings(path, spec, "timestamp_formats", where),
    )


def _build_field(
    path: Path, field_def: Field, kind: Kind, spec: Any, line: int, where: str
) -> FieldMapping:
    builtin = BUILTIN_VALUES.get(f"{field_def.name}@{kind.name}") or BUILTIN_VALUES.get(
        field_def.name, {}
    )
    if isinstance(spec, str):
        if spec.startswith("="):
            return FieldMapping(field_def.name, constant=spec[1:], values=dict(builtin))
        return FieldMapping(field_def.name, column=spec, values=dict(builtin))
    if not isinstance(spec, YamlMap):
        raise ConfigError(path, f"{where}: expected a column name or a mapping with 'from'", line)
    check_keys(spec, FIELD_KEYS, where)
    if ("from" in spec) == ("value" in spec):
        raise ConfigError(path, f"{where}: give exactly one of 'from' (a column) or 'value'", line)
    values = dict(builtin)
    synonyms = spec.get("values") or {}
    if not isinstance(synonyms, dict):
        raise ConfigError(path, f"{where}.values: expected a mapping of value: replacement", line)
    values.update({str(k).strip().casefold(): str(v) for k, v in synonyms.items()})
    formats = spec.get("formats") or []
    if isinstance(formats, str):
        formats = [formats]
    if "value" in spec:
        return FieldMapping(field_def.name, constant=str(spec["value"]), values=values)
    return FieldMapping(
        field_def.name, column=str(spec["from"]), values=values, formats=tuple(map(str, formats))
    )


def _build_key(
    path: Path, spec: YamlMap, fields: dict[str, FieldMapping], where: str
) -> tuple[FieldMapping, ...]:
    key = spec.get("key")
    if key is None:
        return ()
    names = key if isinstance(key, list) else [key]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(
            path, f"{where}.key: expected a field or column name, or a list", spec.line_of("key")
        )
    return tuple(fields.get(n) or FieldMapping(f"key:{n}", column=n) for n in names)


def _build_items(path: Path, spec: YamlMap, kind: Kind, where: str) -> ItemsMapping | None:
    items = spec.get("items")
    if items is None:
        return None
    if kind.name != "orders":
        raise ConfigError(path, f"{where}.items: only orders have items", spec.line_of("items"))
    if not isinstance(items, YamlMap):
        raise ConfigError(
            path,
            f"{where}.items: expected a mapping with 'from' and 'fields'",
            spec.line_of("items"),
        )
    check_keys(items, ("from", "fields"), f"{where}.items")
    item_fields = items.get("fields") or YamlMap()
    known = {f.name: f for f in ITEM_FIELDS}
    mapped = {}
    for fname, fspec in item_fields.items():
        if fname not in known:
            raise ConfigError(
                path,
                f"{where}.items.fields: {fname!r} is not an item field"
                + did_you_mean(str(fname), known),
                item_fields.line_of(fname),
            )
        mapped[fname] = _build_field(
            path,
            known[fname],
            kind,
            fspec,
            item_fields.line_of(fname),
            f"{where}.items.fields.{fname}",
        )
    return ItemsMapping(column=str(items.get("from", "items")), fields=mapped)


def _strings(path: Path, spec: YamlMap, key: str, where: str) -> tuple[str, ...]:
    value = spec.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(
        path, f"{where}.{key}: expected a string or a list of strings", spec.line_of(key)
    )


def _delimiter(path: Path, spec: YamlMap, where: str) -> str:
    delimiter = spec.get("delimiter", ",")
    if delimiter == "\\t" or delimiter == "tab":
        delimiter = "\t"
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigError(
            path, f"{where}.delimiter: expected one character", spec.line_of("delimiter")
        )
    return delimiter
