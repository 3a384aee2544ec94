"""Tombstones: keyed hashes of a forgotten person's identifiers, so that they stay forgotten.

`cdp forget` erases a person and leaves one tombstone per identifier they held: HMAC-SHA256 of
the identifier's normalized value (the form resolve links by: E.164 phone, lower-case email,
...) under a random key kept in the store (`tombstone_salt`). The store never holds the value
again, only the hash; a hash answers "is this value forgotten?" for a value one already has.
The key stops precomputed tables and comparing hashes across stores; it does not stop someone
holding the store file from trying every phone number, a small space. Keep the file private.

Ingest asks a `Screen` about every row while tombstones exist: a row carrying a forgotten
identifier is refused into `rejects` with the problem `forgotten` and a placeholder instead of
the row, so an old export ingested again brings no one back and writes none of their bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sqlite3
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from cdp_cli.canonical import IDENTITY_FIELDS, ITEM_FIELDS
from cdp_cli.identity.normalize import Normalizer
from cdp_cli.identity.settings import IdentityRules

FORGOTTEN_RAW = "(withheld: the row carries an identifier of a forgotten person)"
# The types a value found in free text (a rejected line) is tried as, each by its own field.
TEXT_FIELDS = {
    "phone": "phone", "email": "email", "member_no": "member_no", "user_id": "user_id",
    "wechat_unionid": "wechat_unionid", "wechat_openid": "wechat_openid",
    "device_id": "device_id", "id_number": "id_number",
}  # fmt: skip
KEY_CACHE_SIZE = 1 << 20
_PHONE_RUN = re.compile(r"\+?\d[\d \-().]{5,22}\d")
_DIGIT_RUN = re.compile(r"\d{7,15}")
_EMAIL = re.compile(r"[^\s,;\"'<>()\[\]{}:|]+@[^\s,;\"'<>()\[\]{}:|]+")
_TOKEN_SPLIT = re.compile(r"[\s,;\"'<>()\[\]{}|=:\\]+")


def store_salt(conn: sqlite3.Connection) -> bytes:
    """The store's HMAC key, made by migration 8."""
    return bytes.fromhex(conn.execute("SELECT salt FROM tombstone_salt").fetchone()[0])


def tombstone_key(type_name: str, value: str) -> str:
    """What a tombstone hashes: the type and the normalized value. A WeChat openid is hashed
    without its official account's appid, so a line that names the openid alone matches."""
    if type_name == "wechat_openid":
        value = value.split(":", 1)[-1]
    return f"{type_name}\x1f{value}"


def tombstone_hash(salt: bytes, type_name: str, value: str) -> str:
    key = tombstone_key(type_name, value).encode()
    return hmac.new(salt, key, hashlib.sha256).hexdigest()


class Tombstones:
    """A set of tombstone hashes, asked about normalized identifiers, rows and free text."""

    def __init__(
        self, salt: bytes, hashes: set[str], types: set[str], rules: IdentityRules, region: str
    ) -> None:
        self.salt = salt
        self.hashes = hashes
        self.types = types
        self.rules, self.region = rules, region
        self.normalizer = Normalizer(rules, region)
        self._hash = lru_cache(maxsize=1 << 16)(self._compute)
        self._by_key: dict[int, str | None] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to ingest's second process (ingest_worker) as what it is made of: the caches
        are made again there."""
        return (Tombstones, (self.salt, self.hashes, self.types, self.rules, self.region))

    @classmethod
    def load(cls, conn: sqlite3.Connection, rules: IdentityRules, region: str) -> Tombstones | None:
        """Every tombstone in the store; None when there are none (nothing to check)."""
        rows = conn.execute("SELECT hash, type FROM tombstones").fetchall()
        if not rows:
            return None
        return cls(store_salt(conn), {h for h, _ in rows}, {t for _, t in rows}, rules, region)

    def _compute(self, type_name: str, value: str) -> str:
        return tombstone_hash(self.salt, type_name, value)

    def forgotten(self, identifiers: Iterable[tuple[str, str, str | None]]) -> str | None:
        """The type of the first forgotten one among normalized (type, value, detail)."""
        for type_name, value, _ in identifiers:
            if type_name in self.types and self._hash(type_name, value) in self.hashes:
                return type_name
        return None

    def row_hit(self, key: int | None, fields: dict[str, str | None]) -> str | None:
        """For a row's identity key and raw identity fields: the type of a forgotten
        identifier it carries. Rows with the same key carry the same fields: asked once."""
        if key is None:
            return None
        if key not in self._by_key:
            if len(self._by_key) >= KEY_CACHE_SIZE:
                self._by_key.clear()
            found, _ = self.normalizer.identifiers(fields)
            self._by_key[key] = self.forgotten(found)
        return self._by_key[key]

    def mentioned_in(self, text: str) -> bool:
        """Whether free text (a rejected line as read) names a forgotten identifier: phone
        numbers, email addresses and single tokens in it are normalized and checked."""
        if not text:
            return False
        identify = self.normalizer.identifiers
        for fields in _text_candidates(text, self.types):
            if self.forgotten(identify(fields)[0]):
                return True
        return False


def _text_candidates(text: str, types: set[str]) -> Iterator[dict[str, str | None]]:
    """Identity fields to try for each value that free text may hold."""
    if "phone" in types:
        for match in _PHONE_RUN.finditer(text):
            yield {"phone": match[0]}
            for digits in _DIGIT_RUN.findall(match[0]):
                yield {"phone": digits}
    if "email" in types:
        for match in _EMAIL.finditer(text):
            yield {"email": match[0]}
    fields = [TEXT_FIELDS[t] for t in types if t in TEXT_FIELDS and t not in ("phone", "email")]
    if fields:
        for token in set(_TOKEN_SPLIT.split(text)):
            if token:
                yield dict.fromkeys(fields, token)


class Screen:
    """What ingest asks about each row: built per file, inside the file's transaction, so a
    `cdp forget` that committed before it is always seen."""

    def __init__(self, rules: IdentityRules, region: str) -> None:
        self.rules = rules
        self.region = region

    def load(self, conn: sqlite3.Connection) -> Tombstones | None:
        return Tombstones.load(conn, self.rules, self.region)


# ---------------------------------------------------------------------------------------------
# Erasing the records of identity keys

ITEM_KEYS = tuple(f.name for f in ITEM_FIELDS)
_ITEMS_KEPT = ", ".join(f"'{k}', i.value ->> '$.{k}'" for k in ITEM_KEYS)
# An order keeps what the books need: amount, time, store, channel, status, its items' products.
_ORDER_PRODUCTS = f"(SELECT json_group_array(json_object({_ITEMS_KEPT})) FROM json_each(items) i)"
_NO_IDENTITY = ", ".join(f"{f.name} = NULL" for f in IDENTITY_FIELDS)
DELETED_KINDS = ("customers", "events", "consents")
KEPT_KINDS = ("orders", "coupons")  # kept for the books, without a person


def erase_records(
    conn: sqlite3.Connection, keys: Iterable[int], tombstones: Tombstones, reject: bool
) -> dict[str, int]:
    """Erase every row these identity keys mark: customers, events and consents are deleted;
    orders and coupons lose their identity fields, attrs and link. Rows per table.

    With `reject`, each row is first recorded in rejects as `forgotten`, with a placeholder.
    Deleted content is overwritten with zeros (secure_delete) as it is freed.
    """
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS erased_keys (key INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM erased_keys")
    conn.executemany("INSERT OR IGNORE INTO erased_keys VALUES (?)", ((k,) for k in keys))
    marked = "identity_key IN (SELECT key FROM erased_keys)"
    counts: dict[str, int] = {}
    if reject:
        for table in (*DELETED_KINDS, *KEPT_KINDS):
            conn.execute(
                "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
                f"SELECT batch_id, source, line, 'forgotten', NULL, "
                f"'carries an identifier of a forgotten person', ? FROM {table} WHERE {marked}",
                (FORGOTTEN_RAW,),
            )
    for table in DELETED_KINDS:
        counts[table] = conn.execute(f"DELETE FROM {table} WHERE {marked}").rowcount
    _rekey_orders(conn, tombstones, marked)
    counts["orders"] = conn.execute(
        f"UPDATE orders SET {_NO_IDENTITY}, attrs = NULL, identity_key = NULL, "
        f"items = CASE WHEN json_valid(items) THEN {_ORDER_PRODUCTS} END WHERE {marked}"
    ).rowcount
    counts["coupons"] = conn.execute(
        f"UPDATE coupons SET {_NO_IDENTITY}, attrs = NULL, identity_key = NULL WHERE {marked}"
    ).rowcount
    # The update trigger noted each erased key as replaced by none; no row carries them now.
    conn.execute(
        "DELETE FROM replaced_identity_keys WHERE old_key IN (SELECT key FROM erased_keys)"
    )
    conn.execute(
        "UPDATE OR IGNORE replaced_identity_keys SET new_key = NULL "
        "WHERE new_key IN (SELECT key FROM erased_keys)"
    )
    conn.execute(
        "DELETE FROM replaced_identity_keys WHERE new_key IN (SELECT key FROM erased_keys)"
    )
    return counts


def _rekey_orders(conn: sqlite3.Connection, tombstones: Tombstones, marked: str) -> None:
    """An order whose natural key or order id names a forgotten identifier (a key made of
    the phone and the time, say) gets a keyed hash in its place."""
    for row_id, key, order_id in conn.execute(
        f"SELECT id, key, order_id FROM orders WHERE {marked}"
    ).fetchall():
        if tombstones.mentioned_in(key) or tombstones.mentioned_in(order_id or ""):
            conn.execute(
                "UPDATE orders SET key = ?, order_id = NULL WHERE id = ?",
                ("forgotten:" + hmac.new(tombstones.salt, key.encode(), "sha256").hexdigest()[:24],
                 row_id),
            )  # fmt: skip
