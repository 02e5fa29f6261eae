"""Per-atom input embeddings: chemical species -> invariant features."""

from __future__ import annotations

import torch
from torch import nn


class SpeciesEmbedding(nn.Module):
    """One-hot species (N, S) -> learned scalar features (N, C) by a bias-free linear map."""

    def __init__(self, num_species: int, num_channels: int) -> None:
        super().__init__()
        self.num_species = num_species
        self.linear = nn.Linear(num_species, num_channels, bias=False)
        nn.init.normal_(self.linear.weight, std=1.0)

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        return self.linear(one_hot)
