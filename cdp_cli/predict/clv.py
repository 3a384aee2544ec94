"""Buy till you die: BG/NBD for how often a customer buys and whether they are still
"alive", Gamma-Gamma for how much they spend per purchase day.

The models are fitted by pymc-marketing (the maintained successor of `lifetimes`) at its
maximum a posteriori (`method="map"`): one point estimate per parameter, in seconds, where
sampling would take minutes. The fitted parameters are stored with the model, and customers
are scored from them by the published closed forms below (the ones pymc-marketing and
`lifetimes` compute), so that `cdp run` can score new customers without refitting, without
PyMC at all. tests/test_predict_models.py checks that these give pymc-marketing's numbers.

Time is in days. References: Fader, Hardie & Lee (2005), "Counting your customers the easy
way"; Fader & Hardie (2013), "The Gamma-Gamma model of monetary value".
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, hyp2f1

from cdp_cli.errors import PredictError
from cdp_cli.predict.inputs import CustomerInputs

# Fewer repeat buyers than this and the purchase model has nothing to learn from.
MIN_REPEAT_CUSTOMERS = 10
DAYS_PER_MONTH = 365 / 12


@dataclass(frozen=True)
class ClvParameters:
    """The fitted BG/NBD (r, alpha, a, b) and Gamma-Gamma (p, q, v) parameters; the spend
    model is None when too few customers bought twice with a positive spend."""

    r: float
    alpha: float
    a: float
    b: float
    p: float | None = None
    q: float | None = None
    v: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in ("r", "alpha", "a", "b", "p", "q", "v")}


def check_history(inputs: CustomerInputs) -> None:
    """PredictError naming what is missing when the history cannot support the models."""
    day = inputs.as_of.isoformat()
    if not len(inputs):
        raise PredictError(f"no orders up to {day}: predictions learn from order history")
    repeaters = int((inputs.frequency > 0).sum())
    if repeaters < MIN_REPEAT_CUSTOMERS:
        raise PredictError(
            f"only {repeaters} of {len(inputs):,} customers bought on more than one day up to "
            f"{day}: the purchase model needs repeat purchases from at least "
            f"{MIN_REPEAT_CUSTOMERS} customers"
        )


def fit_clv(inputs: CustomerInputs) -> ClvParameters:
    """Fit BG/NBD and Gamma-Gamma with pymc-marketing on these customers (a sample, when the
    base is large: the caller chooses)."""
    check_history(inputs)
    BetaGeoModel, GammaGammaModel = _library()
    import pandas as pd

    frame = pd.DataFrame(
        {"customer_id": np.arange(len(inputs)), "frequency": inputs.frequency,
         "recency": inputs.recency, "T": inputs.T}
    )  # fmt: skip
    bgnbd = BetaGeoModel()
    _quietly(bgnbd.fit, frame, method="map", progressbar=False)
    r, alpha, a, b = _point(bgnbd, ("r", "alpha", "a", "b"))
    spend: dict[str, float | None] = {"p": None, "q": None, "v": None}
    repeat = (inputs.frequency > 0) & (inputs.monetary_value > 0)
    if repeat.sum() >= MIN_REPEAT_CUSTOMERS:
        spenders = pd.DataFrame(
            {"customer_id": np.arange(int(repeat.sum())),
             "frequency": inputs.frequency[repeat],
             "monetary_value": inputs.monetary_value[repeat]}
        )  # fmt: skip
        gamma = GammaGammaModel()
        _quietly(gamma.fit, spenders, method="map", progressbar=False)
        spend = dict(zip(("p", "q", "v"), _point(gamma, ("p", "q", "v")), strict=True))
    return ClvParameters(r, alpha, a, b, spend["p"], spend["q"], spend["v"])


def _point(model: Any, names: tuple[str, ...]) -> list[float]:
    """The fitted values (the MAP fit's one draw), unrounded: fit_summary() rounds them."""
    return [float(model.fit_result[name].values.ravel()[0]) for name in names]


def library_versions() -> dict[str, str]:
    """The versions of the libraries that fit the models, for the models table."""
    from importlib.metadata import version

    import sklearn

    return {"pymc-marketing": version("pymc-marketing"), "scikit-learn": sklearn.__version__}


def _library() -> tuple[Any, Any]:
    """pymc-marketing's models, imported without the notices its libraries print on import
    (ArviZ's refactoring, PyTensor's BLAS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel
    for name in ("pymc", "pytensor", "pymc_marketing"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return BetaGeoModel, GammaGammaModel


def _quietly(fit: Any, *args: Any, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Scores from the parameters: the published closed forms


def _finite(values: np.ndarray) -> np.ndarray:
    """NaN where a closed form met a parameter at its bound (b = 0, a = 1): stored as NULL."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


@np.errstate(divide="ignore", over="ignore", invalid="ignore")
def probability_alive(params: ClvParameters, inputs: CustomerInputs) -> np.ndarray:
    """P(alive): 1 for a single purchase day, in BG/NBD (no chance yet to drop out)."""
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_div = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return _finite(np.where(x == 0, 1.0, expit(-log_div)))


@np.errstate(divide="ignore", over="ignore", invalid="ignore")
def expected_orders(params: ClvParameters, inputs: CustomerInputs, days: float) -> np.ndarray:
    """Expected purchase days in the next `days` (Fader, Hardie & Lee 2005, eq. 10)."""
    x, t_x, T = inputs.frequency, inputs.recency, inputs.T
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    t = float(days)
    numerator = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(
        r + x, b + x, a + b + x - 1, t / (alpha + T + t)
    )
    numerator *= (a + b + x - 1) / (a - 1)
    denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return _finite(numerator / denominator)


@np.errstate(divide="ignore", over="ignore", invalid="ignore")
def expected_spend(params: ClvParameters, inputs: CustomerInputs) -> np.ndarray:
    """Expected spend per purchase day (Gamma-Gamma): the customer's own mean, shrunk toward
    the population's by how many repeat days it rests on. NaN without a spend model."""
    if params.p is None or params.q is None or params.v is None:
        return np.full(len(inputs), np.nan)
    p, q, v = params.p, params.q, params.v
    x, m = inputs.frequency, inputs.monetary_value
    population = p * v / (q - 1) if q > 1 else np.nan
    own = (p * (v + x * m)) / (p * x + q - 1)
    return _finite(np.where((x > 0) & (m > 0), own, population))


def expected_value(
    params: ClvParameters, inputs: CustomerInputs, days: float, discount_rate: float
) -> np.ndarray:
    """Expected spend over the next `days`, month by month, each month's discounted at the
    yearly `discount_rate` (as lifetimes' customer_lifetime_value does, monthly)."""
    spend = expected_spend(params, inputs)
    monthly = (1 + discount_rate) ** (1 / 12) - 1
    months = max(1, round(days / DAYS_PER_MONTH))
    value = np.zeros(len(inputs))
    before = np.zeros(len(inputs))
    for month in range(1, months + 1):
        upto = expected_orders(params, inputs, min(days, month * DAYS_PER_MONTH))
        value += (upto - before) * spend / (1 + monthly) ** month
        before = upto
    return value
