"""`cdp profile`: the 360° view of one customer.

The golden record and what every other area knows of them: their identifiers, records,
orders, events, tags and segments, their consents per channel (as `cdp consent` reads them),
the journeys they entered and the messages sent to them. Here, above identity/, because it
reads consent.py, which builds on identity/profiles.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cdp_cli.config import Config
from cdp_cli.consent import consents_of
from cdp_cli.identity.profiles import Lookup, find_one_id
from cdp_cli.messaging.channels import CHANNELS
from cdp_cli.privacy import PERSONAL_PROFILE_FIELDS, mask, masked_items
from cdp_cli.reports.journey import group_of
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import rows_as_dicts

RECENT_MESSAGES = 20


@dataclass
class Profile360:
    """Everything cdp knows about one customer: `cdp profile`'s view.

    profile: the golden record, a row of `profiles` with its JSON columns (phones, emails,
    identifiers, sources, lineage) decoded; identifiers: type, value, detail; records: the
    customer's records (kind, source, key; events left out); orders: counts, total and dates
    with the `latest`; events: the most recent; history: merges and splits; tags: tag, value,
    since; segments: the named segments they are in; merged_from: the one_ids that led from
    the one asked for to this one; consents: the latest consent per channel (channel, status,
    consented_at, source, reason); journeys: each enrolment (journey, entered_at, status,
    step, group); messages: the most recent sent to them (journey, step, channel, status, at,
    address); probable_links: the links between their records that matching made (fields
    agreed, no identifier shared): probable, not certain (identity/match.py).
    """

    profile: dict[str, Any]
    identifiers: list[dict[str, Any]]
    records: list[dict[str, Any]]
    orders: dict[str, Any]
    events: list[dict[str, Any]]
    history: list[dict[str, Any]]
    tags: list[dict[str, Any]]
    segments: list[str]
    merged_from: list[str]
    consents: list[dict[str, Any]]
    journeys: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    probable_links: list[dict[str, Any]] = field(default_factory=list)

    @property
    def one_id(self) -> str:
        return str(self.profile["one_id"])

    def masked(self) -> Profile360:
        """A copy with the golden record's, the identifiers' and the messages' addresses
        masked; a message's address is of its channel's address type."""
        profile = dict(self.profile)
        for field_name, type_name in PERSONAL_PROFILE_FIELDS.items():
            profile[field_name] = [mask(type_name, v) for v in profile[field_name] or []]
        profile["identifiers"] = {
            t: [mask(t, v) for v in values] for t, values in (profile["identifiers"] or {}).items()
        }
        messages = [
            {**m, "address": mask(_address_type(m["channel"]), m["address"])} for m in self.messages
        ]
        return replace(
            self, profile=profile, identifiers=masked_items(self.identifiers), messages=messages
        )

    def as_dict(self) -> dict[str, Any]:
        """The document `cdp profile --json` prints."""
        return asdict(self)


def _address_type(channel: str | None) -> str:
    """The identifier type a channel's messages are addressed to ('' for none: left as is)."""
    return CHANNELS[channel].address_type if channel in CHANNELS else ""


def profile_360(
    db: sqlite_utils.Database, config: Config, lookup: Lookup, recent: int = 10
) -> Profile360:
    """The customer a lookup finds, followed through merges, with their tags and segments
    (`recent` orders and events), consents, journeys and messages."""
    # Here, not at the top: segments compile rules (sqlglot), which resolve need not load.
    from cdp_cli.features import features_as_of
    from cdp_cli.rules.book import load_rulebook
    from cdp_cli.segments import segments_of
    from cdp_cli.tags import customer_tags

    one_id, merged_from = find_one_id(db, config, lookup)
    book = load_rulebook(config.tag_rules_folder)
    return Profile360(
        **_profile_view(db, one_id, recent),
        tags=customer_tags(db, one_id),
        segments=segments_of(db, book, features_as_of(db, config), one_id),
        merged_from=merged_from,
        consents=consents_of(db, config, Lookup(one_id=one_id))["latest"],
        journeys=_journeys(db, one_id),
        messages=_messages(db, one_id, RECENT_MESSAGES),
        probable_links=_probable_links(db, one_id),
    )


def _probable_links(db: sqlite_utils.Database, one_id: str) -> list[dict[str, Any]]:
    """Which records are theirs by a probable link: the two records, who decided, the
    probability and the fields that agreed."""
    from cdp_cli.identity.explain import record_of_key
    from cdp_cli.identity.review import probable_links

    return [
        {
            "record_a": record_of_key(db, link["key_a"]),
            "record_b": record_of_key(db, link["key_b"]),
            "decided_by": link["decided_by"],
            "probability": link["probability"],
            "agreeing": link["agreeing"],
        }
        for link in probable_links(db, one_id)
        if link["status"] == "linked"
    ]


def _profile_view(db: sqlite_utils.Database, one_id: str, recent: int) -> dict[str, Any]:
    [profile] = rows_as_dicts(db, "SELECT * FROM profiles WHERE one_id = ?", [one_id])
    for key in ("phones", "emails", "identifiers", "sources", "lineage"):
        profile[key] = json.loads(profile[key]) if profile[key] else None
    identifiers = rows_as_dicts(
        db,
        "SELECT type, value, detail FROM identifiers WHERE one_id = ? ORDER BY type, value",
        [one_id],
    )
    records = rows_as_dicts(
        db,
        "SELECT m.kind, m.source, m.key FROM id_mapping m "
        "WHERE m.one_id = ? AND m.kind != 'events' "
        "ORDER BY m.kind, m.source, m.key LIMIT 200",
        [one_id],
    )
    [orders] = rows_as_dicts(
        db,
        "SELECT count(*) AS orders, round(coalesce(sum(amount), 0), 2) AS total_spent, "
        "min(ordered_at) AS first_order, max(ordered_at) AS last_order "
        "FROM profile_orders WHERE one_id = ?",
        [one_id],
    )
    latest_orders = rows_as_dicts(
        db,
        "SELECT source, order_id, ordered_at, amount, channel, store, status FROM profile_orders "
        "WHERE one_id = ? ORDER BY ordered_at DESC LIMIT ?",
        [one_id, recent],
    )
    events = rows_as_dicts(
        db,
        "SELECT occurred_at, event, platform, properties FROM profile_events WHERE one_id = ? "
        "ORDER BY occurred_at DESC LIMIT ?",
        [one_id, recent],
    )
    history = rows_as_dicts(
        db,
        "SELECT one_id, event, other_one_id, at FROM id_history "
        "WHERE one_id = ? OR other_one_id = ? ORDER BY id",
        [one_id, one_id],
    )
    return {
        "profile": profile,
        "identifiers": identifiers,
        "records": records,
        "orders": {**orders, "latest": latest_orders},
        "events": events,
        "history": history,
    }


def _journeys(db: sqlite_utils.Database, one_id: str) -> list[dict[str, Any]]:
    """Each enrolment, oldest first, in the group the journey report counts it in. Whether
    the journey is transactional (the control group is then sent all the same) is read from
    the messages it sent them, as the journey's YAML may have changed or gone since."""
    rows = rows_as_dicts(
        db,
        "SELECT e.journey, e.enrolment, e.entered_at, e.status, e.step, e.variant, e.holdout, "
        "e.control, EXISTS (SELECT 1 FROM messages m WHERE m.enrolment_id = e.id "
        "AND m.transactional = 1) AS transactional "
        "FROM journey_enrolments e WHERE e.one_id = ? ORDER BY e.entered_at, e.id",
        [one_id],
    )
    return [
        {
            "journey": r["journey"],
            "enrolment": r["enrolment"],
            "entered_at": r["entered_at"],
            "status": r["status"],
            "step": r["step"],
            "group": group_of(r["holdout"], r["control"], bool(r["transactional"])),
            "variant": r["variant"],
        }
        for r in rows
    ]


def _messages(db: sqlite_utils.Database, one_id: str, limit: int) -> list[dict[str, Any]]:
    """The most recent messages to them, newest first: queued, written or skipped."""
    return rows_as_dicts(
        db,
        "SELECT journey, step, channel, status, created_at AS at, address FROM messages "
        "WHERE one_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
        [one_id, limit],
    )
