"""Radial part of the edge embedding: Bessel basis times a smooth polynomial cutoff."""

from __future__ import annotations

import math

import torch
from torch import nn

from incerta.data import keys as K
from incerta.nn.block import Block, Data


class PolynomialCutoff(nn.Module):
    """Smooth envelope f(r) that goes to 0 at ``r_max`` with ``p`` continuous derivatives.

    Klicpera et al. (DimeNet) form: f(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1)
    - p(p+1)/2 d^(p+2) with d = r / r_max, and f = 0 beyond the cutoff.
    """

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (E,) distances in Å -> (E,) envelope values in [0, 1]."""
        p = self.p
        d = r / self.r_max
        value = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * d.pow(p)
            + p * (p + 2.0) * d.pow(p + 1)
            - 0.5 * p * (p + 1.0) * d.pow(p + 2)
        )
        return value * (d < 1.0)


class BesselBasis(nn.Module):
    """sqrt(2/r_max) sin(n pi r / r_max) / r for n = 1..num_basis, frequencies trainable."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max)
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.r_max
        if trainable:
            self.frequencies = nn.Parameter(freqs)
        else:
            self.register_buffer("frequencies", freqs)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (E,) distances in Å -> (E, num_basis)."""
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r


class RadialEmbedding(Block):
    """Bessel basis multiplied by the polynomial cutoff: edge lengths (E,) -> (E, num_basis)."""

    reads = (K.EDGE_LENGTHS,)
    writes = (K.EDGE_RADIAL, K.EDGE_ENVELOPE)

    def __init__(self, r_max: float, num_basis: int = 8, cutoff_p: int = 6) -> None:
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis)
        self.cutoff = PolynomialCutoff(r_max, cutoff_p)
        self.num_basis = num_basis

    def forward(self, data: Data) -> Data:
        """basis * envelope (E, num_basis) and the envelope (E,)."""
        r = data[K.EDGE_LENGTHS]
        envelope = self.cutoff(r)
        return {K.EDGE_RADIAL: self.basis(r) * envelope.unsqueeze(-1), K.EDGE_ENVELOPE: envelope}
