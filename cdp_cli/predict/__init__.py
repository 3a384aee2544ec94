"""Predictive scores over the store: who will leave, who will buy, what they are worth.

One module per concept: inputs (each customer's history as of a day), clv (BG/NBD and
Gamma-Gamma, through pymc-marketing), classify (churn risk and propensities, scikit-learn),
scores (the predictions and models tables), predict (fit and score), evaluation, explain,
lookalike and clusters. The libraries are the `predict` extra: `require_extra()` says in one
line what to install when they are missing. docs/predict.md explains each model.
"""

from __future__ import annotations

import importlib
import importlib.util

from cdp_cli.errors import MissingExtra

EXTRA_MODULES = ("numpy", "pandas", "sklearn", "pymc_marketing")
INSTALL_HINT = "pip install 'cdp[predict]'"


def missing_extra() -> str | None:
    """The first library of the predict extra that cannot be imported, or None."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name) if name != "pymc_marketing" else _find(name)
        except ImportError:
            return name
    return None


def _find(name: str) -> None:
    """pymc-marketing takes seconds to import (PyMC, PyTensor): only look for it here."""
    try:
        found = importlib.util.find_spec(name)
    except ValueError:  # in sys.modules without a spec
        found = None
    if found is None:
        raise ImportError(name)


def require_extra() -> None:
    """MissingExtra, in one line, unless the predict extra's libraries are installed."""
    missing = missing_extra()
    if missing is not None:
        raise MissingExtra(
            f"predictions need the predict extra ({missing} is not installed): {INSTALL_HINT}"
        )
