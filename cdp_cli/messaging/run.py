"""One journey's run: what the engine builds once and hands down to every step.

The send step (send.py) reads it and never calls back into the engine: coupon pools, tracked
links and the feature columns its templates print are data or helpers of their own modules.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cdp_cli.config import Config
from cdp_cli.messaging.conditions import JourneyRules
from cdp_cli.messaging.coupons import CouponPools
from cdp_cli.messaging.guards import QuietHoursOfRun
from cdp_cli.messaging.journeys import Branch, Journey
from cdp_cli.messaging.settings import SendSettings
from cdp_cli.messaging.templates import TemplateStore
from cdp_cli.predict.fields import SCORE_FIELDS
from cdp_cli.rules.compiler import CompiledRule
from cdp_cli.sqlitelib import sqlite_utils

if TYPE_CHECKING:
    from cdp_cli.messaging.outbox import Spool
    from cdp_cli.messaging.rendering import InFlight, RenderWorker


@dataclass
class RunResult:
    """What one journey's run did."""

    journey: str
    now: str
    dry_run: bool = False
    enrolled: int = 0
    holdout: int = 0
    control: int = 0  # in the global control group: followed, not messaged
    converted: int = 0
    exited: int = 0
    completed: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    deferred: int = 0  # messages that wait (quiet hours, the frequency cap), not skipped
    waiting: dict[str, int] = field(default_factory=dict)  # why they wait -> messages
    held: dict[str, int] = field(default_factory=dict)  # the project's fault -> customers waiting
    files: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # with --dry-run
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Enrolment:
    """One customer's place in a journey, as the engine walks it."""

    id: int
    one_id: str
    step: str | None
    waiting: int
    variant: str | None
    holdout: int
    control: int
    # Entered in this run and not in the store yet: its enrolment number (1, or more on
    # re-entry). The engine writes it once, where the walk leaves it (engine._walk).
    entering: int | None = None


@dataclass
class JourneyRun:
    """Everything one journey's run needs, built once."""

    db: sqlite_utils.Database
    config: Config
    journey: Journey
    now: datetime
    run_id: int
    rules: JourneyRules
    templates: TemplateStore
    result: RunResult
    dry_run: bool
    spool: Spool | None = None  # the outbound lines of queued messages (none in a dry run)
    worker: RenderWorker | None = None  # the second process rendering, in a large run
    in_flight: list[InFlight] = field(default_factory=list)  # the batches it renders, oldest first
    branches: dict[str, CompiledRule] = field(default_factory=dict)
    coupons: CouponPools = field(init=False)
    now_text: str = field(init=False)

    def __post_init__(self) -> None:
        self.now_text = self.now.isoformat(timespec="seconds")  # stamped on every message
        self.coupons = CouponPools(self.db, self.now)

    @property
    def settings(self) -> SendSettings:
        return self.config.sending

    @property
    def coupon_steps(self) -> bool:
        return any(s.coupon for s in self.journey.sends())

    def printed(self, variable: str) -> set[str] | None:
        """The keys of `variable` (features, customer) this journey's templates print; None
        when they may print any. A run reads and hands on only those."""
        used: set[str] = set()
        for send in self.journey.sends():
            for channel in (send.channel, *send.fallback):
                fields = self.templates.fields_used(channel, send.template, variable)
                if fields is None:
                    return None
                used |= fields
        return used

    @functools.cached_property
    def feature_columns(self) -> list[str] | None:
        """The features this journey's templates print (None: any may be), read per batch."""
        used = self.printed("features")
        if used is None:
            return None
        known = {column.name for column in self.db["profile_features"].columns}
        return sorted(used & (known | set(SCORE_FIELDS)))

    @functools.cached_property
    def quiet_hours(self) -> QuietHoursOfRun:
        """When each message may go, by its channel's quiet hours."""
        return QuietHoursOfRun(self.now, self.settings, self.journey.transactional)

    @functools.cached_property
    def profile_fields(self) -> set[str] | None:
        """The profile fields this journey's templates print (None: any may be)."""
        return self.printed("customer")

    def branch_rule(self, step: Branch) -> CompiledRule:
        if step.key not in self.branches:
            self.branches[step.key] = self.rules.branch(step.when)
        return self.branches[step.key]
