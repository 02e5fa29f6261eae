"""Uncertainty quality of a calibrated potential on labelled data (ranking and calibration)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from incerta.data.graph import AtomicGraph
from incerta.models.errors import ErrorAccumulator
from incerta.uq import metrics as m
from incerta.uq.model import UncertainPotential
from incerta.uq.predict import collect


def uncertainty_metrics(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics from :func:`incerta.uq.predict.collect` arrays of a calibrated potential.

    Forces: per-atom Spearman of sigma vs |dF|, miscalibration area, Gaussian NLL and ENCE
    of the force components; energy: Spearman, miscalibration area and NLL of sigma_E;
    structures: Spearman of the aggregated uncertainty vs the largest atomic force error, and
    the same for errors drawn from sigma (:func:`~incerta.uq.metrics.spearman_if_calibrated`,
    its ceiling); and
    whether sigma keeps up with the error: mean sigma over the mean and over the RMS of |dF|
    (1: as large as the error, below 1: over-confident).
    """
    force_error = arrays["forces_pred"] - arrays["forces_ref"]
    force_norm = np.linalg.norm(force_error, axis=1)
    sigma = arrays["forces_uncertainty"]
    components, component_sigma = m.force_components(force_error, sigma)
    energy_error = arrays["energy_pred"] - arrays["energy_ref"]
    sigma_energy = arrays["energy_uncertainty"]
    worst_atom = m.per_structure_max(force_norm, arrays["structure"], len(energy_error))
    return {
        "spearman_forces_atoms": m.spearman(sigma, force_norm),
        "spearman_structures": m.spearman(arrays["structure_uncertainty"], worst_atom),
        "spearman_structures_if_calibrated": m.spearman_if_calibrated(sigma, arrays["structure"],
                                                                      arrays["structure_uncertainty"]),
        "spearman_energy": m.spearman(sigma_energy, energy_error),
        "miscalibration_area_forces": m.miscalibration_area(components, component_sigma),
        "nll_forces": m.gaussian_nll(components, component_sigma),
        "ence_forces": m.ence(components, component_sigma),
        "miscalibration_area_energy": m.miscalibration_area(energy_error, sigma_energy),
        "nll_energy": m.gaussian_nll(energy_error, sigma_energy),
        "mean_forces_uncertainty_meV_per_A": 1e3 * float(np.mean(sigma)),
        "mean_sigma_over_mean_error": float(np.mean(sigma) / np.mean(force_norm)),
        "mean_sigma_over_rms_error": float(np.mean(sigma) / np.sqrt(np.mean(np.square(force_norm)))),
        "mean_energy_uncertainty_meV": 1e3 * float(np.mean(sigma_energy)),
    }


def uncertain_error_metrics(model: UncertainPotential, graphs: Sequence[AtomicGraph], batch_size: int = 16) -> dict[str, float]:
    """Error metrics (as :func:`incerta.models.predict.error_metrics`) plus uncertainty metrics."""
    arrays = collect(model, graphs, batch_size)
    accumulator = ErrorAccumulator()
    accumulator.add(arrays["energy_pred"] - arrays["energy_ref"], arrays["n_atoms"], arrays["forces_pred"] - arrays["forces_ref"])
    return {**accumulator.result(), **uncertainty_metrics(arrays)}
