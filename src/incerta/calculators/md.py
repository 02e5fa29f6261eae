"""Molecular dynamics through ASE with the calibrated uncertainty watched at every check.

One driver for ``incerta md`` and active learning: NVE, NVT or NPT from
:class:`~incerta.config.md.MDSettings`, a CSV log, an optional trajectory with per-atom
uncertainties, and an explicit policy (stop, continue, rewind) when the model is unsure.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.bussi import Bussi
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT
from ase.md.verlet import VelocityVerlet
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from incerta.calculators.ase import IncertaCalculator
from incerta.config.md import MDSettings
from incerta.config.schema import ConfigError
from incerta.data import keys as K
from incerta.data.md_sampling import initial_velocities, labelled_copy, langevin
from incerta.data.neighbors import edge_lengths, neighbor_list
from incerta.data.validation import DataError

LOG_COLUMNS = (
    "step", "time_fs", "potential_energy_eV", "kinetic_energy_eV", "total_energy_eV", "temperature_K",
    "pressure_GPa", "volume_A3", "max_force_uncertainty_eV_per_A", "mean_force_uncertainty_eV_per_A", "event",
)


@dataclass
class WatchedMD:
    """Result: log rows (``LOG_COLUMNS``; pressure and volume NaN for a molecule, uncertainties
    NaN without an uncertainty method), the flagged frames (with their uncertainties), the
    step where the run stopped on a flag (None if it ran to the end), the integrator steps done,
    and, when the structure became invalid (e.g. overlapping atoms), the error that ended the run."""

    log: list[dict[str, float | str]] = field(default_factory=list)
    flagged: list[Atoms] = field(default_factory=list)
    stopped_at: int | None = None
    steps_done: int = 0
    error: str | None = None


def make_dynamics(atoms: Atoms, settings: MDSettings, rng: np.random.Generator) -> MolecularDynamics:
    """The ASE integrator for ``settings.ensemble``, with fresh velocities at the target temperature."""
    timestep = settings.timestep_fs * units.fs
    if settings.ensemble == "nvt" and settings.thermostat == "langevin":
        return langevin(atoms, settings.temperature_K, settings.timestep_fs, settings.friction_per_fs, rng)
    atoms.set_constraint()
    initial_velocities(atoms, settings.temperature_K, rng)
    if settings.ensemble == "nve":
        return VelocityVerlet(atoms, timestep)
    if settings.ensemble == "nvt":
        return Bussi(atoms, timestep, settings.temperature_K, settings.thermostat_time_fs * units.fs, rng=rng)
    if not atoms.pbc.all():
        raise ConfigError(f"npt needs a cell periodic in all three directions; this structure has pbc={atoms.pbc.tolist()}")
    barostat = IsotropicMTKNPT if settings.cell == "isotropic" else MTKNPT
    return barostat(atoms, timestep, temperature_K=settings.temperature_K, pressure_au=settings.pressure_GPa * units.GPa,
                    tdamp=settings.thermostat_time_fs * units.fs, pdamp=settings.barostat_time_fs * units.fs)


def state_row(atoms: Atoms, step: int, time_fs: float, sigma: np.ndarray | None) -> dict[str, float | str]:
    """One log row (``LOG_COLUMNS``) of ``atoms`` (calculator attached) with its per-atom force uncertainty."""
    potential, kinetic = float(atoms.get_potential_energy()), float(atoms.get_kinetic_energy())
    periodic = bool(atoms.pbc.all())
    pressure = -float(np.mean(atoms.get_stress(include_ideal_gas=True)[:3])) / units.GPa if periodic else np.nan
    return {
        "step": step, "time_fs": time_fs, "potential_energy_eV": potential, "kinetic_energy_eV": kinetic,
        "total_energy_eV": potential + kinetic, "temperature_K": float(atoms.get_temperature()),
        "pressure_GPa": pressure, "volume_A3": float(atoms.get_volume()) if periodic else np.nan,
        "max_force_uncertainty_eV_per_A": float(sigma.max()) if sigma is not None else np.nan,
        "mean_force_uncertainty_eV_per_A": float(sigma.mean()) if sigma is not None else np.nan,
        "event": "",
    }


def append_frame(path: Path, atoms: Atoms, sigma: np.ndarray | None, **info) -> None:
    """One trajectory frame with the model's energy and forces, per-atom uncertainty in
    ``arrays`` (extended XYZ) or ``info`` (ASE .traj, which keeps no custom arrays)."""
    frame = labelled_copy(atoms, **info)
    frame.set_momenta(atoms.get_momenta(), apply_constraint=False)
    if sigma is not None:
        target = frame.info if path.suffix == ".traj" else frame.arrays
        target[K.FORCES_UNCERTAINTY] = sigma
    ase.io.write(path, frame, append=True)


def start_file(path: Path) -> None:
    """Make the folder of an output file and remove an earlier file of that name (runs start anew)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


class RowLog:
    """The CSV log of an MD run with ``columns``: started anew, flushed at every row; keeps nothing without a path."""

    def __init__(self, path: Path | None, columns: Sequence[str]) -> None:
        self.handle, self.writer = None, None
        if path is not None:
            start_file(path)
            self.handle = open(path, "w", newline="")
            self.writer = csv.DictWriter(self.handle, fieldnames=list(columns))
            self.writer.writeheader()

    def write(self, row: dict[str, float | str]) -> None:
        if self.writer is not None:
            self.writer.writerow(row)
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _pairs(atoms: Atoms, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) of ``atoms`` closer than ``factor`` times the sum of their covalent radii
    (ASE's; periodic images included): i, j, their distance (Å) and that as a fraction of the sum."""
    radii = covalent_radii[atoms.numbers]
    edges, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, factor * 2 * radii.max())
    (first, second), distance = edges, edge_lengths(atoms.positions, atoms.cell.array, edges, shifts)
    ratio = distance / (radii[first] + radii[second])
    close = ratio < factor
    return first[close], second[close], distance[close], ratio[close]


def _pieces(count: int, first: np.ndarray, second: np.ndarray) -> int:
    """Connected pieces of ``count`` atoms bonded by the pairs (``first``, ``second``)."""
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(count, count))
    return int(connected_components(graph, directed=False)[0])


@dataclass(frozen=True)
class MoleculeWatch:
    """The unphysical events an MD run ends at: the starting molecule comes apart (with atoms
    bonded within ``fragment_factor`` times the sum of their covalent radii it has more pieces
    than at the start: a proton or an atom moving from one neighbour to another is not an event,
    so reactions that keep the molecule whole go on) or two atoms come closer than
    ``clash_factor`` times that sum. Fragments are watched in molecules only: in a periodic cell
    neighbours part by diffusion. One neighbour search per check."""

    fragment_factor: float | None
    clash_factor: float | None
    pieces: int | None = None

    @classmethod
    def of(cls, atoms: Atoms, fragment_factor: float | None, clash_factor: float | None) -> MoleculeWatch:
        """The watch of a run starting from ``atoms``."""
        if fragment_factor is None or atoms.pbc.any():
            return cls(None, clash_factor)
        first, second, _, _ = _pairs(atoms, fragment_factor)
        return cls(fragment_factor, clash_factor, _pieces(len(atoms), first, second))

    def event(self, atoms: Atoms) -> str | None:
        """What is unphysical in ``atoms``, described; None when nothing is."""
        reach = max(f for f in (self.fragment_factor, self.clash_factor, 0.0) if f is not None)
        if reach == 0:
            return None
        first, second, distance, ratio = _pairs(atoms, reach)
        if self.clash_factor is not None and len(ratio) and ratio.min() < self.clash_factor:
            k = int(np.argmin(ratio))
            i, j = sorted((int(first[k]), int(second[k])))
            return (f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) at {distance[k]:.2f} Å, "
                    f"{ratio[k]:.2f}x their covalent bond length (limit {self.clash_factor}x)")
        if self.fragment_factor is not None:
            pieces = _pieces(len(atoms), first, second)
            if pieces > self.pieces:
                return (f"the molecule came apart into {pieces} pieces ({self.pieces} at the start; atoms bonded within "
                        f"{self.fragment_factor}x their covalent bond length)")
        return None


def flag(result: WatchedMD, atoms: Atoms, sigma: np.ndarray, structure_uncertainty: float, step: int,
         settings: MDSettings, threshold: float, max_flagged: int | None, safe: tuple, **info) -> tuple[str, str]:
    """Keep a flagged frame (model energy and forces, per-atom ``sigma`` in eV/Å) in ``result`` and
    decide what follows by ``settings.on_flag`` and ``max_flagged``: ("stop" | "continue" |
    "rewind", the log event); ``safe`` is the last safe frame (positions, cell, time_fs, step)."""
    frame = labelled_copy(atoms, step=step, md_temperature_K=settings.temperature_K, **info)
    frame.arrays[K.FORCES_UNCERTAINTY] = sigma
    frame.info[K.STRUCTURE_UNCERTAINTY] = structure_uncertainty
    result.flagged.append(frame)
    if settings.on_flag == "stop" or (max_flagged is not None and len(result.flagged) >= max_flagged):
        result.stopped_at = step
        return "stop", f"flagged: stop (max uncertainty {sigma.max():.4g} > {threshold:.4g} eV/Å)"
    if settings.on_flag == "continue":
        return "continue", f"flagged: continue (max uncertainty {sigma.max():.4g} eV/Å)"
    return "rewind", f"flagged: rewind to step {safe[3]} (time {safe[2]:g} fs), new velocities"


def run_watched_md(
    atoms: Atoms,
    calculator: IncertaCalculator,
    settings: MDSettings,
    threshold: float | None = None,
    log: Path | None = None,
    trajectory: Path | None = None,
    max_flagged: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> WatchedMD:
    """Run ``settings.steps`` integrator steps; every ``check_every`` steps log the state and
    compare the largest atomic force uncertainty (eV/Å) with ``threshold``.

    Above it the frame is flagged and ``settings.on_flag`` decides: ``stop`` ends the run,
    ``continue`` goes on, ``rewind`` returns to the last checked frame below the threshold
    (positions and cell) with fresh velocities, so exploration continues near the edge; each
    event is a row's ``event``. ``max_flagged`` stops any run after that many flags. The log
    (CSV, flushed at every row) and the trajectory (every ``write_every`` steps, format from the
    suffix: .xyz / .extxyz or .traj) are written as the run goes; both files are started anew.
    Uncertainties are computed only at checks and written frames. A structure the calculator
    refuses (overlapping atoms), or at a check an unphysical event (:class:`MoleculeWatch` with
    ``settings.fragment_factor`` and ``settings.clash_factor``), ends the run with a logged
    ``stopped`` event and ``error``; everything before it is kept.
    """
    watched = calculator.has_uncertainty
    if threshold is not None and not watched:
        raise ConfigError("a threshold needs a model with an uncertainty attached; run `incerta uq fit` first")
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    dynamics = make_dynamics(atoms, settings, rng)
    if trajectory is not None:
        start_file(trajectory)
    rows = RowLog(log, LOG_COLUMNS)
    result = WatchedMD()

    def record(row: dict[str, float | str]) -> None:
        result.log.append(row)
        rows.write(row)

    time_fs, step = 0.0, 0
    safe = (atoms.positions.copy(), atoms.cell.array.copy(), time_fs, step)
    watch = MoleculeWatch.of(atoms, settings.fragment_factor, settings.clash_factor)
    bar = tqdm(total=settings.steps, desc=f"MD {settings.ensemble} {settings.temperature_K:.0f} K", unit="step",
               disable=not progress, mininterval=1.0)
    try:
        while step < settings.steps:
            chunk = min(settings.check_every - step % settings.check_every,
                        settings.write_every - step % settings.write_every, settings.steps - step)
            try:
                dynamics.run(chunk)
            except DataError as err:  # e.g. atoms driven onto each other: the model cannot go on
                result.error = f"between steps {step} and {step + chunk}: {err}"
                record({**dict.fromkeys(LOG_COLUMNS, np.nan), "step": step + chunk, "event": f"stopped: {result.error}"})
                break
            step += chunk
            time_fs += chunk * settings.timestep_fs
            bar.update(chunk)
            checking = step % settings.check_every == 0 or step == settings.steps
            writing = trajectory is not None and step % settings.write_every == 0
            sigma = (np.asarray(calculator.get_property(K.FORCES_UNCERTAINTY, atoms))
                     if watched and (checking or writing) else None)
            if writing:
                append_frame(trajectory, atoms, sigma, step=step, time_fs=time_fs)
            if not checking:
                continue
            unphysical = watch.event(atoms)
            if unphysical is not None:  # nothing after this is a state worth keeping
                result.error = f"at step {step}: {unphysical}"
                record({**dict.fromkeys(LOG_COLUMNS, np.nan), "step": step, "event": f"stopped: {result.error}"})
                break
            row = state_row(atoms, step, time_fs, sigma)
            action = None
            if threshold is not None and sigma is not None and float(sigma.max()) > threshold:
                structure_sigma = float(calculator.get_property(K.STRUCTURE_UNCERTAINTY, atoms))
                action, row["event"] = flag(result, atoms, sigma, structure_sigma, step, settings, threshold,
                                            max_flagged, safe)
            record(row)
            if action == "stop":
                break
            if action == "rewind":
                atoms.set_cell(safe[1])
                atoms.positions = safe[0]
                time_fs = safe[2]
                dynamics = make_dynamics(atoms, settings, rng)
            elif action is None:
                safe = (atoms.positions.copy(), atoms.cell.array.copy(), time_fs, step)
    finally:
        bar.close()
        rows.close()
    result.steps_done = step
    return result
