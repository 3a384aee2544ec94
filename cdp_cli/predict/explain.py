"""`cdp predict --explain ONE_ID`: one customer's inputs, scores, and what moved them.

For churn risk and each propensity, a factor's push is its coefficient times the customer's
standardized value: how far it moves the log-odds from an average customer's, up (riskier,
likelier) or down. The purchase model has no per-factor split: its scores follow from three
numbers, shown with what they mean.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np

from cdp_cli.errors import NotFound, PredictError
from cdp_cli.predict.fields import SCORE_FIELDS, propensity_field
from cdp_cli.predict.inputs import MODEL_FEATURES, OrderHistory
from cdp_cli.predict.model import churn_matrix, propensity_matrix
from cdp_cli.predict.scores import last_run, latest_model
from cdp_cli.sqlitelib import sqlite_utils

TOP_FACTORS = 5


def explain(db: sqlite_utils.Database, one_id: str) -> dict[str, Any]:
    """The customer's stored scores, the inputs they were computed from, and the factors."""
    if not db.conn.execute("SELECT 1 FROM profiles WHERE one_id = ?", (one_id,)).fetchone():
        raise NotFound(f"no customer with one_id {one_id!r}")
    stored, run = latest_model(db), last_run(db)
    if stored is None or run is None:
        raise PredictError("no predictions yet: run `cdp predict` first")
    model_id, models, info = stored
    as_of = date.fromisoformat(run["as_of"])
    row = db.conn.execute(
        f"SELECT {', '.join(SCORE_FIELDS)} FROM predictions WHERE one_id = ?", (one_id,)
    ).fetchone()
    scores: dict[str, Any] = dict(zip(SCORE_FIELDS, row or [None] * len(SCORE_FIELDS), strict=True))
    for category, probability in db.conn.execute(
        "SELECT category, probability FROM prediction_propensities WHERE one_id = ? "
        "ORDER BY category",
        (one_id,),
    ):
        scores[propensity_field(category)] = probability
    result: dict[str, Any] = {
        "one_id": one_id, "as_of": as_of.isoformat(), "model_id": model_id,
        "model_fitted_at": info["fitted_at"], "model_as_of": info["as_of"], "scores": scores,
    }  # fmt: skip
    history = OrderHistory(db, as_of, one_id)
    inputs = history.inputs(as_of)
    if not len(inputs):
        result["note"] = (
            f"no order up to {as_of.isoformat()}: the models do not score this customer"
        )
        return result
    result["inputs"] = {
        "frequency": int(inputs.frequency[0]), "recency": int(inputs.recency[0]),
        "T": int(inputs.T[0]), "monetary_value": round(float(inputs.monetary_value[0]), 2),
        **{name: _plain(inputs.features[name][0]) for name in MODEL_FEATURES},
    }  # fmt: skip
    factors: dict[str, list[dict[str, Any]]] = {}
    if models.churn is not None:
        factors["churn_risk"] = _top(models.churn.contributions(churn_matrix(models, inputs)[0]))
    if models.propensity:
        categories = history.categories(as_of)
        for category, classifier in models.propensity.items():
            matrix = propensity_matrix(models, inputs, categories, category)
            factors[propensity_field(category)] = _top(classifier.contributions(matrix[0]))
    result["factors"] = factors
    return result


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 2)


def _top(pushes: dict[str, float]) -> list[dict[str, Any]]:
    """The factors that moved the score most, either way."""
    ranked = sorted(pushes.items(), key=lambda item: -abs(item[1]))[:TOP_FACTORS]
    return [
        {"feature": name, "push": round(value, 3), "direction": "up" if value > 0 else "down"}
        for name, value in ranked
        if not np.isclose(value, 0)
    ]
