"""What a saved potential is rebuilt from: its architecture plus the data statistics."""

from __future__ import annotations

from pydantic import Field

from incerta.config.model import Architecture


class PotentialSpec(Architecture):
    """Everything needed to rebuild a potential before loading its weights: the architecture
    options of :class:`~incerta.config.model.Architecture` (same names, defaults and checks)
    and the statistics of its training data: species (atomic numbers), avg_num_neighbors,
    energy_shift (eV per species, same order as species), energy_scale (eV), and
    trained_on_periodic (whether any training atom saw a neighbour across a periodic
    boundary; None for models saved before it was recorded).

    >>> spec = PotentialSpec(species=[1, 8], num_channels=8, l_max=1)
    >>> spec.cutoff, spec.num_layers
    (5.0, 3)
    """

    species: list[int] = Field(..., min_length=1)
    avg_num_neighbors: float = Field(10.0, gt=0)
    energy_shift: list[float] = []
    energy_scale: float = 1.0
    trained_on_periodic: bool | None = None
