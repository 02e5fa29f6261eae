"""Figures for reports (matplotlib, no display needed). Each function returns a Figure."""

from __future__ import annotations

from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


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
