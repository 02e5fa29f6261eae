"""Batched MD of many replicas at once through TorchSim, each watched by its own uncertainty.

:class:`TorchSimPotential` is an incerta potential as a TorchSim model: one batched neighbour
graph and one forward and backward for all replicas per step, instead of one ASE calculator
call per replica. :func:`run_replica_md` integrates the replicas together (NVE velocity Verlet
or Langevin NVT, TorchSim's integrators) and applies the ASE driver's policy to each replica on
its own: at every check the calibrated force uncertainty of each replica is compared with the
threshold, and a flagged replica stops (leaves the batch), continues, or rewinds to its last
safe frame with fresh velocities, while the others go on. Logs, trajectories and flagged frames
are those of :func:`~incerta.calculators.md.run_watched_md`, one per replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm.auto import tqdm

from incerta.calculators.ase import model_outputs
from incerta.calculators.md import (
    LOG_COLUMNS,
    MoleculeWatch,
    RowLog,
    WatchedMD,
    append_frame,
    flag,
    start_file,
    state_row,
)
from incerta.config.md import MDSettings
from incerta.config.schema import ConfigError
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import batched_graph
from incerta.data.md_sampling import initial_velocities
from incerta.data.validation import DataError, frame_problems
from incerta.models.potential import Potential
from incerta.models.predict import check_species, model_dtype
from incerta.uq.model import UncertainPotential

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as err:  # the `engines` extra
    raise ImportError("MD of several replicas at once runs through TorchSim: pip install 'incerta[engines]'") from err

#: the replica's index, then the ASE driver's columns
REPLICA_LOG_COLUMNS = ("replica", *LOG_COLUMNS)


class TorchSimPotential(ModelInterface):
    """An incerta potential (or one with an uncertainty attached) as a TorchSim model.

    ``forward(state)`` gives ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å and, with
    ``compute_stress``, ``stress`` (B, 3, 3) eV/Å^3 (ASE's sign); :meth:`evaluate` gives every
    output of the incerta model, uncertainties included when asked. ``charge`` and ``spin`` (B,)
    are the total charge (e) and unpaired electrons of each system, for models with an
    electronic embedding (default neutral singlets). After each call ``closest`` (B,) holds the
    shortest interatomic distance of each system in Å (inf without neighbours within the cutoff).
    With ``full_next`` set, the next ``forward`` (an integrator's) also computes the uncertainties
    and, for cells, the stress, and keeps every output in ``last_outputs``: a check costs one
    uncertainty pass instead of a pass on top of the step's.
    """

    def __init__(self, model: Potential | UncertainPotential, device: str | torch.device = "cpu",
                 compute_stress: bool = False, charge: torch.Tensor | None = None,
                 spin: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model.to(device).eval()
        self.potential: Potential = model.potential if isinstance(model, UncertainPotential) else model
        self._device, self._dtype = torch.device(device), model_dtype(self.potential)
        self._compute_stress, self._compute_forces = compute_stress, True
        self.charge, self.spin = charge, spin
        self.closest = torch.empty(0)
        self.full_next, self.last_outputs = False, {}

    @property
    def has_uncertainty(self) -> bool:
        return isinstance(self.model, UncertainPotential)

    def _electronic(self, values: torch.Tensor | None, systems: int) -> torch.Tensor:
        if values is None:
            return torch.zeros(systems, device=self._device, dtype=self._dtype)
        if values.shape != (systems,):
            raise ValueError(f"charge and spin need one value per system ({systems}), not shape {tuple(values.shape)}")
        return values.to(self._device, self._dtype)

    def evaluate(self, state: ts.SimState, uncertain: bool = False, stress: bool | None = None) -> dict[str, torch.Tensor]:
        """The incerta model's outputs (keys of :mod:`incerta.data.keys`, detached) for the systems
        of ``state``; the uncertainty pass only when ``uncertain``."""
        systems = state.cell.shape[0]
        pbc = torch.full((systems, 3), bool(state.pbc), device=self._device)
        graph = batched_graph(state.positions, state.atomic_numbers, state.row_vector_cell, pbc, state.system_idx,
                              self._electronic(self.charge, systems), self._electronic(self.spin, systems),
                              self.potential.spec.cutoff)
        receiver, sender = graph.edge_index
        vectors = (graph.positions[sender] - graph.positions[receiver]
                   + torch.einsum("ei,eij->ej", graph.edge_shifts, graph.cell[graph.batch[receiver]]))
        self.closest = torch.full((systems,), torch.inf, dtype=vectors.dtype, device=vectors.device).scatter_reduce(
            0, graph.batch[receiver], vectors.detach().norm(dim=1), reduce="amin")
        outputs = model_outputs(self.model, graph, self._compute_stress if stress is None else stress, uncertain)
        return {key: value.detach() for key, value in outputs.items()}

    def forward(self, state: ts.SimState, **_) -> dict[str, torch.Tensor]:
        if self.full_next:
            outputs = self.evaluate(state, uncertain=self.has_uncertainty, stress=self._compute_stress or bool(state.pbc))
            self.full_next, self.last_outputs = False, outputs
        else:
            outputs = self.evaluate(state)
        result = {"energy": outputs[K.ENERGY], "forces": outputs[K.FORCES]}
        if self._compute_stress:
            result["stress"] = outputs[K.STRESS]
        return result


def replica_path(path: Path, replica: int) -> Path:
    """``md.xyz`` -> ``md.replica3.xyz``: one trajectory file per replica."""
    return path.with_name(f"{path.stem}.replica{replica}{path.suffix}")


def _integrator(model: TorchSimPotential, settings: MDSettings):
    """TorchSim's init and update functions for ``settings`` (NVE or Langevin NVT)."""
    dt = torch.tensor(settings.timestep_fs * units.fs, device=model.device, dtype=model.dtype)
    kT = torch.tensor(units.kB * settings.temperature_K, device=model.device, dtype=model.dtype)
    if settings.ensemble == "nve":
        return ts.nve(model, dt=dt, kT=kT)
    if settings.ensemble == "nvt" and settings.thermostat == "langevin":
        gamma = torch.tensor(settings.friction_per_fs / units.fs, device=model.device, dtype=model.dtype)
        return ts.nvt_langevin(model, dt=dt, kT=kT, gamma=gamma)
    raise ConfigError(
        f"replicas run NVE or Langevin NVT through TorchSim; ensemble '{settings.ensemble}'"
        + (f" with thermostat '{settings.thermostat}'" if settings.ensemble == "nvt" else "")
        + " runs one structure at a time through ASE (replicas: 1)")


@dataclass
class _Replica:
    """What the driver tracks of one replica: its result, watch for unphysical events, time (fs)
    and last safe frame."""

    result: WatchedMD
    watch: MoleculeWatch
    time_fs: float = 0.0
    safe: tuple[np.ndarray, np.ndarray, float, int] | None = None
    trajectory: Path | None = None


def _snapshot(state: ts.SimState, outputs: dict[str, torch.Tensor], system: int, template: Atoms) -> Atoms:
    """System ``system`` of ``state`` as ASE atoms with its momenta and a single-point calculator
    holding the model's energy, forces (and stress)."""
    mask = state.system_idx == system
    as_np = lambda tensor: tensor.detach().cpu().double().numpy()
    atoms = template.copy()
    atoms.positions = as_np(state.positions[mask])
    atoms.set_cell(as_np(state.row_vector_cell[system]))
    atoms.set_momenta(as_np(state.momenta[mask]), apply_constraint=False)
    atoms.calc = SinglePointCalculator(atoms, energy=float(outputs[K.ENERGY][system]), forces=as_np(outputs[K.FORCES][mask]),
                                       stress=as_np(outputs[K.STRESS][system]) if K.STRESS in outputs else None)
    return atoms


def run_replica_md(
    starts: Sequence[Atoms],
    model: Potential | UncertainPotential,
    settings: MDSettings,
    threshold: float | Sequence[float] | None = None,
    log: Path | None = None,
    trajectory: Path | None = None,
    max_flagged: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    min_distance: float = 0.1,
    progress: bool = True,
) -> list[WatchedMD]:
    """Run ``settings.steps`` steps of every structure of ``starts`` together, one replica each,
    with the semantics of :func:`~incerta.calculators.md.run_watched_md` per replica.

    Replica k gets velocities from ``seed + k`` (as ASE's driver draws them); the Langevin noise
    comes from torch's generator seeded with ``seed``, without touching the caller's. Every
    ``check_every`` steps one batched uncertainty pass gives each replica's largest atomic force
    uncertainty (eV/Å); a replica above ``threshold`` (one value, or one per start) follows
    ``settings.on_flag`` on its own, and ``max_flagged`` counts per replica. A replica whose
    atoms come closer than ``min_distance`` Å (or whose energy is not finite), or with an
    unphysical event at a check (:class:`~incerta.calculators.md.MoleculeWatch` of
    ``settings.fragment_factor`` and ``settings.clash_factor``), stops with a logged
    ``stopped`` event and ``error``. The log (CSV,
    columns :data:`REPLICA_LOG_COLUMNS`) holds every replica's rows; the trajectory is one file
    per replica (:func:`replica_path`). Returns one result per start, in order.
    """
    if not starts:
        raise ConfigError("no starting structure for the replicas")
    boundaries = {tuple(atoms.pbc.tolist()) for atoms in starts}
    if len(boundaries) > 1 or boundaries - {(False,) * 3, (True,) * 3}:
        raise ConfigError("replicas are either all molecules (pbc False) or all periodic in every direction; "
                          f"got pbc {sorted(boundaries)}")
    frames = [Frame.from_atoms(atoms, source=f"replica {index}") for index, atoms in enumerate(starts)]
    engine = TorchSimPotential(model, device, compute_stress=False,
                               charge=torch.tensor([frame.charge for frame in frames], dtype=torch.float64),
                               spin=torch.tensor([frame.spin for frame in frames], dtype=torch.float64))
    check_species(engine.potential, frames)
    for frame in frames:
        problems = frame_problems(frame, min_distance=min_distance)
        if problems:
            raise DataError(f"{frame.source}: {'; '.join(problems)}")
    if threshold is not None and not engine.has_uncertainty:
        raise ConfigError("a threshold needs a model with an uncertainty attached; run `incerta uq fit` first")
    thresholds = None if threshold is None else np.broadcast_to(np.asarray(threshold, dtype=float), (len(starts),))
    init, update = _integrator(engine, settings)
    templates, momenta = [], []
    for index, atoms in enumerate(starts):
        template = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        template.info.update(atoms.info)
        initial_velocities(template, settings.temperature_K, np.random.default_rng(seed + index))
        momenta.append(template.get_momenta())
        templates.append(template)
    replicas = [_Replica(WatchedMD(), MoleculeWatch.of(atoms, settings.fragment_factor, settings.clash_factor),
                         trajectory=None if trajectory is None else replica_path(trajectory, k))
                for k, atoms in enumerate(starts)]
    for replica in replicas:
        if replica.trajectory is not None:
            start_file(replica.trajectory)
    rows = RowLog(log, REPLICA_LOG_COLUMNS)

    def record(replica: int, row: dict[str, float | str]) -> None:
        replicas[replica].result.log.append(row)
        rows.write({"replica": replica, **row})

    devices = [engine.device] if engine.device.type == "cuda" else []
    bar = tqdm(total=settings.steps, desc=f"MD {settings.ensemble} {settings.temperature_K:.0f} K, {len(starts)} replicas",
               unit="step", disable=not progress, mininterval=1.0)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            state = init(ts.io.atoms_to_state(list(starts), engine.device, engine.dtype))
            state.momenta = torch.as_tensor(np.concatenate(momenta), device=engine.device, dtype=engine.dtype)
            _drive(state, update, engine, settings, thresholds, max_flagged, min_distance, replicas, templates, record, bar,
                   seed)
    finally:
        bar.close()
        rows.close()
    return [replica.result for replica in replicas]


def _drive(state, update, engine: TorchSimPotential, settings: MDSettings, thresholds: np.ndarray | None,
           max_flagged: int | None, min_distance: float, replicas: list[_Replica], templates: list[Atoms],
           record, bar, seed: int) -> None:
    """The step loop of :func:`run_replica_md`; ``active`` maps the systems of ``state`` to replicas."""
    active = list(range(len(replicas)))
    for index in active:
        replicas[index].safe = (templates[index].positions.copy(), templates[index].cell.array.copy(), 0.0, 0)
    step, writes = 0, any(r.trajectory is not None for r in replicas)
    while step < settings.steps and active:
        checking = (step + 1) % settings.check_every == 0 or step + 1 == settings.steps
        writing = writes and (step + 1) % settings.write_every == 0
        engine.full_next = checking or writing
        state = update(state)
        step += 1
        bar.update(1)
        for replica in active:
            replicas[replica].time_fs += settings.timestep_fs
            replicas[replica].result.steps_done = step
        closest, energies = engine.closest.cpu(), state.energy.detach().cpu()
        broken = [system for system in range(len(active))
                  if not (float(closest[system]) >= min_distance and bool(torch.isfinite(energies[system])))]
        for system in broken:
            replica, distance = replicas[active[system]], float(closest[system])
            replica.result.error = f"between steps {step - 1} and {step}: " + (
                f"two atoms {distance:.3g} Å apart (overlapping: closer than {min_distance} Å)"
                if distance < min_distance else f"a non-finite energy ({float(energies[system])})")
            record(active[system], {**dict.fromkeys(LOG_COLUMNS, np.nan), "step": step,
                                    "event": f"stopped: {replica.result.error}"})
        leaving, rewinding = set(broken), []
        if checking or writing:
            outputs = engine.last_outputs
            sigmas = outputs.get(K.FORCES_UNCERTAINTY)
            for system, index in enumerate(active):
                if system in leaving:
                    continue
                replica, atoms = replicas[index], _snapshot(state, outputs, system, templates[index])
                sigma = sigmas[state.system_idx == system].cpu().double().numpy() if sigmas is not None else None
                if writing and replica.trajectory is not None:
                    append_frame(replica.trajectory, atoms, sigma, step=step, time_fs=replica.time_fs)
                if not checking:
                    continue
                threshold = None if thresholds is None else float(thresholds[index])
                action = _check(replica, atoms, sigma, outputs, system, step, settings, threshold, max_flagged, index)
                record(index, action[1])
                if action[0] == "stop":
                    leaving.add(system)
                elif action[0] == "rewind":
                    rewinding.append(system)
        for system in rewinding:
            _rewind(state, system, replicas[active[system]], templates[active[system]], settings,
                    np.random.default_rng([seed, active[system], step]))
        if leaving:
            keep = [system for system in range(len(active)) if system not in leaving]
            active = [active[system] for system in keep]
            if not active:
                break
            state = state[keep]
            engine.charge, engine.spin = engine.charge[keep], engine.spin[keep]
        if rewinding:  # the rewound positions need their forces; the others keep theirs
            fresh = engine(state)
            state.energy, state.forces = fresh["energy"], fresh["forces"]


def _check(replica: _Replica, atoms: Atoms, sigma: np.ndarray | None, outputs, system: int, step: int,
           settings: MDSettings, threshold: float | None, max_flagged: int | None, index: int):
    """One replica's log row at a check and what follows: ("continue" | "stop" | "rewind", row)."""
    unphysical = replica.watch.event(atoms)
    if unphysical is not None:  # nothing after this is a state worth keeping
        replica.result.error = f"at step {step}: {unphysical}"
        return "stop", {**dict.fromkeys(LOG_COLUMNS, np.nan), "step": step, "event": f"stopped: {replica.result.error}"}
    row = state_row(atoms, step, replica.time_fs, sigma)
    if not (threshold is not None and sigma is not None and float(sigma.max()) > threshold):
        replica.safe = (atoms.positions.copy(), atoms.cell.array.copy(), replica.time_fs, step)
        return "continue", row
    action, row["event"] = flag(replica.result, atoms, sigma, float(outputs[K.STRUCTURE_UNCERTAINTY][system]), step,
                                settings, threshold, max_flagged, replica.safe, replica=index)
    return action, row


def _rewind(state, system: int, replica: _Replica, template: Atoms, settings: MDSettings, rng: np.random.Generator) -> None:
    """Put system ``system`` of ``state`` back at the replica's safe frame with fresh velocities."""
    positions, cell, replica.time_fs, _ = replica.safe
    atoms = template.copy()
    atoms.positions, atoms.cell = positions, cell
    initial_velocities(atoms, settings.temperature_K, rng)
    mask = state.system_idx == system
    state.positions[mask] = torch.as_tensor(positions, device=state.device, dtype=state.dtype)
    state.momenta[mask] = torch.as_tensor(atoms.get_momenta(), device=state.device, dtype=state.dtype)
    state.cell[system] = torch.as_tensor(cell.T, device=state.device, dtype=state.dtype)
