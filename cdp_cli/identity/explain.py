"""Why a customer's records are together (`cdp explain`), one record named by its identity
key, and the ID-mapping export: what the resolved tables say, read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdp_cli.canonical import KINDS
from cdp_cli.exports import ID_MAPPING, Export, Members, write_logged_rows
from cdp_cli.files import row_format
from cdp_cli.identity.profiles import follow_merges
from cdp_cli.identity.review import probable_links
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import rows_as_dicts


def explain(db: sqlite_utils.Database, one_id: str) -> dict[str, Any]:
    """Why a customer's records are together, and which links were refused."""
    current, merged_from = follow_merges(db, one_id)

    def rows(sql: str) -> list[dict[str, Any]]:
        return rows_as_dicts(db, sql, (current,))

    records = rows(
        "SELECT m.kind, m.source, m.key, t.key AS identity_key FROM identity_keys t "
        "JOIN (" + _RECORDS_BY_KEY + ") m ON m.identity_key = t.key "
        "WHERE t.one_id = ? ORDER BY m.kind, m.source, m.key LIMIT 500"
    )
    links = rows(
        "SELECT i.type, i.value, i.detail, count(DISTINCT ki.key) AS keys FROM identifiers i "
        "JOIN key_identifiers ki ON ki.identifier_id = i.id WHERE i.one_id = ? "
        "GROUP BY i.id ORDER BY i.type, i.value"
    )
    refused = rows(
        "SELECT i.type, i.value, r.reason, r.key AS identity_key, i.one_id AS belongs_to "
        "FROM refused_links r JOIN identifiers i ON i.id = r.identifier_id "
        "WHERE r.key IN (SELECT key FROM identity_keys WHERE one_id = ?) ORDER BY i.type"
    )
    unusable = rows(
        "SELECT DISTINCT u.type, u.raw, u.reason FROM unusable_values u "
        "WHERE u.key IN (SELECT key FROM identity_keys WHERE one_id = ?) ORDER BY u.type, u.raw"
    )
    probable = probable_links(db, current)
    for link in probable:
        link["record_a"] = record_of_key(db, link["key_a"])
        link["record_b"] = record_of_key(db, link["key_b"])
    return {
        "one_id": current,
        "asked_for": one_id,
        "merged_from": merged_from,
        "identifiers": links,
        "records": records,
        "refused_links": refused,
        "unusable_values": unusable,
        "probable_links": probable,
    }


def record_of_key(db: sqlite_utils.Database, key: int) -> dict[str, Any] | None:
    """One record (kind, source, key) carrying an identity key: how a person names it."""
    for kind in KINDS.values():
        row = db.conn.execute(
            f"SELECT source, key FROM {kind.table} WHERE identity_key = ? ORDER BY id LIMIT 1",
            (key,),
        ).fetchone()
        if row:
            return {"kind": kind.name, "source": row[0], "key": row[1]}
    return None


_RECORDS_BY_KEY = " UNION ALL ".join(
    f"SELECT '{kind.name}' AS kind, source, key, identity_key FROM {kind.table}"
    for kind in KINDS.values()
)


def export_mapping(db: sqlite_utils.Database, path: Path) -> int:
    """Write the ID-mapping table (kind, source, key, one_id), CSV or JSONL by extension.

    Written to a temporary file and renamed, so a reader never sees half of it, then logged
    with its customers (exports.py). CSV cells a spreadsheet would run as a formula are
    neutralised (csvsafe).
    """
    row_format(path)
    logged = Members(db.conn)
    cursor = db.conn.execute("SELECT kind, source, key, one_id FROM id_mapping")
    fields = ("kind", "source", "key", "one_id")
    return write_logged_rows(db, path, fields, cursor, Export(ID_MAPPING), logged, one_id_at=3)
