"""The predictions in the store: the models table (each fit, with what it learned from and
how well it did), prediction_runs (each scoring), and the scores, one row per customer.

Scores are written whole: a customer the run did not score (no order) has no row, so every
score of theirs reads NULL in rules, never NaN (a NaN from a model is stored as NULL too).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from dataclasses import asdict
from datetime import date
from itertools import chain, cycle, repeat
from typing import Any

import numpy as np

from cdp_cli import __version__
from cdp_cli.config import PredictSettings
from cdp_cli.predict.fields import MODEL_KIND
from cdp_cli.predict.model import SCORE_COLUMNS, FittedModels, Scores
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import now_iso, transaction

ROWS_AT_ONCE = 100_000  # customers whose score rows are built at once (lists, not a loop per row)


def data_fingerprint(db: sqlite_utils.Database, as_of: date) -> str:
    """What scores read: the store's data as of its latest batch, resolve run and erasure (each
    only grows), and the day. Equal fingerprints give equal scores from the same model."""
    data = db.conn.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM batches), "
        "(SELECT coalesce(max(id), 0) FROM resolve_runs), "
        "(SELECT count(*) FROM tombstones)"
    ).fetchone()
    text = json.dumps([__version__, as_of.isoformat(), list(data)])
    return hashlib.sha256(text.encode()).hexdigest()


def save_model(db: sqlite_utils.Database, models: FittedModels, versions: dict[str, str]) -> int:
    """Store a fit; returns its model id."""
    inputs = {
        "settings": asdict(models.settings), "customers": models.customers,
        "orders": models.orders, "fitted_on": models.fitted_on, "notes": models.notes,
        "fingerprint": data_fingerprint(db, models.as_of),
    }  # fmt: skip
    with transaction(db) as conn:
        cursor = conn.execute(
            "INSERT INTO models (kind, version, fitted_at, as_of, inputs, parameters, evaluation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                MODEL_KIND, json.dumps({"cdp": __version__, **versions}), now_iso(),
                models.as_of.isoformat(), json.dumps(inputs), json.dumps(models.parameters()),
                json.dumps(models.evaluation),
            ),
        )  # fmt: skip
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def latest_model(db: sqlite_utils.Database) -> tuple[int, FittedModels, dict[str, Any]] | None:
    """The last fit stored: its id, the models, and its row (fitted_at, inputs, ...)."""
    row = db.conn.execute(
        "SELECT id, version, fitted_at, as_of, inputs, parameters, evaluation FROM models "
        "WHERE kind = ? ORDER BY id DESC LIMIT 1",
        (MODEL_KIND,),
    ).fetchone()
    if row is None:
        return None
    inputs = json.loads(row[4])
    settings = PredictSettings(**inputs["settings"])
    models = FittedModels.from_stored(
        date.fromisoformat(row[3]), settings, json.loads(row[5]), inputs
    )
    models.evaluation = json.loads(row[6] or "{}")
    info = {
        "model_id": row[0], "version": json.loads(row[1]), "fitted_at": row[2],
        "as_of": row[3], "inputs": inputs,
    }  # fmt: skip
    return row[0], models, info


def _stored(values: np.ndarray) -> list[float | None]:
    """Scores as stored: rounded to 6 decimals, NULL for what a model could not give (NaN,
    infinite)."""
    return [round(x, 6) if math.isfinite(x) else None for x in values.tolist()]


def save_scores(db: sqlite_utils.Database, model_id: int, scores: Scores, as_of: date) -> int:
    """Replace every stored score by these; returns the prediction run's id."""
    names = ", ".join(SCORE_COLUMNS)
    marks = ", ".join("?" * (len(SCORE_COLUMNS) + 2))
    with transaction(db) as conn:
        conn.execute("DELETE FROM predictions")
        conn.execute("DELETE FROM prediction_propensities")
        one_ids = scores.one_ids.tolist()
        columns = [scores.columns[name] for name in SCORE_COLUMNS]
        for start in range(0, len(one_ids), ROWS_AT_ONCE):
            part = slice(start, start + ROWS_AT_ONCE)
            conn.executemany(
                f"INSERT INTO predictions (one_id, model_id, {names}) VALUES ({marks})",
                zip(one_ids[part], repeat(model_id), *(_stored(c[part]) for c in columns),
                    strict=False),
            )  # fmt: skip
        _write_propensities(conn, model_id, one_ids, scores.propensity)
        cursor = conn.execute(
            "INSERT INTO prediction_runs (model_id, as_of, scored_at, inputs, customers) "
            "VALUES (?, ?, ?, ?, ?)",
            (model_id, as_of.isoformat(), now_iso(), data_fingerprint(db, as_of), len(scores)),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def _write_propensities(
    conn: sqlite3.Connection, model_id: int, one_ids: list[str], propensity: dict[str, np.ndarray]
) -> None:
    """A row per customer and category with a probability, in the table's key order (one_id,
    then category): appended, not inserted category by category all over the table."""
    categories = sorted(propensity, key=str)
    if not categories:
        return
    columns = [propensity[category] for category in categories]
    for start in range(0, len(one_ids), ROWS_AT_ONCE):
        part = slice(start, start + ROWS_AT_ONCE)
        values = list(chain.from_iterable(zip(*(_stored(c[part]) for c in columns), strict=True)))
        ids = chain.from_iterable(repeat(one_id, len(categories)) for one_id in one_ids[part])
        rows = zip(ids, cycle(categories), repeat(model_id), values, strict=False)
        conn.executemany(
            "INSERT INTO prediction_propensities (one_id, category, model_id, probability) "
            "VALUES (?, ?, ?, ?)",
            rows if None not in values else [row for row in rows if row[3] is not None],
        )


def last_run(db: sqlite_utils.Database) -> dict[str, Any] | None:
    row = db.conn.execute(
        "SELECT id, model_id, as_of, scored_at, inputs, customers FROM prediction_runs "
        "ORDER BY id DESC LIMIT 1"
    ).fetchone()
    keys = ("run_id", "model_id", "as_of", "scored_at", "inputs", "customers")
    return dict(zip(keys, row, strict=True)) if row else None
