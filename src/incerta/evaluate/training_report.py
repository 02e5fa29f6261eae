"""The report written at the end of every training run: errors, parity plots, learning curve."""

from __future__ import annotations

from pathlib import Path

from incerta.evaluate import plots
from incerta.evaluate.report import Report
from incerta.models.predict import collect_predictions
from incerta.train.run import TrainedRun

METRIC_COLUMNS = [
    ("structures", "n_structures"), ("E MAE (meV/atom)", "energy_per_atom_mae_meV"),
    ("E RMSE (meV/atom)", "energy_per_atom_rmse_meV"), ("F MAE (meV/Å)", "forces_mae_meV_per_A"),
    ("F RMSE (meV/Å)", "forces_rmse_meV_per_A"),
]


def write_training_report(run: TrainedRun) -> Path:
    """RUN_DIR/report.html (+ figures/): errors, parity plots, error histograms and learning
    curve of the run's exported model."""
    report = Report("incerta training report", run.run_dir)
    add_training_sections(report, run)
    return report.write()


def add_training_sections(report: Report, run: TrainedRun) -> None:
    """Errors table, parity plots, error histograms and learning curve of ``run``."""
    model, metrics, history = run.model, run.metrics, run.history
    spec = model.spec
    report.text(
        f"Model: l_max={spec.l_max}, {spec.num_channels} channels, {spec.num_layers} interaction layers, "
        f"cutoff {spec.cutoff} Å, {sum(p.numel() for p in model.parameters())} parameters. "
        f"Best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, training time {metrics['train_time_s']:.0f} s."
    )
    report.heading("Errors")
    results = {"validation": metrics["validation"], **metrics["test"]}
    report.table(["data"] + [c for c, _ in METRIC_COLUMNS], [[name] + [r[k] for _, k in METRIC_COLUMNS] for name, r in results.items()])
    predictions = {name: collect_predictions(model, graphs) for name, graphs in run.datasets.items()}
    report.heading("Parity")
    report.figure(plots.parity(predictions), "parity",
                  "Predicted against reference energies and force components: on the dashed diagonal a prediction "
                  "is exact; the width of the cloud is the error.")
    report.heading("Error distributions")
    report.figure(plots.error_histograms(predictions), "error_histograms",
                  "Energy and force-component errors: narrow peaks centred on zero mean small, unbiased errors; "
                  "long tails are rare large errors.")
    if history:
        report.heading("Learning curve")
        report.figure(plots.learning_curve(history), "learning_curve",
                      "Validation errors (EMA weights) and learning rate per epoch: the errors should fall and flatten "
                      "as the learning rate decays; errors rising again mean overfitting.")
