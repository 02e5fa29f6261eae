"""Report of an active-learning run: learning curves and uncertainty over iterations."""

from __future__ import annotations

from pathlib import Path

from incerta.active.state import RunState
from incerta.evaluate import plots
from incerta.evaluate.report import Report

ERROR_COLUMN = " F RMSE (meV/Å)"


def learning_rows(state: RunState) -> list[dict]:
    """One row per trained iteration: labels used and errors per data set."""
    return [{"iteration": e["iteration"], "n_labels": e["n_labels"], **{
        f"{name}{ERROR_COLUMN}": m["forces_rmse_meV_per_A"] for name, m in e["metrics"].items()}}
        for e in state.events("trained")]


def write_al_report(folder: Path, state: RunState) -> Path:
    report = Report("incerta active learning", folder)
    add_al_sections(report, state)
    return report.write()


def add_al_sections(report: Report, state: RunState) -> None:
    """Summary, error against labels, uncertainty over iterations and failed labels."""
    rows = learning_rows(state)
    selected = state.events("selected")
    failed = state.events("failed")
    stopped = state.events("stopped")
    report.text(f"{len(state.labelled())} labels, {len(failed)} failed labels, "
                f"stopped: {stopped[-1]['reason'] if stopped else 'running'}.")
    report.heading("Error against labels")
    if rows:
        keys = [k for k in rows[0] if k.endswith(ERROR_COLUMN)]
        report.table(["iteration", "labels", *keys], [[r["iteration"], r["n_labels"], *[r[k] for k in keys]] for r in rows])
        errors = {k.removesuffix(ERROR_COLUMN): [r[k] for r in rows] for k in keys}
        report.figure(plots.al_errors([r["n_labels"] for r in rows], errors), "al_error_vs_labels",
                      "Force error of the model retrained after each labelling round, on each data set: it should "
                      "fall as labels are added, fastest where the labels were chosen.")
    points = [e for e in selected if e.get("mean_uncertainty") is not None]  # none for random selection
    if points:
        report.heading("Uncertainty over iterations")
        report.figure(plots.al_uncertainty([e["iteration"] for e in points], [e["mean_uncertainty"] for e in points],
                                           [e["max_uncertainty"] for e in points]),
                      "al_uncertainty_over_iterations",
                      "Calibrated uncertainty of the candidates at each iteration: it should fall as the model "
                      "learns the region the candidates come from.")
    if failed:
        report.heading("Failed labels")
        report.table(["iteration", "key", "attempts", "error"], [[e["iteration"], e["key"], e["attempts"], e["error"][:200]] for e in failed])


def add_al_comparison(report: Report, states: dict[str, RunState]) -> None:
    """Learning curves of several strategies side by side, one panel per test set, and the
    labels each needs to reach the first strategy's final error on every test set."""
    rows = {strategy: learning_rows(state) for strategy, state in states.items()}
    keys = [k for k in next(iter(rows.values()))[0] if k.endswith(ERROR_COLUMN) and not k.startswith("validation")]
    baseline = next(iter(rows))
    targets = {k: rows[baseline][-1][k] for k in keys}
    table = []
    for strategy, curve in rows.items():
        reached = next((r["n_labels"] for r in curve if all(r[k] <= targets[k] for k in keys)), "not reached")
        table.append([strategy, curve[-1]["n_labels"], *[curve[-1][k] for k in keys], reached])
    report.table(["strategy", "labels", *keys, f"labels to reach {baseline}'s final errors"], table)
    curves = {strategy: ([r["n_labels"] for r in curve], {k.removesuffix(ERROR_COLUMN): [r[k] for r in curve] for k in keys})
              for strategy, curve in rows.items()}
    report.figure(plots.al_strategies(curves), "al_strategies",
                  f"Force error on each test set against the number of labels, for each way of choosing them "
                  f"(same initial data, model and training). Active learning pays where its curve lies below "
                  f"{baseline}'s: the same error with fewer reference calculations.")
