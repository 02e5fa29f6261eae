"""Metrics of uncertainty quality: ranking, detection, calibration.

Conventions: ``errors`` are signed or absolute errors of scalar quantities (energies in
eV, force components in eV/Å); ``sigmas`` are predicted standard deviations of those
errors in the same unit. Per-atom force uncertainties predict the RMS of the force-error
vector, so each Cartesian component has standard deviation sigma / sqrt(3)
(:func:`force_components`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score, roc_curve


def force_components(force_errors: np.ndarray, atom_sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) force errors and (N,) per-atom sigmas -> flat component errors and sigmas."""
    errors = np.asarray(force_errors, dtype=float).reshape(-1, 3)
    sigmas = np.repeat(np.asarray(atom_sigmas, dtype=float) / np.sqrt(3.0), 3)
    return errors.ravel(), sigmas


def spearman(uncertainty: np.ndarray, error: np.ndarray) -> float:
    """Rank correlation of uncertainty with error magnitude (1: perfect ranking, 0: none)."""
    value = spearmanr(np.asarray(uncertainty), np.abs(np.asarray(error))).statistic
    return float(value) if np.isfinite(value) else 0.0


def per_structure_max(values: np.ndarray, structure: np.ndarray, count: int) -> np.ndarray:
    """Largest of the per-atom ``values`` (N,) in each of ``count`` structures, ``structure`` (N,)
    the index of each atom's structure."""
    out = np.full(count, -np.inf)
    np.maximum.at(out, np.asarray(structure).astype(int), values)
    return out


def spearman_if_calibrated(atom_sigmas: np.ndarray, structure: np.ndarray, structure_scores: np.ndarray,
                           draws: int = 100, seed: int = 0) -> float:
    """Median Spearman of ``structure_scores`` (B,) with each structure's largest atomic force
    error when the errors are drawn from the per-atom sigmas (N,) themselves (Gaussian, vector
    RMS sigma; ``structure`` (N,) the index of each atom's structure): what ranking structures
    by their worst atom can reach if every sigma were exact. The drawn errors are noisy, so
    this ceiling is below 1; a measured Spearman far below it means sigmas that miss where
    the errors are, one near it means the ranking is as good as the calibrated sigmas allow."""
    sigmas = np.asarray(atom_sigmas, dtype=float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        drawn = np.linalg.norm(rng.normal(size=(len(sigmas), 3)), axis=1) * sigmas / np.sqrt(3.0)
        values.append(spearman(structure_scores, per_structure_max(drawn, structure, len(structure_scores))))
    return float(np.median(values))


def auroc(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> float:
    """Area under the ROC curve for telling OOD (positive) from ID scores; 0.5 = chance."""
    scores = np.concatenate([in_distribution, out_of_distribution])
    labels = np.concatenate([np.zeros(len(in_distribution)), np.ones(len(out_of_distribution))])
    return float(roc_auc_score(labels, scores))


def roc(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of the OOD detector."""
    scores = np.concatenate([in_distribution, out_of_distribution])
    labels = np.concatenate([np.zeros(len(in_distribution)), np.ones(len(out_of_distribution))])
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def gaussian_nll(errors: np.ndarray, sigmas: np.ndarray) -> float:
    """Mean negative log-likelihood of errors under N(0, sigma^2)."""
    e, s = np.asarray(errors, dtype=float), np.maximum(np.asarray(sigmas, dtype=float), 1e-12)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (e / s) ** 2))


def calibration_curve(errors: np.ndarray, sigmas: np.ndarray, levels: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed fraction of errors inside the central Gaussian intervals."""
    expected = np.linspace(0.01, 0.99, levels)
    z = np.abs(np.asarray(errors, dtype=float)) / np.maximum(np.asarray(sigmas, dtype=float), 1e-12)
    # an error is inside the central interval of probability p when erf(z / sqrt 2) <= p
    inside = erf(z / np.sqrt(2.0))
    observed = np.array([np.mean(inside <= p) for p in expected])
    return expected, observed


def miscalibration_area(errors: np.ndarray, sigmas: np.ndarray) -> float:
    """Area between the observed calibration curve and the diagonal (0 = calibrated, max 0.5)."""
    expected, observed = calibration_curve(errors, sigmas)
    return float(np.trapezoid(np.abs(observed - expected), expected))


def rmse_vs_rmv(errors: np.ndarray, sigmas: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Root mean variance and RMSE in equal-count bins of sigma (the reliability diagram)."""
    order = np.argsort(sigmas)
    groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
    rmv = np.array([np.sqrt(np.mean(np.square(sigmas[g]))) for g in groups])
    rmse = np.array([np.sqrt(np.mean(np.square(errors[g]))) for g in groups])
    return rmv, rmse


def ence(errors: np.ndarray, sigmas: np.ndarray, bins: int = 10) -> float:
    """Expected normalised calibration error: mean |RMV - RMSE| / RMV over bins of sigma."""
    rmv, rmse = rmse_vs_rmv(np.asarray(errors, dtype=float), np.asarray(sigmas, dtype=float), bins)
    return float(np.mean(np.abs(rmv - rmse) / np.maximum(rmv, 1e-12)))
