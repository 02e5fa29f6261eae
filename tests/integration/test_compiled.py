"""Compiled inference (AOTInductor): the same numbers as the eager model, picked up by the
calculator, refused or skipped with a clear message when it cannot serve. One package is
compiled for the whole module (about a minute)."""

from __future__ import annotations

import shutil
import warnings
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from typer.testing import CliRunner

from conftest import emt_ethanol_frames, make_model
from incerta.calculators.ase import IncertaCalculator
from incerta.cli.main import app
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import collate, frame_to_graph
from incerta.models.compiled import SCORE_KEYS, CompiledPotential, CompileError, compiled_path
from incerta.models.predict import graphs_for
from incerta.train.checkpoint import load_potential, save_potential
from incerta.uq.base import FitSettings
from incerta.uq.calibration import Calibration
from incerta.uq.fit import calibrate
from incerta.uq.gmm import GMMUncertainty
from incerta.uq.model import SIGMA_KEYS
from incerta.uq.store import load_uncertain_potential, save_uncertainty

runner = CliRunner()
#: float32 agreement asked of compiled inference: eV, eV/Å, eV/Å^3
ENERGY_TOL, FORCES_TOL, STRESS_TOL = 1e-5, 1e-4, 1e-5


@pytest.fixture(scope="module")
def compiled_folder(tmp_path_factory):
    """A float32 model folder (H, C, O, Si) with a GMM attached and its package compiled with
    stress through ``incerta compile``."""
    folder = tmp_path_factory.mktemp("compiled") / "model"
    potential = make_model().float()
    save_potential(potential, folder)
    graphs = graphs_for(potential, emt_ethanol_frames(16, 0.08))
    method = GMMUncertainty(potential)
    report = method.fit(graphs[:10], graphs[10:], FitSettings(progress=False))
    save_uncertainty(folder, method, calibrate(method, graphs[10:]), report)
    result = runner.invoke(app, ["compile", str(folder), "--stress"])
    assert result.exit_code == 0, result.output
    assert compiled_path(folder, "cpu", torch.float32).is_file()
    return folder


def structures() -> dict[str, Frame]:
    """A molecule, a periodic non-orthogonal cell (cutoff larger than the cell) and an isolated atom."""
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=1)
    silicon = bulk("Si", "diamond", a=5.43)
    silicon.rattle(0.05, seed=2)
    silicon.set_cell(silicon.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(3).normal(size=(3, 3))),
                     scale_atoms=True)
    return {"ethanol": Frame.from_atoms(ethanol), "silicon": Frame.from_atoms(silicon),
            "lone atom": Frame.from_atoms(molecule("O"))}


def assert_close(compiled: dict, eager: dict, stress: bool) -> None:
    torch.testing.assert_close(compiled[K.ENERGY], eager[K.ENERGY].detach(), rtol=0, atol=ENERGY_TOL)
    torch.testing.assert_close(compiled[K.FORCES], eager[K.FORCES].detach(), rtol=0, atol=FORCES_TOL)
    torch.testing.assert_close(compiled[K.ATOMIC_ENERGIES], eager[K.ATOMIC_ENERGIES].detach(), rtol=0, atol=ENERGY_TOL)
    if stress:
        torch.testing.assert_close(compiled[K.STRESS], eager[K.STRESS].detach(), rtol=0, atol=STRESS_TOL)


def test_compiled_equals_eager_for_any_size_and_batch(compiled_folder):
    """One program for any number of atoms, edges and structures: a molecule, a periodic cell with
    its stress, an atom without neighbours, and all three as one batch."""
    eager = load_potential(compiled_folder)
    compiled = CompiledPotential(compiled_path(compiled_folder, "cpu", torch.float32))
    assert compiled.stress and compiled.dtype == torch.float32 and compiled.species == eager.species
    graphs = {name: frame_to_graph(frame, eager.spec.cutoff).to(dtype=torch.float32) for name, frame in structures().items()}
    for name, graph in graphs.items():
        periodic = name == "silicon"
        expected = eager(graph, compute_forces=True, compute_stress=periodic)
        assert_close(compiled(graph, compute_stress=periodic), expected, periodic)
    batch = collate(list(graphs.values()))
    expected = eager(batch, compute_forces=True)
    outputs = compiled(batch)
    assert_close(outputs, expected, stress=False)
    assert float(expected[K.FORCES][-1].abs().max()) == 0.0 and float(expected[K.ENERGY].std()) > 1.0
    uncertain = load_uncertain_potential(compiled_folder)  # the GMM's scores and uncertainties are compiled in
    assert compiled.scorer == uncertain.fingerprint()
    expected = uncertain(batch)
    for key in SCORE_KEYS:
        torch.testing.assert_close(outputs[key], expected[key].detach(), rtol=1e-4, atol=1e-6, msg=key)


def test_the_package_kernels_open_no_parallel_region(compiled_folder):
    """``incerta compile`` generates serial CPU kernels (each small loop's OpenMP region cost more
    than it gained: models/compiled.py); the package holds their C++ source."""
    with zipfile.ZipFile(compiled_path(compiled_folder, "cpu", torch.float32)) as package:
        sources = [package.read(name).decode() for name in package.namelist() if name.endswith("kernel.cpp")]
    assert sources and any("cpp_fused" in source for source in sources)
    assert not any("#pragma omp parallel" in source for source in sources)


def test_calculator_runs_the_model_folder_package(compiled_folder):
    """IncertaCalculator finds the package beside the weights: the energies, forces, stress and
    (GMM, computed in the package) uncertainties of the eager calculator."""
    fast, slow = IncertaCalculator(compiled_folder), IncertaCalculator(compiled_folder, compiled=False)
    assert fast.compiled is not None and slow.compiled is None
    for name, frame in structures().items():
        if name == "lone atom":
            continue
        atoms = frame.to_atoms()
        results = {}
        for calculator in (fast, slow):
            atoms.calc = calculator
            results[calculator] = (atoms.get_potential_energy(), atoms.get_forces(),
                                   *(calculator.get_property(key, atoms) for key in SIGMA_KEYS))
        (energy, forces, *sigmas), (energy_ref, forces_ref, *sigmas_ref) = results[fast], results[slow]
        assert abs(energy - energy_ref) < ENERGY_TOL, name
        np.testing.assert_allclose(forces, forces_ref, rtol=0, atol=FORCES_TOL)
        for sigma, sigma_ref in zip(sigmas, sigmas_ref):
            np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4)


def recording(package: CompiledPotential, stress: bool) -> tuple[object, list[bool]]:
    """A stand-in for ``package`` that says it was compiled with ``stress`` or not, and the list
    it appends each call's ``compute_stress`` to."""
    calls = []

    class Recording:
        path = package.path

        def __call__(self, graph, compute_stress=False):
            calls.append(compute_stress)
            return package(graph, compute_stress=compute_stress)

    Recording.stress = stress
    return Recording(), calls


def test_an_md_check_costs_one_compiled_pass(compiled_folder):
    """Forces, then the force uncertainty of the same structure (an MD check): the GMM takes its
    scores from the step's own compiled pass; a new geometry runs the package again."""
    calculator = IncertaCalculator(compiled_folder)
    calculator.compiled, calls = recording(calculator.compiled, calculator.compiled.stress)
    atoms = structures()["ethanol"].to_atoms()
    atoms.calc = calculator
    forces = atoms.get_forces()
    sigma = calculator.get_property(K.FORCES_UNCERTAINTY, atoms)
    assert len(calls) == 1 and np.array_equal(atoms.get_forces(), forces)
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert len(calls) == 2
    reference = IncertaCalculator(compiled_folder, compiled=False)
    np.testing.assert_allclose(sigma, reference.get_property(K.FORCES_UNCERTAINTY, structures()["ethanol"].to_atoms()),
                               rtol=1e-4)


def test_a_package_without_stress_runs_the_forces_of_a_cell(compiled_folder):
    """A package compiled without stress (the default for a model trained on molecules) still runs
    the forces of a periodic cell; only a stress asked for runs eagerly, with a one-time warning."""
    calculator = IncertaCalculator(compiled_folder)
    calculator.compiled, calls = recording(calculator.compiled, stress=False)
    silicon = structures()["silicon"].to_atoms()
    silicon.calc = calculator
    reference = silicon.copy()
    reference.calc = IncertaCalculator(compiled_folder, compiled=False)
    np.testing.assert_allclose(silicon.get_forces(), reference.get_forces(), rtol=0, atol=FORCES_TOL)
    assert calls == [False] and "stress" not in calculator.results
    with pytest.warns(UserWarning, match="compiled without stress: the stress runs on the eager model"):
        stress = silicon.get_stress()
    np.testing.assert_allclose(stress, reference.get_stress(), rtol=0, atol=STRESS_TOL)
    assert calls == [False], "the stress came from the eager model, not from the package"
    silicon.positions[0, 0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silicon.get_stress()


def test_a_package_alone_gives_energy_forces_and_stress_but_no_uncertainty(compiled_folder):
    package = compiled_path(compiled_folder, "cpu", torch.float32)
    silicon = structures()["silicon"].to_atoms()
    silicon.calc = IncertaCalculator(package)
    reference = silicon.copy()
    reference.calc = IncertaCalculator(compiled_folder, compiled=False)
    np.testing.assert_allclose(silicon.get_stress(), reference.get_stress(), rtol=0, atol=STRESS_TOL)
    np.testing.assert_allclose(silicon.get_forces(), reference.get_forces(), rtol=0, atol=FORCES_TOL)
    with pytest.raises(PropertyNotImplementedError, match="no uncertainty"):
        silicon.calc.get_property(K.FORCES_UNCERTAINTY, silicon)
    methane = molecule("CH4")
    methane.numbers[0] = 7  # nitrogen: unknown to the model
    methane.calc = silicon.calc
    with pytest.raises(ValueError, match="N not in the model"):
        methane.get_potential_energy()


def test_a_package_of_other_weights_is_not_used(compiled_folder, tmp_path):
    """Retrained weights beside an old package: the folder's package is skipped with a warning
    (never silently wrong); asked for explicitly, it is refused."""
    folder = tmp_path / "model"
    shutil.copytree(compiled_folder, folder)
    (folder / "uncertainty.safetensors").unlink()  # fitted for the old weights, it would be refused (test_checkpoint)
    potential = load_potential(folder)
    with torch.no_grad():
        potential.readout.output.weight.mul_(1.01)
    save_potential(potential, folder)
    with pytest.warns(UserWarning, match="runs eagerly: .* other weights"):
        calculator = IncertaCalculator(folder)
    assert calculator.compiled is None
    with pytest.raises(CompileError, match="other weights"):
        IncertaCalculator(folder, compiled=compiled_path(folder, "cpu", torch.float32))


def test_uncertainties_of_another_calibration_are_not_read_from_the_package(compiled_folder, tmp_path):
    """The package holds the GMM's calibrated uncertainties: with a new calibration beside it, the
    package still runs the potential, but its uncertainties are dropped with a warning and come
    from the new calibration, as the eager model gives them; likewise for another aggregation."""
    folder = tmp_path / "model"
    shutil.copytree(compiled_folder, folder)
    atoms = structures()["ethanol"].to_atoms()
    atoms.calc = IncertaCalculator(folder)
    compiled_sigma = atoms.calc.get_property(K.FORCES_UNCERTAINTY, atoms)
    uncertain = load_uncertain_potential(folder)
    old = uncertain.calibration
    save_uncertainty(folder, uncertain.method, Calibration(replace(old.forces, c0=old.forces.c0 + 1.0), old.energy), {})
    with pytest.warns(UserWarning, match="another fit, calibration or aggregation"):
        calculator = IncertaCalculator(folder)
    assert calculator.compiled is not None and calculator.compiled.scorer is None
    with pytest.warns(UserWarning, match="another fit, calibration or aggregation"):  # the package's is "max"
        IncertaCalculator(compiled_folder, aggregate="mean")
    atoms.calc = calculator
    sigma = calculator.get_property(K.FORCES_UNCERTAINTY, atoms)
    atoms.calc = IncertaCalculator(folder, compiled=False)
    np.testing.assert_allclose(sigma, atoms.calc.get_property(K.FORCES_UNCERTAINTY, atoms), rtol=1e-4)
    assert not np.allclose(sigma, compiled_sigma, rtol=0.1)


def test_a_foreign_file_is_refused(tmp_path):
    fake = tmp_path / "model.pt2"
    fake.write_bytes(b"not a package")
    with pytest.raises(CompileError, match="not an incerta compiled model"):
        IncertaCalculator(fake)


def test_a_model_that_cannot_compile_runs_eagerly_with_a_warning(tmp_path):
    """Charge equilibration solves by conjugate gradients until converged, which a trace cannot
    hold: `incerta compile` says so in one line, writes nothing, and the calculator runs eagerly."""
    folder = tmp_path / "model"
    save_potential(make_model(electrostatics="qeq").float(), folder)
    result = runner.invoke(app, ["compile", str(folder)])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "runs eagerly" in result.output
    assert "tracing" in result.output and "charge_model" in result.output
    assert not list(folder.glob("*.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calculator = IncertaCalculator(folder)
    assert calculator.compiled is None


def test_active_learning_md_runs_on_the_package(compiled_folder):
    """The candidates of model-driven MD are those of the eager model when the package drives the MD."""
    from incerta.active.samplers import md_candidates
    from incerta.config.active import CandidateSection
    from incerta.uq.store import load_uncertain_potential

    uncertain = load_uncertain_potential(compiled_folder)
    package = CompiledPotential(compiled_path(compiled_folder, "cpu", torch.float32))
    section = CandidateSection(source="md", max_candidates=4, md={"steps": 40, "check_every": 10, "on_flag": "continue",
                                                                  "fragment_factor": None})  # the tiny model lets an H go
    made = {name: md_candidates(uncertain, [structures()["ethanol"]], section, 0.0, iteration=0, seed=0,
                                progress=False, compiled=package if name == "compiled" else None)
            for name in ("compiled", "eager")}
    assert len(made["compiled"]) == len(made["eager"]) == 4
    for (_, fast), (_, slow) in zip(made["compiled"], made["eager"]):
        np.testing.assert_allclose(fast.positions, slow.positions, rtol=0, atol=1e-4)
    assert np.abs(made["eager"][-1][1].positions - structures()["ethanol"].positions).max() > 0.05, "the MD moved"
    package.weights = "0" * 64  # as if compiled from other weights: the MD's calculator checks and refuses it
    with pytest.raises(CompileError, match="other weights"):
        md_candidates(uncertain, [structures()["ethanol"]], section, 0.0, iteration=0, seed=0, progress=False,
                      compiled=package)
