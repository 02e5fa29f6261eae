"""Figures for reports (matplotlib, no display needed). Each function returns a Figure drawn in
the style of :mod:`incerta.evaluate.figure_style`: forces and uncertainties in meV/Å, energies
in meV/atom, labelled axes, readable log ticks, colour bars on 2-D histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from incerta.evaluate.figure_style import (
    ENERGY_PER_ATOM,
    FORCE,
    MEV,
    colour_bar,
    element_name,
    finish,
    integer_ticks,
    log_axes,
)
from incerta.uq.metrics import rmse_vs_rmv

#: per group: (sigma (N,) eV/Å, |dF| (N,) eV/Å, atomic numbers (N,))
AtomArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def parity(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Predicted vs reference per-atom energy (meV/atom, mean removed) and force components (meV/Å)."""
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, p in predictions.items():
        e_ref = p["energy_ref"] / p["n_atoms"]
        offset = np.nanmean(e_ref)
        ax_e.scatter(MEV * (e_ref - offset), MEV * (p["energy_pred"] / p["n_atoms"] - offset), s=6, alpha=0.6, label=name)
        ax_f.scatter(MEV * p["forces_ref"].ravel(), MEV * p["forces_pred"].ravel(), s=2, alpha=0.3, label=name)
    for ax, title, unit in ((ax_e, "energy per atom (shifted)", ENERGY_PER_ATOM), (ax_f, "force components", FORCE)):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(title=title, xlabel=f"reference ({unit})", ylabel=f"predicted ({unit})")
        ax.legend(markerscale=3, fontsize=8)
    return finish(fig)


def error_histograms(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Distributions of per-atom energy errors (meV/atom) and force-component errors (meV/Å)."""
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4))
    for name, p in predictions.items():
        ax_e.hist(MEV * (p["energy_pred"] - p["energy_ref"]) / p["n_atoms"], bins=40, histtype="step", label=name)
        ax_f.hist(MEV * (p["forces_pred"] - p["forces_ref"]).ravel(), bins=80, histtype="step", label=name)
    ax_e.set(xlabel=f"energy error ({ENERGY_PER_ATOM})", ylabel="structures")
    integer_ticks(ax_e.yaxis)
    ax_f.set(xlabel=f"force component error ({FORCE})", ylabel="force components")
    log_axes(ax_f, x=False)
    for ax in (ax_e, ax_f):
        ax.legend(fontsize=8)
    return finish(fig)


def learning_curve(history: Sequence[Mapping[str, float]]) -> Figure:
    """Validation errors and learning rate against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_f, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    ax_f.plot(epochs, [h["val_forces_rmse_meV_per_A"] for h in history], label=f"force RMSE ({FORCE})")
    ax_f.plot(epochs, [h["val_energy_per_atom_mae_meV"] for h in history], label=f"energy MAE ({ENERGY_PER_ATOM})")
    ax_f.set(xlabel="epoch", ylabel=f"validation error ({FORCE} or {ENERGY_PER_ATOM})")
    log_axes(ax_f, x=False)
    ax_f.legend(fontsize=8)
    ax_lr.plot(epochs, [h["lr"] for h in history])
    ax_lr.set(xlabel="epoch", ylabel="learning rate")
    log_axes(ax_lr, x=False)
    for ax in (ax_f, ax_lr):
        integer_ticks(ax.xaxis)
    return finish(fig)


def _log_bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    positive = values[np.isfinite(values) & (values > 0)]
    low, high = np.percentile(positive, [0.5, 99.9]) if positive.size else (1e-3, 1.0)
    return np.logspace(np.log10(max(low, 1e-6)), np.log10(max(high, low * 10)), count)


def _panels(rows: int, columns: int, width: float = 3.6, height: float = 3.0):
    return plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)


def _sigma_error_panel(fig: Figure, ax, sigma: np.ndarray, error: np.ndarray, error_bins, sigma_bins) -> None:
    """2-D histogram of sigma against |dF| (meV/Å) with the sigma = error line and a colour bar."""
    ok = (sigma > 0) & (error > 0) & np.isfinite(sigma)
    *_, image = ax.hist2d(error[ok], sigma[ok], bins=[error_bins, sigma_bins], cmap="viridis", cmin=1)
    lo, hi = max(error_bins[0], sigma_bins[0]), min(error_bins[-1], sigma_bins[-1])
    if lo < hi:
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    log_axes(ax)
    ax.set(xlabel=f"|ΔF| ({FORCE})", ylabel=f"σ ({FORCE})")
    colour_bar(fig, image, ax)


def _select(arrays: AtomArrays, mask: np.ndarray) -> AtomArrays:
    return tuple(a[mask] for a in arrays)


def elements_pooled(data: Mapping[str, Mapping[str, AtomArrays]]) -> dict[str, dict[str, AtomArrays]]:
    """{method: {group: atoms}} -> {method: {element: its atoms, every group pooled}}."""
    out = {}
    for method, groups in data.items():
        pooled = tuple(np.concatenate(parts) for parts in zip(*groups.values()))
        out[method] = {element_name(z): _select(pooled, pooled[2] == z) for z in np.unique(pooled[2])}
    return out


def elements_by_method(data: Mapping[str, Mapping[str, AtomArrays]]) -> dict[str, dict[str, AtomArrays]]:
    """{method: {group: atoms}} -> {"method: element": {group: the atoms of that element}}."""
    return {f"{method}: {element_name(z)}": {group: _select(atoms, atoms[2] == z) for group, atoms in groups.items()}
            for method, groups in data.items() for z in np.unique(np.concatenate([a[2] for a in groups.values()]))}


def uncertainty_error_grid(data: Mapping[str, Mapping[str, AtomArrays]]) -> Figure:
    """2-D histograms of per-atom uncertainty vs force error |dF| (meV/Å, log axes, report
    figure 3.4.3): one row per method, one column per group (or per element, from
    :func:`elements_pooled`)."""
    methods, columns = list(data), list(next(iter(data.values())))
    fig, axes = _panels(len(methods), len(columns))
    error_bins = _log_bins(MEV * np.concatenate([atoms[1] for m in methods for atoms in data[m].values()]))
    for row, method in enumerate(methods):
        sigma_bins = _log_bins(MEV * np.concatenate([atoms[0] for atoms in data[method].values()]))
        for col, column in enumerate(columns):
            sigma, error, _ = data[method][column]
            _sigma_error_panel(fig, axes[row, col], MEV * sigma, MEV * error, error_bins, sigma_bins)
            axes[row, col].set_title(f"{method}: {column}", fontsize=9)
    return finish(fig)


def uncertainty_histograms(data: Mapping[str, Mapping[str, AtomArrays]]) -> Figure:
    """Histograms of per-atom uncertainty (meV/Å) per group, one panel per method (figure 3.4.4)
    or per method and element (:func:`elements_by_method`), where the light atoms' small and
    the heavy atoms' larger uncertainties (two humps in a pooled histogram) separate."""
    panels = list(data)
    columns = min(3, len(panels))
    fig, axes = _panels(int(np.ceil(len(panels) / columns)), columns, width=4.2, height=3.2)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels):
        bins = _log_bins(MEV * np.concatenate([sigma for sigma, _, _ in data[panel].values()]))
        for group, (sigma, _, _) in data[panel].items():
            values = MEV * sigma[np.isfinite(sigma)]
            ax.hist(values, bins=bins, histtype="step", density=True, label=f"{group} (mean {np.mean(values):.0f})")
        log_axes(ax, y=False)
        ax.set(title=panel, xlabel=f"σ ({FORCE})", ylabel="density (per meV/Å)")
        ax.legend(fontsize=7, title=f"group (mean σ, {FORCE})", title_fontsize=7)
    return finish(fig)


def calibration_curves(data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """RMSE vs root mean variance in bins of predicted sigma (force components, meV/Å)."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    low, high = np.inf, 0.0
    for method, (errors, sigmas) in data.items():
        rmv, rmse = rmse_vs_rmv(MEV * np.asarray(errors), MEV * np.asarray(sigmas), bins=12)
        ax.plot(rmv, rmse, "o-", ms=3, label=method)
        low, high = min(low, rmv.min(), rmse.min()), max(high, rmv.max(), rmse.max())
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    log_axes(ax)
    ax.set(xlabel=f"RMV: predicted σ of a component ({FORCE})", ylabel=f"observed RMSE ({FORCE})",
           title="calibration (diagonal = calibrated)")
    ax.legend(fontsize=8)
    return finish(fig)


def auroc_heatmap(matrix: np.ndarray, names: list[str], title: str) -> Figure:
    """Annotated train x test AUROC matrix (report figure 3.4.8)."""
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(names), 0.8 + 0.7 * len(names)))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="tested on", ylabel="trained on", title=title)
    colour_bar(fig, image, ax, "AUROC (0.5: alike, 1: told apart)", counts=False)
    return finish(fig)


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> Figure:
    """ROC curves (fpr, tpr, auc) of OOD detection."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1, label=f"{label} ({auc:.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=6, title="trained → tested (AUROC)", title_fontsize=6)
    return finish(fig)


def ood_atom_scatter(inside: np.ndarray, outside: np.ndarray, inside_label: str, outside_label: str, title: str) -> Figure:
    """Per-atom uncertainty (meV/Å) of in- vs out-of-distribution structures (report figure 3.4.7)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for offset, (values, label) in enumerate(((inside, inside_label), (outside, outside_label))):
        finite = MEV * values[np.isfinite(values)]
        ax.scatter(np.arange(len(finite)) + offset * len(inside), finite, s=2, alpha=0.5, label=label)
    log_axes(ax, x=False)
    integer_ticks(ax.xaxis)
    ax.set(xlabel="atom (in file order)", ylabel=f"σ ({FORCE})", title=title)
    ax.legend(markerscale=4, fontsize=8)
    return finish(fig)


def al_errors(labels: Sequence[int], errors: Mapping[str, Sequence[float]]) -> Figure:
    """Force RMSE (meV/Å) of each retrained model on each data set against the number of labels."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, values in errors.items():
        ax.plot(labels, values, "o-", label=name)
    log_axes(ax, x=False)
    integer_ticks(ax.xaxis)
    ax.set(xlabel="labels", ylabel=f"force RMSE ({FORCE})")
    ax.legend(fontsize=8, title="data set", title_fontsize=8)
    return finish(fig)


def al_strategies(curves: Mapping[str, tuple[Sequence[int], Mapping[str, Sequence[float]]]]) -> Figure:
    """One panel per test set: force RMSE (meV/Å) against the number of labels, a line per
    strategy; ``curves`` maps strategy -> (labels, {test set: errors})."""
    sets = list(next(iter(curves.values()))[1])
    fig, axes = plt.subplots(1, len(sets), figsize=(3.3 * len(sets), 3.4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for strategy, (labels, errors) in curves.items():
            ax.plot(labels, errors[name], "o-", label=strategy)
        log_axes(ax, x=False)
        integer_ticks(ax.xaxis)
        ax.set(xlabel="labels", ylabel=f"force RMSE ({FORCE})", title=name)
        ax.legend(fontsize=8, title="strategy", title_fontsize=8)
    return finish(fig)


def al_uncertainty(iterations: Sequence[int], mean: Sequence[float], largest: Sequence[float]) -> Figure:
    """Mean and largest calibrated structure uncertainty (eV/Å in, meV/Å drawn) of the candidates per iteration."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(iterations, MEV * np.asarray(mean), "o-", label="mean of candidates")
    ax.plot(iterations, MEV * np.asarray(largest), "s-", label="largest of candidates")
    log_axes(ax, x=False)
    integer_ticks(ax.xaxis)
    ax.set(xlabel="iteration", ylabel=f"structure uncertainty ({FORCE})")
    ax.legend(fontsize=8)
    return finish(fig)
