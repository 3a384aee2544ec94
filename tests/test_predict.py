"""cdp predict on the sample data: scores as rule fields, the models table, --explain,
look-alikes, clusters, the refresh of `cdp run`, and each bad input in one line.

The sample is ingested, resolved, tagged and predicted once per test run (pymc-marketing's
first fit compiles C for a while), shared by the xdist workers through a lock file; a test
that writes works on its own copy.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cdp_cli import Project
from cdp_cli.cli import cli
from cdp_cli.identity.resolve import resolve
from cdp_cli.ingest import ingest
from cdp_cli.predict.run import predict, refresh
from cdp_cli.scaffold import init_project
from cdp_cli.tags import run_tags
from tests.conftest import built_once, query

DAY = date(2026, 11, 15)  # the sample's last day
REPO = Path(__file__).resolve().parent.parent


def build_predicted(folder: Path) -> None:
    init_project(folder)
    project = Project(folder / "cdp.yaml")
    with project.store() as db:
        ingest(db, project.config)
        resolve(db, project.config)
        run_tags(db, project.tag_rules_folder, DAY)
        predict(db, project.config.predict, DAY)
        run_tags(db, project.tag_rules_folder, DAY)  # the predictive tags, with scores now


@pytest.fixture(scope="session")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample project, predicted as of DAY: built once per test run; read-only."""
    return built_once(tmp_path_factory, "predicted-sample", build_predicted)


@pytest.fixture
def project(predicted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the predicted sample to write to, as the current folder."""
    folder = tmp_path / "project"
    shutil.copytree(predicted, folder)
    monkeypatch.chdir(folder)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cdp(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# ---------------------------------------------------------------------------------------------
# Scores as fields


def test_every_customer_with_an_order_is_scored_and_the_others_read_null(project):
    db = project / "cdp.db"
    with_orders = query(db, "SELECT count(*) FROM profile_features WHERE order_count > 0")[0][0]
    scored = query(db, "SELECT count(*) FROM predictions")[0][0]
    assert scored == with_orders > 500
    # never NaN (SQLite stores a NaN as NULL, but a model's NaN must not even reach it)
    columns = ("p_alive", "expected_orders_30d", "expected_orders_90d", "expected_orders_365d",
               "expected_value_365d", "lifetime_value", "churn_risk")  # fmt: skip
    for column in columns:
        low, high, missing = query(
            db, f"SELECT min({column}), max({column}), sum({column} IS NULL) FROM predictions"
        )[0]
        assert missing == 0 and low >= 0 and math.isfinite(high), column
    assert query(db, "SELECT max(p_alive), max(churn_risk) FROM predictions")[0] <= (1, 1)
    code, out, _ = cdp("segment", "--rule", "p_alive is null", "--json")
    assert code == 0
    without_orders = query(db, "SELECT count(*) FROM profile_features WHERE order_count = 0")[0]
    assert json.loads(out)["customers"] == without_orders[0] > 0


def test_rules_read_scores_and_propensities_like_features(project):
    db = project / "cdp.db"
    code, out, _ = cdp("segment", "--rule", "churn_risk > 0.7 and expected_value_365d > 500",
                       "--json")  # fmt: skip
    expected = query(
        db, "SELECT count(*) FROM predictions WHERE churn_risk > 0.7 AND expected_value_365d > 500"
    )[0][0]
    assert code == 0 and json.loads(out)["customers"] == expected > 0
    code, out, _ = cdp("segment", "--rule", "propensity_护肤 >= 0.2", "--json")
    expected = query(
        db,
        "SELECT count(*) FROM prediction_propensities WHERE category = '护肤' "
        "AND probability >= 0.2",
    )[0][0]
    assert code == 0 and json.loads(out)["customers"] == expected > 0
    code, _, err = cdp("segment", "--rule", "propensity_bags > 0.2")
    assert code == 2 and "unknown field 'propensity_bags'" in err


def test_the_predictive_starter_tags_hold_for_the_customers_their_rules_select(project):
    db = project / "cdp.db"
    at_risk = query(
        db,
        "SELECT count(*) FROM predictions s JOIN profile_tags t ON t.one_id = s.one_id "
        "AND t.tag = 'high_value' WHERE s.churn_risk >= 0.6",
    )[0][0]
    tagged = query(db, "SELECT count(*) FROM profile_tags WHERE tag = 'high_value_churn_risk'")
    assert tagged[0][0] == at_risk > 0
    soon = query(db, "SELECT count(*) FROM predictions WHERE expected_orders_30d >= 0.3")[0][0]
    tagged = query(db, "SELECT count(*) FROM profile_tags WHERE tag = 'likely_to_buy_soon'")
    assert tagged[0][0] == soon > 0


def test_a_score_is_traced_to_its_model(project):
    db = project / "cdp.db"
    (model_id, kind, version, fitted_at, as_of, inputs, parameters, evaluation), = query(
        db, "SELECT id, kind, version, fitted_at, as_of, inputs, parameters, evaluation FROM models"
    )  # fmt: skip
    assert kind == "predict" and as_of == DAY.isoformat() and fitted_at
    assert set(json.loads(version)) == {"cdp", "pymc-marketing", "scikit-learn"}
    inputs = json.loads(inputs)
    assert inputs["settings"]["churn_days"] == 90 and inputs["customers"] > 500
    assert set(json.loads(parameters)["clv"]) == {"r", "alpha", "a", "b", "p", "q", "v"}
    assert 0.6 < json.loads(evaluation)["churn"]["auc"] <= 1
    assert query(db, "SELECT DISTINCT model_id FROM predictions") == [(model_id,)]
    assert query(db, "SELECT DISTINCT model_id FROM prediction_propensities") == [(model_id,)]


def test_a_fit_and_its_scores_read_the_orders_and_events_once(project):
    """The history is read in one pass and cut as of the day and churn_days before it: at a
    million customers each pass over the orders cost about a minute."""
    statements: list[str] = []
    with Project(project / "cdp.yaml").store() as db:
        db.conn.set_trace_callback(statements.append)
        result = predict(db, Project(project / "cdp.yaml").config.predict, DAY, dry_run=True)
        db.conn.set_trace_callback(None)
    assert result.scored > 500
    assert sum(bool(re.search(r"\bFROM orders\b", s)) for s in statements) == 1
    assert sum(bool(re.search(r"\bFROM events\b", s)) for s in statements) == 1


def test_scores_are_stored_rounded_and_a_missing_one_is_null_or_no_row(project):
    from cdp_cli.predict.model import SCORE_COLUMNS, Scores
    from cdp_cli.predict.scores import save_scores

    one_ids = np.array(["a", "b", "c"], dtype=object)
    columns = {name: np.array([0.1234567, np.nan, np.inf]) for name in SCORE_COLUMNS}
    propensity = {"护肤": np.array([0.5, np.nan, 0.25]), "彩妆": np.array([np.nan, 1 / 3, 0.0])}
    with Project(project / "cdp.yaml").store() as db:
        save_scores(db, 1, Scores(one_ids, columns, propensity), DAY)
    db = project / "cdp.db"
    assert query(db, "SELECT one_id, p_alive, churn_risk FROM predictions ORDER BY one_id") == [
        ("a", 0.123457, 0.123457), ("b", None, None), ("c", None, None),
    ]  # fmt: skip
    assert query(
        db, "SELECT one_id, category, probability FROM prediction_propensities ORDER BY 1, 2"
    ) == [("a", "护肤", 0.5), ("b", "彩妆", 0.333333), ("c", "彩妆", 0.0), ("c", "护肤", 0.25)]


def test_the_classifiers_fit_with_one_blas_thread(monkeypatch):
    """Threads that wait for a busy core spin: on 2 cores beside another process, two BLAS
    threads made the logistic regressions 12 times slower."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from cdp_cli.predict.classify import fit_classifier

    seen: list[int] = []
    fit = LogisticRegression.fit

    def spy(self, *args, **kwargs):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    rng = np.random.default_rng(1)
    fit_classifier(rng.random((200, 3)), (rng.random(200) < 0.5).astype(int), ("a", "b", "c"))
    assert seen and set(seen) == {1}


def test_explain_shows_inputs_scores_and_the_factors_that_moved_them(project):
    db = project / "cdp.db"
    (one_id,) = query(db, "SELECT one_id FROM predictions ORDER BY churn_risk DESC LIMIT 1")[0]
    code, out, _ = cdp("predict", "--explain", one_id, "--json", "--as-of", "2026-11-15")
    found = json.loads(out)
    assert code == 0 and found["one_id"] == one_id
    assert (
        found["scores"]["churn_risk"]
        == query(db, "SELECT churn_risk FROM predictions WHERE one_id = ?", one_id)[0][0]
    )
    assert found["inputs"]["order_count"] >= 1
    factors = found["factors"]["churn_risk"]
    assert 1 <= len(factors) <= 5
    assert {f["direction"] for f in factors} <= {"up", "down"}
    assert "propensity_护肤" in found["factors"]
    code, out, _ = cdp("predict", "--explain", one_id)
    assert code == 0 and "What moved churn_risk" in out
    code, _, err = cdp("predict", "--explain", "nobody")
    assert code == 1 and err == "Error: no customer with one_id 'nobody'\n"


# ---------------------------------------------------------------------------------------------
# Look-alikes and clusters


def test_lookalike_finds_held_back_seed_members_far_above_chance_and_exports(project):
    code, out, _ = cdp("segment", "--lookalike", "vip", "--size", "60", "--json",
                       "--export", "vip-like.csv")  # fmt: skip
    report = json.loads(out)
    check = report["lookalike"]["held_back_check"]
    assert code == 0 and report["customers"] == report["exported"] == 60
    assert check["lift"] >= 5 and check["precision_at_n"] >= 5 * check["chance"]
    exported = read_csv(project / "vip-like.csv")
    vip = cdp("segment", "vip", "--export", "vip.csv")
    assert vip[0] == 0
    seeds = {r["one_id"] for r in read_csv(project / "vip.csv")}
    assert len(exported) == 60 and not seeds & {r["one_id"] for r in exported}
    logged = query(project / "cdp.db", "SELECT audience, rows FROM exports WHERE kind = 'segment'")
    assert ("lookalike(vip)", 60) in logged
    code, out, _ = cdp("segment", "--lookalike", "vip", "--min-score", "0.9", "--json",
                       "--export", "ads.csv", "--hashed")  # fmt: skip
    report = json.loads(out)
    assert code == 0 and report["layout"] == "google" and report["exported"] > 0
    assert report["lookalike"]["min_score"] >= 0.9


def test_clusters_split_the_whole_base_and_portray_each(project):
    code, out, _ = cdp("segment", "--clusters", "4", "--json")
    found = json.loads(out)
    base = query(project / "cdp.db", "SELECT count(*) FROM profile_features")[0][0]
    assert code == 0 and len(found["clusters"]) == 4
    assert sum(c["customers"] for c in found["clusters"]) == found["customers"] == base
    sizes = [c["customers"] for c in found["clusters"]]
    assert sizes == sorted(sizes, reverse=True)
    indexes = [c["features"]["order_count"]["index"] for c in found["clusters"]]
    assert min(indexes) < 50 and max(indexes) > 150  # a cluster that buys little, one a lot
    code, out, _ = cdp("segment", "--clusters", "4")
    assert code == 0 and "stands out by" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "5"], "--size and --min-score go with --lookalike SEGMENT"),
        (["--lookalike", "vip"], "--lookalike needs --size N or --min-score X"),
        (["vip", "--lookalike", "vip", "--size", "5"], "--lookalike SEGMENT is the seed"),
        (["--clusters", "3", "--rule", "order_count > 1"], "--clusters K portrays the whole"),
        (["--clusters", "1"], "Invalid value for '--clusters'"),
    ],
)
def test_predictive_segment_options_are_checked(project, args, message):
    code, _, err = cdp("segment", *args)
    assert code == 2 and message in err


def test_a_lookalike_of_a_tiny_segment_says_so(project):
    segments = project / "tag_rules" / "segments.yaml"
    segments.write_text(
        segments.read_text(encoding="utf-8") + '\n- {name: tiny, rule: "order_count >= 25"}\n',
        encoding="utf-8",
    )
    tiny = query(
        project / "cdp.db", "SELECT count(*) FROM profile_features WHERE order_count >= 25"
    )
    code, _, err = cdp("segment", "--lookalike", "tiny", "--size", "10")
    assert code == 1
    assert err == (
        f"Error: segment tiny has {tiny[0][0]} customers: a look-alike needs at least 20\n"
    )


# ---------------------------------------------------------------------------------------------
# Refresh (cdp run) and settings


def test_refresh_rescores_new_days_and_refits_when_the_model_is_old(project):
    config = Project(project / "cdp.yaml").config
    with Project(project / "cdp.yaml").store() as db:
        unchanged = refresh(db, config.predict, DAY)
        assert unchanged.action == "unchanged" and unchanged.model_id == 1
        later = refresh(db, config.predict, date(2026, 11, 18))
        assert later.action == "rescored" and later.model_id == 1
        assert later.fields["p_alive"]["customers"] == later.scored > 500
    runs = query(project / "cdp.db", "SELECT model_id, as_of FROM prediction_runs ORDER BY id")
    assert runs == [(1, "2026-11-15"), (1, "2026-11-18")]


def test_predict_settings_are_checked_with_file_and_line(run, write):
    write("cdp.yaml", "region: CN\npredict:\n  churn_days: 90\n  discount_rate: 5\n")
    result = run("status")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: cdp.yaml:4: predict.discount_rate: expected a number from 0 to 1 (got 5)\n"
    )
    write("cdp.yaml", "predict:\n  churn_window: 90\n")
    result = run("status")
    assert result.exit_code == 2 and "did you mean 'churn_days'?" in result.stderr


# ---------------------------------------------------------------------------------------------
# Bad input: one line, never a crash or a NaN

ORDERS_CONFIG = """
sources:
  orders:
    kind: orders
    files: [orders.csv]
    key: id
    fields: {order_id: id, phone: phone, amount: amount, ordered_at: at, category: category}
"""


def orders_project(write, rows: list[str]) -> None:
    write("cdp.yaml", ORDERS_CONFIG)
    write("orders.csv", "id,phone,amount,at,category\n" + "\n".join(rows) + "\n")


def prepared(run) -> None:
    assert run("ingest").exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag", "--as-of", "2026-11-15").exit_code == 0


def test_no_orders_is_one_line(run, write):
    orders_project(write, [])
    prepared(run)
    result = run("predict", "--as-of", "2026-11-15")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: no orders up to 2026-11-15: predictions learn from order history\n"
    )


def test_a_single_order_per_customer_is_one_line(run, write):
    rows = [f"o{i},1380013{i:04d},99,2026-0{1 + i % 9}-1{i % 10} 10:00,护肤" for i in range(50)]
    orders_project(write, rows)
    prepared(run)
    result = run("predict", "--as-of", "2026-11-15")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: only 0 of 50 customers bought on more than one day up to 2026-11-15: the "
        "purchase model needs repeat purchases from at least 10 customers\n"
    )
    assert query(Path("cdp.db"), "SELECT count(*) FROM models")[0][0] == 0


def test_evaluate_needs_the_days_after_the_calibration_end(run, write):
    orders_project(write, ["o1,13800138000,99,2026-01-01 10:00,护肤"])
    prepared(run)
    result = run("predict", "--evaluate", "--calibration-end", "2026-10-01", "--as-of",
                 "2026-11-15")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --calibration-end 2026-10-01: the 90 days after it must end by the as-of date "
        "2026-11-15; give a date on or before 2026-08-17\n"
    )
    result = run("predict", "--evaluate")
    assert result.exit_code == 2 and "--evaluate needs --calibration-end DATE" in result.stderr


def test_without_the_predict_extra_a_predictive_command_says_what_to_install(tmp_path):
    """The extra's libraries made unimportable in a fresh interpreter (sitecustomize), as on
    a core install."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['sklearn'] = None\n")
    (tmp_path / "cdp.yaml").write_text("region: CN\n")
    env = {"PYTHONPATH": f"{hide}:{REPO}", "PATH": "/usr/bin:/bin", "CDP_DEBUG": ""}
    done = subprocess.run(
        [sys.executable, "-m", "cdp_cli", "predict"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "Error: predictions need the predict extra (sklearn is not installed): "
        "pip install 'cdp[predict]'\n"
    )


def test_tags_hold_for_nobody_before_any_prediction(run, write, tmp_path):
    rows = [f"{m}{i},1380013{i:04d},2000,2026-{m}-1{i % 10} 10:00,护肤" for i in range(20)
            for m in ("03", "09")]  # fmt: skip
    orders_project(write, rows)
    shutil.copytree(REPO / "tag_rules", tmp_path / "tag_rules")
    prepared(run)
    result = run("tag", "--as-of", "2026-11-15", "--json", "--force")
    assert result.exit_code == 0
    tags = json.loads(result.stdout)["tags"]
    assert tags["high_value"]["customers"] > 0
    assert tags["high_value_churn_risk"]["customers"] == 0
    assert tags["likely_to_buy_soon"]["customers"] == 0


@pytest.fixture
def short_history(run, write) -> Iterator[None]:
    """60 customers who each bought twice, ten days apart, in the last 40 days."""
    rows = []
    for i in range(60):
        day = 1 + i % 20
        rows.append(f"a{i},1380013{i:04d},{80 + i},2026-10-{day:02d} 10:00,护肤")
        rows.append(f"b{i},1380013{i:04d},{90 + i},2026-10-{day + 10:02d} 12:00,彩妆")
    orders_project(write, rows)
    prepared(run)
    yield


@pytest.mark.slow  # a fit of pymc-marketing: seconds on a quiet machine, more on a busy one
def test_too_little_history_for_churn_is_a_note_and_null_scores(run, short_history):
    result = run("predict", "--as-of", "2026-11-15", "--json")
    assert result.exit_code == 0
    found = json.loads(result.stdout)
    assert found["fields"]["churn_risk"]["customers"] == 0
    assert found["fields"]["p_alive"]["customers"] == 60
    assert (
        "churn_risk, propensity: too little history: 0 customers had ordered by 2026-08-17 "
        "(90 days before 2026-11-15), needs 40; scores are empty\n"
    ) in result.stderr
    nulls = query(Path("cdp.db"), "SELECT count(*) FROM predictions WHERE churn_risk IS NULL")
    assert nulls == [(60,)]
    result = run("segment", "--rule", "churn_risk > 0.5", "--json")
    assert json.loads(result.stdout)["customers"] == 0


@pytest.mark.slow  # a fit of pymc-marketing
def test_a_category_with_too_few_buyers_gets_no_propensity(run, write):
    rows = []
    for i in range(80):  # a year of history; 礼盒 bought by three customers only
        category = "礼盒" if i < 3 else "护肤"
        for month in (1, 4, 7, 10) if i % 2 else (2, 5):
            rows.append(f"o{i}-{month},1380013{i:04d},{50 + i},2026-{month:02d}-1{i % 10} 10:00,"
                        f"{category}")  # fmt: skip
    orders_project(write, rows)
    prepared(run)
    result = run("predict", "--as-of", "2026-11-15", "--json")
    assert result.exit_code == 0, result.stderr
    assert (
        "propensity_礼盒: only " in result.stderr
        and "(needs 20); scores are empty" in result.stderr
    )
    fields = json.loads(result.stdout)["fields"]
    assert "propensity_礼盒" not in fields


def test_cdp_run_rescores_before_tagging_and_refits_only_when_due(project):
    with open(project / "cdp.yaml", "a", encoding="utf-8") as f:
        f.write("\npredict:\n  refit_days: 7\n")
    code, out, err = cdp("run", "--now", "2026-11-16 10:30", "--json")
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert [s["stage"] for s in stages] == ["ingest", "resolve", "predict", "tag", "journeys"]
    predicted = stages[2]
    assert predicted["status"] == "done"
    assert predicted["counts"]["action"] == "rescored" and predicted["counts"]["model_id"] == 1
    code, out, err = cdp("run", "--now", "2026-11-16 11:30", "--json")
    assert json.loads(out)["stages"][2]["counts"]["action"] in ("unchanged", "rescored")
    assert query(project / "cdp.db", "SELECT count(*) FROM models") == [(1,)]
    assert query(project / "cdp.db", "SELECT max(as_of) FROM prediction_runs") == [("2026-11-16",)]


def test_journeys_and_templates_read_the_scores(project):
    from cdp_cli.messaging.conditions import JourneyRules
    from cdp_cli.messaging.send import TemplateData
    from cdp_cli.predict.fields import predicted_categories
    from cdp_cli.rules.vocabulary import BASE_FROM

    config = Project(project / "cdp.yaml").config
    with Project(project / "cdp.yaml").store(create=False) as db:
        rules = JourneyRules(config, DAY, set(), predicted_categories(db.conn))
        entry = rules.customer("churn_risk >= 0.5 and propensity_彩妆 > 0.1")
        entered = db.conn.execute(
            f"SELECT count(*) FROM {BASE_FROM} WHERE {entry.sql}", entry.params
        ).fetchone()[0]
        one_id, risk = db.conn.execute(
            "SELECT one_id, churn_risk FROM predictions ORDER BY one_id LIMIT 1"
        ).fetchone()
        printed = TemplateData.load(db, [one_id], ["churn_risk", "total_spent"])
    expected = query(
        project / "cdp.db",
        "SELECT count(*) FROM predictions s JOIN prediction_propensities pp ON pp.one_id = "
        "s.one_id AND pp.category = '彩妆' WHERE s.churn_risk >= 0.5 AND pp.probability > 0.1",
    )[0][0]
    assert entered == expected > 0
    features = dict(zip(printed.feature_columns, printed.features[one_id], strict=True))
    assert features["churn_risk"] == risk
    assert features["total_spent"] > 0


def test_lookalikes_and_clusters_need_the_features_of_cdp_tag(run, write):
    orders_project(write, ["o1,13800138000,99,2026-01-01 10:00,护肤"])
    assert run("ingest").exit_code == 0 and run("resolve").exit_code == 0
    write("tag_rules/segments.yaml", '- {name: all, rule: "order_count >= 0"}\n')
    for args in (["--clusters", "3"], ["--lookalike", "all", "--size", "5"]):
        result = run("segment", *args)
        assert result.exit_code == 2
        assert result.stderr == "Error: no features yet: run `cdp tag` first\n"
