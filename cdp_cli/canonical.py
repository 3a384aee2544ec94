"""The canonical fields of each kind of source row, and the table each kind lands in.

A source maps its own columns onto these names in cdp.yaml. Every kind carries the identity
fields, because a phone on an order or a device id on an event identifies a customer just as
well as a CRM record does; resolution reads them from every table.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdp_cli.messaging.channel_names import (
    CHANNEL_WRITTEN_FORMS,
    CONSENT_CHANNELS,
    CONSENT_PURPOSES,
)

TEXT, NUMBER, INTEGER, TIMESTAMP, DATE, JSON = (
    "text",
    "number",
    "integer",
    "timestamp",
    "date",
    "json",
)

SQL_TYPES = {TEXT: "TEXT", NUMBER: "REAL", INTEGER: "INTEGER", TIMESTAMP: "TEXT", DATE: "TEXT"}
SQL_TYPES[JSON] = "TEXT"

CONSENT_STATUSES = ("opt_in", "opt_out")
COUPON_STATUSES = ("available", "issued", "redeemed")
GENDERS = ("male", "female")


@dataclass(frozen=True)
class Field:
    """One canonical field: its name, type, and whether a row without it is rejected.

    `choices`, when given, are the only values cdp acts on: a value that maps to none of them
    (after BUILTIN_VALUES and the source's `values:`) rejects the row when the field is
    required or `refuse_unknown`, and is recorded as invalid (stored empty) when it is not,
    never stored as is.
    """

    name: str
    type: str = TEXT
    required: bool = False
    doc: str = ""
    choices: tuple[str, ...] = ()
    required_if: tuple[str, str] | None = None  # (field, value): required in such rows only
    refuse_unknown: bool = False  # a value outside `choices` rejects the row, though optional


IDENTITY_FIELDS: tuple[Field, ...] = (
    Field("phone", doc="phone number as written; normalized to E.164 by resolve"),
    Field("email", doc="email address as written; normalized by resolve"),
    Field("member_no", doc="CRM membership number"),
    Field("user_id", doc="account id in the app or web shop"),
    Field("device_id", doc="app or browser device id"),
    Field("wechat_appid", doc="the WeChat official account an openid belongs to"),
    Field("wechat_openid", doc="WeChat openid (per official account)"),
    Field("wechat_unionid", doc="WeChat unionid (the same across a brand's accounts)"),
    Field("id_number", doc="resident identity card number"),
)


@dataclass(frozen=True)
class Kind:
    """A kind of source row and the table it is stored in."""

    name: str
    table: str
    fields: tuple[Field, ...]
    doc: str

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return self.fields + IDENTITY_FIELDS

    def field(self, name: str) -> Field | None:
        return next((f for f in self.all_fields if f.name == name), None)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "customers",
            "customers",
            (
                Field("name"),
                Field("gender", doc="male or female", choices=GENDERS),
                Field("birthday", DATE),
                Field("city"),
                Field("province"),
                Field("job_title"),
                Field("level", doc="membership tier"),
                Field("store", doc="store or channel of registration"),
                Field("registered_at", TIMESTAMP),
            ),
            "people as a CRM, a shop or a follower list knows them",
        ),
        Kind(
            "orders",
            "orders",
            (
                Field("order_id"),
                Field("ordered_at", TIMESTAMP, required=True),
                Field("amount", NUMBER, required=True, doc="amount paid"),
                Field("status"),
                Field("store"),
                Field("channel", doc="store, own_shop, tmall, jd, mini_program, ..."),
                Field("category", doc="main category, for orders without items"),
                Field("item_count", INTEGER),
                Field("coupon_code"),
                Field("currency"),
                Field("items", JSON, doc="the order's items; mapped under `items:`, not `fields:`"),
            ),
            "purchases; their items land in order_items",
        ),
        Kind(
            "events",
            "events",
            (
                Field("event", required=True, doc="event type: view_item, order, register, ..."),
                Field("occurred_at", TIMESTAMP, required=True),
                Field("platform"),
                Field("properties", JSON),
            ),
            "behaviour in the app, the web shop or a message",
        ),
        Kind(
            "consents",
            "consents",
            (
                Field(
                    "channel",
                    required=True,
                    doc=" ".join(CONSENT_CHANNELS),
                    choices=CONSENT_CHANNELS,
                ),
                Field("status", required=True, doc="opt_in or opt_out", choices=CONSENT_STATUSES),
                Field(
                    "consented_at",
                    TIMESTAMP,
                    doc="required for an opt-in (the proof of when it was given); an opt-out "
                    "without it is kept",
                    required_if=("status", "opt_in"),
                ),
                Field("reason"),
                Field(
                    "purpose",
                    doc="marketing, service or all (empty: all); any other value rejects the row",
                    choices=CONSENT_PURPOSES,
                    refuse_unknown=True,
                ),
            ),
            "opt-ins and opt-outs per channel",
        ),
        Kind(
            "coupons",
            "coupons",
            (
                Field("code", required=True),
                Field("campaign", required=True, doc="the pool a journey draws codes from"),
                Field("status", doc="available, issued or redeemed", choices=COUPON_STATUSES),
                Field("face_value", NUMBER),
                Field("issued_at", TIMESTAMP),
                Field("redeemed_at", TIMESTAMP),
                Field("expires_at", TIMESTAMP),
            ),
            "coupon codes, issued to customers or waiting in a pool",
        ),
    )
}

ITEM_FIELDS: tuple[Field, ...] = (
    Field("sku"),
    Field("name"),
    Field("category"),
    Field("price", NUMBER),
    Field("quantity", NUMBER),
)

# Values written many ways for fields whose meaning cdp relies on; a source adds its own with
# `values:`. Every field with `choices` also maps each choice to itself (any case).
BUILTIN_VALUES: dict[str, dict[str, str]] = {
    "gender": {
        "男": "male", "m": "male", "male": "male", "先生": "male",
        "女": "female", "f": "female", "female": "female", "女士": "female",
    },
    "status@consents": {
        "opt_in": "opt_in", "opt-in": "opt_in", "optin": "opt_in", "subscribe": "opt_in",
        "订阅": "opt_in", "同意": "opt_in",
        "opt_out": "opt_out", "opt-out": "opt_out", "optout": "opt_out",
        "unsubscribe": "opt_out", "退订": "opt_out", "拒绝": "opt_out",
    },
    "channel@consents": {
        **{name: name for name in CONSENT_CHANNELS},
        **CHANNEL_WRITTEN_FORMS,
    },
    "purpose@consents": {
        "营销": "marketing", "推广": "marketing", "promotion": "marketing",
        "promotional": "marketing", "服务": "service", "通知": "service", "交易": "service",
        "transactional": "service", "notification": "service", "全部": "all",
    },
    "status@coupons": {name: name for name in COUPON_STATUSES},
}  # fmt: skip


def builtin_values(field: Field, kind: Kind) -> dict[str, str]:
    """The values cdp understands for a field of a kind: written form (casefolded) -> value."""
    values = dict(
        BUILTIN_VALUES.get(f"{field.name}@{kind.name}") or BUILTIN_VALUES.get(field.name, {})
    )
    values.update({choice.casefold(): choice for choice in field.choices})
    return values
