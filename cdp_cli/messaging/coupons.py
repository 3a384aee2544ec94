"""Coupon pools: each send step with `coupon: CAMPAIGN` draws one unissued code per message.

A pool reads its campaign's available codes a block at a time, lowest code first; a code is
issued when its message is queued (coupon_issues), and put back when the message fails to
render. A code that has expired by the time of the send is never drawn, nor one that expires
within the step's `min_days_left` (a customer needs time to use it). A pool that runs dry
skips the rest of the step's messages with a reason that says which of the two it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.yamlfile import did_you_mean

UNIX_EPOCH_JULIAN_DAY = 2440587.5
# The codes of a pool a step may draw: available, never issued, unexpired.
AVAILABLE_CODES = (
    "FROM coupons c WHERE campaign = ? AND status = 'available' "
    "AND NOT EXISTS (SELECT 1 FROM coupon_issues i WHERE i.code = c.code) "
)


def julian_day(moment: datetime) -> float:
    """SQLite's julianday() of an aware datetime: days since noon UTC, 24 November 4714 BC."""
    return moment.timestamp() / 86400 + UNIX_EPOCH_JULIAN_DAY


def empty_pool_reason(campaign: str, min_days_left: int | None = None) -> str:
    """A message's skip reason when its campaign's pool has no code left for it: none at all,
    or (`min_days_left` given) none that is still valid that many days after the send."""
    if min_days_left is None:
        return f"coupon pool {campaign} is empty"
    return f"coupon pool {campaign} has no code valid for {min_days_left} more days"


def pool_exists(db: sqlite_utils.Database, campaign: str) -> bool:
    """Whether the coupons source holds any code of the campaign, issued or not: a pool with
    none at all is a typo in the journey or an import not done, never a pool used up."""
    row = db.conn.execute("SELECT 1 FROM coupons WHERE campaign = ? LIMIT 1", (campaign,))
    return row.fetchone() is not None


def unknown_pool_problem(campaign: str, campaigns: Iterable[str] = ()) -> str:
    """Why a step with `coupon: CAMPAIGN` cannot send when the campaign has no code at all;
    with the store's `campaigns`, the one it likely means."""
    hint = did_you_mean(campaign, campaigns)
    return (
        f"coupon pool {campaign} does not exist: the coupons source holds no code of that "
        f"campaign{hint}"
    )


def campaigns(db: sqlite_utils.Database) -> list[str]:
    """The coupons' campaigns: a loose scan of coupons_campaign, one seek per campaign."""
    rows = db.conn.execute(
        """WITH RECURSIVE found(campaign) AS (
  SELECT min(campaign) FROM coupons
  UNION ALL
  SELECT (SELECT c.campaign FROM coupons c WHERE c.campaign > found.campaign
          ORDER BY c.campaign LIMIT 1)
  FROM found WHERE found.campaign IS NOT NULL)
SELECT campaign FROM found WHERE campaign IS NOT NULL"""
    )
    return [row[0] for row in rows]


def usable_codes(
    db: sqlite_utils.Database, campaign: str, now: datetime, min_days_left: int
) -> int:
    """How many codes of the campaign a step could draw at `now` (before this run's draws)."""
    row = db.conn.execute(
        f"SELECT count(*) {AVAILABLE_CODES}AND (expires_at IS NULL OR julianday(expires_at) >= ?)",
        (campaign, julian_day(now + timedelta(days=min_days_left))),
    ).fetchone()
    return int(row[0])


class CouponPool:
    """A campaign's available codes, drawn in code order a block at a time."""

    BLOCK = 2000

    def __init__(self, db: sqlite_utils.Database, campaign: str, now: datetime) -> None:
        self.db, self.campaign, self.now = db, campaign, now
        # (code, face_value, expires_at, its julian day or None), the lowest code last
        self.ready: list[tuple[str, Any, Any, float | None]] = []
        self.after = ""
        self.exhausted = False
        self.expired = 0  # codes read that had expired by the time of the send
        self._least: dict[int, float] = {}  # min_days_left -> the least julian day drawn

    def draw(self, min_days_left: int = 0) -> dict[str, Any] | None:
        """The lowest code still valid `min_days_left` days from now; None when none is."""
        least = self._least.get(min_days_left)
        if least is None:  # the same for every draw of the run
            least = self._least[min_days_left] = julian_day(
                self.now + timedelta(days=min_days_left)
            )
        while True:
            for index in range(len(self.ready) - 1, -1, -1):
                code, face_value, expires_at, day = self.ready[index]
                if day is None or day >= least:
                    del self.ready[index]
                    return {"code": code, "face_value": face_value, "expires_at": expires_at}
            if self.exhausted:
                return None
            self._fill()

    def empty_reason(self, min_days_left: int) -> str:
        """Why draw() found nothing: the pool is empty, or its codes expire too soon."""
        if self.ready or self.expired:
            return empty_pool_reason(self.campaign, min_days_left)
        return empty_pool_reason(self.campaign)

    def put_back(self, coupon: dict[str, Any]) -> None:
        expires_at = coupon["expires_at"]
        day = self.db.conn.execute("SELECT julianday(?)", (expires_at,)).fetchone()[0]
        self.ready.append((coupon["code"], coupon["face_value"], expires_at, day))

    def _fill(self) -> None:
        rows = self.db.conn.execute(
            f"SELECT code, face_value, expires_at, julianday(expires_at) {AVAILABLE_CODES}"
            "AND code > ? ORDER BY code LIMIT ?",
            (self.campaign, self.after, self.BLOCK),
        ).fetchall()
        if len(rows) < self.BLOCK:
            self.exhausted = True
        if rows:
            self.after = rows[-1][0]
        now = julian_day(self.now)
        fresh = [r for r in rows if r[3] is None or r[3] >= now]
        self.expired += len(rows) - len(fresh)
        self.ready = fresh[::-1] + self.ready  # pop() takes the lowest code first


@dataclass
class CouponPools:
    """The pools of one journey's run, by campaign, and why those that ran dry did."""

    db: sqlite_utils.Database
    now: datetime
    pools: dict[str, CouponPool] = field(default_factory=dict)
    empty: dict[str, str] = field(default_factory=dict)  # campaign -> the skip reason

    known: dict[str, bool] = field(default_factory=dict)  # campaign -> pool_exists()
    campaigns: list[str] | None = None  # every campaign, once a pool was found missing

    def exists(self, campaign: str) -> bool:
        if campaign not in self.known:
            self.known[campaign] = pool_exists(self.db, campaign)
        return self.known[campaign]

    def missing(self, campaign: str) -> str:
        """unknown_pool_problem, with the campaigns the store holds (read once per run)."""
        if self.campaigns is None:
            self.campaigns = campaigns(self.db)
        return unknown_pool_problem(campaign, self.campaigns)

    def pool(self, campaign: str) -> CouponPool:
        if campaign not in self.pools:
            self.pools[campaign] = CouponPool(self.db, campaign, self.now)
        return self.pools[campaign]
