"""Batched MD of replicas through TorchSim: the model as a TorchSim model, the integration against
ASE's, and each replica watched by its own uncertainty."""

from __future__ import annotations

import csv

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet
from ase.stress import full_3x3_to_voigt_6_stress

from conftest import most_stretched_bond
from incerta.calculators.ase import IncertaCalculator
from incerta.calculators.replicas import REPLICA_LOG_COLUMNS, TorchSimPotential, replica_path, run_replica_md
from incerta.config.active import CandidateSection
from incerta.config.md import MDSettings
from incerta.config.schema import ConfigError
from incerta.data.md_sampling import initial_velocities
from incerta.data.validation import DataError

ts = pytest.importorskip("torch_sim")


def ethanols(rattles: list[float]) -> list[Atoms]:
    copies = []
    for seed, rattle in enumerate(rattles):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(rattle, seed=seed)
        copies.append(atoms)
    return copies


def test_torchsim_potential_gives_the_calculator_numbers_for_every_system(model, silicon):
    """Three different molecules in one batch, then two different cells with stress: each system's
    energy, forces and stress equal the ASE calculator's on that system alone."""
    cells = [silicon.copy(), silicon.repeat((2, 1, 1))]
    cells[1].rattle(0.03, seed=4)
    for systems, stress in ((ethanols([0.02, 0.05, 0.1]), False), (cells, True)):
        engine = TorchSimPotential(model, compute_stress=stress)
        out = engine(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))
        start = 0
        for index, atoms in enumerate(systems):
            atoms.calc = IncertaCalculator(model)
            assert float(out["energy"][index]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
            np.testing.assert_allclose(out["forces"][start : start + len(atoms)].numpy(), atoms.get_forces(), atol=1e-10)
            if stress:
                np.testing.assert_allclose(full_3x3_to_voigt_6_stress(out["stress"][index].numpy()), atoms.get_stress(),
                                           atol=1e-10)
            start += len(atoms)


def test_batched_nve_is_ase_velocity_verlet_for_every_replica(model):
    """Each replica of a batched NVE run follows, to rounding, the trajectory ASE's velocity Verlet
    gives it alone from the same velocities; and its total energy is conserved."""
    starts = ethanols([0.05, 0.05, 0.08])
    settings = MDSettings(ensemble="nve", temperature_K=400, timestep_fs=0.5, steps=40, check_every=10)
    runs = run_replica_md(starts, model, settings, seed=5, progress=False)
    for index, (start, run) in enumerate(zip(starts, runs)):
        atoms = start.copy()
        atoms.calc = IncertaCalculator(model)
        initial_velocities(atoms, settings.temperature_K, np.random.default_rng(5 + index))
        dynamics = VelocityVerlet(atoms, settings.timestep_fs * units.fs)
        expected = []
        for _ in range(4):
            dynamics.run(10)
            expected.append((atoms.get_potential_energy(), atoms.get_kinetic_energy()))
        logged = [(row["potential_energy_eV"], row["kinetic_energy_eV"]) for row in run.log]
        np.testing.assert_allclose(logged, expected, atol=1e-9)
        totals = np.array([row["total_energy_eV"] for row in run.log])
        potentials = np.array([row["potential_energy_eV"] for row in run.log])
        assert np.ptp(potentials) > 0.01 and np.ptp(totals) < 0.02 * np.ptp(potentials)
        assert run.steps_done == 40 and run.stopped_at is None
    assert not np.allclose(runs[0].log[-1]["potential_energy_eV"], runs[1].log[-1]["potential_energy_eV"]), \
        "identical starts get their own velocities"


def test_langevin_replicas_have_the_friction_and_temperature_asked_for(model, silicon, tmp_path):
    """Silicon cells under a model without forces (an ideal gas): Langevin velocities forget
    themselves as exp(-friction t) and stay at the target temperature; a seed repeats the noise."""
    for parameter in model.readout.output.parameters():
        torch.nn.init.zeros_(parameter)
    settings = MDSettings(temperature_K=300, timestep_fs=0.5, steps=60, check_every=10, write_every=10,
                          friction_per_fs=0.05)
    starts = [silicon.repeat(2) for _ in range(4)]
    runs = run_replica_md(starts, model, settings, trajectory=tmp_path / "md.xyz", seed=1, progress=False)
    assert np.mean([row["temperature_K"] for run in runs for row in run.log]) == pytest.approx(300, rel=0.15)
    early, late = [], []
    for index in range(4):
        frames = ase.io.read(replica_path(tmp_path / "md.xyz", index), ":")
        early.append(frames[0].get_velocities())
        late.append(frames[4].get_velocities())  # 40 steps = 20 fs later
    early, late = np.concatenate(early).ravel(), np.concatenate(late).ravel()
    assert np.dot(early, late) / np.dot(early, early) == pytest.approx(np.exp(-0.05 * 20), abs=0.15)
    again = run_replica_md(starts, model, settings, seed=1, progress=False)
    assert [row["kinetic_energy_eV"] for row in again[3].log] == [row["kinetic_energy_eV"] for row in runs[3].log]


def test_each_replica_is_watched_by_its_own_uncertainty(watched_model, tmp_path):
    """A strongly distorted replica among two ordinary ones: with a threshold between them, it alone
    is flagged and stops; the others run to the end. The logged uncertainty of every replica is the
    calculator's at that replica's positions."""
    starts = ethanols([0.05, 0.05, 0.4])
    settings = MDSettings(ensemble="nve", steps=30, check_every=10, write_every=10, on_flag="stop")
    free = run_replica_md(starts, watched_model, settings, trajectory=tmp_path / "free.xyz", seed=2, progress=False)
    sigma = lambda run: [row["max_force_uncertainty_eV_per_A"] for row in run.log]
    ordinary = max(max(sigma(free[0])), max(sigma(free[1])))
    assert sigma(free[2])[0] > ordinary, "the distorted replica is the uncertain one"
    calculator = IncertaCalculator(watched_model)
    for index in range(3):
        frames = ase.io.read(replica_path(tmp_path / "free.xyz", index), ":")
        assert [frame.info["step"] for frame in frames] == [10, 20, 30]
        for frame, logged in zip(frames, sigma(free[index])):
            expected = calculator.get_property("forces_uncertainty", frame.copy())
            np.testing.assert_allclose(frame.arrays["forces_uncertainty"], expected, rtol=1e-6)
            assert logged == pytest.approx(expected.max(), rel=1e-6)

    threshold = 0.5 * (ordinary + sigma(free[2])[0])
    runs = run_replica_md(starts, watched_model, settings, threshold, log=tmp_path / "log.csv", seed=2, progress=False)
    assert [run.stopped_at for run in runs] == [None, None, 10]
    assert [run.steps_done for run in runs] == [30, 30, 10]
    assert [len(run.flagged) for run in runs] == [0, 0, 1] and runs[2].flagged[0].info["replica"] == 2
    assert sigma(runs[0]) == pytest.approx(sigma(free[0]), rel=1e-9), "in NVE a replica leaving changes no other"
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == REPLICA_LOG_COLUMNS
    assert [int(row["replica"]) for row in rows] == [0, 1, 2, 0, 1, 0, 1]
    assert rows[2]["event"].startswith("flagged: stop")


def test_replica_policies_continue_and_rewind(watched_model):
    """A threshold below every uncertainty: continue keeps every replica going with a flag at each
    check; rewind sends each back to its start (time 0) with new velocities at each check."""
    starts = ethanols([0.05, 0.08])
    settings = MDSettings(steps=30, check_every=10, write_every=10)
    keep = run_replica_md(starts, watched_model, settings.model_copy(update={"on_flag": "continue"}), 1e-6,
                          progress=False)
    assert [len(run.flagged) for run in keep] == [3, 3] and all(run.steps_done == 30 for run in keep)
    assert [row["time_fs"] for row in keep[1].log] == [5.0, 10.0, 15.0]
    rewind = run_replica_md(starts, watched_model, settings.model_copy(update={"on_flag": "rewind"}), 1e-6,
                            max_flagged=3, progress=False)
    for run in rewind:
        assert run.steps_done == 30 and len(run.flagged) == 3
        assert [row["time_fs"] for row in run.log] == [5.0, 5.0, 5.0], "each check restarts from time 0"
        assert [row["event"].split(" (")[0] for row in run.log] == ["flagged: rewind to step 0"] * 2 + ["flagged: stop"]
        assert not np.allclose(run.flagged[0].positions, run.flagged[1].positions)


def test_a_replica_driven_into_overlapping_atoms_stops_alone(model):
    """A hot H2 (the small random model barely binds it) collides within a few steps: that replica
    ends with a stopped event; an H2 whose atoms are beyond the cutoff (no neighbours) runs on."""
    close, apart = (Atoms("H2", positions=[[0.0, 0.0, 0.0], [d, 0.0, 0.0]]) for d in (1.0, 8.0))
    settings = MDSettings(ensemble="nve", temperature_K=2e4, timestep_fs=0.5, steps=20, check_every=2)
    collided, free = run_replica_md([close, apart], model, settings, seed=0, progress=False)
    assert collided.error is not None and "apart (overlapping: closer than 0.1 Å)" in collided.error
    assert collided.steps_done < 20 and collided.log[-1]["event"].startswith("stopped:")
    assert free.error is None and free.steps_done == 20 and len(free.log) == 10
    with pytest.raises(DataError, match=r"replica 1: .*overlap"):
        run_replica_md([close, Atoms("H2", positions=[[0, 0, 0], [0.01, 0, 0]])], model, settings, progress=False)


def test_a_replica_whose_molecule_comes_apart_stops_alone_at_that_check(model, tmp_path):
    """The replicas watch what the ASE driver watches (MoleculeWatch of the settings): with a
    fragment factor that keeps both starting ethanols whole by a hair, each replica stops at the
    check where its molecule splits, logging why and keeping nothing flagged after it; without
    the factor both run every step."""
    starts = ethanols([0.02, 0.05])
    tight = 1.001 * max(most_stretched_bond(atoms) for atoms in starts)
    settings = MDSettings(ensemble="nvt", temperature_K=600, steps=40, check_every=10, fragment_factor=tight)
    runs = run_replica_md(starts, model, settings, seed=0, progress=False, log=tmp_path / "log.csv")
    for run in runs:
        assert run.steps_done < 40 and "came apart" in run.error
        assert run.log[-1]["event"] == f"stopped: {run.error}" and run.error.startswith(f"at step {run.log[-1]['step']}:")
    free = run_replica_md(starts, model, settings.model_copy(update={"fragment_factor": None}), seed=0, progress=False)
    assert all(run.error is None and run.steps_done == 40 for run in free)


def test_replicas_refuse_what_they_cannot_run(model, silicon, ethanol):
    with pytest.raises(ConfigError, match="ensemble 'npt'"):
        run_replica_md([silicon, silicon], model, MDSettings(ensemble="npt", steps=2), progress=False)
    with pytest.raises(ConfigError, match="thermostat 'bussi'"):
        run_replica_md([ethanol, ethanol], model, MDSettings(thermostat="bussi", steps=2), progress=False)
    with pytest.raises(ConfigError, match=r"all molecules .* or all periodic"):
        run_replica_md([ethanol, silicon], model, MDSettings(steps=2), progress=False)
    with pytest.raises(ConfigError, match="threshold needs a model with an uncertainty"):
        run_replica_md([ethanol], model, MDSettings(steps=2), threshold=0.1, progress=False)
    with pytest.raises(ValueError, match=r"md\.replicas > 1 batches the MD of source 'md'"):
        CandidateSection(source="biased-md", md={"replicas": 4})
