"""Look-alike audiences: the customers outside a seed segment who resemble it most.

A logistic regression of seed against base on the same features (inputs.PROFILE_FEATURES,
log-scaled, standardized, classes weighted equally), so that a customer's score is how much
more like the seed than like the base they are: 0.5 is either. Before the audience is picked,
a fifth of the seed is held back and a model trained without it ranks the rest of the base
with them: the share of held-back members in the first N (precision at N) against their
share of those ranked (chance) is the lift, which says whether the model finds seed-like
customers at all on this data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cdp_cli.errors import PredictError
from cdp_cli.predict.inputs import profile_matrix, require_features
from cdp_cli.sqlitelib import sqlite_utils

if TYPE_CHECKING:
    from cdp_cli.segments import Audience

HELD_BACK = 0.2
MIN_SEED = 20
TRAIN_SAMPLE = 200_000
SEED = 15


@dataclass
class Lookalike:
    """The chosen customers (one_ids, best first) with their scores, and the held-back check."""

    seed: str
    seed_customers: int
    candidates: int
    one_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "seed_customers": self.seed_customers,
            "candidates": self.candidates, "chosen": len(self.one_ids),
            "min_score": round(min(self.scores), 4) if self.scores else None,
            "held_back_check": self.check,
        }  # fmt: skip


def _fit(matrix: np.ndarray, labels: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    model = make_pipeline(
        FunctionTransformer(np.log1p), StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=1000),
    )  # fmt: skip
    rows = _sample(len(labels), labels)
    model.fit(matrix[rows], labels[rows])
    return model


def _sample(size: int, labels: np.ndarray) -> np.ndarray:
    """Every seed member, and at most TRAIN_SAMPLE others drawn at random."""
    others = np.flatnonzero(labels == 0)
    if len(others) > TRAIN_SAMPLE:
        others = np.random.default_rng(SEED).choice(others, TRAIN_SAMPLE, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(labels == 1), others]))


def lookalike(
    db: sqlite_utils.Database,
    seed_name: str,
    seed_ids: set[str],
    size: int | None = None,
    min_score: float | None = None,
) -> Lookalike:
    """The `size` customers outside the seed most like it, or those scoring `min_score` or
    more; PredictError when the seed is too small or covers the base."""
    one_ids, matrix = profile_matrix(db)
    in_seed = np.fromiter((i in seed_ids for i in one_ids), dtype=int, count=len(one_ids))
    seeds = int(in_seed.sum())
    if seeds < MIN_SEED:
        raise PredictError(
            f"segment {seed_name} has {seeds} customers: a look-alike needs at least {MIN_SEED}"
        )
    if len(one_ids) - seeds < MIN_SEED:
        raise PredictError(
            f"segment {seed_name} holds {seeds:,} of {len(one_ids):,} customers: too few are "
            "left outside it to look alike"
        )
    result = Lookalike(seed_name, seeds, len(one_ids) - seeds)
    wanted = size if size is not None else None
    result.check = held_back_check(matrix, in_seed, wanted)
    scores = _fit(matrix, in_seed).predict_proba(matrix)[:, 1]
    outside = np.flatnonzero(in_seed == 0)
    order = outside[np.argsort(-scores[outside], kind="stable")]
    if min_score is not None:
        order = order[scores[order] >= min_score]
    if size is not None:
        order = order[:size]
    result.one_ids = [str(i) for i in one_ids[order]]
    result.scores = [round(float(s), 6) for s in scores[order]]
    return result


def held_back_check(matrix: np.ndarray, in_seed: np.ndarray, size: int | None) -> dict[str, Any]:
    """Precision at N of a model trained without a fifth of the seed, on that fifth (N: the
    audience size asked for, else the number held back), against chance."""
    members = np.flatnonzero(in_seed == 1)
    rng = np.random.default_rng(SEED)
    held = rng.choice(members, max(1, round(len(members) * HELD_BACK)), replace=False)
    training = in_seed.copy()
    training[held] = 0
    candidates = np.concatenate([np.flatnonzero(in_seed == 0), held])
    model = _fit(np.delete(matrix, held, axis=0), np.delete(training, held))
    scores = model.predict_proba(matrix[candidates])[:, 1]
    n = min(size or len(held), len(candidates))
    top = candidates[np.argsort(-scores, kind="stable")[:n]]
    found = int(np.isin(top, held).sum())
    precision = found / n
    chance = len(held) / len(candidates)
    return {
        "held_back": len(held), "ranked": len(candidates), "n": n, "found": found,
        "precision_at_n": round(precision, 4), "chance": round(chance, 4),
        "lift": round(precision / chance, 2) if chance else None,
    }  # fmt: skip


def seed_members(db: sqlite_utils.Database, chosen: Audience) -> set[str]:
    """The one_ids of the seed segment's customers."""
    from cdp_cli.rules.vocabulary import BASE_FROM

    require_features(db)
    sql = f"SELECT p.one_id FROM {BASE_FROM} WHERE {chosen.where}"
    return {row[0] for row in db.conn.execute(sql, chosen.compiled.params)}


def as_audience(db: sqlite_utils.Database, found: Lookalike, chosen: Audience) -> Audience:
    """The look-alike customers as an audience (temp.lookalike_members on this connection),
    which cdp segment counts, portrays and exports like any other."""
    from cdp_cli.rules.compiler import CompiledRule

    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS lookalike_members (one_id TEXT PRIMARY KEY)")
    db.conn.execute("DELETE FROM temp.lookalike_members")
    db.conn.executemany(
        "INSERT INTO temp.lookalike_members (one_id) VALUES (?)", ((i,) for i in found.one_ids)
    )
    label = f"lookalike({found.seed})"
    where = "p.one_id IN (SELECT one_id FROM temp.lookalike_members)"
    compiled = CompiledRule(label, where, [], frozenset(), frozenset())
    return replace(chosen, rule=label, compiled=compiled, name=label)
