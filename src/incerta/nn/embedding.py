"""Per-atom input embeddings: chemical species -> invariant features."""

from __future__ import annotations

from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.nn.block import Block, Data


class SpeciesEmbedding(Block):
    """One-hot species (N, S) -> learned scalar features (N, C) by a bias-free linear map."""

    reads = (K.SPECIES_ONE_HOT,)
    writes = (K.NODE_FEATURES,)

    def __init__(self, num_species: int, num_channels: int) -> None:
        super().__init__()
        self.num_species = num_species
        self.linear = nn.Linear(num_species, num_channels, bias=False)
        nn.init.normal_(self.linear.weight, std=1.0)
        self.irreps_out = {K.NODE_FEATURES: o3.Irreps(f"{num_channels}x0e")}

    def forward(self, data: Data) -> Data:
        return {K.NODE_FEATURES: self.linear(data[K.SPECIES_ONE_HOT])}
