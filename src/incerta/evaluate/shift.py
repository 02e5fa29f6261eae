"""The report's temperature-shift experiment (3BPA-style, section 3.4.2) for any labelled groups.

Train once (or take a model), attach each uncertainty method, predict every group, then
report per method: 2-D histograms of uncertainty vs force error, uncertainty histograms
per group, group means (their order is checked), RMSE-vs-RMV calibration curves and a
table with Spearman, AUROC of every shifted group against the first, miscalibration
area, NLL and cost, and a table per group (mean σ against the mean and RMS error, per-atom
and per-structure Spearman, miscalibration area, ENCE). Output folder::

    base/ (training run) · methods/<method>/ · ensemble/ · results.json · results.csv
    results_per_group.csv
    figures/*.png · report.html
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from incerta.config.experiments import MethodVariant, ShiftConfig
from incerta.config.sources import load_source, prepare_splits
from incerta.config.training import RunConfig
from incerta.evaluate import plots
from incerta.evaluate.experiments import (
    attach_method,
    force_error_norms,
    inference_overhead,
    predictions,
    write_json,
    write_table,
)
from incerta.evaluate.report import Report
from incerta.evaluate.training_report import write_training_report
from incerta.train.checkpoint import is_model_folder
from incerta.train.run import train_run
from incerta.uq import metrics as uq_metrics
from incerta.uq.ensemble_training import train_ensemble
from incerta.uq.evaluation import uncertainty_metrics
from incerta.uq.store import has_uncertainty, read_uncertainty_metadata

COLUMNS = [
    ("method", "method"), ("Spearman (atoms)", "spearman_atoms"), ("miscal. area", "miscalibration_area"),
    ("NLL", "nll"), ("ENCE", "ence"), ("means ordered", "means_ordered"), ("fit (s)", "fit_time_s"),
    ("inference (x model)", "inference_overhead"),
]


#: columns of the per-group table: :func:`incerta.uq.evaluation.uncertainty_metrics` of each group
PER_GROUP_COLUMNS = [
    ("mean σ / mean |ΔF|", "mean_sigma_over_mean_error"), ("mean σ / RMS |ΔF|", "mean_sigma_over_rms_error"),
    ("Spearman (atoms)", "spearman_forces_atoms"), ("Spearman (structures, max)", "spearman_structures"),
    ("its ceiling if σ were exact", "spearman_structures_if_calibrated"),
    ("miscal. area", "miscalibration_area_forces"), ("ENCE", "ence_forces"),
]


def _method_metrics(arrays: dict[str, dict[str, np.ndarray]], groups: list[str]) -> dict:
    reference = groups[0]
    sigma = np.concatenate([arrays[g]["forces_uncertainty"] for g in groups])
    error = np.concatenate([force_error_norms(arrays[g]) for g in groups])
    held = arrays[reference]
    components, sigmas = uq_metrics.force_components(held["forces_pred"] - held["forces_ref"], held["forces_uncertainty"])
    means = [float(np.mean(arrays[g]["forces_uncertainty"])) for g in groups]
    return {
        "spearman_atoms": uq_metrics.spearman(sigma, error),
        "per_group": {g: uncertainty_metrics(arrays[g]) for g in groups},
        "auroc_vs_" + reference: {g: uq_metrics.auroc(arrays[reference]["structure_uncertainty"], arrays[g]["structure_uncertainty"])
                                  for g in groups[1:]},
        "miscalibration_area": uq_metrics.miscalibration_area(components, sigmas),
        "nll": uq_metrics.gaussian_nll(components, sigmas),
        "ence": uq_metrics.ence(components, sigmas),
        "mean_uncertainty_meV_per_A": {g: 1e3 * m for g, m in zip(groups, means)},
        "mean_force_error_meV_per_A": {g: 1e3 * float(np.mean(force_error_norms(arrays[g]))) for g in groups},
        "means_ordered": bool(all(a < b for a, b in itertools.pairwise(means))),
    }


@dataclass
class ShiftOutcome:
    """results.json content and the per-method, per-group prediction arrays behind it."""

    results: dict
    arrays: dict[str, dict[str, dict[str, np.ndarray]]]


def run_shift(config: ShiftConfig, out: str | Path, progress: bool = True) -> ShiftOutcome:
    """Run (or resume) the experiment into ``out``."""
    out = Path(out)
    section = config.shift
    run_config = RunConfig.model_validate(config.model_dump(exclude={"shift"}))
    base_model = section.model or out / "base" / "model"
    if section.model is None and not is_model_folder(base_model):
        write_training_report(train_run(run_config, out / "base"))
    splits = prepare_splits(run_config.data, run_config.seed)
    groups = {name: load_source(source, ("energy", "forces"))[: section.max_frames] for name, source in section.groups.items()}
    names = list(groups)

    models = {}
    variants = {**{name: MethodVariant(method=name) for name in section.methods}, **section.variants}
    for name, variant in tqdm(variants.items(), desc="uncertainty methods", disable=not progress, unit="method"):
        folder = out / "methods" / name
        attach_method(Path(base_model), folder, variant.method, splits, variant.fit or section.fit, run_config.seed,
                      progress, variant.options)
        models[name] = folder
    if section.ensemble > 1:
        ensemble_model = out / "ensemble" / "model"
        if not has_uncertainty(ensemble_model):
            train_ensemble(run_config, out / "ensemble", section.ensemble)
        models["ensemble"] = ensemble_model

    results = {"groups": names, "methods": {}}
    arrays = {}
    for method, folder in models.items():
        arrays[method] = {g: predictions(folder, frames, folder / f"predictions_{g}.npz", section.aggregate)
                          for g, frames in groups.items()}
        metrics = _method_metrics(arrays[method], names)
        timing_file = folder / "timing.json"
        if not timing_file.is_file():
            report = json.loads(read_uncertainty_metadata(folder)["report"])
            write_json(timing_file, {"fit_time_s": report["fit_time_s"],
                                     "inference_overhead": inference_overhead(folder, groups[names[0]])})
        metrics.update(json.loads(timing_file.read_text()))
        results["methods"][method] = metrics

    _write_outputs(out, results, arrays, names)
    return ShiftOutcome(results, arrays)


def table_rows(results: dict) -> tuple[list[str], list[list]]:
    """Header and rows of the summary table (also written to results.csv)."""
    groups = results["groups"]
    header = [c for c, _ in COLUMNS[:2]] + [f"AUROC {g} vs {groups[0]}" for g in groups[1:]] \
        + [f"mean σ {g} (meV/Å)" for g in groups] + [c for c, _ in COLUMNS[2:]]
    rows = []
    for method, m in results["methods"].items():
        auroc = m[f"auroc_vs_{groups[0]}"]
        rows.append([method, m["spearman_atoms"], *[auroc[g] for g in groups[1:]],
                     *[m["mean_uncertainty_meV_per_A"][g] for g in groups], *[m[k] for _, k in COLUMNS[2:]]])
    return header, rows


def per_group_rows(results: dict) -> tuple[list[str], list[list]]:
    """Header and rows of the per-group table (one row per method and group; results_per_group.csv)."""
    header = ["method", "group", *[c for c, _ in PER_GROUP_COLUMNS]]
    rows = [[method, group, *[values[k] for _, k in PER_GROUP_COLUMNS]]
            for method, m in results["methods"].items() for group, values in m["per_group"].items()]
    return header, rows


def _write_outputs(out: Path, results: dict, arrays: dict, groups: list[str]) -> None:
    write_json(out / "results.json", results)
    header, rows = table_rows(results)
    write_table(out / "results.csv", header, rows)
    write_table(out / "results_per_group.csv", *per_group_rows(results))
    report = Report("incerta uncertainty under distribution shift", out)
    add_shift_sections(report, results, arrays, groups)
    report.write()


#: per-atom figures of the report, each drawn for all atoms and per element: heading, drawing,
#: the regrouping of the atoms by element, file name, captions
ATOM_FIGURES = (
    ("Uncertainty vs error", plots.uncertainty_error_grid, plots.elements_pooled, "uncertainty_vs_error",
     "Each atom's σ against its actual force error |F_pred - F|: points on the dashed line have σ equal to the "
     "error; a good estimator keeps the cloud along it, in every group.",
     "The same, one panel per element (all groups pooled): within an element σ should still rise with the error, "
     "not only between light and heavy atoms."),
    ("Uncertainty per group", plots.uncertainty_histograms, plots.elements_by_method, "uncertainty_histograms",
     "Distributions of per-atom σ; the histograms (and their means, in the legend) should move right as the groups "
     "move away from the training data.",
     "The same per element: the two humps of the pooled histograms are light atoms (hydrogen, small forces and "
     "errors) and heavy atoms; each element's σ should shift with the group on its own."),
)


def add_shift_sections(report: Report, results: dict, arrays: dict, groups: list[str]) -> None:
    """Summary table, uncertainty-vs-error grids and histograms (per group and per element) and
    calibration curves."""
    header, rows = table_rows(results)
    report.text(f"Groups: {', '.join(groups)} (the first is in distribution). Per-atom uncertainties σ are calibrated "
                "on the validation split: the predicted RMS of an atom's force-error vector, in meV/Å.")
    report.heading("Summary")
    report.table(header, rows)
    report.heading("Per group")
    report.text("Does σ keep up with the error away from the training data? A ratio of mean σ to the mean (or RMS) "
                "force-vector error below 1 in a shifted group means over-confidence exactly where it matters.")
    report.table(*per_group_rows(results))
    atoms = {m: {g: (a[g]["forces_uncertainty"], force_error_norms(a[g]), a[g]["numbers"]) for g in groups}
             for m, a in arrays.items()}
    for heading, draw, by_element, name, caption, by_element_caption in ATOM_FIGURES:
        report.heading(heading)
        report.figure(draw(atoms), name, caption)
        report.figure(draw(by_element(atoms)), f"{name}_by_element", by_element_caption)
    report.heading("Calibration")
    reference = groups[0]
    report.figure(plots.calibration_curves({
        m: uq_metrics.force_components(a[reference]["forces_pred"] - a[reference]["forces_ref"], a[reference]["forces_uncertainty"])
        for m, a in arrays.items()
    }), "calibration", f"Observed RMSE of force components against their predicted σ on {reference} (held out "
        "from calibration), in bins of σ: points on the dashed diagonal are calibrated, above it over-confident.")

