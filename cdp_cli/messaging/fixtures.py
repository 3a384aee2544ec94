"""A sample customer of the sample brand, as a journey passes one to its templates: what
`cdp journey validate` renders every template with, and what previews and tests use."""

from __future__ import annotations

from typing import Any


def example_context() -> dict[str, Any]:
    """A realistic context for one customer of the sample brand, as a journey passes it."""
    return {
        "customer": {
            "one_id": "C000000042", "name": "李娜", "gender": "female", "birthday": "1992-11-16",
            "city": "武汉", "known": 1, "first_seen": "2025-03-08T20:15:00+08:00",
            "last_seen": "2026-08-02T21:40:12+08:00", "records": 4,
        },
        "features": sample_features(),
        "tags": {
            "lifecycle": "at_risk", "rfm_segment": "at_risk", "high_value": "true",
            "preferred_category": "护肤", "preferred_channel": "tmall",
            "birthday_this_month": "true",
        },
        "coupon": {"code": "HY-WB7K2Q", "face_value": 30.0, "expires_at": "2026-11-30 23:59:59"},
        "journey": {"name": "winback"},
        "step": {"name": "send_coupon"},
        "wechat": {"openid": "oXq3ZtZ9Y8TC8XTbcwT1W-lO3kJY", "appid": "wx8a3f5e2b1c9d4e70"},
        "device": "A8C13E74-23DC-41E1-8A3F-9E9D34761E67",
        "brand": {"name": "花漾", "url": "https://www.huayang.example.com"},
        "link": "https://hy.example.com/t/8Kq2xZ",
        "unsubscribe": "https://www.huayang.example.com/unsubscribe?m=8kq2xzab",
    }  # fmt: skip


def sample_features() -> dict[str, Any]:
    """Every feature of docs/features.md, for one customer who last bought 120 days ago."""
    return {
        "order_count": 6, "total_spent": 2486.0, "avg_order_value": 414.33,
        "first_order_at": "2025-03-10T12:05:00+08:00",
        "last_order_at": "2026-07-18T20:31:44+08:00",
        "days_since_first_order": 615, "days_since_last_order": 120,
        "order_count_30d": 0, "order_count_90d": 0, "order_count_365d": 3,
        "total_spent_30d": 0.0, "total_spent_90d": 0.0, "total_spent_365d": 1187.0,
        "order_days": 6, "repurchase_cycle_days": 97.2, "top_category": "护肤",
        "top_store": "武汉国广店", "top_channel": "tmall",
        "event_count": 58, "event_count_30d": 2, "event_count_90d": 9, "event_count_365d": 41,
        "last_event_at": "2026-11-02T09:12:30+08:00", "days_since_last_seen": 13,
        "registered_at": "2025-03-08T20:15:00+08:00", "days_since_registered": 617,
        "birthday_month": 11, "birthday_this_month": 1, "age": 34,
        "rfm_recency_days": 120, "rfm_frequency": 6, "rfm_monetary": 2486.0,
        "rfm_r_score": 2, "rfm_f_score": 4, "rfm_m_score": 5, "rfm_segment": "at_risk",
        "frequency": 5, "recency": 495, "T": 615, "monetary_value": 385.2,
    }  # fmt: skip
