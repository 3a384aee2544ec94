"""The scores rules may read, as feature columns: their names, definitions and SQL.

Kept apart from the models so that the rule vocabulary can name them without the predict
extra's libraries: a store that was never scored still compiles them (they read NULL).
"""

from __future__ import annotations

import json
import re
import sqlite3

# name -> one-line definition: the columns of the predictions table rules read (docs/predict.md).
SCORE_FIELDS: dict[str, str] = {
    "p_alive": "BG/NBD: probability the customer has not silently left",
    "expected_orders_30d": "BG/NBD: expected purchase days in the next 30 days",
    "expected_orders_90d": "BG/NBD: expected purchase days in the next 90 days",
    "expected_orders_365d": "BG/NBD: expected purchase days in the next 365 days",
    "expected_value_365d": "BG/NBD x Gamma-Gamma: expected spend in the next 365 days, discounted",
    "lifetime_value": "expected spend over predict.horizon_days (cdp.yaml), discounted",
    "churn_risk": "probability of no order in the next predict.churn_days (default 90)",
}
PROPENSITY_PREFIX = "propensity_"
MODEL_KIND = "predict"


def score_sql(name: str) -> str:
    """SQL: one customer's score (NULL when not scored). A lookup by primary key where a rule
    reads it, rather than a join in BASE_FROM, which SQLite (3.40) does not leave out of the
    rules that read no score: every count of the base would pay for it."""
    return f"(SELECT s.{name} FROM predictions s WHERE s.one_id = p.one_id)"


def propensity_field(category: str) -> str:
    """The rule field of a category's propensity: propensity_ and the category, with anything
    but letters, digits and _ made _ (propensity_护肤, propensity_gift_box)."""
    return PROPENSITY_PREFIX + re.sub(r"\W", "_", category)


def propensity_sql(category: str) -> str:
    """SQL: one customer's propensity for the category (NULL when not scored). The category
    comes from the store's own data, written as a quoted SQL string."""
    quoted = "'" + category.replace("'", "''") + "'"
    return (
        "(SELECT pp.probability FROM prediction_propensities pp "
        f"WHERE pp.one_id = p.one_id AND pp.category = {quoted})"
    )


def predicted_categories(conn: sqlite3.Connection) -> frozenset[str]:
    """The categories the latest model has a propensity for: the propensity_ fields."""
    row = conn.execute(
        "SELECT parameters FROM models WHERE kind = ? ORDER BY id DESC LIMIT 1", (MODEL_KIND,)
    ).fetchone()
    return frozenset(json.loads(row[0])["propensity"]) if row else frozenset()
