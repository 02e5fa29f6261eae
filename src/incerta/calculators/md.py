"""Molecular dynamics through ASE with the calibrated uncertainty watched at every check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from tqdm.auto import tqdm

from incerta.calculators.ase import IncertaCalculator
from incerta.data import keys as K
from incerta.data.md_sampling import labelled_copy, langevin


@dataclass
class WatchedMD:
    """Result: log rows (step, time_fs, energy_eV, temperature_K, max_uncertainty_eV_per_A),
    the flagged frames (uncertainty above the threshold, with their uncertainties) and
    whether the run stopped early."""

    log: list[dict[str, float]] = field(default_factory=list)
    flagged: list[Atoms] = field(default_factory=list)
    stopped_at: int | None = None


def run_watched_md(
    atoms: Atoms,
    calculator: IncertaCalculator,
    temperature_K: float,
    steps: int,
    threshold: float | None = None,
    check_every: int = 10,
    on_threshold: str = "branch",
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.02,
    max_flagged: int | None = None,
    seed: int = 0,
    progress: bool = True,
    on_check: Callable[[dict], None] | None = None,
) -> WatchedMD:
    """Langevin MD; every ``check_every`` steps log the state and compare the largest atomic
    force uncertainty (eV/Å) with ``threshold``. Above it the frame is flagged and, with
    ``on_threshold='stop'``, the run ends; with ``'branch'`` it goes back to the last frame
    below the threshold with fresh velocities (so it keeps exploring near the edge)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    dynamics = langevin(atoms, temperature_K, timestep_fs, friction_per_fs, rng)
    result = WatchedMD()
    safe = (atoms.positions.copy(), atoms.get_momenta().copy())
    bar = tqdm(total=steps, desc=f"MD {temperature_K:.0f} K", unit="step", disable=not progress, mininterval=1.0)
    step = 0
    while step < steps:
        dynamics.run(check_every)
        step += check_every
        bar.update(check_every)
        atoms.get_forces()
        sigma = float(calculator.results[K.STRUCTURE_UNCERTAINTY]) if calculator.has_uncertainty else float("nan")
        row = {"step": step, "time_fs": step * timestep_fs, "energy_eV": float(atoms.get_potential_energy()),
               "temperature_K": float(atoms.get_temperature()), "max_uncertainty_eV_per_A": sigma}
        result.log.append(row)
        if on_check is not None:
            on_check(row)
        if threshold is None or not sigma > threshold:
            safe = (atoms.positions.copy(), atoms.get_momenta().copy())
            continue
        frame = labelled_copy(atoms, step=step, md_temperature_K=temperature_K)
        frame.arrays[K.FORCES_UNCERTAINTY] = np.array(calculator.results[K.FORCES_UNCERTAINTY])
        frame.info[K.STRUCTURE_UNCERTAINTY] = sigma
        result.flagged.append(frame)
        if on_threshold == "stop" or (max_flagged is not None and len(result.flagged) >= max_flagged):
            result.stopped_at = step
            break
        atoms.positions, _ = safe
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
    bar.close()
    return result
