"""`cdp predict --evaluate`: the models fitted on the history before a calibration end, scored
on what happened in the N days after it, beside the simple baselines on the same split.

- churn risk: AUC (how well it ranks leavers above stayers: 0.5 is a coin, 1 perfect), Brier
  score (mean squared error of the probability: lower is better), reliability bins (predicted
  against actual, per tenth), and the gain per tenth of customers ranked by risk; baselines:
  days since the last order, and purchase days (fewer = riskier);
- expected orders: the BG/NBD's expected purchase days in the N days against the actual, per
  customer (mean absolute error) and in total; baseline: each customer's past daily rate;
- each propensity: AUC and Brier; baseline: the customer's purchase days in the category.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from cdp_cli.config import PredictSettings
from cdp_cli.errors import UsageError
from cdp_cli.predict.clv import expected_orders
from cdp_cli.predict.inputs import CustomerInputs, OrderHistory
from cdp_cli.predict.model import (
    FIT_SAMPLE,
    category_labels,
    churn_matrix,
    fit_models,
    propensity_matrix,
)
from cdp_cli.sqlitelib import sqlite_utils

TENTHS = 10


@dataclass
class Evaluation:
    """What `--evaluate` found; `as_dict()` is its --json."""

    calibration_end: str
    holdout_end: str
    customers: int
    fitted_on: int
    churn: dict[str, Any] = field(default_factory=dict)
    orders: dict[str, Any] = field(default_factory=dict)
    propensity: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(
    db: sqlite_utils.Database,
    settings: PredictSettings,
    calibration_end: date,
    as_of: date,
    fit_sample: int = FIT_SAMPLE,
) -> Evaluation:
    """Fit as of `calibration_end`, compare with the `churn_days` after it (which must end by
    `as_of`)."""
    days = settings.churn_days
    holdout_end = calibration_end + timedelta(days=days)
    if holdout_end > as_of:
        latest = (as_of - timedelta(days=days)).isoformat()
        raise UsageError(
            f"--calibration-end {calibration_end.isoformat()}: the {days} days after it must "
            f"end by the as-of date {as_of.isoformat()}; give a date on or before {latest}"
        )
    history = OrderHistory(db, holdout_end)  # read once; the fit looks no further than its end
    models = fit_models(db, settings, calibration_end, fit_sample, history)
    inputs = history.inputs(calibration_end, later_days=days)
    categories = history.categories(calibration_end, days)
    result = Evaluation(
        calibration_end.isoformat(), holdout_end.isoformat(), len(inputs), models.fitted_on,
        notes=list(models.notes),
    )  # fmt: skip
    if models.fitted_on < models.customers:
        result.notes.append(
            f"fitted on a random sample of {models.fitted_on:,} of {models.customers:,} "
            "customers; every customer is evaluated"
        )
    churned = (inputs.later_orders == 0).astype(int)
    base = churn_matrix(models, inputs)
    if models.churn is not None and 0 < churned.sum() < len(churned):
        result.churn = _churn(models.churn.predict(base), churned, inputs)
    result.orders = _orders(expected_orders(models.clv, inputs, days), inputs, days)
    for category, classifier in models.propensity.items():
        bought = category_labels(categories, category, inputs.one_ids)
        if 0 < bought.sum() < len(bought):
            matrix = propensity_matrix(models, inputs, categories, category, base)
            scores = classifier.predict(matrix)
            baseline = matrix[:, -1]  # purchase days in the category so far
            result.propensity[category] = {
                **_classification(scores, bought), "buyers": int(bought.sum()),
                "baseline_category_days_auc": _auc(bought, baseline),
            }  # fmt: skip
    return result


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4)


def _classification(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss

    return {
        "auc": _auc(labels, scores),
        "brier": round(float(brier_score_loss(labels, scores)), 4),
        "base_rate": round(float(labels.mean()), 4),
    }


def _churn(risk: np.ndarray, churned: np.ndarray, inputs: CustomerInputs) -> dict[str, Any]:
    features = inputs.features
    return {
        **_classification(risk, churned),
        "churned": int(churned.sum()),
        "baseline_recency_auc": _auc(churned, features["days_since_last_order"]),
        "baseline_frequency_auc": _auc(churned, -features["order_days"]),
        "reliability": reliability(risk, churned),
        "gain": gain(risk, churned),
        "baseline_recency_gain": gain(features["days_since_last_order"], churned),
    }


def reliability(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float | int]]:
    """Per tenth of the probability scale: customers, mean predicted, actual rate."""
    bins = np.minimum((scores * TENTHS).astype(int), TENTHS - 1)
    rows = []
    for b in range(TENTHS):
        chosen = bins == b
        if chosen.any():
            rows.append({
                "from": b / TENTHS, "to": (b + 1) / TENTHS, "customers": int(chosen.sum()),
                "predicted": round(float(scores[chosen].mean()), 4),
                "actual": round(float(labels[chosen].mean()), 4),
            })  # fmt: skip
    return rows


def gain(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """Customers ranked by score, highest first: per tenth, the share of all positives found
    so far (gain) and how many times chance that is (lift)."""
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(labels[order])
    total = max(int(labels.sum()), 1)
    rows = []
    for tenth in range(1, TENTHS + 1):
        upto = max(1, round(len(order) * tenth / TENTHS))
        share = float(found[upto - 1]) / total
        rows.append(
            {"customers": tenth / TENTHS, "gain": round(share, 4),
             "lift": round(share / (tenth / TENTHS), 3)}
        )  # fmt: skip
    return rows


def _orders(expected: np.ndarray, inputs: CustomerInputs, days: int) -> dict[str, Any]:
    actual = inputs.later_orders
    past_rate = (inputs.frequency + 1) / (inputs.T + 1)  # purchase days per day so far
    naive = past_rate * days
    total, predicted, base_total = float(actual.sum()), float(expected.sum()), float(naive.sum())
    return {
        "days": days,
        "actual_total": round(total, 1),
        "expected_total": round(predicted, 1),
        "error_total": round((predicted - total) / total, 4) if total else None,
        "mae_per_customer": round(float(np.abs(expected - actual).mean()), 4),
        "baseline_past_rate_total": round(base_total, 1),
        "baseline_error_total": round((base_total - total) / total, 4) if total else None,
        "baseline_mae_per_customer": round(float(np.abs(naive - actual).mean()), 4),
    }


def evaluation_html(evaluation: Evaluation, timezone: str) -> str:
    """The evaluation as a page of the HTML report, with the gain chart."""
    from cdp_cli.reports.html import WIDTH, render_html

    def points(rows: list[dict[str, float]]) -> str:
        width, height = WIDTH - 80, 220
        xy = [(60.0, 230.0)] + [
            (60 + width * r["customers"], 230 - height * r["gain"]) for r in rows
        ]
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)

    section: dict[str, Any] = {"report": "predict", **evaluation.as_dict()}
    if evaluation.churn:
        section["gain_points"] = points(evaluation.churn["gain"])
        section["baseline_points"] = points(evaluation.churn["baseline_recency_gain"])
    return render_html([section], "cdp predict: evaluation", timezone=timezone)
