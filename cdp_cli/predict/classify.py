"""Churn risk and propensities: logistic regressions learned from the store's own history.

A model for the next N days is trained on the past: the customers' features as of N days
before the as-of date, labelled by what they did in the N days up to it (bought again or
not; bought in a category or not). It then scores today's features. Logistic regression on
standardized log features: its probabilities are calibrated by its loss (the evaluation shows
the reliability bins), and each factor's push on one customer's score is its coefficient
times the customer's standardized value, which `cdp predict --explain` shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdp_cli.predict.inputs import MODEL_FEATURES

# A category with fewer buyers (or non-buyers) than this in the training window has no model.
MIN_CLASS = 20


@dataclass
class Classifier:
    """A fitted logistic regression over log1p(features), standardized."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    positives: int = 0
    trained_on: int = 0

    def standardized(self, matrix: np.ndarray) -> np.ndarray:
        return (np.log1p(np.maximum(matrix, 0)) - self.mean) / self.scale

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return np.asarray(expit(self.standardized(matrix) @ self.coef + self.intercept))

    def contributions(self, row: np.ndarray) -> dict[str, float]:
        """Each feature's push on the log-odds against the average customer (0)."""
        pushes = self.standardized(row.reshape(1, -1))[0] * self.coef
        return {name: float(v) for name, v in zip(self.names, pushes, strict=True)}

    def as_dict(self) -> dict[str, object]:
        return {
            "features": list(self.names), "mean": self.mean.tolist(),
            "scale": self.scale.tolist(), "coef": self.coef.tolist(),
            "intercept": self.intercept, "positives": self.positives,
            "trained_on": self.trained_on,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Classifier:
        return cls(
            tuple(data["features"]), np.array(data["mean"]), np.array(data["scale"]),
            np.array(data["coef"]), float(data["intercept"]), int(data["positives"]),
            int(data["trained_on"]),
        )  # fmt: skip


def fit_classifier(
    matrix: np.ndarray, labels: np.ndarray, names: tuple[str, ...] = MODEL_FEATURES
) -> Classifier:
    """A logistic regression of `labels` (0/1) on the features, lightly regularized."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    logged = np.log1p(np.maximum(matrix, 0))
    mean = logged.mean(axis=0)
    scale = logged.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=1000)
    # One BLAS thread: a product of 200,000 rows by 20 columns is too small to share, and
    # threads that wait for a busy core spin: on 2 cores beside another process the fits took
    # 12 times longer with two. The coefficients differ from two threads' only in the last
    # bits (the products' sums in another order).
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit((logged - mean) / scale, labels.astype(int))
    return Classifier(
        names, mean, scale, model.coef_[0].copy(), float(model.intercept_[0]),
        int(labels.sum()), len(labels),
    )  # fmt: skip


def class_problem(labels: np.ndarray, what: str, window: str) -> str | None:
    """Why a model of `what` cannot be learned from these labels, or None when it can."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives < MIN_CLASS:
        return f"{what}: only {positives} customers did it in {window} (needs {MIN_CLASS})"
    if negatives < MIN_CLASS:
        return f"{what}: only {negatives} customers did not in {window} (needs {MIN_CLASS})"
    return None
