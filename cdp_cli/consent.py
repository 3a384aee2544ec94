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
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from cdp_cli.canonical import IDENTITY_FIELDS
from cdp_cli.config import Config, IdentifierType
from cdp_cli.errors import CdpError, NotFound, UsageError
from cdp_cli.identity.normalize import Normalizer, identity_key
from cdp_cli.identity.profiles import Lookup, build_profiles, find_one_id
from cdp_cli.messaging.channels import CHANNEL_NAMES, CONSENT_CHANNELS
from cdp_cli.privacy import masked_lookup
from cdp_cli.store import insert_row, now_iso, rows_as_dicts, transaction

STATUSES = ("opt_in", "opt_out")
MANUAL_SOURCE = "manual"


@dataclass
class Consent:
    """One consent recorded by hand, and the identifier that links it to its customer."""

    one_id: str
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
    if status not in STATUSES:
        raise UsageError(f"status {status!r}: use opt_in or opt_out")
    one_id = _find(db, config, lookup)
    at = datetime.now(ZoneInfo(config.timezone)).isoformat(timespec="seconds")
    with transaction(db) as conn:
        ident_id, type_name, value, fields = _carrier(db, config, one_id, lookup)
        key = identity_key([(f.name, fields.get(f.name)) for f in IDENTITY_FIELDS])
        batch_id = insert_row(
            conn,
            "INSERT INTO batches (source, kind, file, sha256, size, status, pid, started_at, "
            "finished_at, rows_read, rows_inserted) "
            "VALUES (?, 'consents', '(cdp consent)', ?, 0, 'done', ?, ?, ?, 1, 1)",
            # No file: a random digest, never one of the row (it would hash the phone).
            (MANUAL_SOURCE, secrets.token_hex(32), os.getpid(), now_iso(), now_iso()),
        )
        columns = ["channel", "status", "consented_at", "reason", *fields]
        conn.execute(
            f"INSERT INTO consents (source, key, {', '.join(columns)}, identity_key, batch_id) "
            f"VALUES (?, ?, {', '.join('?' * len(columns))}, ?, ?)",
            [MANUAL_SOURCE, str(batch_id), channel, status, at, reason, *fields.values(), key,
             batch_id],
        )  # fmt: skip
        conn.execute(
            "INSERT OR IGNORE INTO identity_keys (key, one_id, resolved_at) VALUES (?, ?, ?)",
            (key, one_id, now_iso()),
        )
        conn.execute("INSERT OR IGNORE INTO key_identifiers VALUES (?, ?)", (key, ident_id))
        build_profiles(db, [one_id], now_iso(), config.identity.source_priority)
    return Consent(one_id, channel, status, at, reason, MANUAL_SOURCE, batch_id, type_name, value)


def _find(db: sqlite_utils.Database, config: Config, lookup: Lookup) -> str:
    try:
        return find_one_id(db, config, lookup)[0]
    except NotFound:
        raise NotFound(f"no customer has the {masked_lookup(**asdict(lookup))}") from None


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
    """A customer's consents, oldest first, and the latest per channel: what journeys read."""
    one_id = _find(db, config, lookup)
    history = rows_as_dicts(
        db,
        "SELECT lower(c.channel) AS channel, c.status, c.consented_at, c.source, c.reason "
        "FROM consents c JOIN identity_keys k ON k.key = c.identity_key WHERE k.one_id = ? "
        "ORDER BY coalesce(c.consented_at, ''), c.id",
        (one_id,),
    )
    latest = {row["channel"]: row for row in history}
    out = {c for c, row in latest.items() if row["status"] == "opt_out"}
    # As the journeys' send guard reads them: an opt-out of `all` covers every channel.
    blocked = [c for c in CHANNEL_NAMES if c in out or "all" in out]
    return {
        "one_id": one_id,
        "latest": [latest[c] for c in sorted(latest)],
        "journeys_skip": blocked,
        "history": history,
    }
