"""Figures for reports (matplotlib, no display needed). Each function returns a Figure."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from incerta.uq.metrics import rmse_vs_rmv


def parity(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Predicted vs reference per-atom energy (meV/atom, mean removed) and force components (eV/Å)."""
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, p in predictions.items():
        e_ref = p["energy_ref"] / p["n_atoms"]
        offset = np.nanmean(e_ref)
        ax_e.scatter(1e3 * (e_ref - offset), 1e3 * (p["energy_pred"] / p["n_atoms"] - offset), s=6, alpha=0.6, label=name)
        ax_f.scatter(p["forces_ref"].ravel(), p["forces_pred"].ravel(), s=2, alpha=0.3, label=name)
    for ax, title, unit in ((ax_e, "energy per atom (shifted)", "meV/atom"), (ax_f, "force components", "eV/Å")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(title=title, xlabel=f"reference ({unit})", ylabel=f"predicted ({unit})")
        ax.legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    return fig


def error_histograms(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Distributions of per-atom energy errors (meV/atom) and force-component errors (meV/Å)."""
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4))
    for name, p in predictions.items():
        ax_e.hist(1e3 * (p["energy_pred"] - p["energy_ref"]) / p["n_atoms"], bins=40, histtype="step", label=name)
        ax_f.hist(1e3 * (p["forces_pred"] - p["forces_ref"]).ravel(), bins=80, histtype="step", label=name)
    ax_e.set(xlabel="energy error (meV/atom)", ylabel="structures")
    ax_f.set(xlabel="force component error (meV/Å)", ylabel="components", yscale="log")
    for ax in (ax_e, ax_f):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curve(history: list[Mapping[str, float]]) -> Figure:
    """Validation errors and learning rate against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_f, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    ax_f.plot(epochs, [h["val_forces_rmse_meV_per_A"] for h in history], label="force RMSE (meV/Å)")
    ax_f.plot(epochs, [h["val_energy_per_atom_mae_meV"] for h in history], label="energy MAE (meV/atom)")
    ax_f.set(xlabel="epoch", ylabel="validation error", yscale="log")
    ax_f.legend(fontsize=8)
    ax_lr.plot(epochs, [h["lr"] for h in history])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", yscale="log")
    fig.tight_layout()
    return fig


def _log_bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    positive = values[np.isfinite(values) & (values > 0)]
    low, high = np.percentile(positive, [0.5, 99.9]) if positive.size else (1e-3, 1.0)
    return np.logspace(np.log10(max(low, 1e-6)), np.log10(max(high, low * 10)), count)


def uncertainty_error_grid(data: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> Figure:
    """2-D histograms of per-atom uncertainty vs force error |dF| (eV/Å, log axes):
    one row per method, one column per group (report figure 3.4.3)."""
    methods, groups = list(data), list(next(iter(data.values())))
    fig, axes = plt.subplots(len(methods), len(groups), figsize=(3.2 * len(groups), 2.8 * len(methods)),
                             squeeze=False, sharex=True)
    all_errors = np.concatenate([e for m in data.values() for _, e in m.values()])
    error_bins = _log_bins(all_errors)
    for row, method in enumerate(methods):
        sigma_bins = _log_bins(np.concatenate([s for s, _ in data[method].values()]))
        for col, group in enumerate(groups):
            sigma, error = data[method][group]
            ok = (sigma > 0) & (error > 0) & np.isfinite(sigma)
            ax = axes[row, col]
            ax.hist2d(error[ok], sigma[ok], bins=[error_bins, sigma_bins], cmap="viridis", cmin=1)
            lo, hi = max(error_bins[0], sigma_bins[0]), min(error_bins[-1], sigma_bins[-1])
            if lo < hi:
                ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
            ax.set(xscale="log", yscale="log")
            if row == 0:
                ax.set_title(group)
            if col == 0:
                ax.set_ylabel(f"{method}\nσ (eV/Å)")
            if row == len(methods) - 1:
                ax.set_xlabel("|ΔF| (eV/Å)")
    fig.tight_layout()
    return fig


def uncertainty_histograms(data: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Overlaid histograms of per-atom uncertainty per group, one panel per method (figure 3.4.4)."""
    methods = list(data)
    columns = min(3, len(methods))
    rows = int(np.ceil(len(methods) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, method in zip(axes.ravel(), methods):
        bins = _log_bins(np.concatenate(list(data[method].values())))
        for group, sigma in data[method].items():
            ax.hist(sigma[np.isfinite(sigma)], bins=bins, histtype="step", density=True,
                    label=f"{group} (mean {1e3 * np.mean(sigma[np.isfinite(sigma)]):.0f} meV/Å)")
        ax.set(xscale="log", title=method, xlabel="σ (eV/Å)")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short log range
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(methods):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def calibration_curves(data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """RMSE vs root mean variance in bins of predicted sigma (force components, eV/Å)."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    low, high = np.inf, 0.0
    for method, (errors, sigmas) in data.items():
        rmv, rmse = rmse_vs_rmv(errors, sigmas, bins=12)
        ax.plot(rmv, rmse, "o-", ms=3, label=method)
        low, high = min(low, rmv.min(), rmse.min()), max(high, rmv.max(), rmse.max())
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="RMV: predicted σ (eV/Å)", ylabel="RMSE (eV/Å)",
           title="calibration (diagonal = calibrated)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def auroc_heatmap(matrix: np.ndarray, names: list[str], title: str) -> Figure:
    """Annotated train x test AUROC matrix (report figure 3.4.8)."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 0.8 + 0.7 * len(names)))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="tested on", ylabel="trained on", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> Figure:
    """ROC curves (fpr, tpr, auc) of OOD detection."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1, label=f"{label} ({auc:.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def ood_atom_scatter(inside: np.ndarray, outside: np.ndarray, inside_label: str, outside_label: str, title: str) -> Figure:
    """Per-atom uncertainty of in- vs out-of-distribution structures (report figure 3.4.7)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for offset, (values, label) in enumerate(((inside, inside_label), (outside, outside_label))):
        finite = values[np.isfinite(values)]
        ax.scatter(np.arange(len(finite)) + offset * len(inside), finite, s=2, alpha=0.5, label=label)
    ax.set(yscale="log", xlabel="atom", ylabel="σ (eV/Å)", title=title)
    ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    return fig
