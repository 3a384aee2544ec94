"""The default blocklist: values that export systems write when they have no real one.

Each rule is named, so that `cdp resolve` and `cdp status` can say which one set a value
aside and a project can turn it off (`identity: default_blocklist: {NAME: false}`). A rule
applies to the identifier types where its shape means "no value": a repeated digit is junk
in a phone number or a device id, but 1111 is a member number like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Numbering schemes a business assigns itself: 1111 and 2222 are real customers.
_NUMBERED = ("member_no", "user_id")
_ASSIGNED_ELSEWHERE = ("phone", "device_id", "wechat_unionid", "wechat_openid")
PLACEHOLDERS = frozenset(
    {"null", "none", "nil", "n/a", "na", "undefined", "unknown", "anonymous", "guest", "test",
     "-1", "0", "-", "—", "无", "空", "未知"}
)  # fmt: skip


@dataclass(frozen=True)
class JunkRule:
    """One default rule: the values it sets aside, and for which types."""

    name: str
    why: str  # the reason stored with each value it sets aside, after "blocklisted: "
    pattern: str = ""  # searched in the trimmed, lower-cased value and in its bare form
    values: frozenset[str] = frozenset()  # or matched whole
    types: tuple[str, ...] | None = None  # the types it judges; None: every type
    # The shortest value it judges, for types named here (shorter ones pass): else any length.
    min_length: Mapping[str, int] = field(default_factory=dict)

    def judges(self, type_name: str) -> bool:
        return self.types is None or type_name in self.types


JUNK_RULES = (
    JunkRule(
        "placeholder",
        "a placeholder, not a value",
        values=PLACEHOLDERS,
    ),
    JunkRule(
        "repeated_character",
        "one character repeated",
        pattern=r"^(.)\1{3,}$",  # 00000000, xxxx, 1111-1111 bare
        # A member number or user id of 4 to 7 repeated digits is a real customer's.
        min_length={name: 8 for name in _NUMBERED},
    ),
    JunkRule(
        "repeated_digits_at_end",
        "ends in 8 or more of one digit",
        pattern=r"(\d)\1{7,}$",  # +8613800000000
        types=_ASSIGNED_ELSEWHERE,
    ),
    JunkRule(
        "test_address",
        "a test address",
        pattern=(
            r"^(?:test|demo|sample|noreply|no-reply)[._+-]?\d*@"  # test@, demo1@, noreply@
            r"|@(?:test|invalid|localhost)(?:\.|$)"
        ),
        types=("email",),
    ),
)
JUNK_RULE_NAMES = tuple(rule.name for rule in JUNK_RULES)
