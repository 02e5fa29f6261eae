"""Edge geometry: vectors and lengths of the neighbour pairs, and their spherical harmonics."""

from __future__ import annotations

import torch
from e3nn import o3

from incerta.data import keys as K
from incerta.nn.block import Block, Data


class EdgeVectors(Block):
    """r_ij = r_j - r_i + S_ij @ cell (E, 3) in Å, and |r_ij| (E,), for edges (receiver i, sender j)."""

    reads = (K.POSITIONS, K.CELL, K.BATCH, K.EDGE_INDEX, K.EDGE_SHIFTS)
    writes = (K.EDGE_VECTORS, K.EDGE_LENGTHS)

    def forward(self, data: Data) -> Data:
        positions = data[K.POSITIONS]
        receivers, senders = data[K.EDGE_INDEX][0], data[K.EDGE_INDEX][1]
        edge_cell = data[K.CELL][data[K.BATCH][receivers]]
        vectors = (
            positions.index_select(0, senders) - positions.index_select(0, receivers)
            + torch.einsum("ei,eij->ej", data[K.EDGE_SHIFTS], edge_cell)
        )
        return {K.EDGE_VECTORS: vectors, K.EDGE_LENGTHS: torch.linalg.norm(vectors, dim=-1)}


class EdgeHarmonics(Block):
    """Real spherical harmonics Y(r_ij / |r_ij|) up to ``l_max`` (E, (l_max+1)^2), component-normalised."""

    reads = (K.EDGE_VECTORS,)
    writes = (K.EDGE_SH,)

    def __init__(self, l_max: int) -> None:
        super().__init__()
        irreps = o3.Irreps.spherical_harmonics(l_max)
        self.harmonics = o3.SphericalHarmonics(irreps, normalize=True, normalization="component")
        self.irreps_out = {K.EDGE_SH: irreps}

    def forward(self, data: Data) -> Data:
        return {K.EDGE_SH: self.harmonics(data[K.EDGE_VECTORS])}
