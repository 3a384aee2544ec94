"""The models of one fit, learned as of a day, and the scores they give each customer.

`fit_models` learns BG/NBD and Gamma-Gamma (clv.py) on the history up to the day, and the
churn and propensity classifiers (classify.py) on the history up to N days before it,
labelled by the N days after. `score` applies them to every customer with an order. A large
base is fitted on a sample (FIT_SAMPLE customers; the model's inputs say so) and scored whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from cdp_cli.config import PredictSettings
from cdp_cli.predict.classify import Classifier, class_problem, fit_classifier
from cdp_cli.predict.clv import (
    ClvParameters,
    check_history,
    expected_orders,
    expected_value,
    fit_clv,
    probability_alive,
)
from cdp_cli.predict.fields import SCORE_FIELDS
from cdp_cli.predict.inputs import (
    MODEL_FEATURES,
    CategoryHistory,
    CustomerInputs,
    OrderHistory,
    top_categories,
)
from cdp_cli.sqlitelib import sqlite_utils

# The purchase and spend models learn from at most this many customers, the classifiers from
# CLASSIFIER_SAMPLE: their estimates are as good on a random sample, in a fraction of the time.
FIT_SAMPLE = 30_000
CLASSIFIER_SAMPLE = 200_000
SEED = 15
# The classifiers read the behavioural features and the purchase model's view of the customer:
# BG/NBD combines recency, frequency and age into the chance of being alive and the orders to
# expect, which ranks leavers better than any of the three alone.
CHURN_FEATURES = (*MODEL_FEATURES, "bgnbd_p_alive", "bgnbd_expected_orders")
PROPENSITY_FEATURES = (*CHURN_FEATURES, "category_order_days")
SCORE_COLUMNS = tuple(SCORE_FIELDS)


@dataclass
class FittedModels:
    """What one fit learned, and the notes on what it could not (a category with too few
    buyers, too short a history for churn)."""

    as_of: date
    settings: PredictSettings
    clv: ClvParameters
    churn: Classifier | None
    propensity: dict[str, Classifier]
    customers: int
    orders: int
    fitted_on: int  # customers the purchase model saw (a sample of `customers`, or all)
    notes: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        return {
            "clv": self.clv.as_dict(),
            "churn": self.churn.as_dict() if self.churn else None,
            "propensity": {name: c.as_dict() for name, c in self.propensity.items()},
        }

    @classmethod
    def from_stored(
        cls, as_of: date, settings: PredictSettings, parameters: dict, inputs: dict
    ) -> FittedModels:
        churn = parameters.get("churn")
        return cls(
            as_of, settings, ClvParameters(**parameters["clv"]),
            Classifier.from_dict(churn) if churn else None,
            {k: Classifier.from_dict(v) for k, v in parameters["propensity"].items()},
            inputs["customers"], inputs["orders"], inputs["fitted_on"], list(inputs["notes"]),
        )  # fmt: skip


@dataclass
class Scores:
    """Each scored customer's predictions: SCORE_COLUMNS, and a probability per category."""

    one_ids: np.ndarray
    columns: dict[str, np.ndarray]
    propensity: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.one_ids)


def sample_rows(size: int, limit: int, seed: int = SEED) -> np.ndarray:
    """All rows, or `limit` of them drawn at random (always the same for the same size)."""
    if size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, limit, replace=False))


def fit_models(
    db: sqlite_utils.Database,
    settings: PredictSettings,
    as_of: date,
    fit_sample: int = FIT_SAMPLE,
    history: OrderHistory | None = None,
) -> FittedModels:
    """Learn every model from the history up to `as_of` (`history`: the orders read already,
    up to `as_of` or later, which the fit does not look past); PredictError when it has none."""
    history = OrderHistory(db, as_of) if history is None else history
    now = history.inputs(as_of)
    check_history(now)
    fitted_on = now.take(sample_rows(len(now), fit_sample))
    clv = fit_clv(fitted_on)
    models = FittedModels(as_of, settings, clv, None, {}, len(now), now.orders, len(fitted_on))
    if clv.p is None:
        models.notes.append(
            "expected_value_365d: too few customers spent on more than one day for the spend "
            "model; values are empty"
        )
    _fit_classifiers(history, models)
    return models


def _fit_classifiers(history: OrderHistory, models: FittedModels) -> None:
    """Churn and propensities, trained as of N days before the as-of date."""
    days = models.settings.churn_days
    cut = models.as_of - timedelta(days=days)
    window = f"the {days} days after {cut.isoformat()}"
    train = history.inputs(cut, later_days=days)
    if len(train) < 2 * 20:
        models.notes.append(
            f"churn_risk, propensity: too little history: {len(train)} customers had ordered by "
            f"{cut.isoformat()} ({days} days before {models.as_of.isoformat()}), needs 40; "
            "scores are empty"
        )
        return
    train = train.take(sample_rows(len(train), CLASSIFIER_SAMPLE))
    churned = (train.later_orders == 0).astype(int)
    problem = class_problem(1 - churned, "churn_risk (customers who ordered again)", window)
    base = churn_matrix(models, train)
    if problem:
        models.notes.append(f"{problem}; scores are empty")
    else:
        models.churn = fit_classifier(base, churned, CHURN_FEATURES)
        models.evaluation["churn"] = holdout_scores(base, churned, CHURN_FEATURES)
    categories = history.categories(cut, days)
    for category in top_categories(categories, models.settings.categories):
        bought = category_labels(categories, category, train.one_ids)
        problem = class_problem(bought, f"propensity_{category}", window)
        if problem:
            models.notes.append(f"{problem}; scores are empty")
            continue
        matrix = propensity_matrix(models, train, categories, category, base)
        models.propensity[category] = fit_classifier(matrix, bought, PROPENSITY_FEATURES)
        models.evaluation[f"propensity_{category}"] = holdout_scores(
            matrix, bought, PROPENSITY_FEATURES
        )


def category_labels(history: CategoryHistory, category: str, one_ids: np.ndarray) -> np.ndarray:
    return (history.days_after(category, one_ids) > 0).astype(int)


def churn_matrix(models: FittedModels, inputs: CustomerInputs) -> np.ndarray:
    """CHURN_FEATURES: the behaviour, with P(alive) and the purchase days BG/NBD expects in
    the next churn_days (0 where the closed form has no value)."""
    alive = probability_alive(models.clv, inputs)
    expected = expected_orders(models.clv, inputs, models.settings.churn_days)
    return np.column_stack([inputs.matrix(), np.nan_to_num(alive), np.nan_to_num(expected)])


def propensity_matrix(
    models: FittedModels,
    inputs: CustomerInputs,
    history: CategoryHistory,
    category: str,
    churn: np.ndarray | None = None,
) -> np.ndarray:
    """PROPENSITY_FEATURES: the churn features (`churn`: churn_matrix of these inputs, when
    computed already) and the purchase days in the category so far."""
    churn = churn_matrix(models, inputs) if churn is None else churn
    return np.column_stack([churn, history.days_before(category, inputs.one_ids)])


def holdout_scores(
    matrix: np.ndarray, labels: np.ndarray, names: tuple[str, ...]
) -> dict[str, float]:
    """AUC and Brier score of the model on a quarter of its training rows held out."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    rows = np.random.default_rng(SEED).permutation(len(labels))
    cut = len(rows) * 3 // 4
    train, test = rows[:cut], rows[cut:]
    if len(set(labels[test])) < 2 or len(set(labels[train])) < 2:
        return {}
    model = fit_classifier(matrix[train], labels[train], names)
    scores = model.predict(matrix[test])
    return {
        "auc": round(float(roc_auc_score(labels[test], scores)), 4),
        "brier": round(float(brier_score_loss(labels[test], scores)), 4),
        "held_out": len(test),
    }


def score(
    db: sqlite_utils.Database,
    models: FittedModels,
    as_of: date,
    history: OrderHistory | None = None,
) -> Scores:
    """Every customer with an order up to `as_of` (`history`: the orders read already, up to
    `as_of`), scored by the fitted models."""
    history = OrderHistory(db, as_of) if history is None else history
    inputs = history.inputs(as_of)
    columns = clv_scores(models, inputs)
    base = churn_matrix(models, inputs)
    columns["churn_risk"] = (
        models.churn.predict(base) if models.churn else np.full(len(inputs), np.nan)
    )
    propensity: dict[str, np.ndarray] = {}
    if models.propensity:
        categories = history.categories(as_of)
        for category, classifier in models.propensity.items():
            matrix = propensity_matrix(models, inputs, categories, category, base)
            propensity[category] = classifier.predict(matrix)
    return Scores(inputs.one_ids, columns, propensity)


def clv_scores(models: FittedModels, inputs: CustomerInputs) -> dict[str, np.ndarray]:
    """p_alive, expected orders and values from the purchase and spend models."""
    clv, rate = models.clv, models.settings.discount_rate
    return {
        "p_alive": probability_alive(clv, inputs),
        **{f"expected_orders_{n}d": expected_orders(clv, inputs, n) for n in (30, 90, 365)},
        "expected_value_365d": expected_value(clv, inputs, 365, rate),
        "lifetime_value": expected_value(clv, inputs, models.settings.horizon_days, rate),
    }
