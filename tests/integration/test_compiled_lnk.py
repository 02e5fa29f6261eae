"""A method whose energy is its own (LNK: a GP readout trained with the backbone; the combined
method built on it) compiled whole: the package gives its energy, forces, stress, scores and
calibrated uncertainties as the eager method does, the calculator runs it, and a package of
another fit is never used. One package (combined with LNK as its error method: LNK's compiled
prediction plus the density score) is compiled for the module (one to two minutes)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_compiled import ENERGY_TOL, FORCES_TOL, STRESS_TOL, recording, structures
from typer.testing import CliRunner

from conftest import emt_ethanol_frames, make_model
from incerta.calculators.ase import IncertaCalculator
from incerta.cli.main import app
from incerta.data import keys as K
from incerta.data.graph import collate, frame_to_graph
from incerta.models.compiled import SCORE_KEYS, CompiledPotential, CompileError, compiled_path
from incerta.models.predict import graphs_for
from incerta.train.checkpoint import save_potential
from incerta.uq.base import FitSettings
from incerta.uq.calibration import Calibration
from incerta.uq.combined import CombinedUncertainty
from incerta.uq.fit import calibrate
from incerta.uq.gp import LNKUncertainty
from incerta.uq.model import SIGMA_KEYS
from incerta.uq.store import load_uncertain_potential, save_uncertainty

runner = CliRunner()


def fitted(method_class, potential, **options):
    """``method_class`` on ``potential`` after a short fit on rattled EMT ethanols, calibrated."""
    graphs = graphs_for(potential, emt_ethanol_frames(16, 0.08))
    method = method_class(potential, **options)
    report = method.fit(graphs[:10], graphs[10:], FitSettings(progress=False, epochs=2))
    return method, calibrate(method, graphs[10:]), report


@pytest.fixture(scope="module")
def lnk_folder(tmp_path_factory):
    """A float32 model folder (H, C, O, Si) with the combined method attached, LNK its error
    method (a short joint fit), and its package compiled with stress through ``incerta compile``:
    the compiled LNK prediction and the density score on its features in one program. The
    backbone has l_max 1 (compiling the default degree is tested in test_compiled.py; this one
    compiles in 50 s instead of 80)."""
    folder = tmp_path_factory.mktemp("compiled-lnk") / "model"
    potential = make_model(l_max=1).float()
    save_potential(potential, folder)
    save_uncertainty(folder, *fitted(CombinedUncertainty, potential, error="lnk", error_options={"num_inducing": 32}))
    result = runner.invoke(app, ["compile", str(folder), "--stress"])
    assert result.exit_code == 0, result.output
    return folder


def test_compiled_lnk_equals_the_eager_method(lnk_folder):
    """Energies from the GP readout (not the potential's own readout), forces, stress, raw scores
    and calibrated uncertainties of a molecule, a periodic cell, a lone atom and all three as one
    batch."""
    uncertain = load_uncertain_potential(lnk_folder)
    package = CompiledPotential(compiled_path(lnk_folder, "cpu", torch.float32))
    lnk = uncertain.method.error
    assert isinstance(lnk, LNKUncertainty) and lnk.compiles_predictions and not lnk.predicts_with_potential
    assert uncertain.method.compiles_predictions and not uncertain.method.predicts_with_potential
    assert package.predictor and package.scorer == uncertain.fingerprint()
    graphs = {name: frame_to_graph(frame, uncertain.potential.spec.cutoff).to(dtype=torch.float32)
              for name, frame in structures().items()}
    for graph, periodic in [(graphs["ethanol"], False), (graphs["silicon"], True), (graphs["lone atom"], False),
                            (collate(list(graphs.values())), False)]:
        compiled, eager = package(graph, compute_stress=periodic), uncertain(graph, compute_stress=periodic)
        torch.testing.assert_close(compiled[K.ENERGY], eager[K.ENERGY], rtol=0, atol=ENERGY_TOL)
        torch.testing.assert_close(compiled[K.FORCES], eager[K.FORCES], rtol=0, atol=FORCES_TOL)
        if periodic:
            torch.testing.assert_close(compiled[K.STRESS], eager[K.STRESS], rtol=0, atol=STRESS_TOL)
        for key in SCORE_KEYS:
            torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-7, msg=key)
    potential_energy = uncertain.potential(graphs["ethanol"], compute_forces=False)[K.ENERGY].detach()
    assert abs(float(potential_energy - package(graphs["ethanol"])[K.ENERGY])) > 1e-3, "the GP readout's energy"


def test_the_calculator_runs_the_lnk_package(lnk_folder):
    """The calculator picks the package up for LNK, gives the eager calculator's energy, forces and
    uncertainties; an MD check after the step's forces reads the package's uncertainties from
    that call (no second pass), and neither calculator computes them unasked."""
    fast, slow = IncertaCalculator(lnk_folder), IncertaCalculator(lnk_folder, compiled=False)
    assert fast.compiled is not None and fast.compiled.predictor
    atoms = structures()["ethanol"].to_atoms()
    results = {}
    for calculator in (fast, slow):
        atoms.calc = calculator
        results[calculator] = (atoms.get_potential_energy(), atoms.get_forces(),
                               *(calculator.get_property(key, atoms) for key in SIGMA_KEYS))
    (energy, forces, *sigmas), (energy_ref, forces_ref, *sigmas_ref) = results[fast], results[slow]
    assert abs(energy - energy_ref) < ENERGY_TOL
    np.testing.assert_allclose(forces, forces_ref, rtol=0, atol=FORCES_TOL)
    for sigma, sigma_ref in zip(sigmas, sigmas_ref):
        np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4)
    fast.compiled, calls = recording(fast.compiled, fast.compiled.stress)
    atoms.positions[0, 0] += 0.01
    atoms.calc = fast
    atoms.get_forces()
    assert K.FORCES_UNCERTAINTY not in fast.results, "computed by the package, stored only when asked for"
    sigma = fast.get_property(K.FORCES_UNCERTAINTY, atoms)
    assert len(calls) == 1
    np.testing.assert_array_equal(atoms.arrays[K.FORCES_UNCERTAINTY], sigma)
    atoms.calc = slow
    atoms.get_forces()
    assert K.FORCES_UNCERTAINTY not in slow.results
    np.testing.assert_allclose(slow.get_property(K.FORCES_UNCERTAINTY, atoms), sigma, rtol=1e-4)


def test_a_package_of_another_lnk_fit_is_not_used(lnk_folder, tmp_path):
    """The package's energies come from the fit it was compiled with: beside another calibration
    (so another digest) it is skipped with a warning and the model runs eagerly; asked for
    explicitly, it is refused; a calculator of the bare potential refuses it too."""
    folder = tmp_path / "model"
    shutil.copytree(lnk_folder, folder)
    uncertain = load_uncertain_potential(folder)
    old = uncertain.calibration
    save_uncertainty(folder, uncertain.method, Calibration(replace(old.forces, c0=old.forces.c0 + 1.0), old.energy), {})
    with pytest.warns(UserWarning, match="runs eagerly: .* predictions of another fit"):
        calculator = IncertaCalculator(folder)
    assert calculator.compiled is None
    package = compiled_path(folder, "cpu", torch.float32)
    with pytest.raises(CompileError, match="predictions of another fit"):
        IncertaCalculator(folder, compiled=package)
    with pytest.raises(CompileError, match="predictions of another fit"):
        IncertaCalculator(uncertain.potential, compiled=package)
