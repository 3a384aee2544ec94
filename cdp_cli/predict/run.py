"""`cdp predict` and the predict stage of `cdp run`: fit the models when due, score everyone.

A fit is due when there is none, when cdp.yaml's predict: settings changed, or when the last
fit learned from a history older than `refit_days`. Between fits, new data is scored with the
stored model (fast, and without PyMC); when neither data nor day changed, nothing is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from cdp_cli.config import PredictSettings
from cdp_cli.predict.clv import library_versions
from cdp_cli.predict.fields import propensity_field
from cdp_cli.predict.inputs import OrderHistory
from cdp_cli.predict.model import FIT_SAMPLE, FittedModels, Scores, fit_models, score
from cdp_cli.predict.scores import data_fingerprint, last_run, latest_model, save_model, save_scores
from cdp_cli.sqlitelib import sqlite_utils


@dataclass
class PredictResult:
    """What a predict run did: fitted (or reused) model, customers scored, the fields written
    and their averages, the notes on what could not be predicted."""

    as_of: str
    action: str  # fitted, rescored, unchanged
    model_id: int | None
    customers: int = 0
    scored: int = 0
    fitted_on: int = 0
    fields: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def predict(
    db: sqlite_utils.Database,
    settings: PredictSettings,
    as_of: date,
    dry_run: bool = False,
    fit_sample: int = FIT_SAMPLE,
) -> PredictResult:
    """Fit every model as of the day and score every customer with an order; with `dry_run`
    nothing is written (the result says what would be)."""
    history = OrderHistory(db, as_of)  # the orders, read once for fit and scores
    models = fit_models(db, settings, as_of, fit_sample, history)
    model_id = None if dry_run else save_model(db, models, library_versions())
    scores = score(db, models, as_of, history)
    if model_id is not None:
        save_scores(db, model_id, scores, as_of)
    return _result(models, scores, as_of, "fitted", model_id, dry_run)


def refresh(db: sqlite_utils.Database, settings: PredictSettings, as_of: date) -> PredictResult:
    """`cdp run`'s stage: refit when due (see the module), else rescore when the data or the
    day changed since the last scoring, else nothing."""
    stored = latest_model(db)
    if stored is None or _refit_due(stored[1], settings, as_of):
        return predict(db, settings, as_of)
    model_id, models, _ = stored
    previous = last_run(db)
    same_model = previous is not None and previous["model_id"] == model_id
    if same_model and previous and previous["inputs"] == data_fingerprint(db, as_of):
        return PredictResult(as_of.isoformat(), "unchanged", model_id, previous["customers"])
    scores = score(db, models, as_of)
    save_scores(db, model_id, scores, as_of)
    return _result(models, scores, as_of, "rescored", model_id, False)


def _refit_due(models: FittedModels, settings: PredictSettings, as_of: date) -> bool:
    fitted_with = PredictSettings(**{**models.settings.__dict__, "configured": True})
    if fitted_with != PredictSettings(**{**settings.__dict__, "configured": True}):
        return True
    return as_of - models.as_of >= timedelta(days=settings.refit_days) or as_of < models.as_of


def _result(
    models: FittedModels,
    scores: Scores,
    as_of: date,
    action: str,
    model_id: int | None,
    dry_run: bool,
) -> PredictResult:
    result = PredictResult(
        as_of.isoformat(), action, model_id, models.customers, len(scores), models.fitted_on,
        notes=list(models.notes), evaluation=models.evaluation, dry_run=dry_run,
    )  # fmt: skip
    if models.fitted_on < models.customers:
        result.notes.append(
            f"fitted on a random sample of {models.fitted_on:,} of {models.customers:,} "
            "customers; every customer is scored"
        )
    named = {**scores.columns, **{propensity_field(k): v for k, v in scores.propensity.items()}}
    for name, values in named.items():
        result.fields[name] = _summary(values)
    return result


def _summary(values: np.ndarray) -> dict[str, float | int | None]:
    """How many customers have the score, and its mean and quartiles among them."""
    known = values[~np.isnan(values)]
    if not len(known):
        return {"customers": 0, "mean": None, "p25": None, "median": None, "p75": None}
    p25, median, p75 = np.percentile(known, [25, 50, 75])
    return {
        "customers": len(known), "mean": round(float(known.mean()), 4),
        "p25": round(float(p25), 4), "median": round(float(median), 4),
        "p75": round(float(p75), 4),
    }  # fmt: skip
