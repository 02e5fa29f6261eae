"""Build a fresh potential from a model config and the training data statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from incerta.config.model import ModelConfig
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import AtomicGraph, crosses_boundary
from incerta.data.statistics import force_rms, reference_energies, species_of
from incerta.data.store import GraphStore
from incerta.models.potential import Potential
from incerta.models.spec import PotentialSpec
from incerta.nn.dispersion import D3Dispersion

#: a structure's energy (eV) from the model's parameter-free terms
FixedEnergy = Callable[[AtomicGraph], float]


def fixed_energy(config: ModelConfig) -> FixedEnergy | None:
    """The energy of the parameter-free physical terms ``config`` adds to the network (D3
    dispersion), or None without any. The statistics subtract it from the reference energies,
    so the species shifts are the network's share, not the dispersion's counted twice (measured
    on the shared liquid water with RPBE D3: 37.6 meV/atom of validation energy error when it was
    counted twice)."""
    if not config.dispersion:
        return None
    block = D3Dispersion(config.dispersion, config.dispersion_three_body)

    def energy(graph: AtomicGraph) -> float:
        graph = graph.to(dtype=torch.float64)
        with torch.no_grad():
            inputs = {K.NUMBERS: graph.numbers, K.POSITIONS: graph.positions, K.PBC: graph.pbc, K.BATCH: graph.batch,
                      K.CELL: graph.cell}
            return float(block(inputs)[K.DISPERSION_ENERGIES].sum())

    return energy


@dataclass
class DataStatistics:
    """What the model's normalisation takes from the training data.

    species: atomic numbers; shift: per-species reference energy (eV); scale: energy scale
    (eV, RMS of force components times 1 Å); avg_num_neighbors: mean edges per atom;
    periodic: whether any training atom has a neighbour across a periodic boundary.
    """

    species: list[int]
    shift: list[float]
    scale: float
    avg_num_neighbors: float
    periodic: bool = False

    @classmethod
    def from_frames(cls, frames: Sequence[Frame], graphs: Sequence[AtomicGraph], e0s=None,
                    species: Sequence[int] = (), fixed: FixedEnergy | None = None) -> DataStatistics:
        """``e0s``: isolated-atom energies (mapping or one-atom frames) or None to fit them;
        ``fixed``: the model's parameter-free energy (:func:`fixed_energy`), taken out of the
        reference energies before the shifts are fitted."""
        all_species = sorted(set(species) | set(species_of(frames)))
        if fixed is not None:
            frames = [f if f.energy is None else replace(f, energy=f.energy - fixed(g)) for f, g in zip(frames, graphs)]
        shift = reference_energies(frames, all_species, e0s)
        edges = sum(g.edge_index.shape[1] for g in graphs)
        atoms = sum(g.positions.shape[0] for g in graphs)
        return cls(all_species, [float(x) for x in np.asarray(shift)], force_rms(frames), max(edges / max(atoms, 1), 1.0),
                   any(crosses_boundary(g) for g in graphs))


def build_potential(config: ModelConfig, statistics: DataStatistics, seed: int = 0) -> Potential:
    """A freshly initialised potential normalised by ``statistics``."""
    spec = PotentialSpec(
        **config.model_dump(exclude={"dtype"}),
        species=list(statistics.species),
        avg_num_neighbors=statistics.avg_num_neighbors,
        energy_shift=list(statistics.shift),
        energy_scale=statistics.scale,
        trained_on_periodic=statistics.periodic,
    )
    torch.manual_seed(seed)
    return Potential(spec).to(getattr(torch, config.dtype))


def statistics_from_store(store: GraphStore, indices: Sequence[int], e0s=None,
                          fixed: FixedEnergy | None = None) -> DataStatistics:
    """The same statistics as :meth:`DataStatistics.from_frames`, streamed from an on-disk store
    (one structure in memory at a time; the composition matrix is B x species)."""
    counts, energies, square_sum, components, species, periodic = [], [], 0.0, 0, set(), False
    for i in indices:
        graph = store[int(i)]
        periodic = periodic or crosses_boundary(graph)
        numbers, n = np.unique(graph.numbers.numpy(), return_counts=True)
        counts.append(dict(zip(numbers.tolist(), n.tolist())))
        species |= set(numbers.tolist())
        energies.append(float(graph.energy[0]) - (0.0 if fixed is None else fixed(graph)))
        square_sum += float(graph.forces.pow(2).sum())
        components += graph.forces.numel()
    ordered = sorted(species)
    frames = [Frame(numbers=np.repeat(list(c), list(c.values())), positions=np.zeros((sum(c.values()), 3)), energy=e)
              for c, e in zip(counts, energies)]
    shift = reference_energies(frames, ordered, e0s)
    edges = sum(int(store.edge_offsets[i + 1] - store.edge_offsets[i]) for i in indices)
    atoms = sum(store.atoms(int(i)) for i in indices)
    rms = float(np.sqrt(square_sum / max(components, 1)))
    return DataStatistics(ordered, [float(x) for x in np.asarray(shift)], rms if rms > 1e-8 else 1.0,
                          max(edges / max(atoms, 1), 1.0), periodic)
