"""`cdp consent`: record one opt-in or opt-out by hand, and show what a customer consented to.

A consent recorded by hand is stored as ingest would store a row of a consents source: one
batch of the source `manual` holding one row, with its channel, status, time and reason.

Consents reach a customer through their identity key, like every row. The manual row carries
one identifier of the customer, in its normalized form: the phone or email it was asked for,
else their strongest identifier (a member number before a phone, say), so the consent stays
with that identifier if customers are later merged or split. Its key is linked to the
customer in the same transaction, exactly as resolve would link a key that carries only an
identifier the customer holds, so journeys obey it at once and the next resolve finds nothing
new in it: no customer is created from it.

A phone or email no customer has yet is recorded all the same, as a suppression: the row
carries the normalized phone or email and no identity key, so resolve makes no customer of
it, and it holds for whoever holds that phone or email (linked), now or after a later export
brings them in (CUSTOMER_CONSENTS reads both kinds).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cdp_cli.canonical import CONSENT_STATUSES, IDENTITY_FIELDS
from cdp_cli.config import Config
from cdp_cli.errors import CdpError, NotFound, UsageError
from cdp_cli.identity.normalize import Normalizer, email_key, identity_key, normalize_phone
from cdp_cli.identity.profiles import Lookup, build_profiles, check_lookup, find_one_id
from cdp_cli.identity.settings import IdentifierType
from cdp_cli.messaging.channels import CHANNEL_NAMES, CONSENT_CHANNELS, purposes_obeyed
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import insert_row, now_iso, rows_as_dicts, transaction

MANUAL_SOURCE = "manual"
SUPPRESSIBLE = ("phone", "email")  # a suppression is recorded by one of these
# The consents of a batch of customers (a JSON array of one_ids, given twice), oldest first:
# those linked to them through an identity key, and suppressions recorded by hand for a
# phone or email before anyone had it, matched on the identifiers they hold now.
CUSTOMER_CONSENTS = (
    "SELECT one_id, channel, status, consented_at, source, reason, purpose FROM ("
    "SELECT k.one_id, lower(c.channel) AS channel, c.status, c.consented_at, c.source, "
    "c.reason, c.purpose, c.id FROM consents c JOIN identity_keys k ON k.key = c.identity_key "
    "WHERE k.one_id IN (SELECT value FROM json_each(?)) "
    "UNION ALL "
    "SELECT i.one_id, lower(c.channel), c.status, c.consented_at, c.source, c.reason, "
    "c.purpose, c.id FROM consents c JOIN identifiers i ON i.status = 'linked' "
    "AND ((i.type = 'phone' AND i.value = c.phone) OR (i.type = 'email' AND i.value = c.email)) "
    f"WHERE c.identity_key IS NULL AND c.source = '{MANUAL_SOURCE}' "
    "AND i.one_id IN (SELECT value FROM json_each(?))"
    ") ORDER BY coalesce(consented_at, ''), id"
)


@dataclass
class Consent:
    """One consent recorded by hand, and the identifier that links it to its customer;
    `one_id` is None for a suppression (no customer had the phone or email yet)."""

    one_id: str | None
    channel: str
    status: str
    consented_at: str
    reason: str | None
    source: str
    batch_id: int
    identifier_type: str
    identifier: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_consent(
    db: sqlite_utils.Database,
    config: Config,
    lookup: Lookup,
    channel: str,
    status: str,
    reason: str | None = None,
) -> Consent:
    """Record an opt-in or opt-out for the customer `lookup` finds, effective at once."""
    if channel not in CONSENT_CHANNELS:
        raise UsageError(f"channel {channel!r}: use one of {', '.join(CONSENT_CHANNELS)}")
    if status not in CONSENT_STATUSES:
        raise UsageError(f"status {status!r}: use opt_in or opt_out")
    at = datetime.now(ZoneInfo(config.timezone)).isoformat(timespec="seconds")
    try:
        one_id = find_one_id(db, config, lookup)[0]
    except NotFound:
        suppressed = _suppressed_identifier(config, lookup)
        if suppressed is None:
            raise
        type_name, value = suppressed
        with transaction(db) as conn:
            batch_id = _insert_row(conn, channel, status, at, reason, {type_name: value}, None)
        return Consent(None, channel, status, at, reason, MANUAL_SOURCE, batch_id, type_name,
                       value)  # fmt: skip
    with transaction(db) as conn:
        ident_id, type_name, value, fields = _carrier(db, config, one_id, lookup)
        key = identity_key([(f.name, fields.get(f.name)) for f in IDENTITY_FIELDS])
        batch_id = _insert_row(conn, channel, status, at, reason, fields, key)
        conn.execute(
            "INSERT OR IGNORE INTO identity_keys (key, one_id, resolved_at) VALUES (?, ?, ?)",
            (key, one_id, now_iso()),
        )
        conn.execute("INSERT OR IGNORE INTO key_identifiers VALUES (?, ?)", (key, ident_id))
        build_profiles(db, [one_id], now_iso(), config.identity.source_priority)
    return Consent(one_id, channel, status, at, reason, MANUAL_SOURCE, batch_id, type_name, value)


def _insert_row(
    conn: sqlite3.Connection,
    channel: str,
    status: str,
    at: str,
    reason: str | None,
    fields: dict[str, str],
    key: int | None,
) -> int:
    """One batch of the source `manual` holding one consents row; the batch's id."""
    # Where the row goes, as ingest records it: resolve reads it from there, not by a scan.
    inserted_after = conn.execute("SELECT coalesce(max(id), 0) FROM consents").fetchone()[0]
    batch_id = insert_row(
        conn,
        "INSERT INTO batches (source, kind, file, sha256, size, status, pid, started_at, "
        "finished_at, rows_read, rows_inserted, inserted_after) "
        "VALUES (?, 'consents', '(cdp consent)', ?, 0, 'done', ?, ?, ?, 1, 1, ?)",
        # No file: a random digest, never one of the row (it would hash the phone).
        (MANUAL_SOURCE, secrets.token_hex(32), os.getpid(), now_iso(), now_iso(), inserted_after),
    )
    columns = ["channel", "status", "consented_at", "reason", *fields]
    conn.execute(
        f"INSERT INTO consents (source, key, {', '.join(columns)}, identity_key, batch_id) "
        f"VALUES (?, ?, {', '.join('?' * len(columns))}, ?, ?)",
        [MANUAL_SOURCE, str(batch_id), channel, status, at, reason, *fields.values(), key,
         batch_id],
    )  # fmt: skip
    return batch_id


def _suppressed_identifier(config: Config, lookup: Lookup) -> tuple[str, str] | None:
    """('phone', E.164) or ('email', its key) for a suppression; None for a one_id (a
    suppression needs an address). A phone or email that does not normalize is refused."""
    check_lookup(config, lookup)
    if lookup.phone:
        return "phone", normalize_phone(lookup.phone, config.region) or ""
    if lookup.email:
        return "email", email_key(lookup.email) or ""
    return None


def _carrier(
    db: sqlite_utils.Database, config: Config, one_id: str, lookup: Lookup
) -> tuple[int, str, str, dict[str, str]]:
    """(identifier id, type, value, the row's identity fields): the identifier the manual row
    carries, checked to normalize back to itself so that resolve links it the same way."""
    linked = db.conn.execute(
        "SELECT id, type, value FROM identifiers WHERE one_id = ? AND status = 'linked' "
        "ORDER BY value",
        (one_id,),
    ).fetchall()
    asked = "phone" if lookup.phone else "email" if lookup.email else None
    normalizer = Normalizer(config.identity, config.region)
    for type_ in _carrier_types(config, asked):
        for ident_id, type_name, value in linked:
            if type_name != type_.name:
                continue
            fields = _fields_of(type_, value)
            found, _ = normalizer.identifiers(fields)
            if (type_name, value) in {(t, v) for t, v, _ in found}:
                return ident_id, type_name, value, fields
    raise CdpError(f"{one_id} has no identifier a consent can be linked by")


def _carrier_types(config: Config, asked: str | None) -> list[IdentifierType]:
    """Identifier types in the order tried: the one asked for, then strongest first. A type
    that does not join records, or reads several fields, cannot carry a consent alone; a type
    capped per value (a device) comes last."""
    usable = [
        t for t in config.identity.types
        if t.joins and (len(t.fields) == 1 or t.name == "wechat_openid")
    ]  # fmt: skip
    return sorted(usable, key=lambda t: (t.name != asked, t.max_profiles_per_value is not None))


def _fields_of(type_: IdentifierType, value: str) -> dict[str, str]:
    if type_.name == "wechat_openid":
        appid, _, openid = value.rpartition(":")
        return (
            {"wechat_appid": appid, "wechat_openid": openid} if appid else {"wechat_openid": openid}
        )
    return {type_.fields[0]: value}


def consents_of(db: sqlite_utils.Database, config: Config, lookup: Lookup) -> dict[str, Any]:
    """A customer's consents, oldest first, and the latest per channel: what journeys read.

    For a phone or email no customer has, the suppressions recorded for it (one_id None)."""
    try:
        one_id: str | None = find_one_id(db, config, lookup)[0]
    except NotFound:
        suppressed = _suppressed_identifier(config, lookup)
        history = _suppressions(db, *suppressed) if suppressed else []
        if not history:
            raise
        one_id = None
    else:
        ids = json.dumps([one_id])
        history = rows_as_dicts(db, CUSTOMER_CONSENTS, (ids, ids))
        for row in history:
            del row["one_id"]
    latest = {row["channel"]: row for row in history}
    # As the send guard of a marketing journey reads them: the latest consent per channel
    # among those for marketing (or for all); an opt-out of `all` covers every channel.
    marketing = purposes_obeyed(transactional=False)
    obeyed = {row["channel"]: row for row in history if row.get("purpose") in marketing}
    out = {c for c, row in obeyed.items() if row["status"] == "opt_out"}
    blocked = [c for c in CHANNEL_NAMES if c in out or "all" in out]
    return {
        "one_id": one_id,
        "latest": [latest[c] for c in sorted(latest)],
        "journeys_skip": blocked,
        "history": history,
    }


def _suppressions(db: sqlite_utils.Database, type_name: str, value: str) -> list[dict[str, Any]]:
    """The suppressions recorded for a phone or email (SUPPRESSIBLE), oldest first."""
    assert type_name in SUPPRESSIBLE
    return rows_as_dicts(
        db,
        "SELECT lower(channel) AS channel, status, consented_at, source, reason, purpose "
        "FROM consents "
        f"WHERE identity_key IS NULL AND source = ? AND {type_name} = ? "
        "ORDER BY coalesce(consented_at, ''), id",
        (MANUAL_SOURCE, value),
    )
