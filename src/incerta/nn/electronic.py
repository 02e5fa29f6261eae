"""Electronic embedding: total charge Q and spin (unpaired electrons S) shape every atom's features.

SpookyNet-style (Unke et al. 2021): for a structure-level quantity psi (Q or S), each
atom i gets

    a_i = psi * softplus(q_i . k / sqrt(F)) / sum_j softplus(q_j . k / sqrt(F)),   e_i = a_i v

with queries q_i from the atom's invariant features and learned key k and value v (one
pair per sign of psi). The weights a_i sum to psi over the structure, so a neutral
singlet leaves the features unchanged, and the attention decides where the extra charge
or spin sits. Invariant under rotations, translations and permutations.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.nn.block import Block, Data


def segment_sum(values: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Sum rows of ``values`` (N, ...) per structure -> (B, ...)."""
    shape = list(values.shape)
    shape[0] = num_graphs
    return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add(0, batch, values)


class StateEmbedding(nn.Module):
    """Embedding of one global quantity (charge or spin) into per-atom features (N, F)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.query = nn.Linear(num_features, num_features)
        self.keys = nn.Parameter(torch.randn(2, num_features) / math.sqrt(num_features))
        self.values = nn.Parameter(torch.randn(2, num_features) / math.sqrt(num_features))
        self.scale = 1.0 / math.sqrt(num_features)

    def forward(self, features: torch.Tensor, state: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """features (N, F), state (B,) -> (N, F)."""
        sign = (state < 0).long()[batch]  # 0: positive (or zero), 1: negative
        logits = (self.query(features) * self.keys[sign]).sum(-1) * self.scale
        weight = nn.functional.softplus(logits)
        share = weight / segment_sum(weight, batch, state.shape[0]).clamp_min(1e-12)[batch]
        return (state[batch] * share).unsqueeze(-1) * self.values[sign]


class ElectronicEmbedding(Block):
    """Adds charge and spin embeddings to the invariant atom features (N, F)."""

    reads = (K.NODE_FEATURES, K.TOTAL_CHARGE, K.SPIN, K.BATCH)
    writes = (K.NODE_FEATURES,)

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.charge = StateEmbedding(num_features)
        self.spin = StateEmbedding(num_features)
        self.irreps_in = self.irreps_out = {K.NODE_FEATURES: o3.Irreps(f"{num_features}x0e")}

    def forward(self, data: Data) -> Data:
        features, batch = data[K.NODE_FEATURES], data[K.BATCH]
        charge, spin = data[K.TOTAL_CHARGE].to(features.dtype), data[K.SPIN].to(features.dtype)
        return {K.NODE_FEATURES: features + self.charge(features, charge, batch) + self.spin(features, spin, batch)}
