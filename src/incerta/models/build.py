"""Build a fresh potential from a model config and the training data statistics."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from incerta.config import ModelConfig
from incerta.data.frame import Frame
from incerta.data.graph import AtomicGraph
from incerta.data.statistics import force_rms, reference_energies, species_of
from incerta.models.potential import Potential, PotentialSpec


def average_neighbors(graphs: Sequence[AtomicGraph]) -> float:
    """Mean number of neighbours per atom (at least 1)."""
    edges = sum(g.edge_index.shape[1] for g in graphs)
    atoms = sum(g.positions.shape[0] for g in graphs)
    return max(edges / max(atoms, 1), 1.0)


def build_potential(
    config: ModelConfig,
    frames: Sequence[Frame],
    graphs: Sequence[AtomicGraph],
    e0s=None,
    seed: int = 0,
    species: Sequence[int] | None = None,
) -> Potential:
    """A freshly initialised potential whose shift/scale/normalisation fit ``frames``.

    ``e0s``: isolated-atom energies (mapping or one-atom frames) or None to fit them;
    ``species``: elements the model must know (default: those in ``frames``).
    """
    species = sorted(set(species or []) | set(species_of(frames)))
    shift = reference_energies(frames, species, e0s)
    spec = PotentialSpec(
        species=species,
        cutoff=config.cutoff,
        l_max=config.l_max,
        num_channels=config.num_channels,
        num_layers=config.num_layers,
        num_radial_basis=config.num_radial_basis,
        cutoff_p=config.cutoff_p,
        radial_hidden=list(config.radial_hidden),
        readout_hidden=config.readout_hidden,
        avg_num_neighbors=average_neighbors(graphs),
        energy_shift=[float(x) for x in np.asarray(shift)],
        energy_scale=force_rms(frames),
    )
    torch.manual_seed(seed)
    return Potential(spec).to(getattr(torch, config.dtype))
