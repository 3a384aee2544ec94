"""Tags: what marketers call customers, evaluated from the rule book in tag_rules/*.yaml.

`cdp tag` reads and compiles every file before it writes anything, computes the features,
then evaluates the tags in dependency order (a tag may read another with tag() or has_tag())
and records every change in tag_changes, in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from cdp_cli.errors import RuleError
from cdp_cli.features import compute_features
from cdp_cli.predict.fields import predicted_categories
from cdp_cli.rules.book import RuleBook, Tag, load_rulebook
from cdp_cli.rules.compiler import CompiledRule
from cdp_cli.rules.vocabulary import (
    BASE_FROM,
    READS,
    Read,
    RuleContext,
    rules_tag_value_warnings,
)
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import indexes_built_after, insert_row, now_iso, rows_as_dicts, transaction
from cdp_cli.yamlfile import did_you_mean

# A write of more than this many times the rows a table holds drops the table's indexes and
# makes them again after: one sort each costs less than as many inserts into each.
BULK = 2

# ---------------------------------------------------------------------------------------------
# Evaluating tags


@dataclass
class TagResult:
    """What one `cdp tag` did, per tag: customers with it, and changes."""

    as_of: str
    tags: dict[str, dict[str, int]] = field(default_factory=dict)
    features_seconds: float = 0.0
    seconds: float = 0.0
    unchanged_since: int | None = None  # the tag run whose inputs this one found unchanged
    warnings: list[str] = field(default_factory=list)  # rules_tag_value_warnings

    def as_dict(self) -> dict[str, Any]:
        """Without `warnings` when there are none."""
        data = asdict(self)
        if not self.warnings:
            del data["warnings"]
        return data


@dataclass(frozen=True)
class _Compiled:
    tag: Tag
    sql: str
    params: list[Any]
    reads: frozenset[str]  # the tags it reads
    gathered: frozenset[Read] = frozenset()  # the columns of temp.tag_reads it reads


def compile_tags(
    book: RuleBook,
    as_of: date,
    known_tags: AbstractSet[str] = frozenset(),
    predicted: frozenset[str] = frozenset(),
) -> list[_Compiled]:
    """Every tag compiled to one SQL value expression over BASE_FROM joined to temp.tag_reads,
    in dependency order; errors name the file, line and tag. `predicted`: the categories with
    a propensity score (RuleContext.predicted)."""
    context = RuleContext(book, as_of, set(known_tags), joined={}, predicted=predicted)
    compiled = {}
    for tag in book.tags.values():
        context.read_tags, context.gathered = set(), set()
        try:
            sql, params = _tag_value_sql(tag, context.compile)
        except RuleError as exc:
            raise RuleError(f"{tag.path}:{tag.line}: tag {tag.name}: {exc.message}") from None
        compiled[tag.name] = _Compiled(
            tag, sql, params, frozenset(context.read_tags), frozenset(context.gathered)
        )
    return _in_dependency_order(compiled)


def _tag_value_sql(tag: Tag, compile: Callable[[str], CompiledRule]) -> tuple[str, list[Any]]:
    if tag.when is not None:
        rule = compile(tag.when)
        return f"CASE WHEN {rule.sql} THEN 'true' END", rule.params
    if tag.value is not None:
        rule = compile(tag.value)
        return f"CAST(({rule.sql}) AS TEXT)", rule.params
    parts, params = [], []
    for value, when in tag.cases:
        rule = compile(when)
        parts.append(f"WHEN {rule.sql} THEN ?")
        params += [*rule.params, value]
    return f"CASE {' '.join(parts)} END", params


def _in_dependency_order(compiled: dict[str, _Compiled]) -> list[_Compiled]:
    ordered: list[_Compiled] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join([*path[path.index(name) :], name])
            tag = compiled[name].tag
            raise RuleError(
                f"{tag.path}:{tag.line}: tag {name}: tags read each other in a cycle: {cycle}"
            )
        state[name] = "visiting"
        for dependency in sorted(compiled[name].reads):
            if dependency in compiled and dependency != name:
                visit(dependency, [*path, name])
        state[name] = "done"
        ordered.append(compiled[name])

    for name in compiled:
        visit(name, [])
    return ordered


def run_tags(
    db: sqlite_utils.Database,
    folder: Path,
    as_of: date,
    only: str | None = None,
    force: bool = False,
) -> TagResult:
    """Validate every tag file, compute features, evaluate the tags and record the changes.

    A run whose inputs (`tag_inputs`) are those of the last finished run would compute the
    same features and tags: it changes nothing and returns at once, unless `force`.
    """
    started = time.monotonic()
    book = load_rulebook(folder)
    # every file is checked before anything is written
    compiled = compile_tags(book, as_of, predicted=predicted_categories(db.conn))
    if only is not None:
        if only not in book.tags:
            raise RuleError(f"{folder}: no tag named {only!r}{did_you_mean(only, book.tags)}")
        compiled = [c for c in compiled if c.tag.name == only]
    warnings = rules_tag_value_warnings(book)
    inputs = tag_inputs(db, compiled, as_of, only)
    if not force:
        unchanged = _unchanged(db, inputs, as_of)
        if unchanged is not None:
            unchanged.seconds = round(time.monotonic() - started, 3)
            unchanged.warnings = warnings
            return unchanged
    features = compute_features(db, as_of)
    result = TagResult(as_of.isoformat(), features_seconds=features.seconds, warnings=warnings)
    at = now_iso()
    with transaction(db) as conn:
        run_id = insert_row(
            conn,
            "INSERT INTO tag_runs (as_of, started_at, tags, inputs) VALUES (?, ?, ?, ?)",
            (as_of.isoformat(), at, json.dumps([c.tag.name for c in compiled]), inputs),
        )
        levels = _levels(compiled)
        customers, computed = _evaluate(conn, levels)
        changes = _record_values(conn, len(levels), computed, customers, run_id, at, only is None)
        result.tags = {name: {"customers": n, **changes[name]} for name, n in customers.items()}
        result.seconds = round(time.monotonic() - started, 3)
        conn.execute(
            "UPDATE tag_runs SET finished_at = ?, result = ? WHERE id = ?",
            (now_iso(), json.dumps(result.as_dict()), run_id),
        )
    return result


def tag_inputs(
    db: sqlite_utils.Database, compiled: list[_Compiled], as_of: date, only: str | None
) -> str:
    """A fingerprint of what a tag run reads: the as-of date, the compiled rules, cdp's
    version (how features are computed), and the store's data as of its latest batch (ingest,
    `cdp consent`), resolve run, erasure (`cdp forget` leaves tombstones) and scoring (`cdp
    predict`), each of which only grows. Equal fingerprints compute equal features and tags."""
    from cdp_cli import __version__

    data = db.conn.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM batches), "
        "(SELECT coalesce(max(id), 0) FROM resolve_runs), "
        "(SELECT count(*) FROM tombstones), (SELECT coalesce(max(id), 0) FROM prediction_runs)"
    ).fetchone()
    rules = [(c.tag.name, c.sql, c.params) for c in compiled]
    text = json.dumps([__version__, as_of.isoformat(), only, list(data), rules], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _unchanged(db: sqlite_utils.Database, inputs: str, as_of: date) -> TagResult | None:
    """The last finished run's result, as this run's, when it read the same inputs."""
    last = db.conn.execute(
        "SELECT id, inputs, result FROM tag_runs WHERE finished_at IS NOT NULL "
        "ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if last is None or last[1] != inputs:
        return None
    before = json.loads(last[2])
    tags = {
        name: {**counts, **{k: 0 for k in counts if k != "customers"}}
        for name, counts in before["tags"].items()
    }  # the same customers with each tag; no change
    return TagResult(as_of.isoformat(), tags, unchanged_since=last[0])


def _levels(compiled: list[_Compiled]) -> list[list[_Compiled]]:
    """Tags grouped so that each group reads only tags of earlier groups (most: one group)."""
    depth: dict[str, int] = {}
    for item in compiled:  # in dependency order already
        reads = [depth[d] for d in item.reads if d in depth and d != item.tag.name]
        depth[item.tag.name] = 1 + max(reads, default=-1)
    levels: list[list[_Compiled]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for item in compiled:
        levels[depth[item.tag.name]].append(item)
    return levels


def _evaluate(
    conn: sqlite3.Connection, levels: list[list[_Compiled]]
) -> tuple[dict[str, int], dict[str, tuple[str, str]]]:
    """Every tag's new value into temp.wide<n>, and its customers.

    Each level is one pass over the customers into temp.wide<n>, a column per tag, keyed by
    one_id. A tag read by a later level is read from there: what this run computed, not what
    profile_tags held. Returns each tag's customers, and where its new values are: the tag ->
    (table, column)."""
    computed: dict[str, tuple[str, str]] = {}  # tag -> (table, column) of its new values
    customers: dict[str, int] = {}
    for n, items in enumerate(levels):
        table = f"wide{n}"
        join = _gather(conn, items, computed)
        names = [f"v{i}" for i in range(len(items))]
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        conn.execute(
            f"CREATE TEMP TABLE {table} (one_id TEXT PRIMARY KEY, {', '.join(names)}) WITHOUT ROWID"
        )
        columns = ", ".join(item.sql for item in items)
        conn.execute(
            f"INSERT INTO {table} SELECT p.one_id, {columns} FROM {BASE_FROM} {join} "
            "ORDER BY p.one_id",
            [p for item in items for p in item.params],
        )
        counted = conn.execute(
            f"SELECT {', '.join(f'count({v})' for v in names)} FROM {table}"
        ).fetchone()
        for i, item in enumerate(items):
            computed[item.tag.name], customers[item.tag.name] = (table, names[i]), counted[i]
    return customers, computed


def _record_values(
    conn: sqlite3.Connection,
    levels: int,
    computed: dict[str, tuple[str, str]],
    customers: dict[str, int],
    run_id: int,
    at: str,
    every_tag: bool,
) -> dict[str, dict[str, int]]:
    """The new values against the stored ones, their changes recorded (_record).

    A run of every tag first puts each customer's values side by side in one row (temp.rows:
    a JSON array in tag order) and compares it with the row the last such run kept
    (tag_rows): only the customers whose row differs are compared value by value with
    profile_tags. On a new day most customers' tags stay as they were, and one comparison of
    a row costs less than one per tag. The kept rows are used only when they are what
    profile_tags holds: the last writer of tag values was a run of the same tags (tag_state
    names them, and the last change it recorded); otherwise every value is compared."""
    tags = sorted(computed)
    first = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
    _create_row_tables(conn)
    kept = _rows_kept(conn, tags, first) if every_tag else None
    scoped = kept is not None
    conn.execute("DELETE FROM tag_state")
    if every_tag and not scoped:  # the rows kept are made again, and read from there
        conn.execute("DELETE FROM tag_rows")
        rows = "main.tag_rows"
    else:
        rows = "temp.rows"
    held = _rows(conn, levels, computed, tags, rows)
    if kept is not None:
        _moved(conn, kept, held)
    if not scoped and not _stored(conn, tags):  # a first run: every value is added
        changes = _record_added(conn, customers, run_id, at, _values_sql(tags, rows))
    else:
        _unpivot(conn, tags, rows, scoped)
        changes = _record(conn, customers, run_id, at, every_tag, scoped)
    if not every_tag:  # profile_tags no longer holds what tag_rows says
        conn.execute("DELETE FROM tag_rows")
        return changes
    if scoped:
        conn.execute(
            "DELETE FROM tag_rows WHERE one_id IN (SELECT one_id FROM moved) "
            "AND one_id NOT IN (SELECT one_id FROM temp.rows)"
        )
        conn.execute(
            "INSERT INTO tag_rows SELECT one_id, vals FROM temp.rows "
            "WHERE one_id IN (SELECT one_id FROM moved) ORDER BY one_id "
            "ON CONFLICT (one_id) DO UPDATE SET vals = excluded.vals"
        )
    _save_row_state(conn, tags, held)
    return changes


def _save_row_state(conn: sqlite3.Connection, tags: list[str], held: int) -> None:
    """tag_state: the tags tag_rows holds, the last change recorded with them, and how many
    rows it holds."""
    last = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
    conn.execute("INSERT INTO tag_state VALUES (?, ?, ?)", (json.dumps(tags), last, held))


def _stored(conn: sqlite3.Connection, tags: list[str]) -> bool:
    """Whether some customer has a stored value of one of these tags (one seek per tag)."""
    return any(
        conn.execute("SELECT 1 FROM profile_tags WHERE tag = ? LIMIT 1", (tag,)).fetchone()
        for tag in tags
    )


def _create_row_tables(conn: sqlite3.Connection) -> None:
    """tag_rows and tag_state, derived tables made by the code that fills them."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS tag_rows (one_id TEXT PRIMARY KEY, vals TEXT) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS tag_state (tags TEXT NOT NULL, changes_id INTEGER NOT NULL, "
        "customers INTEGER NOT NULL)"
    )


def _rows_kept(conn: sqlite3.Connection, tags: list[str], first: int) -> int | None:
    """How many rows tag_rows holds, when it holds what profile_tags holds for these tags:
    the last tag run that wrote a value ran every one of these tags, and no change was
    recorded (or erased) since. None otherwise."""
    state = conn.execute("SELECT tags, changes_id, customers FROM tag_state").fetchone()
    if state is None or json.loads(state[0]) != tags or state[1] != first:
        return None
    return int(state[2])


def _rows(
    conn: sqlite3.Connection,
    levels: int,
    computed: dict[str, tuple[str, str]],
    tags: list[str],
    table: str,
) -> int:
    """Each customer's new values as one JSON array, in `tags` order, into `table` (temp.rows,
    made here, or tag_rows, emptied by the caller). Returns how many rows it wrote."""
    if table == "temp.rows":
        conn.execute("DROP TABLE IF EXISTS temp.rows")
        conn.execute("CREATE TEMP TABLE rows (one_id TEXT PRIMARY KEY, vals TEXT) WITHOUT ROWID")
    if not computed:
        return 0
    values = ", ".join(f"{computed[t][0]}.{computed[t][1]}" for t in tags)
    joined = " ".join(f"JOIN wide{n} USING (one_id)" for n in range(1, levels))
    written = conn.execute(
        f"INSERT INTO {table} SELECT one_id, json_array({values}) FROM wide0 {joined} "
        "ORDER BY one_id"
    ).rowcount
    return int(written)


def _moved(conn: sqlite3.Connection, kept: int, rows: int) -> None:
    """temp.moved: the customers whose row of values differs from the one kept, or who have
    a row on one side only. tag_rows is walked a second time, for the customers who are no
    more, only when fewer of its `kept` rows were met by the `rows` of temp.rows than it
    holds."""
    conn.execute("DROP TABLE IF EXISTS temp.moved")
    conn.execute("CREATE TEMP TABLE moved (one_id TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute(
        "INSERT INTO moved SELECT r.one_id FROM temp.rows r "
        "LEFT JOIN tag_rows o ON o.one_id = r.one_id WHERE r.vals IS NOT o.vals ORDER BY 1"
    )
    met = (
        rows
        - conn.execute(  # less the new customers
            "SELECT count(*) FROM temp.moved m "
            "WHERE NOT EXISTS (SELECT 1 FROM tag_rows o WHERE o.one_id = m.one_id)"
        ).fetchone()[0]
    )
    if met < kept:
        conn.execute(
            "INSERT INTO moved SELECT o.one_id FROM tag_rows o WHERE NOT EXISTS "
            "(SELECT 1 FROM temp.rows r WHERE r.one_id = o.one_id)"
        )


def _values_sql(tags: list[str], rows: str, scope: str = "") -> str:
    """SQL: (one_id, tag, value) of every value in `rows`, in (one_id, tag) order: the loops
    run in the order written (CROSS JOIN), rows by key, each array in tag order."""
    return f"""SELECT r.one_id, t.tag, j.value
FROM {rows} r CROSS JOIN json_each(r.vals) j CROSS JOIN temp.tag_order t
WHERE t.position = j.key AND j.value IS NOT NULL{scope}"""


def _tag_order(conn: sqlite3.Connection, tags: list[str]) -> None:
    conn.execute("DROP TABLE IF EXISTS temp.tag_order")
    conn.execute("CREATE TEMP TABLE tag_order (position INTEGER PRIMARY KEY, tag TEXT)")
    conn.executemany("INSERT INTO tag_order VALUES (?, ?)", list(enumerate(tags)))


def _unpivot(conn: sqlite3.Connection, tags: list[str], rows: str, scoped: bool) -> None:
    """temp.new_values from `rows`: a row per customer and tag with a value, in key order
    (of the moved customers alone, when `scoped`)."""
    conn.execute("DROP TABLE IF EXISTS temp.new_values")
    conn.execute(
        "CREATE TEMP TABLE new_values (one_id TEXT, tag TEXT, value TEXT, "
        "PRIMARY KEY (one_id, tag)) WITHOUT ROWID"
    )
    if not tags:  # no tag to evaluate
        return
    _tag_order(conn, tags)
    scope = " AND r.one_id IN (SELECT one_id FROM temp.moved)" if scoped else ""
    conn.execute(f"INSERT INTO new_values {_values_sql(tags, rows, scope)}")


def _gather(
    conn: sqlite3.Connection, items: list[_Compiled], computed: dict[str, tuple[str, str]]
) -> str:
    """temp.tag_reads: one row per customer with a value read, a column per value the level's
    rules read, from this run's earlier levels, else profile_tags or profile_event_counts.
    Returns the join that puts it beside BASE_FROM ("" when nothing is read)."""
    reads = sorted({r for item in items for r in item.gathered}, key=lambda r: r.column)
    if not reads:
        return ""
    declared = ", ".join(f"{r.column} {'TEXT' if r.kind == 'tag' else 'INTEGER'}" for r in reads)
    conn.execute("DROP TABLE IF EXISTS temp.tag_reads")
    conn.execute(f"CREATE TEMP TABLE tag_reads (one_id TEXT PRIMARY KEY, {declared}) WITHOUT ROWID")
    for read in reads:
        if read.kind == "event":
            source = f"SELECT one_id, {read.window} FROM profile_event_counts WHERE event = ?"
            params = [read.key]
        elif read.key in computed:  # an earlier level of this run
            table, column = computed[read.key]
            source, params = f"SELECT one_id, {column} FROM {table} WHERE {column} IS NOT NULL", []
        else:  # not evaluated in this run (--only), or the tag reading its own last value
            source, params = "SELECT one_id, value FROM profile_tags WHERE tag = ?", [read.key]
        conn.execute(
            f"INSERT INTO tag_reads (one_id, {read.column}) {source} "
            f"ON CONFLICT (one_id) DO UPDATE SET {read.column} = excluded.{read.column}",
            params,
        )
    return f"LEFT JOIN temp.tag_reads {READS} ON {READS}.one_id = p.one_id"


def _record(
    conn: sqlite3.Connection,
    customers: dict[str, int],
    run_id: int,
    at: str,
    every_tag: bool,
    scoped: bool = False,
) -> dict[str, dict[str, int]]:
    """The differences between temp.new_values and profile_tags into tag_changes, then into
    profile_tags: rows that did not change are compared, not written. Both sides are read in
    (one_id, tag) order, which keeps each lookup next to the last. `customers` holds each
    evaluated tag's count of new values. `scoped`: new_values holds the customers of
    temp.moved alone, and only their stored values are compared."""
    conn.execute("DROP TABLE IF EXISTS temp.evaluated")
    conn.execute("CREATE TEMP TABLE evaluated (tag TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO evaluated VALUES (?)", [(tag,) for tag in customers])
    first = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
    fresh = conn.execute(  # tags with nothing stored yet: each of their values is an addition
        "SELECT tag FROM evaluated e WHERE NOT EXISTS (SELECT 1 FROM profile_tags t "
        "WHERE t.tag = e.tag)"
    ).fetchall()
    added = sum(customers[tag] for (tag,) in fresh)  # at least; tag_changes holds <= first rows
    # A run of every tag reads all of profile_tags: in key order, so not through the tag
    # index (a unary + keeps SQLite from using an index for the term).
    tag = "+o.tag" if every_tag else "o.tag"
    if scoped:
        tag = "o.one_id IN (SELECT one_id FROM temp.moved) AND +o.tag"
    with indexes_built_after(conn, "tag_changes", added > BULK * first):
        conn.execute(
            f"""INSERT INTO tag_changes (run_id, one_id, tag, change, old_value, new_value, at)
SELECT ?, one_id, tag, CASE WHEN old_value IS NULL THEN 'added'
  WHEN new_value IS NULL THEN 'removed' ELSE 'changed' END, old_value, new_value, ?
FROM (
  SELECT n.one_id, n.tag, o.value AS old_value, n.value AS new_value
  FROM new_values n LEFT JOIN profile_tags o ON o.one_id = n.one_id AND o.tag = n.tag
  WHERE o.value IS NOT n.value
  UNION ALL
  SELECT o.one_id, o.tag, o.value, NULL FROM profile_tags o
  WHERE {tag} IN (SELECT tag FROM evaluated)
    AND NOT EXISTS (SELECT 1 FROM new_values n WHERE n.one_id = o.one_id AND n.tag = o.tag)
  ORDER BY 1, 2)""",
            (run_id, at),
        )
    last = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
    removed = dict(
        conn.execute(  # this run's rows by id: the tag index would walk earlier runs' rows too
            "SELECT tag, count(*) FROM tag_changes NOT INDEXED "
            "WHERE id > ? AND change = 'removed' GROUP BY tag",
            (first,),
        ).fetchall()
    )
    if removed:
        conn.execute(
            "DELETE FROM profile_tags WHERE (one_id, tag) IN "
            "(SELECT one_id, tag FROM tag_changes WHERE id > ? AND change = 'removed')",
            (first,),
        )
    _store_values(conn, first, last - first - sum(removed.values()), at)
    changed = conn.execute(  # counted in the tag index alone, which holds the id
        "SELECT e.tag, (SELECT count(*) FROM tag_changes c WHERE c.tag = e.tag AND c.id > ?) "
        "FROM evaluated e",
        (first,),
    )
    return {
        tag: {"changed": count - removed.get(tag, 0), "removed": removed.get(tag, 0)}
        for tag, count in changed
    }


def _record_added(
    conn: sqlite3.Connection, customers: dict[str, int], run_id: int, at: str, values: str
) -> dict[str, dict[str, int]]:
    """_record when no customer has a stored value of any tag evaluated (a first run): every
    new value is an addition, written from `values` (SQL in (one_id, tag) order) into
    tag_changes and then profile_tags, with no comparison and no copy in between."""
    _tag_order(conn, sorted(customers))
    first = conn.execute("SELECT coalesce(max(id), 0) FROM tag_changes").fetchone()[0]
    added = sum(customers.values())
    bulk = added > BULK * first
    appended = _appended_by_one_id(conn, values) if bulk else []
    with indexes_built_after(conn, "tag_changes", bulk, appended):
        conn.execute(
            "INSERT INTO tag_changes (run_id, one_id, tag, change, old_value, new_value, at) "
            f"SELECT ?, one_id, tag, 'added', NULL, value, ? FROM ({values})",
            (run_id, at),
        )
    _store_values(conn, first, added, at)
    return {tag: {"changed": count, "removed": 0} for tag, count in customers.items()}


def _appended_by_one_id(conn: sqlite3.Connection, values: str) -> list[str]:
    """["tag_changes_one_id"] when the new rows (`values`, in (one_id, tag) order, written
    with ids after every stored one) add each of its entries after the last: tag_changes
    holds no customer after the first new one (a store's first tag run: it is empty). The
    index then stays up for the write, filled in order, instead of being sorted after."""
    start = conn.execute(f"SELECT one_id FROM ({values}) LIMIT 1").fetchone()
    last = conn.execute("SELECT max(one_id) FROM tag_changes").fetchone()[0]
    return ["tag_changes_one_id"] if start is None or last is None or last <= start[0] else []


def _store_values(conn: sqlite3.Connection, first: int, written: int, at: str) -> None:
    """This run's new values (the `written` changes after id `first` that are not removals)
    into profile_tags, its secondary index made after when they outnumber what it holds."""
    held = conn.execute(  # counted up to what decides
        "SELECT count(*) FROM (SELECT 1 FROM profile_tags LIMIT ?)", (written // BULK + 1,)
    ).fetchone()[0]
    with indexes_built_after(conn, "profile_tags", written > BULK * held):
        conn.execute(
            "INSERT INTO profile_tags (one_id, tag, value, since) "
            "SELECT one_id, tag, new_value, ? FROM tag_changes "
            "WHERE id > ? AND change <> 'removed' ON CONFLICT (one_id, tag) DO UPDATE SET "
            "value = excluded.value, since = excluded.since",
            (at, first),
        )


def tag_list(db: sqlite_utils.Database, folder: Path) -> list[dict[str, Any]]:
    """Each defined tag with its customers per value, for `cdp tag --list`."""
    book = load_rulebook(folder)
    counts: dict[str, list[tuple[str, int]]] = {}
    for tag, value, count in db.conn.execute(
        "SELECT tag, value, count(*) FROM profile_tags GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"
    ):
        counts.setdefault(tag, []).append((value, count))
    return [
        {
            "name": tag.name,
            "category": tag.category,
            "description": tag.description,
            "values": dict(counts.get(tag.name, [])),
        }
        for tag in book.tags.values()
    ]


def stored_tags(db: sqlite_utils.Database) -> frozenset[str]:
    """The tags some customer has. A loose scan of the (tag, value) index, one seek per tag:
    `SELECT DISTINCT tag` would walk every customer's tags (seconds at a million customers)."""
    return frozenset(
        row[0]
        for row in db.conn.execute(
            """WITH RECURSIVE stored(tag) AS (
  SELECT min(tag) FROM profile_tags
  UNION ALL
  SELECT (SELECT t.tag FROM profile_tags t WHERE t.tag > stored.tag ORDER BY t.tag LIMIT 1)
  FROM stored
  WHERE stored.tag IS NOT NULL)
SELECT tag FROM stored WHERE tag IS NOT NULL"""
        )
    )


def customer_tags(db: sqlite_utils.Database, one_id: str) -> list[dict[str, Any]]:
    return rows_as_dicts(
        db, "SELECT tag, value, since FROM profile_tags WHERE one_id = ? ORDER BY tag", (one_id,)
    )
