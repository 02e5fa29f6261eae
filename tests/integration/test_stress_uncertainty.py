"""Stress uncertainty on periodic copper labelled by EMT: calibrated on validation stress
errors, larger where the stress errors are, and returned by the calculator in Voigt form."""

from __future__ import annotations

import shutil

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import copper_frames
from incerta import IncertaCalculator
from incerta.config import RunConfig
from incerta.config.sources import prepare_splits
from incerta.models.predict import graphs_for
from incerta.train.run import train_run
from incerta.uq import metrics as uq_metrics
from incerta.uq.base import FitSettings
from incerta.uq.calibration import NORMAL, SHEAR, VOIGT
from incerta.uq.fit import fit_uncertainty, run_splits
from incerta.uq.predict import collect
from incerta.uq.store import load_uncertain_potential


@pytest.fixture(scope="module")
def stress_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stress")
    ase.io.write(folder / "copper.xyz", [f.to_atoms() for f in copper_frames(80, 0.08, 0.02, seed=0)], format="extxyz")
    config = RunConfig.model_validate({
        "seed": 0,
        "data": {"train": str(folder / "copper.xyz"), "n_val": 40},
        "model": {"cutoff": 4.0, "l_max": 1, "num_channels": 8, "num_layers": 2, "radial_hidden": [16],
                  "readout_hidden": 8, "dtype": "float64"},
        "training": {"epochs": 15, "lr": 0.01, "batch_size": 5, "stress_weight": 100.0, "progress": False},
    })
    train_run(config, folder / "run")
    splits = prepare_splits(config.data, config.seed)
    model = folder / "run" / "model"
    fit_uncertainty(model, "gmm", splits.train, splits.validation, settings=FitSettings(progress=False))
    return model


def test_stress_uncertainty_is_calibrated_and_ranks_errors(stress_model):
    uncertain = load_uncertain_potential(stress_model)
    assert uncertain.calibration.stress is not None, "validation frames had stress: a stress map is fitted"
    inside, beyond = copper_frames(40, 0.08, 0.02, seed=1), copper_frames(20, 0.25, 0.05, seed=2)
    arrays = collect(uncertain, graphs_for(uncertain.potential, inside + beyond))
    errors = arrays["stress_pred"] - arrays["stress_ref"]
    components = np.stack([errors[:, i, j] for i, j in VOIGT], axis=1)  # (B, 6) eV/Å^3
    sigma = arrays["stress_uncertainty"]  # (B, 6) eV/Å^3, Voigt order
    assert sigma.shape == components.shape and np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    rms_sigma = np.sqrt(np.mean(sigma**2, axis=1))
    assert uq_metrics.spearman(rms_sigma, np.sqrt(np.mean(components**2, axis=1))) > 0.4
    assert rms_sigma[40:].mean() > 1.5 * rms_sigma[:40].mean(), "larger displacements: larger stress uncertainty"
    for part in (NORMAL, SHEAR):  # each kind calibrated
        z_squared = np.mean((components[:40, part] / sigma[:40, part]) ** 2)
        assert 0.5 < z_squared < 2.0, f"calibrated where validation was drawn, got mean z^2 {z_squared:.2f}"


def test_calculator_returns_stress_uncertainty_in_voigt_form(stress_model):
    frame = copper_frames(1, 0.1, 0.02, seed=3)[0]  # labelled: collect computes its stress
    atoms = frame.to_atoms()
    atoms.calc = IncertaCalculator(stress_model)
    sigma = atoms.calc.get_property("stress_uncertainty", atoms)
    uncertain = load_uncertain_potential(stress_model)
    expected = collect(uncertain, graphs_for(uncertain.potential, [frame]))["stress_uncertainty"][0]
    assert sigma.shape == (6,) and expected[0] != expected[3], "the normal and shear maps differ"
    np.testing.assert_allclose(sigma, expected, rtol=1e-12)
    assert atoms.get_stress().shape == (6,)
    np.testing.assert_allclose(atoms.info["stress_uncertainty"], sigma)


def test_a_symmetric_cell_has_no_shear_stress_uncertainty(stress_model):
    """An undistorted copper cell (cubic point group, in a non-orthogonal supercell): symmetry
    fixes its shear stress at zero, which the model gives too, so its shear uncertainty is zero
    and its normal uncertainty is not; one atom displaced by 0.025 Å: no symmetry, all six
    uncertain."""
    atoms = bulk("Cu", "fcc", a=3.7).repeat(2)
    atoms.calc = IncertaCalculator(stress_model)
    stress, sigma = atoms.get_stress(), atoms.calc.get_property("stress_uncertainty", atoms)
    assert np.all(np.abs(stress[3:]) < 1e-9 * np.abs(stress[:3]).max())
    assert np.all(sigma[:3] > 0) and np.all(sigma[3:] == 0)
    atoms.positions[0] += [0.02, 0.013, 0.007]  # in no mirror plane of the lattice
    assert np.all(atoms.calc.get_property("stress_uncertainty", atoms) > 0)


def test_a_shallow_ensemble_calibrates_stress_on_the_spread_of_its_heads(stress_model, tmp_path):
    """Shallow heads give their own stress score: the fitted maps read it (not the force
    uncertainties), the potential's stress_uncertainty is those maps applied to it, and it is
    calibrated on the validation cells and larger for cells displaced beyond the training data."""
    splits = run_splits(stress_model)
    model = shutil.copytree(stress_model, tmp_path / "model")
    fit_uncertainty(model, "shallow", splits.train, splits.validation, settings=FitSettings(progress=False))
    uncertain = load_uncertain_potential(model)
    assert uncertain.calibration.stress is not None and uncertain.calibration.stress.score == "method"
    inside, beyond = copper_frames(40, 0.08, 0.02, seed=1), copper_frames(20, 0.25, 0.05, seed=2)
    graphs = graphs_for(uncertain.potential, inside + beyond)
    arrays, raw = collect(uncertain, graphs), collect(uncertain.method, graphs)
    expected = uncertain.calibration.stress(torch.as_tensor(raw["stress_score"])).numpy()
    np.testing.assert_allclose(arrays["stress_uncertainty"], expected, rtol=1e-10)
    errors = arrays["stress_pred"] - arrays["stress_ref"]
    components = np.stack([errors[:, i, j] for i, j in VOIGT], axis=1)
    sigma = arrays["stress_uncertainty"]
    z_squared = np.mean((components[:40] / sigma[:40]) ** 2)
    rms_sigma = np.sqrt(np.mean(sigma**2, axis=1))
    assert 0.5 < z_squared < 2.0, f"calibrated where validation was drawn, got mean z^2 {z_squared:.2f}"
    assert uq_metrics.spearman(rms_sigma, np.sqrt(np.mean(components**2, axis=1))) > 0.4
    assert rms_sigma[40:].mean() > 1.5 * rms_sigma[:40].mean(), "larger displacements: larger stress uncertainty"
