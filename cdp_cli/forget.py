"""`cdp forget`: erase one person everywhere, and keep them from coming back.

In one transaction: their records, events and consents are deleted; their orders and coupons
keep what the books need (amount, time, store, channel, products; code and value) and lose
every identity field, attrs and the link; their identifiers, identity keys, golden profile,
tags and tag history, features, merge history, journey enrolments and unsent messages are
deleted; messages already written to a file keep their cost for the books but lose address,
text and customer; rejected lines that name one of their identifiers are deleted; outbound
files still in outbound/ (not picked up yet) are rewritten without their rows; the other files
cdp wrote with them in (exports.py) are listed, and their links to those files erased. A record
of another customer that carries one of their identifiers goes the same way: it names them.

Each identifier leaves a tombstone (see tombstones.py), so ingest refuses a row that carries
it. Afterwards their bytes are purged from the files on disk, not only from the tables
(purge.py): the store is VACUUMed and its WAL truncated, waiting for a reader to let go.

Before anything, resolve runs (incrementally), so that records ingested but not resolved yet
are found too. A run killed before its commit changed nothing; killed after it, or held up by
a reader, a rerun says the person is forgotten already and finishes the purge.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from cdp_cli.config import Config
from cdp_cli.consent import MANUAL_SOURCE, SUPPRESSIBLE
from cdp_cli.errors import CdpError, NotFound
from cdp_cli.exports import RULE_PREFIX, exports_of
from cdp_cli.files import write_text
from cdp_cli.identity.normalize import email_key, normalize_phone
from cdp_cli.identity.profiles import Lookup, build_profiles, find_one_id
from cdp_cli.identity.resolve import resolve, unresolved_batches
from cdp_cli.identity.tombstones import Tombstones, erase_records, store_salt, tombstone_hash
from cdp_cli.purge import Purge, needles_of, purge
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso, transaction

FORGOTTEN = "forgotten"  # the one_id left on written messages and coupon issues
# Tables that hold one row or more per customer by one_id, erased outright.
BY_ONE_ID = (
    "profiles", "profile_tags", "tag_changes", "profile_features", "profile_event_counts",
    "journey_enrolments", "feature_recount", "feature_keys", "predictions",
    "prediction_propensities", "tag_rows",
)  # fmt: skip
OUTBOUND_SUFFIXES = (".csv", ".jsonl")
ERASED_RULE = f"{RULE_PREFIX}(erased: it named a forgotten person)"  # in the export log
# Every table that can hold a person, and what forget does with it (a test holds the schema to
# this list: a new table with a one_id, an identity key or a personal column must be added).
HANDLED_TABLES = {
    "customers": "their rows deleted",
    "events": "their rows deleted",
    "consents": "their rows deleted",
    "orders": "kept for the books: identity fields, attrs and link cleared, items' products kept",
    "coupons": "kept: identity fields, attrs and link cleared",
    "identity_keys": "their keys deleted",
    "identifiers": "theirs deleted, each leaving a tombstone",
    "key_identifiers": "links of their keys and identifiers deleted",
    "unusable_values": "those of their records deleted",
    "refused_links": "those of their keys and identifiers deleted",
    "replaced_identity_keys": "their keys deleted; others' erased keys noted for resolve",
    "id_history": "their events deleted; one `forgotten` event added",
    "profiles": "deleted",
    "profile_tags": "deleted",
    "tag_changes": "deleted",
    "tag_rows": "deleted",
    "profile_features": "deleted",
    "profile_event_counts": "deleted",
    "feature_recount": "deleted",
    "feature_keys": "deleted",
    "feature_left_keys": "their erased keys, and others', deleted (the next tag run reads all)",
    "journey_enrolments": "deleted",
    "predictions": "deleted",
    "prediction_propensities": "deleted",
    "messages": "unsent and skipped deleted; written kept for the books without a person",
    "coupon_issues": "kept, so a code is never drawn twice; one_id becomes `forgotten`",
    "rejects": "lines naming one of their identifiers deleted",
    "match_records": "those of their keys deleted",
    "match_blocks": "those of their keys deleted",
    "match_links": "those of their keys deleted",
    "match_reviews": "those of their keys deleted",
    "match_decisions": "those of their keys deleted",
    "export_members": "their links deleted: the files they were in are listed",
    "exports": "kept: path, time, kind and rows; an audience rule naming them is erased",
    "schema_migrations": "nothing personal: migration names",
}


@dataclass
class Target:
    """Who `cdp forget` was asked about, before anything is erased."""

    one_id: str | None  # None: forgotten already
    name: str | None = None
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    records: int = 0


@dataclass
class ForgetResult:
    """What one `cdp forget` erased."""

    one_id: str | None
    already_forgotten: bool = False
    identifiers: list[dict[str, str]] = field(default_factory=list)
    tombstones: int = 0
    records: dict[str, int] = field(default_factory=dict)
    other_customers: list[str] = field(default_factory=list)
    journey_enrolments: int = 0
    messages_deleted: int = 0
    messages_kept_without_person: int = 0
    rejects: int = 0
    outbound_files: list[str] = field(default_factory=list)
    # The files cdp wrote with them in: path, written_at, kind, audience, rows, and rewritten
    # (an outbound file not picked up yet, rewritten without them); the rest it cannot erase.
    exports: list[dict[str, Any]] = field(default_factory=list)
    purge: Purge = field(default_factory=Purge)

    @property
    def vacuumed(self) -> bool:
        return self.purge.vacuumed

    @property
    def wal_truncated(self) -> bool:
        return self.purge.wal_truncated

    def as_dict(self) -> dict[str, Any]:
        erased = {k: v for k, v in asdict(self).items() if k != "purge"}
        return {**erased, **self.purge.as_dict()}


class _NewBatch(Exception):
    """A batch finished between resolve and the erasing transaction: resolve again."""


# ---------------------------------------------------------------------------------------------
# Finding the person


def find_target(db: sqlite_utils.Database, config: Config, lookup: Lookup) -> Target:
    """Resolve what is new, then find the customer; forgotten already, a Target without one."""
    resolve(db, config)
    try:
        one_id, _ = find_one_id(db, config, lookup)
    except NotFound:
        if _forgotten_already(db, config, lookup):
            asked = _lookup_identifier(config, lookup)  # what the purge can look for
            return Target(None, identifiers=[asked] if asked else [])
        raise
    profile = db.conn.execute(
        "SELECT name, records FROM profiles WHERE one_id = ?", (one_id,)
    ).fetchone()
    identifiers = db.conn.execute(
        "SELECT type, value FROM identifiers WHERE one_id = ? ORDER BY type, value", (one_id,)
    ).fetchall()
    return Target(one_id, profile[0], identifiers, profile[1])


def _lookup_identifier(config: Config, lookup: Lookup) -> tuple[str, str] | None:
    if lookup.phone:
        value = normalize_phone(lookup.phone, config.region)
        return ("phone", value) if value else None
    if lookup.email:
        value = email_key(lookup.email)
        return ("email", value) if value else None
    if lookup.device:
        return "device_id", lookup.device.strip().upper()
    return None


def _forgotten_already(db: sqlite_utils.Database, config: Config, lookup: Lookup) -> bool:
    if lookup.one_id:
        return bool(
            db.conn.execute(
                "SELECT 1 FROM id_history WHERE one_id = ? AND event = 'forgotten'",
                (lookup.one_id,),
            ).fetchone()
        )
    ident = _lookup_identifier(config, lookup)
    if ident is None:
        return False
    digest = tombstone_hash(store_salt(db.conn), *ident)
    return bool(db.conn.execute("SELECT 1 FROM tombstones WHERE hash = ?", (digest,)).fetchone())


# ---------------------------------------------------------------------------------------------
# Forgetting


def forget(
    db: sqlite_utils.Database, config: Config, target: Target, wait: float = 0
) -> ForgetResult:
    """Erase the person `find_target` found, then purge their bytes from the store's files,
    waiting up to `wait` seconds for a reader to let go (purge.py); `result.purge.purged`
    says whether they are gone. Forgotten already: only the purge, finished again."""
    if target.one_id is None:
        result = ForgetResult(None, already_forgotten=True)
        identifiers = target.identifiers
    else:
        result = _erase_in_one_transaction(db, config, target.one_id)
        identifiers = [(i["type"], i["value"]) for i in result.identifiers]
    result.purge = purge(db, needles_of(identifiers), wait)
    return result


def _erase_in_one_transaction(
    db: sqlite_utils.Database, config: Config, one_id: str
) -> ForgetResult:
    for _ in range(3):
        try:
            with transaction(db):
                if unresolved_batches(db):
                    raise _NewBatch
                return _erase(db, config, one_id)
        except _NewBatch:
            resolve(db, config)
            if not db.conn.execute("SELECT 1 FROM profiles WHERE one_id = ?", (one_id,)).fetchone():
                raise CdpError(
                    f"{one_id} was merged or split by a batch that arrived meanwhile: "
                    "run `cdp forget` again"
                ) from None
    raise CdpError("new batches keep arriving while forgetting: run `cdp forget` again")


def _erase(db: sqlite_utils.Database, config: Config, one_id: str) -> ForgetResult:
    conn = db.conn
    result = ForgetResult(one_id)
    one_ids = _one_ids(conn, one_id)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS forget_keys (key INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM forget_keys")
    conn.execute(
        "INSERT INTO forget_keys SELECT key FROM identity_keys WHERE one_id = ?", (one_id,)
    )
    idents = _their_identifiers(conn, one_id)
    result.identifiers = [{"type": t, "value": v} for _, t, v in idents]
    salt = store_salt(conn)
    at = now_iso()
    result.tombstones = conn.executemany(
        "INSERT OR IGNORE INTO tombstones (hash, type, forgotten_at) VALUES (?, ?, ?)",
        [(tombstone_hash(salt, t, v), t, at) for _, t, v in idents],
    ).rowcount
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS forget_idents (id INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM forget_idents")
    conn.executemany("INSERT INTO forget_idents VALUES (?)", [(i,) for i, _, _ in idents])
    # Every key that carries one of their identifiers: theirs, and records of others naming them.
    others = [
        k for (k,) in conn.execute(
            "SELECT DISTINCT ki.key FROM key_identifiers ki "
            "JOIN forget_idents f ON f.id = ki.identifier_id "
            "WHERE ki.key NOT IN (SELECT key FROM forget_keys)"
        )
    ]  # fmt: skip
    result.other_customers = sorted(
        {o for (o,) in conn.execute(
            f"SELECT DISTINCT one_id FROM identity_keys WHERE key IN ({_marks(others)}) "
            "AND one_id IS NOT NULL AND one_id != ?", [*others, one_id],
        )}
    )  # fmt: skip
    theirs = [k for (k,) in conn.execute("SELECT key FROM forget_keys")]
    tombstones = Tombstones.load(conn, config.identity, config.region)
    assert tombstones is not None
    result.records = erase_records(conn, theirs + others, tombstones, reject=False)
    result.records["consents"] = result.records.get("consents", 0) + _erase_suppressions(
        conn, idents
    )
    _erase_identity(conn, others)
    _erase_by_one_id(conn, one_ids, result)
    addresses = _addresses(idents)
    _erase_messages(conn, one_ids, addresses, result)
    mine = Tombstones(salt, {tombstone_hash(salt, t, v) for _, t, v in idents},
                      {t for _, t, v in idents}, config.identity, config.region)  # fmt: skip
    result.rejects = _erase_rejects(conn, mine, idents)
    result.exports = _erase_from_export_log(conn, mine, one_ids)
    conn.execute(
        "INSERT INTO id_history (one_id, event, other_one_id, run_id, at) "
        "VALUES (?, 'forgotten', NULL, 0, ?)",
        (one_id, at),
    )
    if result.other_customers:
        build_profiles(db, result.other_customers, at, config.identity.source_priority)
    # Files last, before the commit: killed after them, the rerun erases the same rows again.
    result.outbound_files = rewrite_outbound(config.outbound_folder, set(one_ids), addresses)
    rewritten = {str(Path(path).resolve()) for path in result.outbound_files}
    for export in result.exports:
        export["rewritten"] = export["path"] in rewritten
    return result


def _erase_suppressions(conn: sqlite3.Connection, idents: list[tuple[int, str, str]]) -> int:
    """Suppressions recorded by hand for their phone or email before cdp knew them (no
    identity key links those to them); the tombstones keep them from being messaged."""
    rows = [(t, v) for _, t, v in idents if t in SUPPRESSIBLE]
    return sum(
        conn.execute(
            f"DELETE FROM consents WHERE identity_key IS NULL AND source = ? AND {t} = ?",
            (MANUAL_SOURCE, v),
        ).rowcount
        for t, v in rows
    )


def _marks(values: list[Any]) -> str:
    return ",".join("?" * len(values))


def _one_ids(conn: sqlite3.Connection, one_id: str) -> list[str]:
    """The one_id and every one_id merged into it, directly or through others."""
    found = [one_id]
    for current in found:
        for (older,) in conn.execute(
            "SELECT one_id FROM id_history WHERE other_one_id = ? AND event = 'merged'", (current,)
        ):
            if older not in found:
                found.append(older)
    return found


def _their_identifiers(conn: sqlite3.Connection, one_id: str) -> list[tuple[int, str, str]]:
    """(id, type, value): identifiers linked to them, and those only their records carry (a
    phone a guard refused to link) - not one shared with others, such as a store's tablet."""
    return conn.execute(
        """SELECT id, type, value FROM identifiers WHERE one_id = ?
UNION SELECT i.id, i.type, i.value FROM identifiers i
  JOIN key_identifiers ki ON ki.identifier_id = i.id JOIN forget_keys f ON f.key = ki.key
  WHERE i.one_id IS NULL AND NOT EXISTS (
    SELECT 1 FROM key_identifiers o WHERE o.identifier_id = i.id
    AND o.key NOT IN (SELECT key FROM forget_keys))
ORDER BY 2, 3""",
        (one_id,),
    ).fetchall()


def _erase_identity(conn: sqlite3.Connection, others: list[int]) -> None:
    """Their keys and identifiers leave the identity graph. Another customer's keys whose
    records were erased are left for the next resolve, noted as replaced by none, so that
    their customer is resolved again without them."""
    mine = "(SELECT key FROM forget_keys)"
    ids = "(SELECT id FROM forget_idents)"
    conn.execute(f"DELETE FROM identity_keys WHERE key IN {mine}")
    conn.execute(f"DELETE FROM key_identifiers WHERE key IN {mine} OR identifier_id IN {ids}")
    conn.execute(f"DELETE FROM refused_links WHERE key IN {mine} OR identifier_id IN {ids}")
    conn.execute(f"DELETE FROM unusable_values WHERE key IN {mine}")
    conn.executemany("DELETE FROM unusable_values WHERE key = ?", [(k,) for k in others])
    conn.execute(f"DELETE FROM identifiers WHERE id IN {ids}")
    conn.execute(f"DELETE FROM feature_left_keys WHERE key IN {mine}")  # the next tag run
    conn.executemany("DELETE FROM feature_left_keys WHERE key = ?", [(k,) for k in others])
    conn.execute(f"DELETE FROM match_records WHERE key IN {mine}")
    conn.execute(f"DELETE FROM match_blocks WHERE key IN {mine}")
    for table in ("match_links", "match_reviews", "match_decisions"):
        conn.execute(f"DELETE FROM {table} WHERE key_a IN {mine} OR key_b IN {mine}")
    conn.executemany(
        "INSERT OR IGNORE INTO replaced_identity_keys (old_key, new_key) VALUES (?, NULL)",
        [(k,) for k in others],
    )


def _erase_by_one_id(conn: sqlite3.Connection, one_ids: list[str], result: ForgetResult) -> None:
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    marks = _marks(one_ids)
    for table in BY_ONE_ID:
        if table in present:
            deleted = conn.execute(f"DELETE FROM {table} WHERE one_id IN ({marks})", one_ids)
            if table == "journey_enrolments":
                result.journey_enrolments = deleted.rowcount
    conn.execute(f"DELETE FROM id_history WHERE one_id IN ({marks})", one_ids)
    conn.execute(
        f"UPDATE coupon_issues SET one_id = '{FORGOTTEN}' WHERE one_id IN ({marks})", one_ids
    )


def _addresses(idents: list[tuple[int, str, str]]) -> set[str]:
    """What a message to them was addressed to: a phone, an email, an openid, a device."""
    kinds = ("phone", "email", "wechat_openid", "device_id")
    return {v.split(":", 1)[-1] for _, t, v in idents if t in kinds}


def _erase_messages(
    conn: sqlite3.Connection, one_ids: list[str], addresses: set[str], result: ForgetResult
) -> None:
    """Unsent and skipped messages go; written ones keep their cost and file for the books."""
    params = [*one_ids, *addresses]
    theirs = f"(one_id IN ({_marks(one_ids)}) OR address IN ({_marks(list(addresses))}))"
    result.messages_deleted = conn.execute(
        f"DELETE FROM messages WHERE {theirs} AND status != 'written'", params
    ).rowcount
    result.messages_kept_without_person = conn.execute(
        f"UPDATE messages SET one_id = '{FORGOTTEN}', address = NULL, payload = NULL "
        f"WHERE {theirs} AND status = 'written'",
        params,
    ).rowcount


def _erase_rejects(
    conn: sqlite3.Connection, mine: Tombstones, idents: list[tuple[int, str, str]]
) -> int:
    """Rejected lines that name one of their identifiers, in any written form."""
    digits = [str(phonenumbers.parse(v).national_number) for _, t, v in idents if t == "phone"]
    words = [v.split(":", 1)[-1].casefold() for _, t, v in idents if t != "phone"]
    doomed = []
    for reject_id, raw in conn.execute("SELECT id, raw FROM rejects WHERE raw IS NOT NULL"):
        folded = raw.casefold()
        bare = re.sub(r"\D", "", raw)
        named = any(d in bare for d in digits) or any(w in folded for w in words)
        if named and mine.mentioned_in(raw):  # the quick test first, the exact one to be sure
            doomed.append((reject_id,))
    conn.executemany("DELETE FROM rejects WHERE id = ?", doomed)
    return len(doomed)


def _erase_from_export_log(
    conn: sqlite3.Connection, mine: Tombstones, one_ids: list[str]
) -> list[dict[str, Any]]:
    """The files cdp wrote with them in, as the export log has them. Their links to those files
    go; each file keeps its path, time, kind and rows, and an audience rule naming them goes."""
    rules = conn.execute(
        "SELECT id, audience FROM exports WHERE audience LIKE ?", (f"{RULE_PREFIX}%",)
    ).fetchall()
    naming = [
        (export_id,)
        for export_id, rule in rules
        if any(o in rule for o in one_ids) or mine.mentioned_in(rule)
    ]
    conn.executemany(
        "UPDATE exports SET audience = ? WHERE id = ?", [(ERASED_RULE, *n) for n in naming]
    )
    found = exports_of(conn, one_ids)
    conn.execute(f"DELETE FROM export_members WHERE one_id IN ({_marks(one_ids)})", one_ids)
    return [{k: v for k, v in export.items() if k != "id"} for export in found]


# ---------------------------------------------------------------------------------------------
# Outbound files


def rewrite_outbound(folder: Path, one_ids: set[str], addresses: set[str]) -> list[str]:
    """Rewrite each file under `folder` that holds a row for them (by one_id or address),
    without those rows: whole, under a temporary name, then renamed. The paths rewritten."""
    if not folder.is_dir():
        return []
    needles = [n.encode() for n in (*one_ids, *addresses)]
    rewritten = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fmt = path.name.removesuffix(".tmp")
        if not fmt.endswith(OUTBOUND_SUFFIXES):
            continue
        content = path.read_bytes()
        if not any(n in content for n in needles):
            continue
        text = content.decode("utf-8")
        if fmt.endswith(".csv"):
            kept = _csv_without(text, one_ids, addresses)
        else:
            kept = _jsonl_without(text, one_ids, addresses)
        if kept is not None and kept != text:
            write_text(path, kept, temp_suffix=".forget")
            rewritten.append(str(path))
    return rewritten


def _csv_without(text: str, one_ids: set[str], addresses: set[str]) -> str | None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or not {"one_id", "to"} & set(rows[0]):
        return None  # not an outbound file cdp wrote
    header = rows[0]
    who = header.index("one_id") if "one_id" in header else None
    to = header.index("to") if "to" in header else None
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows[1:]:
        if (who is not None and who < len(row) and row[who] in one_ids) or (
            to is not None and to < len(row) and row[to] in addresses
        ):
            continue
        writer.writerow(row)
    return out.getvalue()


def _jsonl_without(text: str, one_ids: set[str], addresses: set[str]) -> str:
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line)
            continue
        if isinstance(record, dict) and (
            record.get("one_id") in one_ids or record.get("to") in addresses
        ):
            continue
        kept.append(line)
    return "".join(kept)
