"""Label structures with a reference calculator by sampling Langevin MD.

Used to make the embedded demo data and, later, training sets for new systems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from tqdm.auto import tqdm


def labelled_copy(atoms: Atoms, **info) -> Atoms:
    """Snapshot of ``atoms`` with its current energy and forces frozen in a SinglePointCalculator."""
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces(apply_constraint=False)
    copy = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    copy.info.update(atoms.info)
    copy.info.update(info)
    copy.calc = SinglePointCalculator(copy, energy=energy, forces=forces)
    return copy


def initial_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann velocities at ``temperature_K`` without centre-of-mass motion (and, for
    a molecule, without rotation)."""
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def langevin(atoms: Atoms, temperature_K: float, timestep_fs: float, friction_per_fs: float,
             rng: np.random.Generator) -> Langevin:
    """Langevin dynamics of ``atoms`` (its calculator attached) from :func:`initial_velocities`;
    the centre of mass stays fixed. Time step in fs, friction in 1/fs."""
    initial_velocities(atoms, temperature_K, rng)
    atoms.set_constraint(FixCom())  # Langevin's own fixcm is deprecated (ASE 3.28)
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                    friction=friction_per_fs / units.fs, rng=rng, fixcm=False)


def sample_md(
    atoms: Atoms,
    make_calculator: Callable[[], Calculator],
    temperature_K: float,
    n_frames: int,
    interval: int = 40,
    equilibration: int = 2000,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.02,
    seed: int = 0,
    label: str = "",
) -> list[Atoms]:
    """Run Langevin MD at ``temperature_K`` and keep every ``interval``-th step's labels.

    Returns ``n_frames`` labelled copies (energy in eV, forces in eV/Å) with
    ``info['temperature_K']`` and ``info['config_type']`` = ``label``.
    """
    atoms = atoms.copy()
    atoms.calc = make_calculator()
    dynamics = langevin(atoms, temperature_K, timestep_fs, friction_per_fs, np.random.default_rng(seed))
    dynamics.run(equilibration)
    frames = []
    for _ in tqdm(range(n_frames), desc=f"MD {label} {temperature_K:.0f} K", unit="frame", mininterval=1.0):
        dynamics.run(interval)
        frames.append(labelled_copy(atoms, temperature_K=temperature_K, config_type=label))
    return frames


def sample_temperatures(atoms: Atoms, make_calculator: Callable[[], Calculator], temperatures_K: Sequence[float],
                        n_frames: int, interval: int = 20, equilibration: int = 1000, seed: int = 0,
                        label: str = "") -> list[Atoms]:
    """Reference MD at each of ``temperatures_K`` in turn (:func:`sample_md`, seed ``seed + k``
    for the k-th): ``n_frames`` labelled frames per temperature, in trajectory order. Labelling
    such frames at a stride is the practice active learning is measured against."""
    return [frame for k, temperature in enumerate(temperatures_K)
            for frame in sample_md(atoms, make_calculator, temperature, n_frames, interval=interval,
                                   equilibration=equilibration, seed=seed + k, label=label)]
