"""cdp.yaml: where data comes from, how it maps onto canonical fields, and project settings."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cdp_cli.canonical import (
    IDENTITY_FIELDS,
    ITEM_FIELDS,
    KINDS,
    TEXT,
    Field,
    Kind,
    builtin_values,
)
from cdp_cli.errors import ConfigError, FileError, NotFound, UsageError
from cdp_cli.identity.settings import (
    IdentityRules,
    build_identity,
    custom_field_names,
    match_line,
)
from cdp_cli.messaging.settings import SendSettings, build_send_settings
from cdp_cli.store import DEFAULT_CACHE_MB
from cdp_cli.storefiles import DEFAULT_STORE
from cdp_cli.yamlfile import (
    YamlMap,
    check_keys,
    did_you_mean,
    load_yaml,
    string_list,
    suggestion,
)

FORMATS = ("csv", "json", "jsonl")
# Settings that later stages read; accepted here so that a project can declare them early.
TOP_LEVEL_KEYS = (
    "store", "region", "timezone", "sources", "identity", "channels", "frequency_cap",
    "control_group", "log", "brand", "limits", "store_cache_mb", "predict",
)  # fmt: skip
SOURCE_KEYS = (
    "kind", "format", "encoding", "delimiter", "files", "key", "fields", "items", "timezone",
    "timestamp_formats", "description", "inbox",
)  # fmt: skip
INBOX_KEYS = ("folder", "pattern", "settle_seconds")
FIELD_KEYS = ("from", "value", "values", "formats", "normalize")
# What a field's value goes through before it identifies or matches anyone (identity/fields.py).
FIELD_NORMALIZERS = ("strip", "upper", "digits")
LIMIT_KEYS = ("row_bytes", "field_chars", "attrs_bytes")
PREDICT_KEYS = ("horizon_days", "discount_rate", "churn_days", "refit_days", "categories")
# SQLite's largest string or blob (SQLITE_MAX_LENGTH): no limit beyond it means anything.
MAX_LIMIT = 1_000_000_000
# The region a project has when cdp.yaml names none; phonenumbers knows it (a test holds it),
# so that a project in it reads cdp.yaml without importing phonenumbers (15 ms).
DEFAULT_REGION = "CN"


@dataclass(frozen=True)
class FieldMapping:
    """Where one field comes from: a column or JSON path, several joined, or a constant."""

    name: str
    column: str | None = None
    constant: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    formats: tuple[str, ...] = ()
    # `from: [surname, given_name]`: several columns joined (identity.fields.join_parts).
    columns: tuple[str, ...] = ()
    # FIELD_NORMALIZERS applied before the value identifies or matches anyone; the stored
    # value stays as written.
    normalize: tuple[str, ...] = ()

    @property
    def read_from(self) -> tuple[str, ...]:
        """The columns (or JSON paths) the field's value is read from."""
        return self.columns or ((self.column,) if self.column else ())


@dataclass(frozen=True)
class ItemsMapping:
    """For orders: the list of items inside a row, and how each item's fields map."""

    column: str
    fields: dict[str, FieldMapping]


@dataclass(frozen=True)
class Inbox:
    """A folder `cdp run` takes a source's new exports from (see docs/operations.md)."""

    folder: str
    pattern: str = "*"
    # A file modified this recently may still be being copied in: it waits for the next run.
    settle_seconds: int = 60


@dataclass(frozen=True)
class Limits:
    """The largest row, value and attrs document ingest takes (`limits:` in cdp.yaml).

    A row past one is a reject and the rest of the file is kept, so that one broken line (a
    200 MB line of a bad export) cannot fill the memory, the store or `cdp profile`. The
    defaults are far above what exports hold: a CRM or order row is a few hundred bytes, an
    order with a thousand items in JSON some 150 KB.
    """

    row_bytes: int = 1 << 20  # a line of JSON Lines, a record of CSV, an item of a JSON array
    field_chars: int = 1 << 16  # one CSV cell, one JSON string or key
    attrs_bytes: int = 1 << 18  # the columns cdp.yaml does not map, as JSON (the attrs column)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class PredictSettings:
    """`predict:` in cdp.yaml: what cdp predict fits and how often `cdp run` refits it."""

    horizon_days: int = 365  # the horizon of lifetime_value (expected_value_365d: one year)
    discount_rate: float = 0.1  # per year, for the lifetime value of future orders
    churn_days: int = 90  # churn_risk: no order in the next N days; propensity: an order in them
    refit_days: int = 7  # `cdp run` refits models older than this; it rescores in between
    categories: int = 5  # propensity_<category> for this many top categories
    configured: bool = False  # cdp.yaml has a predict: section (`cdp run` then predicts)


@dataclass(frozen=True)
class Source:
    """One export cdp reads, as declared under `sources:` in cdp.yaml."""

    name: str
    kind: Kind
    fields: dict[str, FieldMapping]
    key: tuple[FieldMapping, ...] = ()
    format: str | None = None
    encoding: str = "auto"
    delimiter: str | None = None  # None: told from the header line (readers.csv_delimiter)
    files: tuple[str, ...] = ()
    items: ItemsMapping | None = None
    timezone: str = "UTC"
    timestamp_formats: tuple[str, ...] = ()
    identity_fields: tuple[str, ...] = tuple(f.name for f in IDENTITY_FIELDS)
    inbox: Inbox | None = None
    limits: Limits = DEFAULT_LIMITS  # the top-level `limits:`, which every source shares
    # Fields that are no canonical field, mapped for a declared identifier or for matching
    # (a loyalty card, an address): ingest keeps their columns in attrs, where resolve reads
    # them (identity/fields.py).
    custom_fields: dict[str, FieldMapping] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns (or JSON paths) this source reads: its fields', its key's, its items'."""
        columns = [c for m in self.fields.values() for c in m.read_from]
        columns += [m.column for m in self.key if m.column]
        if self.items:
            columns.append(self.items.column)
        return tuple(columns)

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
    region: str = DEFAULT_REGION
    timezone: str = "Asia/Shanghai"
    sources: dict[str, Source] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    identity: IdentityRules = field(default_factory=IdentityRules)
    sending: SendSettings = field(default_factory=SendSettings)
    store_cache_mb: int = DEFAULT_CACHE_MB  # SQLite's page cache: store.apply_size_settings
    predict: PredictSettings = field(default_factory=PredictSettings)
    # cdp.yaml's line of `identity.match.blocking` (else of `identity.match`), for an error
    # resolve finds with the data (too many comparisons): kept out of IdentityRules, whose
    # fingerprint a moved line must not change.
    match_line: int = 0

    @property
    def root(self) -> Path:
        return self.path.parent

    # The project's folders, all beside cdp.yaml: the one place their names are written.
    @property
    def tag_rules_folder(self) -> Path:
        return self.root / "tag_rules"

    @property
    def journeys_folder(self) -> Path:
        return self.root / "journeys"

    @property
    def templates_folder(self) -> Path:
        return self.root / "templates"

    @property
    def outbound_folder(self) -> Path:
        return self.root / "outbound"

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

    def inbox_folder(self, source: Source) -> Path | None:
        """The source's inbox folder, relative to cdp.yaml; None when it declares none."""
        return self.root / source.inbox.folder if source.inbox else None

    @property
    def log_path(self) -> Path | None:
        """The log file `cdp run` appends to (`log:`, relative to cdp.yaml), if one is set."""
        log = self.settings.get("log")
        return self.root / log if log else None


def load_config(path: Path, store_override: Path | str | None = None) -> Config:
    """Read and validate cdp.yaml; every mistake is a ConfigError naming file and line.

    `store_override` replaces `store:` (cdp_cli.project reads it from --db or $CDP_DB)."""
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


def _known_region(region: str) -> bool:
    """Whether phonenumbers knows the region (and so how its phone numbers are written)."""
    import phonenumbers

    return region in phonenumbers.SUPPORTED_REGIONS


def _build_config(path: Path, data: YamlMap, store_override: Path | str | None) -> Config:
    check_keys(data, TOP_LEVEL_KEYS, "top level")
    region = str(data.get("region", DEFAULT_REGION)).upper()
    if region != DEFAULT_REGION and not _known_region(region):
        hint = _region_hint(str(data.get("region")))
        raise ConfigError(path, f"region: unknown region {region!r}{hint}", data.line_of("region"))
    timezone = str(data.get("timezone", "Asia/Shanghai"))
    _check_timezone(path, timezone, data.line_of("timezone"), "timezone")
    store = Path(store_override or data.get("store") or DEFAULT_STORE)
    if not store.is_absolute() and not store_override:
        store = path.parent / store
    sources_data = data.get("sources") or YamlMap()
    if not isinstance(sources_data, YamlMap):
        raise ConfigError(
            path, "sources: expected a mapping of source names", data.line_of("sources")
        )
    custom = custom_field_names(data.get("identity"))
    sources = {
        str(name): _build_source(
            path, str(name), spec, sources_data.line_of(name), timezone, custom
        )
        for name, spec in sources_data.items()
    }
    mapped = {name: set(s.fields) | set(s.custom_fields) for name, s in sources.items()}
    identity = build_identity(path, data.get("identity"), data.line_of("identity"), mapped)
    limits = _build_limits(path, data)
    sources = {
        name: replace(
            source, identity_fields=identity.fields_for(name, mapped[name]), limits=limits
        )
        for name, source in sources.items()
    }
    if data.get("log") is not None and not (isinstance(data["log"], str) and data["log"]):
        raise ConfigError(path, "log: expected the path of a file", data.line_of("log"))
    settings = {k: v for k, v in data.items() if k not in ("sources", "identity")}
    sending = build_send_settings(path, data, timezone)
    cache_mb = _store_cache_mb(path, data)
    predict = _build_predict(path, data)
    return Config(
        path, store, region, timezone, sources, settings, identity, sending, cache_mb, predict,
        match_line(data.get("identity")),
    )  # fmt: skip


def _store_cache_mb(path: Path, data: YamlMap) -> int:
    """`store_cache_mb:`, SQLite's page cache in MB: a whole number of 1 or more."""
    value = data.get("store_cache_mb")
    if value is None:
        return DEFAULT_CACHE_MB
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            path,
            f"store_cache_mb: expected a whole number of megabytes, 1 or more (got {value!r})",
            data.line_of("store_cache_mb"),
        )
    return value


# predict: key -> (smallest, largest, whole number?)
PREDICT_RANGES: dict[str, tuple[float, float, bool]] = {
    "horizon_days": (1, 3650, True),
    "discount_rate": (0, 1, False),
    "churn_days": (7, 730, True),
    "refit_days": (1, 3650, True),
    "categories": (0, 50, True),
}


def _build_predict(path: Path, data: YamlMap) -> PredictSettings:
    """`predict: {horizon_days: 365, discount_rate: 0.1, churn_days: 90, refit_days: 7,
    categories: 5}`; an absent key keeps its default."""
    if "predict" not in data:
        return PredictSettings()
    spec = data.get("predict")
    if spec is None:
        return PredictSettings(configured=True)
    if not isinstance(spec, YamlMap):
        raise ConfigError(
            path, "predict: expected a mapping such as {churn_days: 90}", data.line_of("predict")
        )
    check_keys(spec, PREDICT_KEYS, "predict")
    for key, value in spec.items():
        low, high, whole = PREDICT_RANGES[str(key)]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (whole and not isinstance(value, int)) or not low <= value <= high:
            kind = "a whole number" if whole else "a number"
            raise ConfigError(
                path,
                f"predict.{key}: expected {kind} from {low:g} to {high:g} (got {value!r})",
                spec.line_of(key),
            )
    return PredictSettings(**{str(k): v for k, v in spec.items()}, configured=True)


def _build_limits(path: Path, data: YamlMap) -> Limits:
    """`limits: {row_bytes: 1048576, field_chars: 65536, attrs_bytes: 262144}`: each a whole
    number; an absent one keeps its default. None can be switched off: unbounded input is
    what they are there to stop."""
    spec = data.get("limits")
    if spec is None:
        return DEFAULT_LIMITS
    if not isinstance(spec, YamlMap):
        raise ConfigError(
            path, "limits: expected a mapping such as {row_bytes: 1048576}", data.line_of("limits")
        )
    check_keys(spec, LIMIT_KEYS, "limits")
    for key, value in spec.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
            raise ConfigError(
                path,
                f"limits.{key}: expected a whole number from 1 to {MAX_LIMIT:_}",
                spec.line_of(key),
            )
    return Limits(**{str(key): value for key, value in spec.items()})


def _region_hint(written: str) -> str:
    """The region code a country written by name means (China or 中国: CN), from the country
    names phonenumbers knows, in English and Chinese; else the closest code."""
    import phonenumbers
    from phonenumbers import geocoder

    names: dict[str, str] = {}
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        example = phonenumbers.example_number(region)
        if example is None:
            continue
        for language in ("en", "zh"):
            names.setdefault(geocoder.country_name_for_number(example, language).casefold(), region)
    code = names.get(written.strip().casefold())
    if code:
        return suggestion(code)
    return did_you_mean(written.strip().upper(), sorted(phonenumbers.SUPPORTED_REGIONS))


# Names of China's time (Beijing time) that are not a zone's: a zone is named for a place.
CHINA_TIME = frozenset({"beijing", "北京", "北京时间", "china", "中国", "prc", "cst"})


def _timezone_hint(name: str) -> str:
    """The zone an unknown timezone likely means: Asia/Shanghai for Beijing time, a zone
    whose place is named (Shanghai, Hong Kong), a fixed offset's Etc/GMT zone (its sign is
    reversed), else the closest name."""
    key = name.strip().casefold()
    if key in CHINA_TIME:
        return suggestion("Asia/Shanghai")
    offset = re.fullmatch(r"(?:utc|gmt)?\s*([+-])\s*(\d{1,2})(?::?00)?", key)
    if offset:
        sign, hours = offset[1], int(offset[2])
        fixed = f"'Etc/GMT{'-' if sign == '+' else '+'}{hours}' is a fixed UTC{sign}{hours}"
        if (sign, hours) == ("+", 8):
            return f" (did you mean 'Asia/Shanghai'? A timezone names a place; {fixed})"
        return f" (a timezone names a place, as 'Asia/Shanghai' does; {fixed})"
    zones = zoneinfo.available_timezones()
    by_place = {zone.rsplit("/", 1)[-1].replace("_", " ").casefold(): zone for zone in zones}
    zone = by_place.get(key.replace("_", " "))
    return suggestion(zone) if zone else did_you_mean(name.strip(), sorted(zones))


def _check_timezone(path: Path, name: str, line: int, where: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = _timezone_hint(name)
        raise ConfigError(path, f"{where}: unknown timezone {name!r}{hint}", line) from None


def _build_source(
    path: Path, name: str, spec: Any, line: int, default_tz: str, custom: set[str]
) -> Source:
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
    fields, custom_fields = {}, {}
    for fname, fspec in fields_spec.items():
        field_def = kind.field(str(fname))
        if fname == "items":
            raise ConfigError(
                path, f"{where}.fields: map items under `items:`", fields_spec.line_of(fname)
            )
        if field_def is None and fname in custom:
            custom_fields[str(fname)] = _build_field(
                path, Field(str(fname)), kind, fspec, fields_spec.line_of(fname),
                f"{where}.fields.{fname}",
            )  # fmt: skip
            continue
        if field_def is None:
            known = [f.name for f in kind.all_fields]
            raise ConfigError(
                path,
                f"{where}.fields: {fname!r} is not a field of kind {kind.name}"
                f"{did_you_mean(str(fname), known)}"
                + ("" if did_you_mean(str(fname), known) else _declare_hint(str(fname))),
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
        files=string_list(spec, "files", where),
        items=_build_items(path, spec, kind, where),
        timezone=timezone,
        timestamp_formats=string_list(spec, "timestamp_formats", where),
        inbox=_build_inbox(path, spec, where),
        custom_fields=custom_fields,
    )


def _declare_hint(name: str) -> str:
    """How a field of one's own is mapped: by naming it in an identifier or in matching."""
    example = f"{name}_id: {{fields: [{name}]}}"
    return f" (a field of your own is named under identity:, e.g. in {example})"


def _build_inbox(path: Path, spec: YamlMap, where: str) -> Inbox | None:
    """`inbox: folder`, or `inbox: {folder: ..., pattern: "*.csv", settle_seconds: 60}`."""
    inbox = spec.get("inbox")
    where = f"{where}.inbox"
    if inbox is None:
        return None
    if not isinstance(inbox, YamlMap):
        inbox = YamlMap(folder=inbox)
        inbox.path, inbox.line, inbox.key_lines = str(path), spec.line_of("inbox"), {}
    check_keys(inbox, INBOX_KEYS, where)
    folder, pattern = inbox.get("folder"), inbox.get("pattern", "*")
    settle = inbox.get("settle_seconds", Inbox.settle_seconds)
    if not isinstance(folder, str) or not folder.strip():
        raise ConfigError(
            path, f"{where}: expected a folder, or a mapping with folder:", inbox.line_of("folder")
        )
    if not isinstance(pattern, str) or not pattern.strip() or "/" in pattern:
        raise ConfigError(
            path,
            f"{where}.pattern: expected a file name pattern such as '*.csv', without folders",
            inbox.line_of("pattern"),
        )
    if not isinstance(settle, int) or isinstance(settle, bool) or settle < 0:
        raise ConfigError(
            path,
            f"{where}.settle_seconds: expected a whole number of 0 or more",
            inbox.line_of("settle_seconds"),
        )
    return Inbox(folder.strip(), pattern, settle)


def _build_field(
    path: Path, field_def: Field, kind: Kind, spec: Any, line: int, where: str
) -> FieldMapping:
    builtin = builtin_values(field_def, kind)
    if isinstance(spec, str):
        if spec.startswith("="):
            _check_choices(path, field_def, {spec[1:]: builtin.get(spec[1:].casefold(), spec[1:])},
                           line, where)  # fmt: skip
            return FieldMapping(field_def.name, constant=spec[1:], values=dict(builtin))
        return FieldMapping(field_def.name, column=spec, values=dict(builtin))
    if isinstance(spec, (bool, int, float)) or spec is None:
        raise ConfigError(
            path,
            f"{where}: YAML reads this as {yaml_word(spec)}, not a column name; put it in quotes",
            line,
        )
    if not isinstance(spec, YamlMap):
        raise ConfigError(path, f"{where}: expected a column name or a mapping with 'from'", line)
    check_keys(spec, FIELD_KEYS, where)
    if ("from" in spec) == ("value" in spec):
        raise ConfigError(path, f"{where}: give exactly one of 'from' (a column) or 'value'", line)
    normalize = _normalizers(path, spec, where, line)
    values = dict(builtin)
    synonyms = spec.get("values") or {}
    if not isinstance(synonyms, dict):
        raise ConfigError(path, f"{where}.values: expected a mapping of value: replacement", line)
    values.update({str(k).strip().casefold(): str(v) for k, v in synonyms.items()})
    _check_choices(path, field_def, values, spec.line_of("values") or line, where)
    formats = spec.get("formats") or []
    if isinstance(formats, str):
        formats = [formats]
    if "value" in spec:
        constant = str(spec["value"])
        _check_choices(path, field_def, {constant: values.get(constant.casefold(), constant)},
                       line, where)  # fmt: skip
        return FieldMapping(field_def.name, constant=constant, values=values, normalize=normalize)
    source = spec["from"]
    if isinstance(source, list):
        if len(source) < 2 or not all(isinstance(c, str) and c for c in source):
            raise ConfigError(path, f"{where}.from: expected a column, or a list of columns", line)
        if field_def.type != TEXT or field_def.choices:
            raise ConfigError(
                path, f"{where}.from: only a text field is built from several columns", line
            )
        return FieldMapping(
            field_def.name, values=values, columns=tuple(source), normalize=normalize
        )
    return FieldMapping(
        field_def.name, column=str(source), values=values, formats=tuple(map(str, formats)),
        normalize=normalize,
    )  # fmt: skip


def _normalizers(path: Path, spec: YamlMap, where: str, line: int) -> tuple[str, ...]:
    """`normalize: digits` or `normalize: [strip, upper]`: each one of FIELD_NORMALIZERS."""
    names = string_list(spec, "normalize", where)
    for name in names:
        if name not in FIELD_NORMALIZERS:
            raise ConfigError(
                path,
                f"{where}.normalize: {name!r} is not one of {', '.join(FIELD_NORMALIZERS)}"
                f"{did_you_mean(name, FIELD_NORMALIZERS)}",
                spec.line_of("normalize") or line,
            )
    return names


def _check_choices(
    path: Path, field_def: Field, values: dict[str, str], line: int, where: str
) -> None:
    """A field cdp acts on (consent channels, statuses) maps only onto values it knows."""
    if not field_def.choices:
        return
    for written, value in values.items():
        if value not in field_def.choices:
            raise ConfigError(
                path,
                f"{where}: {written!r} means {value!r}, which is not one of "
                f"{', '.join(field_def.choices)}{did_you_mean(value, field_def.choices)}",
                line,
            )


def yaml_word(value: Any) -> str:
    """How YAML spelt a scalar it did not keep as text: `no` is false, `1e3` a number."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "false" if value is False else "true"
    return f"the number {value}"


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


def _delimiter(path: Path, spec: YamlMap, where: str) -> str | None:
    """The declared delimiter; None when there is none, for ingest to tell from the file."""
    if "delimiter" not in spec:
        return None
    delimiter = spec.get("delimiter")
    if delimiter == "\\t" or delimiter == "tab":
        delimiter = "\t"
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigError(
            path, f"{where}.delimiter: expected one character", spec.line_of("delimiter")
        )
    return delimiter
