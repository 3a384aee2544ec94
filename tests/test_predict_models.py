"""The models against a known truth: benchmarks/generate.py --latent-purchases draws each
buyer's purchase rate, dropout probability and spend rate from known distributions, and the
fits must recover them; a second BG/NBD implementation (lifetimes) must agree; churn risk
must rank leavers above stayers clearly better than recency; look-alikes must find held-back
seed members far above chance. Each fit of pymc-marketing takes seconds, so these are slow.

Tolerances, with 6,000 generated people (some 4,500 buyers): the purchase-rate parameters
(r, alpha) and the spend parameters (p, q, v) within 25% of the truth; the dropout parameters
(a, b) within 40%, since only the repeat buyers who stopped tell of them.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdp_cli import Project
from cdp_cli.cli import cli
from cdp_cli.config import PredictSettings
from cdp_cli.identity.resolve import resolve
from cdp_cli.ingest import ingest
from cdp_cli.predict.clv import (
    ClvParameters,
    _library,
    expected_orders,
    fit_clv,
    probability_alive,
)
from cdp_cli.predict.evaluation import evaluate
from cdp_cli.predict.inputs import customer_inputs
from cdp_cli.predict.lookalike import lookalike
from cdp_cli.scaffold import init_project
from cdp_cli.tags import run_tags
from tests.conftest import query

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 11, 15)
spec = importlib.util.spec_from_file_location(
    "cdp_generate_latent", REPO / "benchmarks/generate.py"
)
assert spec and spec.loader
generator = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = generator
spec.loader.exec_module(generator)


@pytest.fixture(scope="module")
def latent(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """6,000 generated people whose purchases follow the latent process, ingested, resolved
    and tagged as of DAY."""
    folder = tmp_path_factory.mktemp("latent")
    init_project(folder)
    shutil.rmtree(folder / "sample_data")
    generator.generate(folder / "sample_data", customers=6000, events=3000, seed=15, latent=True)
    project = Project(folder / "cdp.yaml")
    with project.store() as db:
        ingest(db, project.config)
        resolve(db, project.config)
        run_tags(db, project.tag_rules_folder, DAY)
    return project


@pytest.fixture(scope="module")
def fitted(latent: Project) -> ClvParameters:
    with latent.store(create=False) as db:
        return fit_clv(customer_inputs(db, DAY))


def within(value: float, truth: float, tolerance: float) -> bool:
    return abs(value - truth) <= tolerance * truth


def test_the_fitted_parameters_recover_the_generators(fitted):
    truth = {**generator.LATENT_PURCHASE, **generator.LATENT_SPEND}
    found = fitted.as_dict()
    for name, tolerance in (("r", .25), ("alpha", .25), ("a", .4), ("b", .4), ("p", .25),
                            ("q", .25), ("v", .25)):  # fmt: skip
        assert within(found[name], truth[name], tolerance), (name, found[name], truth[name])


def test_pymc_marketing_and_lifetimes_fit_the_same_parameters(latent, fitted):
    """lifetimes (unmaintained, kept for this comparison only) maximizes the likelihood;
    pymc-marketing finds the posterior's mode under weak priors: on thousands of customers
    they agree within 15%."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, GammaGammaFitter

        with latent.store(create=False) as db:
            inputs = customer_inputs(db, DAY)
        bgnbd = BetaGeoFitter().fit(inputs.frequency, inputs.recency, inputs.T)
        repeat = (inputs.frequency > 0) & (inputs.monetary_value > 0)
        spend = GammaGammaFitter().fit(inputs.frequency[repeat], inputs.monetary_value[repeat])
    theirs = {**dict(bgnbd.params_), **dict(spend.params_)}
    ours = fitted.as_dict()
    for name in ("r", "alpha", "a", "b", "p", "q", "v"):
        assert within(ours[name], float(theirs[name]), 0.15), (name, ours[name], theirs[name])


def test_the_closed_forms_give_pymc_marketings_numbers(latent):
    """cdp scores from the stored parameters by the published formulas: the same numbers as
    pymc-marketing's own methods on the fitted model."""
    import pandas as pd

    with latent.store(create=False) as db:
        inputs = customer_inputs(db, DAY)
    rows = np.arange(0, len(inputs), 7)
    sample = inputs.take(rows)
    BetaGeoModel, _ = _library()
    frame = pd.DataFrame({"customer_id": np.arange(len(sample)), "frequency": sample.frequency,
                          "recency": sample.recency, "T": sample.T})  # fmt: skip
    model = BetaGeoModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(frame, method="map", progressbar=False)
        theirs_alive = model.expected_probability_alive(frame).values.ravel()
        theirs_90 = model.expected_purchases(frame, future_t=90).values.ravel()
    posterior = model.fit_result
    params = ClvParameters(
        *(float(posterior[k].values.ravel()[0]) for k in ("r", "alpha", "a", "b"))
    )
    np.testing.assert_allclose(probability_alive(params, sample), theirs_alive, rtol=1e-6)
    np.testing.assert_allclose(expected_orders(params, sample, 90), theirs_90, rtol=1e-6)


def test_churn_risk_ranks_leavers_clearly_above_recency(latent):
    with latent.store(create=False) as db:
        found = evaluate(db, PredictSettings(), date(2026, 8, 17), DAY)
    churn = found.churn
    assert churn["auc"] >= churn["baseline_recency_auc"] + 0.015, churn
    assert churn["auc"] > churn["baseline_frequency_auc"]
    assert churn["brier"] < churn["base_rate"] * (1 - churn["base_rate"])  # beats the base rate
    assert churn["gain"][0]["lift"] >= 1.2  # the riskiest tenth: leavers 1.2 times as often
    orders = found.orders
    assert abs(orders["error_total"]) < 0.15, orders  # expected purchase days in total
    assert orders["mae_per_customer"] < orders["baseline_mae_per_customer"]
    for category, scores in found.propensity.items():
        assert scores["auc"] > 0.6, (category, scores)


def test_lookalike_finds_the_fastest_buyers_held_back_far_above_chance(latent, tmp_path):
    """The seed: the buyers with the highest latent purchase rate (the truth, not a rule over
    features): the model only sees their behaviour."""
    folder = latent.config.root / "sample_data"
    with open(folder / "truth.csv", encoding="utf-8") as f:
        person = {(r["source"], r["key"]): r["person_id"] for r in csv.DictReader(f)}
    with open(folder / "truth_latent.csv", encoding="utf-8") as f:
        rates = {r["person_id"]: float(r["purchase_rate"]) for r in csv.DictReader(f)}
    fastest = set(sorted(rates, key=rates.__getitem__)[-300:])
    with latent.store(create=False) as db:
        keys = db.conn.execute(
            "SELECT o.source, o.key, k.one_id FROM orders o "
            "JOIN identity_keys k ON k.key = o.identity_key"
        ).fetchall()
        seed = {one_id for source, key, one_id in keys if person.get((source, key)) in fastest}
        found = lookalike(db, "fastest", seed, size=200)
    check = found.check
    assert check["lift"] >= 5, check
    assert len(found.one_ids) == 200 and not seed & set(found.one_ids)


def test_evaluate_writes_the_gain_chart(latent, monkeypatch, tmp_path):
    monkeypatch.chdir(latent.config.root)
    page = tmp_path / "evaluation.html"
    result = CliRunner().invoke(
        cli,
        ["predict", "--evaluate", "--calibration-end", "2026-08-17", "--as-of", "2026-11-15",
         "--html", str(page), "--json"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["churn"]["auc"] > found["churn"]["baseline_recency_auc"]
    html = page.read_text(encoding="utf-8")
    assert 'data-chart="gain"' in html and 'data-series="churn_risk"' in html
    assert 'data-table="reliability"' in html and 'data-table="orders"' in html
    # --evaluate writes nothing to the store
    assert query(latent.config.root / "cdp.db", "SELECT count(*) FROM models") == [(0,)]


def test_cdp_run_refits_when_the_model_is_older_than_refit_days(latent, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    shutil.copytree(latent.config.root, folder)
    with open(folder / "cdp.yaml", "a", encoding="utf-8") as f:
        f.write("\npredict:\n  refit_days: 7\n")
    monkeypatch.chdir(folder)

    def stage(now: str) -> dict:
        result = CliRunner().invoke(cli, ["run", "--now", now, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return next(s for s in json.loads(result.stdout)["stages"] if s["stage"] == "predict")

    assert stage("2026-11-15 10:00")["counts"]["action"] == "fitted"
    assert stage("2026-11-20 10:00")["counts"]["action"] == "rescored"
    assert stage("2026-11-23 10:00")["counts"]["action"] == "fitted"
    assert query(folder / "cdp.db", "SELECT count(*), max(as_of) FROM models") == [
        (2, "2026-11-23")
    ]


def test_the_demo_without_the_predict_extra_says_how_to_enable_it(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['sklearn'] = None\n")
    env = {"PYTHONPATH": f"{hide}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "cdp_cli", "demo", "demo"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    predict = done.stdout.split("== predict ==")[1].split("== tag ==")[0]
    assert predict.strip() == (
        "predictive scores need the predict extra: pip install 'cdp[predict]'"
    )
    assert "== reports ==" in done.stdout


def test_a_dry_run_fits_and_scores_but_writes_nothing(latent, monkeypatch):
    monkeypatch.chdir(latent.config.root)
    result = CliRunner().invoke(
        cli, ["predict", "--dry-run", "--as-of", "2026-11-15", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["dry_run"] is True and found["model_id"] is None
    assert found["fields"]["churn_risk"]["customers"] == found["scored"] > 1000
    assert "Dry run: nothing was written" in result.stderr
    db = latent.config.root / "cdp.db"
    assert query(
        db, "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM predictions)"
    ) == [(0, 0)]
