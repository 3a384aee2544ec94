"""Behavioural clusters: k-means on the customers' standardized features, each cluster
portrayed against the whole base (index 100 = like the base), as `cdp segment --by` does."""

from __future__ import annotations

from typing import Any

import numpy as np

from cdp_cli.errors import PredictError
from cdp_cli.predict.inputs import DAYS_NEVER, PROFILE_FEATURES, profile_matrix
from cdp_cli.sqlitelib import sqlite_utils

FIT_SAMPLE = 100_000
SEED = 15


def clusters(db: sqlite_utils.Database, k: int) -> dict[str, Any]:
    """`k` clusters, largest first, each with its size, share and feature means and indexes."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler

    one_ids, matrix = profile_matrix(db)
    if len(one_ids) < 10 * k:
        raise PredictError(
            f"{len(one_ids)} customers are too few for {k} clusters (needs {10 * k}: run "
            "`cdp tag` first, or ask for fewer)"
        )
    scaled = StandardScaler().fit_transform(np.log1p(matrix))
    rows = np.arange(len(one_ids))
    if len(rows) > FIT_SAMPLE:
        rows = np.random.default_rng(SEED).choice(rows, FIT_SAMPLE, replace=False)
        model: Any = MiniBatchKMeans(n_clusters=k, random_state=SEED, n_init=3)
    else:
        model = KMeans(n_clusters=k, random_state=SEED, n_init=4)
    model.fit(scaled[rows])
    labels = model.predict(scaled)
    return portrait(matrix, labels, k)


def _mean(values: np.ndarray, name: str) -> float:
    """A mean that leaves out what never happened (a days-since of DAYS_NEVER)."""
    if name.startswith("days_since"):
        values = values[values < DAYS_NEVER]
    return float(values.mean()) if len(values) else float("nan")


def portrait(matrix: np.ndarray, labels: np.ndarray, k: int) -> dict[str, Any]:
    base = {name: _mean(matrix[:, i], name) for i, name in enumerate(PROFILE_FEATURES)}
    found: list[dict[str, Any]] = []
    for label in range(k):
        chosen = matrix[labels == label]
        features: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(PROFILE_FEATURES):
            mean = _mean(chosen[:, i], name)
            index = round(100 * mean / base[name]) if base[name] and not np.isnan(mean) else None
            features[name] = {"mean": None if np.isnan(mean) else round(mean, 2), "index": index}
        found.append({"customers": len(chosen), "share": round(len(chosen) / len(labels), 4),
                      "features": features})  # fmt: skip
    found.sort(key=lambda c: -c["customers"])
    for number, cluster in enumerate(found, 1):
        cluster["cluster"] = number
        cluster["stands_out"] = _stands_out(cluster["features"])
    means = {name: None if np.isnan(v) else round(v, 2) for name, v in base.items()}
    return {"k": k, "customers": len(labels), "base": means, "clusters": found}


def _stands_out(features: dict[str, dict[str, Any]]) -> list[str]:
    """The three features furthest from the base, as `name index`."""
    ranked = sorted(
        (f for f in features.items() if f[1]["index"] is not None),
        key=lambda f: -abs(np.log(max(f[1]["index"], 1) / 100)),
    )
    return [f"{name} {value['index']}" for name, value in ranked[:3]]
