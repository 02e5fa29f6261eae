"""Report of an active-learning run: learning curves and uncertainty over iterations."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from incerta.active.state import RunState
from incerta.evaluate.report import Report


def learning_rows(state: RunState) -> list[dict]:
    """One row per trained iteration: labels used and errors per data set."""
    return [{"iteration": e["iteration"], "n_labels": e["n_labels"], **{
        f"{name} F RMSE (meV/Å)": m["forces_rmse_meV_per_A"] for name, m in e["metrics"].items()}}
        for e in state.events("trained")]


def write_al_report(folder: Path, state: RunState) -> Path:
    report = Report("incerta active learning", folder)
    add_al_sections(report, state)
    return report.write()


def add_al_sections(report: Report, state: RunState) -> None:
    """Summary, learning curve, uncertainty over iterations and failed labels."""
    rows = learning_rows(state)
    selected = state.events("selected")
    failed = state.events("failed")
    stopped = state.events("stopped")
    report.text(f"{len(state.labelled())} labels, {len(failed)} failed labels, "
                f"stopped: {stopped[-1]['reason'] if stopped else 'running'}.")
    report.heading("Learning curve")
    if rows:
        keys = [k for k in rows[0] if k.endswith("(meV/Å)")]
        report.table(["iteration", "labels", *keys], [[r["iteration"], r["n_labels"], *[r[k] for k in keys]] for r in rows])
        fig, ax = plt.subplots(figsize=(5, 4))
        for key in keys:
            ax.plot([r["n_labels"] for r in rows], [r[key] for r in rows], "o-", label=key.replace(" F RMSE (meV/Å)", ""))
        ax.set(xlabel="labels", ylabel="force RMSE (meV/Å)", yscale="log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        report.figure(fig, "al_error_vs_labels", "Force error against the number of labels.")
    points = [e for e in selected if e.get("mean_uncertainty") is not None]  # none for random selection
    if points:
        report.heading("Uncertainty over iterations")
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([e["iteration"] for e in points], [e["mean_uncertainty"] for e in points], "o-", label="mean of candidates")
        ax.plot([e["iteration"] for e in points], [e["max_uncertainty"] for e in points], "s-", label="max of candidates")
        ax.set(xlabel="iteration", ylabel="structure uncertainty (eV/Å)", yscale="log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        report.figure(fig, "al_uncertainty_over_iterations", "Calibrated uncertainty of the candidates at each iteration.")
    if failed:
        report.heading("Failed labels")
        report.table(["iteration", "key", "attempts", "error"], [[e["iteration"], e["key"], e["attempts"], e["error"][:200]] for e in failed])
