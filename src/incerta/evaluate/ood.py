"""The report's out-of-distribution matrix (MD17-style, section 3.4.3).

One model per dataset (e.g. per molecule), each with every uncertainty method attached;
every model is tested on every dataset. A structure's score is the aggregate (max by
default) of its calibrated per-atom uncertainties. Entry (i, j) of a method's matrix is
the AUROC of telling dataset j's test structures from the first half of dataset i's own
test structures; the diagonal compares the two halves of dataset i's test set (same
molecule, unseen frames), so it should be near 0.5. A test set holding an element the
model never saw is flagged by the element check, never predicted: its entry is 1 and is
listed under ``element_flagged``; ``mean_off_diagonal_same_elements`` leaves such pairs
out, so it measures the uncertainty alone. Output folder::

    models/<dataset>/ (training run) · models/<dataset>/methods/<method>/ · results.json
    auroc_<method>.csv · figures/*.png · report.html
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from incerta.config.data import DataConfig
from incerta.config.experiments import OODConfig
from incerta.config.sources import load_source, prepare_splits
from incerta.config.training import RunConfig
from incerta.evaluate import plots
from incerta.evaluate.experiments import attach_method, predictions, write_json, write_table
from incerta.evaluate.report import Report
from incerta.evaluate.training_report import write_training_report
from incerta.train.checkpoint import is_model_folder, load_potential
from incerta.train.run import train_run
from incerta.uq import metrics as uq_metrics


def dataset_run_config(config: OODConfig, name: str) -> RunConfig:
    section = config.ood
    data = DataConfig(train=[section.datasets[name].train], n_train=section.n_train, n_val=section.n_val, e0s=section.e0s)
    return RunConfig(seed=config.seed, data=data, model=config.model, training=config.training)


def run_ood(config: OODConfig, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the experiment into ``out``; returns the content of results.json."""
    out = Path(out)
    section = config.ood
    names = list(section.datasets)
    tests = {n: load_source(section.datasets[n].test, ("energy", "forces"))[: section.max_test] for n in names}
    elements = {n: {int(z) for f in frames for z in f.numbers} for n, frames in tests.items()}
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {} for m in section.methods}
    atom_sigma: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {} for m in section.methods}
    flagged: list[list] = []  # [trained on, tested on, elements the model lacks]
    for train_name in tqdm(names, desc="models", disable=not progress, unit="model"):
        run_config = dataset_run_config(config, train_name)
        run = out / "models" / train_name
        if not is_model_folder(run / "model"):
            write_training_report(train_run(run_config, run))
        splits = prepare_splits(run_config.data, run_config.seed)
        known = set(load_potential(run / "model").species)
        unseen = {n: sorted(chemical_symbols[z] for z in elements[n] - known) for n in names}
        flagged += [[train_name, n, unseen[n]] for n in names if unseen[n]]
        for method in section.methods:
            folder = run / "methods" / method
            attach_method(run / "model", folder, method, splits, section.fit, config.seed, progress)
            scores[method][train_name], atom_sigma[method][train_name] = {}, {}
            for test_name, frames in tests.items():
                if unseen[test_name]:
                    continue
                arrays = predictions(folder, frames, folder / f"predictions_{test_name}.npz", section.aggregate)
                scores[method][train_name][test_name] = arrays["structure_uncertainty"]
                atom_sigma[method][train_name][test_name] = arrays["forces_uncertainty"]

    results = {"datasets": names, "aggregate": section.aggregate, "element_flagged": flagged, "methods": {}}
    same_elements = ~np.eye(len(names), dtype=bool)
    for train_name, test_name, _ in flagged:
        same_elements[names.index(train_name), names.index(test_name)] = False
    for method in section.methods:
        matrix = auroc_matrix(scores[method], names)
        off_diagonal = matrix[~np.eye(len(names), dtype=bool)]
        results["methods"][method] = {
            "auroc": matrix.tolist(),
            "mean_off_diagonal": float(off_diagonal.mean()),
            "min_off_diagonal": float(off_diagonal.min()),
            "mean_off_diagonal_same_elements": float(matrix[same_elements].mean()) if same_elements.any() else None,
            "min_off_diagonal_same_elements": float(matrix[same_elements].min()) if same_elements.any() else None,
            "diagonal": np.diag(matrix).tolist(),
        }
        write_table(out / f"auroc_{method}.csv", ["trained on \\ tested on", *names],
                    [[n, *row] for n, row in zip(names, matrix.tolist())])
    write_json(out / "results.json", results)
    _write_report(out, results, scores, atom_sigma, names)
    return results


def _halves(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    middle = len(values) // 2
    return values[:middle], values[middle:]


def auroc_matrix(scores: dict[str, dict[str, np.ndarray]], names: list[str]) -> np.ndarray:
    """(train, test) AUROC against the first half of each model's own test set; 1 where the
    test set was flagged by the element check (absent from ``scores``)."""
    matrix = np.ones((len(names), len(names)))
    for i, train_name in enumerate(names):
        reference, other_half = _halves(scores[train_name][train_name])
        for j, test_name in enumerate(names):
            if i == j or test_name in scores[train_name]:
                target = other_half if i == j else scores[train_name][test_name]
                matrix[i, j] = uq_metrics.auroc(reference, target)
    return matrix


def _write_report(out: Path, results: dict, scores: dict, atom_sigma: dict, names: list[str]) -> None:
    report = Report("incerta out-of-distribution detection", out)
    report.text(f"Structure score: {results['aggregate']} of calibrated per-atom uncertainties. Row: training "
                "dataset; column: tested dataset. Diagonal: the two halves of the model's own test set (should be ~0.5).")
    if results["element_flagged"]:
        report.text("Flagged by the element check, never predicted (AUROC 1 in the matrices): " + "; ".join(
            f"{a} model on {b} ({', '.join(e)} unseen)" for a, b, e in results["element_flagged"]))
    report.heading("Summary")
    report.table(["method", "mean off-diagonal AUROC", "min off-diagonal AUROC", "mean, same elements only",
                  "mean |diagonal - 0.5|"], [
        [m, r["mean_off_diagonal"], r["min_off_diagonal"], r["mean_off_diagonal_same_elements"],
         float(np.mean(np.abs(np.array(r["diagonal"]) - 0.5)))]
        for m, r in results["methods"].items()])
    for method, result in results["methods"].items():
        report.heading(f"{method}")
        report.figure(plots.auroc_heatmap(np.array(result["auroc"]), names, f"AUROC, {method}"), f"auroc_{method}",
                      "How well each model's uncertainty tells another data set from its own: 1 (green) off the "
                      "diagonal is perfect detection; the diagonal compares two halves of one set and should be 0.5.")
        curves = {}
        for train_name in names:
            reference, _ = _halves(scores[method][train_name][train_name])
            for test_name in names:
                if test_name != train_name and test_name in scores[method][train_name]:
                    fpr, tpr = uq_metrics.roc(reference, scores[method][train_name][test_name])
                    curves[f"{train_name}→{test_name}"] = (fpr, tpr, uq_metrics.auroc(reference, scores[method][train_name][test_name]))
        report.figure(plots.roc_curves(curves, f"ROC, {method}"), f"roc_{method}",
                      "Detection rate against false-alarm rate for every pair: curves hugging the top-left corner "
                      "detect the foreign set; the dashed diagonal is chance.")
        first = names[0]
        second = next((n for n in names[1:] if n in atom_sigma[method][first]), first)  # a set it predicted
        report.figure(plots.ood_atom_scatter(atom_sigma[method][first][first], atom_sigma[method][first][second],
                                             f"{first} (trained)", second, f"{method}: model trained on {first}"),
                      f"atoms_{method}", f"Per-atom σ of the {first} model on its own test set and on {second}: the "
                      "foreign atoms should sit clearly higher.")
    report.write()
