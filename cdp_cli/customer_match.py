"""Hashed audience files for ad platforms' customer matching (`cdp segment --hashed`).

Each customer becomes one row of SHA-256 hex digests (lower case) of their normalized emails
and phones, in the columns and forms a platform documents for its customer-list upload:

- `google`, Google Ads Customer Match: headers `Email` and `Phone`; the email trimmed and in
  lower case, the phone in E.164 (`+8613800138000`), each hashed.
- `meta`, Meta (Facebook) custom audience customer list: headers `email` and `phone`; the
  email trimmed and in lower case, the phone as digits with the country code and no `+`
  (`8613800138000`), each hashed.

Both take several emails and phones per customer as repeated columns (Meta up to three), so a
customer's first three of each go in. Customers with neither are left out. docs/privacy.md
cites the platforms' pages.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cdp_cli.csvsafe import safe_row
from cdp_cli.errors import UsageError
from cdp_cli.exports import HASHED_SEGMENT, Export, Members, record_export
from cdp_cli.files import atomic_write
from cdp_cli.rules.book import RuleBook
from cdp_cli.segments import Audience, members
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import transaction

PER_TYPE = 3  # Meta takes up to three columns of each identifier


@dataclass(frozen=True)
class Layout:
    """One platform's customer-list file: its headers and the phone form it hashes."""

    name: str
    email_header: str
    phone_header: str
    phone_form: Callable[[str], str]  # from E.164


LAYOUTS = {
    "google": Layout("google", "Email", "Phone", lambda e164: e164),
    "meta": Layout("meta", "email", "phone", lambda e164: e164.lstrip("+")),
}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hashed_row(layout: Layout, emails: list[str], phones: list[str]) -> list[str]:
    """Digests of a customer's emails, then phones, normalized as the layout says."""
    return [sha256_hex(e.strip().lower()) for e in emails] + [
        sha256_hex(layout.phone_form(p)) for p in phones
    ]


def export_hashed(
    db: sqlite_utils.Database,
    book: RuleBook,
    as_of: date,
    chosen: Audience,
    path: Path,
    layout_name: str,
) -> int:
    """Write the audience's hashed emails and phones to a CSV in a platform's layout; the
    customers written. Through a temporary file renamed when complete, then logged with its
    customers (exports.py)."""
    if layout_name not in LAYOUTS:
        raise UsageError(f"--layout {layout_name!r}: use one of {', '.join(LAYOUTS)}")
    if path.suffix.lower() != ".csv":
        raise UsageError(f"{path}: a hashed export is written as .csv")
    layout = LAYOUTS[layout_name]
    _, cursor = members(db, book, as_of, chosen, ["one_id"])
    audience = cursor.fetchall()  # before the temp table: DDL would abort a pending query
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS hashed_audience (one_id TEXT PRIMARY KEY)")
    db.conn.execute("DELETE FROM hashed_audience")
    db.conn.executemany("INSERT INTO hashed_audience VALUES (?)", audience)
    grouped = db.conn.execute(
        """SELECT a.one_id,
  (SELECT json_group_array(value) FROM (SELECT value FROM identifiers i WHERE i.one_id = a.one_id
     AND i.type = 'email' AND i.status = 'linked' ORDER BY value LIMIT ?)),
  (SELECT json_group_array(value) FROM (SELECT value FROM identifiers i WHERE i.one_id = a.one_id
     AND i.type = 'phone' AND i.status = 'linked' ORDER BY value LIMIT ?))
FROM hashed_audience a ORDER BY a.one_id""",
        (PER_TYPE, PER_TYPE),
    ).fetchall()
    rows = [(one_id, json.loads(e), json.loads(p)) for one_id, e, p in grouped]
    rows = [(one_id, e, p) for one_id, e, p in rows if e or p]
    logged = Members(db.conn)
    emails = max([len(e) for _, e, _ in rows] or [1]) or 1
    phones = max([len(p) for _, _, p in rows] or [1]) or 1
    with atomic_write(path) as f:
        writer = csv.writer(f)
        writer.writerow([layout.email_header] * emails + [layout.phone_header] * phones)
        for one_id, e, p in rows:
            cells = hashed_row(layout, e, [])
            cells += [""] * (emails - len(e))
            cells += hashed_row(layout, [], p) + [""] * (phones - len(p))
            writer.writerow(safe_row(cells))
            logged.add(one_id)
    with transaction(db) as conn:  # hashes are personal data too: the file is logged
        record_export(conn, path, Export(HASHED_SEGMENT, chosen.label), len(rows), logged)
    return len(rows)
