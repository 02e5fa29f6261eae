"""Molecular dynamics through ASE with the incerta calculator, and the uncertainty-watched MD driver."""

from __future__ import annotations

import csv

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from conftest import most_stretched_bond
from incerta.calculators.ase import IncertaCalculator
from incerta.calculators.bias import UncertaintyBiasedCalculator, density_score
from incerta.calculators.md import LOG_COLUMNS, MoleculeWatch, make_dynamics, run_watched_md
from incerta.config.md import MDSettings
from incerta.config.schema import ConfigError
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph


def test_nve_conserves_energy(model, ethanol):
    ethanol.calc = IncertaCalculator(model)
    thermalize_momenta(ethanol, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(ethanol)
    dynamics = VelocityVerlet(ethanol, 0.25 * units.fs)
    potential, total = [], []
    for _ in range(200):
        dynamics.run(1)
        potential.append(ethanol.get_potential_energy())
        total.append(ethanol.get_total_energy())
    potential, total = np.array(potential), np.array(total)
    assert np.ptp(potential) > 0.02, "the system must actually move on the surface"
    assert np.ptp(total) < 1e-3 * np.ptp(potential), f"total energy drifts by {np.ptp(total):.2e} eV"


def test_driver_nve_conserves_energy_and_honours_steps(model, ethanol, tmp_path):
    settings = MDSettings(ensemble="nve", temperature_K=300, timestep_fs=0.25, steps=203, check_every=10, write_every=25)
    run = run_watched_md(ethanol, IncertaCalculator(model), settings, log=tmp_path / "log.csv",
                         trajectory=tmp_path / "md.xyz", progress=False)
    assert run.steps_done == 203 and [row["step"] for row in run.log][-2:] == [200, 203]
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(LOG_COLUMNS) and len(rows) == 21
    column = lambda name: np.array([float(row[name]) for row in rows])
    assert np.ptp(column("potential_energy_eV")) > 0.02, "the system must actually move on the surface"
    assert np.ptp(column("total_energy_eV")) < 1e-3 * np.ptp(column("potential_energy_eV"))
    assert np.isnan(column("pressure_GPa")).all() and np.isnan(column("max_force_uncertainty_eV_per_A")).all()
    frames = ase.io.read(tmp_path / "md.xyz", ":")
    assert [f.info["step"] for f in frames] == [25 * k for k in range(1, 9)]
    np.testing.assert_allclose(frames[-1].info["time_fs"], 200 * 0.25)


@pytest.mark.parametrize("thermostat", ["langevin", "bussi"])
def test_nvt_thermostats_hold_the_temperature(thermostat):
    """A 32-atom copper cell (EMT) stays near the target temperature once equilibrated."""
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.calc = EMT()
    settings = MDSettings(temperature_K=600, thermostat=thermostat, timestep_fs=2.0, friction_per_fs=0.05,
                          thermostat_time_fs=20)
    dynamics = make_dynamics(atoms, settings, np.random.default_rng(0))
    temperatures = []
    for _ in range(150):
        dynamics.run(4)
        temperatures.append(atoms.get_temperature())
    assert np.mean(temperatures[50:]) == pytest.approx(600, rel=0.15)


def test_npt_barostat_expands_a_compressed_crystal():
    """Copper squeezed by 4 %: at zero pressure the MTK barostat lets the cell grow back."""
    atoms = bulk("Cu", cubic=True, a=3.45).repeat(2)
    atoms.calc = EMT()
    start_volume = atoms.get_volume()
    start_pressure = -np.mean(atoms.get_stress()[:3]) / units.GPa
    settings = MDSettings(ensemble="npt", temperature_K=300, pressure_GPa=0.0, timestep_fs=2.0,
                          thermostat_time_fs=50, barostat_time_fs=200)
    dynamics = make_dynamics(atoms, settings, np.random.default_rng(0))
    dynamics.run(300)
    assert start_pressure > 5, "the squeezed crystal starts under pressure"
    assert atoms.get_volume() > 1.05 * start_volume
    assert abs(np.mean(atoms.get_stress()[:3]) / units.GPa) < 0.3 * start_pressure


def test_npt_needs_a_periodic_cell(model, ethanol):
    with pytest.raises(ConfigError, match="npt needs a cell periodic"):
        run_watched_md(ethanol, IncertaCalculator(model), MDSettings(ensemble="npt", steps=10), progress=False)


def test_npt_log_has_pressure_and_volume(model, silicon, tmp_path):
    settings = MDSettings(ensemble="npt", steps=20, check_every=5, timestep_fs=0.5)
    run = run_watched_md(silicon.repeat(2), IncertaCalculator(model), settings, progress=False)
    volumes = [row["volume_A3"] for row in run.log]
    assert all(np.isfinite(row["pressure_GPa"]) for row in run.log)
    assert volumes[0] != volumes[-1], "the cell moves"


def test_flag_policies(watched_model, ethanol, tmp_path):
    """A threshold below every uncertainty flags every check: stop ends at the first, continue keeps
    the trajectory going, rewind goes back to the start with new velocities each time."""
    settings = MDSettings(steps=30, check_every=10, write_every=10)
    free = run_watched_md(ethanol, IncertaCalculator(watched_model), settings, trajectory=tmp_path / "free.xyz",
                          progress=False)
    sigmas = np.array([row["max_force_uncertainty_eV_per_A"] for row in free.log])
    frames = ase.io.read(tmp_path / "free.xyz", ":")
    np.testing.assert_allclose([f.arrays["forces_uncertainty"].max() for f in frames], sigmas, rtol=1e-6)
    threshold = 0.5 * sigmas.min()
    calculator = IncertaCalculator(watched_model)

    stop = run_watched_md(ethanol, calculator, settings.model_copy(update={"on_flag": "stop"}), threshold, progress=False)
    assert stop.stopped_at == 10 and stop.steps_done == 10 and len(stop.flagged) == 1
    keep = run_watched_md(ethanol, calculator, settings.model_copy(update={"on_flag": "continue"}), threshold,
                          progress=False)
    assert keep.steps_done == 30 and len(keep.flagged) == 3 and keep.stopped_at is None
    assert [row["time_fs"] for row in keep.log] == [5.0, 10.0, 15.0]
    rewind = run_watched_md(ethanol, calculator, settings.model_copy(update={"on_flag": "rewind"}), threshold,
                            progress=False)
    assert rewind.steps_done == 30 and len(rewind.flagged) == 3
    assert [row["time_fs"] for row in rewind.log] == [5.0, 5.0, 5.0], "each check restarts from time 0"
    assert all(row["event"].startswith("flagged: rewind to step 0") for row in rewind.log)
    assert not np.allclose(rewind.flagged[0].positions, rewind.flagged[1].positions)


def test_uncertainty_is_computed_only_when_asked(watched_model, ethanol):
    ethanol.calc = IncertaCalculator(watched_model)
    ethanol.get_forces()
    assert "forces_uncertainty" not in ethanol.calc.results
    sigma = ethanol.calc.get_property("forces_uncertainty", ethanol)
    assert sigma.shape == (len(ethanol),) and np.all(sigma > 0)
    np.testing.assert_allclose(ethanol.arrays["forces_uncertainty"], sigma)


def test_biased_forces_are_the_gradient_of_the_biased_energy(watched_model, ethanol):
    calculator = UncertaintyBiasedCalculator(watched_model, watched_model.method, strength=0.5, reference=(0.0, 1.0))
    ethanol.calc = calculator
    forces = ethanol.get_forces()
    graph = frame_to_graph(Frame.from_atoms(ethanol), watched_model.potential.spec.cutoff).to(dtype=torch.float64)
    score = float(density_score(watched_model.method, watched_model.potential.evaluate(graph)[K.NODE_FEATURES]))
    assert calculator.results["bias_energy"] == pytest.approx(-0.5 * np.log1p(np.log1p(np.exp(score))))
    plain = IncertaCalculator(watched_model).get_forces(ethanol)
    assert np.abs(forces - plain).max() > 1e-3, "the bias changes the forces"
    h = 1e-5
    for atom, axis in ((0, 0), (3, 1), (8, 2)):
        moved = []
        for sign in (1, -1):
            probe = ethanol.copy()
            probe.positions[atom, axis] += sign * h
            moved.append(calculator.get_potential_energy(probe))
        assert forces[atom, axis] == pytest.approx(-(moved[0] - moved[1]) / (2 * h), abs=1e-5)


def test_biased_stress_is_the_strain_derivative_of_the_biased_energy(watched_model, silicon):
    """The bias depends on the cell through the edge vectors: its stress is part of the total,
    so NPT on the biased surface is consistent (isotropic strain, finite differences)."""
    calculator = UncertaintyBiasedCalculator(watched_model, watched_model.method, strength=0.5, reference=(0.0, 1.0))
    plain = IncertaCalculator(watched_model).get_stress(silicon)[:3]  # Voigt: the diagonal first
    stress = calculator.get_stress(silicon)[:3]
    energies, h = [], 1e-5
    for sign in (1, -1):
        strained = silicon.copy()
        strained.set_cell(silicon.cell.array * (1 + sign * h), scale_atoms=True)
        energies.append(calculator.get_potential_energy(strained))
    assert stress.sum() == pytest.approx((energies[0] - energies[1]) / (2 * h) / silicon.get_volume(), abs=1e-7)
    assert abs((stress - plain).sum()) > 1e-5, "the bias has a stress"


def test_a_run_driven_into_overlapping_atoms_stops_and_keeps_its_log(model, tmp_path):
    """A hot H2 (the small random model barely binds it) collides within a few steps: the
    driver ends the run with the calculator's message, after the rows it had."""
    dimer = Atoms("H2", positions=[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    settings = MDSettings(ensemble="nve", temperature_K=2e4, timestep_fs=0.5, steps=200, check_every=2)
    run = run_watched_md(dimer, IncertaCalculator(model), settings, log=tmp_path / "log.csv", progress=False)
    assert run.error is not None and "overlap" in run.error and run.steps_done < 200
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(run.log) >= 2
    assert rows[-1]["event"].startswith("stopped:") and rows[-2]["event"] == ""


def test_molecule_watch_names_fragments_and_clashes_but_not_a_proton_hop():
    """A water molecule: its H pulled away is a fragment, an H moved onto the other H a clash; the
    H moved from the O to a second O (a proton transfer that keeps everything bonded) is no event.
    A periodic cell is watched for clashes only (its neighbours part by diffusion)."""
    water = Atoms("OH2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [2.5, 0, 0]])
    watch = MoleculeWatch.of(water, 1.5, 0.65)
    assert watch.pieces == 2 and watch.event(water) is None
    hop = water.copy()
    hop.positions[1] = [1.55, 0, 0]
    assert watch.event(hop) is None
    pulled = water.copy()
    pulled.positions[2] *= 2.0
    assert watch.event(pulled).startswith("the molecule came apart into 3 pieces (2 at the start")
    assert MoleculeWatch.of(water, None, 0.65).event(pulled) is None
    clash = water.copy()
    clash.positions[2] = [0.96, 0.3, 0]
    assert watch.event(clash).startswith("atoms 1 (H) and 2 (H) at 0.30 Å, 0.48x their covalent bond length")
    assert MoleculeWatch.of(water, 1.5, None).event(clash) is None
    copper = bulk("Cu", cubic=True)
    assert MoleculeWatch.of(copper, 1.5, 0.65).pieces is None
    copper.positions[1] = copper.positions[0] + [0.5, 0.5, 0]
    assert "0.71 Å" in MoleculeWatch.of(copper, 1.5, 0.65).event(copper)


def test_a_run_whose_molecule_comes_apart_stops_there(model, ethanol, tmp_path):
    """With a fragment factor the run ends at the first check where the molecule has come apart,
    logging why; here the factor keeps the starting molecule whole by a hair (0.1 % above its
    most stretched bond), so the first thermal stretch of that bond splits it. Without a factor
    the run goes on."""
    settings = MDSettings(ensemble="nvt", temperature_K=600, steps=40, check_every=10,
                          fragment_factor=1.001 * most_stretched_bond(ethanol))
    assert MoleculeWatch.of(ethanol, settings.fragment_factor, None).pieces == 1
    run = run_watched_md(ethanol, IncertaCalculator(model), settings, log=tmp_path / "log.csv", progress=False)
    assert run.steps_done < 40 and "came apart" in run.error
    assert run.log[-1]["event"].startswith(f"stopped: at step {run.steps_done}: the molecule came apart into 2 pieces")
    free = run_watched_md(ethanol, IncertaCalculator(model), settings.model_copy(update={"fragment_factor": None}),
                          progress=False)
    assert free.steps_done == 40 and free.error is None
