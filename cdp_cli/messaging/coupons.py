"""Coupon pools: each send step with `coupon: CAMPAIGN` draws one unissued code per message.

A pool reads its campaign's available codes a block at a time, lowest code first; a code is
issued when its message is queued (coupon_issues), and put back when the message fails to
render. A pool that runs dry skips the rest of the step's messages with a reason that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlite_utils


def empty_pool_reason(campaign: str) -> str:
    """A message's skip reason when its campaign's pool has no code left."""
    return f"coupon pool {campaign} is empty"


class CouponPool:
    """A campaign's available codes, drawn in code order a block at a time."""

    BLOCK = 2000

    def __init__(self, db: sqlite_utils.Database, campaign: str) -> None:
        self.db, self.campaign = db, campaign
        self.ready: list[tuple[str, Any, Any]] = []
        self.after = ""
        self.exhausted = False

    def draw(self) -> dict[str, Any] | None:
        if not self.ready and not self.exhausted:
            self._fill()
        if not self.ready:
            return None
        code, face_value, expires_at = self.ready.pop()
        return {"code": code, "face_value": face_value, "expires_at": expires_at}

    def put_back(self, coupon: dict[str, Any]) -> None:
        self.ready.append((coupon["code"], coupon["face_value"], coupon["expires_at"]))

    def _fill(self) -> None:
        rows = self.db.conn.execute(
            "SELECT code, face_value, expires_at FROM coupons c "
            "WHERE campaign = ? AND status = 'available' AND code > ? "
            "AND NOT EXISTS (SELECT 1 FROM coupon_issues i WHERE i.code = c.code) "
            "ORDER BY code LIMIT ?",
            (self.campaign, self.after, self.BLOCK),
        ).fetchall()
        if len(rows) < self.BLOCK:
            self.exhausted = True
        if rows:
            self.after = rows[-1][0]
        self.ready = rows[::-1]  # pop() takes the lowest code first


@dataclass
class CouponPools:
    """The pools of one journey's run, by campaign, and the campaigns that ran dry."""

    db: sqlite_utils.Database
    pools: dict[str, CouponPool] = field(default_factory=dict)
    empty: set[str] = field(default_factory=set)

    def pool(self, campaign: str) -> CouponPool:
        if campaign not in self.pools:
            self.pools[campaign] = CouponPool(self.db, campaign)
        return self.pools[campaign]
