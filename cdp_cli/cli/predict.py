"""cdp predict: fit and score the predictive models, evaluate them, explain one customer."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import (
    Project,
    as_of_option,
    json_option,
    output_option,
    pass_project,
    silent_option,
    writes_store,
)
from cdp_cli.files import HTML_FORMATS

if TYPE_CHECKING:
    from cdp_cli.predict.evaluation import Evaluation
    from cdp_cli.predict.run import PredictResult


@click.command(name="predict")
@as_of_option
@click.option(
    "--evaluate",
    is_flag=True,
    help="Fit on the history up to --calibration-end and score the days after it, beside "
    "the simple baselines; writes nothing.",
)
@click.option(
    "--calibration-end",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="DATE",
    help="With --evaluate: the last day the models learn from.",
)
@output_option("--html", "html_path", HTML_FORMATS, "With --evaluate: also write an HTML page.")
@click.option("--explain", "explain_id", metavar="ONE_ID", help="One customer's scores and why.")
@click.option("--dry-run", is_flag=True, help="Fit and score, but write nothing.")
@silent_option
@json_option
@writes_store(unless=("evaluate", "explain_id", "dry_run"))
@pass_project
def predict_command(
    project: Project,
    as_of: datetime | None,
    evaluate: bool,
    calibration_end: datetime | None,
    html_path: Path | None,
    explain_id: str | None,
    dry_run: bool,
    silent: bool,
    json_: bool,
) -> None:
    """Predict who will leave, who will buy again, and what each customer is worth.

    Fits a purchase model (BG/NBD), a spend model (Gamma-Gamma), churn risk and a propensity
    per top category on the store's order history, scores every customer with an order, and
    stores the scores as rule fields: p_alive, expected_orders_30d/_90d/_365d,
    expected_value_365d, lifetime_value, churn_risk, propensity_<category>. Needs the
    predict extra: pip install 'cdp[predict]'. Settings: predict: in cdp.yaml.

    \b
    Examples:
      cdp predict
      cdp predict --evaluate --calibration-end 2026-08-17 --html evaluation.html
      cdp predict --explain 7f3a9c2e1b4d
      cdp segment --rule "churn_risk > 0.7 and expected_value_365d > 1000"
    """
    from cdp_cli.features import today
    from cdp_cli.predict import require_extra

    if (evaluate or html_path) and calibration_end is None:
        raise click.UsageError("--evaluate needs --calibration-end DATE")
    if (calibration_end or html_path) and not evaluate:
        raise click.UsageError("--calibration-end and --html go with --evaluate")
    if explain_id and (evaluate or dry_run):
        raise click.UsageError("--explain goes alone (with --as-of or --json at most)")
    require_extra()
    config = project.config
    day = as_of.date() if as_of else today(config)
    with project.store(create=False) as db:
        if explain_id:
            from cdp_cli.predict.explain import explain

            out.emit(explain(db, explain_id), json_, _print_explanation)
            return
        if evaluate:
            assert calibration_end is not None
            _evaluate(db, config, calibration_end.date(), day, html_path, json_, silent)
            return
        from cdp_cli.predict.run import predict

        result = predict(db, config.predict, day, dry_run=dry_run)
    out.emit(result, json_, print_predict_result)
    for line in result.notes:
        out.note(line, silent)
    if dry_run:
        out.note("Dry run: nothing was written", silent)


def _evaluate(
    db: Any,
    config: Any,
    calibration_end: Any,
    day: Any,
    html_path: Path | None,
    json_: bool,
    silent: bool,
) -> None:
    from cdp_cli.files import write_text
    from cdp_cli.predict.evaluation import evaluate, evaluation_html

    evaluation = evaluate(db, config.predict, calibration_end, day)
    if html_path is not None:
        write_text(html_path, evaluation_html(evaluation, config.timezone))
    out.emit(evaluation, json_, _print_evaluation)
    for line in evaluation.notes:
        out.note(line, silent)
    if html_path is not None:
        out.note(f"Wrote {html_path}", silent)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:,.4g}" if isinstance(value, float) else str(value)


def print_predict_result(result: PredictResult) -> None:
    verb = "would score" if result.dry_run else "scored"
    click.echo(
        f"Models fitted as of {result.as_of} on {result.fitted_on:,} customers; {verb} "
        f"{result.scored:,} customers with an order (model {result.model_id or '-'})"
    )
    rows = [
        (name, _number(s["customers"]), _number(s["mean"]), _number(s["p25"]),
         _number(s["median"]), _number(s["p75"]))
        for name, s in result.fields.items()
    ]  # fmt: skip
    out.print_table("Scores", ["field", "customers", "mean", "p25", "median", "p75"], rows, 5)
    held = [
        (name, _number(e.get("auc")), _number(e.get("brier")), _number(e.get("held_out")))
        for name, e in result.evaluation.items()
    ]
    if held:
        out.print_table(
            "On a quarter of the training customers held out",
            ["model", "AUC", "Brier", "customers"],
            held,
            3,
        )


def _print_evaluation(evaluation: Evaluation) -> None:
    click.echo(
        f"Fitted on the history up to {evaluation.calibration_end}, compared with the days up "
        f"to {evaluation.holdout_end}: {evaluation.customers:,} customers"
    )
    rows = []
    churn = evaluation.churn
    if churn:
        rows += [
            ("churn_risk", _number(churn["auc"]), _number(churn["brier"])),
            ("  baseline: days since the last order", _number(churn["baseline_recency_auc"]), ""),
            ("  baseline: purchase days", _number(churn["baseline_frequency_auc"]), ""),
        ]
    for name, p in evaluation.propensity.items():
        rows += [
            (f"propensity_{name}", _number(p["auc"]), _number(p["brier"])),
            ("  baseline: purchase days in it", _number(p["baseline_category_days_auc"]), ""),
        ]
    if rows:
        out.print_table("Classification", ["score", "AUC", "Brier"], rows, 2)
    o = evaluation.orders
    out.print_table(
        f"Purchase days in the {o['days']} days after",
        ["model", "expected", "actual", "error", "MAE per customer"],
        [
            ("BG/NBD", _number(o["expected_total"]), _number(o["actual_total"]),
             out.fmt_pct(o["error_total"]), _number(o["mae_per_customer"])),
            ("baseline: past daily rate", _number(o["baseline_past_rate_total"]),
             _number(o["actual_total"]), out.fmt_pct(o["baseline_error_total"]),
             _number(o["baseline_mae_per_customer"])),
        ],
        4,
    )  # fmt: skip


def _print_explanation(found: dict[str, Any]) -> None:
    click.echo(
        f"{found['one_id']}: scores as of {found['as_of']} (model {found['model_id']}, "
        f"fitted {found['model_fitted_at']} on the history up to {found['model_as_of']})"
    )
    scores = [(name, _number(value)) for name, value in found["scores"].items()]
    out.print_table("Scores", ["field", "value"], scores, 1)
    if "note" in found:
        out.note(found["note"])
        return
    inputs = [(name, _number(value)) for name, value in found["inputs"].items()]
    out.print_table("Inputs", ["input", "value"], inputs, 1)
    for score, factors in found["factors"].items():
        rows = [(f["feature"], f["direction"], _number(f["push"])) for f in factors]
        out.print_table(f"What moved {score}", ["factor", "moves it", "push"], rows, 1)
