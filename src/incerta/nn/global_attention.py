"""Learned non-local interactions: linear-scaling global attention over invariant atom features.

Within each structure, every atom attends to every other atom, whatever their distance:

    y_i = phi(q_i)^T S / (phi(q_i) . z),   S = sum_j phi(k_j) v_j^T,   z = sum_j phi(k_j)

with phi(x) = elu(x) + 1 (Katharopoulos et al. 2020), so the cost is O(N F^2) instead of
O(N^2 F). No empirical formula; invariant under rotations, translations and permutations
because it acts on invariant features. Added residually: x_i <- x_i + W_o y_i.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.nn.block import Block, Data
from incerta.nn.electronic import segment_sum


class GlobalAttention(Block):
    """Invariant features (N, F) of each structure attend to all its atoms; the cell (B, 3, 3)
    gives the number of structures."""

    reads = (K.NODE_FEATURES, K.BATCH, K.CELL)
    writes = (K.NODE_FEATURES,)

    def __init__(self, num_features: int, heads: int = 4) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = {K.NODE_FEATURES: o3.Irreps(f"{num_features}x0e")}
        if num_features % heads:
            raise ValueError(f"num_features ({num_features}) must be divisible by heads ({heads})")
        self.heads, self.head_dim = heads, num_features // heads
        self.query = nn.Linear(num_features, num_features)
        self.key = nn.Linear(num_features, num_features)
        self.value = nn.Linear(num_features, num_features)
        self.output = nn.Linear(num_features, num_features)
        nn.init.zeros_(self.output.weight)  # starts as the identity: a local model
        nn.init.zeros_(self.output.bias)

    def forward(self, data: Data) -> Data:
        features, batch, num_graphs = data[K.NODE_FEATURES], data[K.BATCH], data[K.CELL].shape[0]
        n = features.shape[0]
        shape = (n, self.heads, self.head_dim)
        q = nn.functional.elu(self.query(features).view(shape)) + 1
        k = nn.functional.elu(self.key(features).view(shape)) + 1
        v = self.value(features).view(shape)
        summary = segment_sum(torch.einsum("nhd,nhe->nhde", k, v), batch, num_graphs)  # (B, H, D, D)
        normaliser = segment_sum(k, batch, num_graphs)  # (B, H, D)
        numerator = torch.einsum("nhd,nhde->nhe", q, summary[batch])
        denominator = torch.einsum("nhd,nhd->nh", q, normaliser[batch]).clamp_min(1e-9).unsqueeze(-1)
        return {K.NODE_FEATURES: features + self.output((numerator / denominator).reshape(n, -1))}
