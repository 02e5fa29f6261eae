"""The Coulomb interaction of Gaussian charges in a periodic cell, applied without forming a matrix.

``PeriodicCoulomb(positions, cell, width)`` is the operator A (n x n, eV/e^2) with
E = 1/2 q^T A q for Gaussian charges of widths sigma_i (Å): the point-charge lattice sum by
torch-pme's particle-mesh Ewald (self-interaction removed, images included, a neutralising
background for a charged cell), plus the short-range difference between Gaussian and point
charges (erf vs 1/r) over the pairs and images within reach, plus each Gaussian's self-energy.
Applying it costs O(n log n) (mesh) + O(n) (pairs), so charge equilibration solves with it
iteratively instead of building and factorising a dense matrix.

Splitting parameters, measured on a 192-atom water box against an exact Ewald matrix: relative
error of A q 2.7e-7 (cutoff 6 Å and smearing 1.5 Å gave 2.8e-5); 47 ms per product for
1,536 atoms on one thread.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from incerta.data.neighbors import neighbor_list

COULOMB = 14.399645478425668  # eV Å / e^2
#: real-space cutoff (Å), Gaussian smearing (Å), mesh spacing (Å), B-spline interpolation nodes
PME_CUTOFF, PME_SMEARING, PME_MESH_SPACING, PME_NODES = 7.0, 1.4, 0.8, 6


def periodic_pairs(positions: torch.Tensor, cell: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Full list of (i, j) pairs (P, 2) within ``cutoff`` (Å), images included, with their
    differentiable distances (P,); the list is built on the CPU by vesin, on any device."""
    edges, shifts = neighbor_list(positions.detach().cpu().double().numpy(), cell.detach().cpu().double().numpy(),
                                  np.ones(3, dtype=bool), cutoff)
    index = torch.as_tensor(edges.T, device=positions.device)
    shift = torch.as_tensor(shifts, dtype=positions.dtype, device=positions.device) @ cell
    vectors = positions[index[:, 1]] - positions[index[:, 0]] + shift
    return index, torch.linalg.norm(vectors, dim=-1)


class PeriodicCoulomb:
    """A q for Gaussian charges of ``width`` (n,) Å at ``positions`` (n, 3) Å in ``cell`` (3, 3) Å;
    differentiable in positions, cell, widths and charges."""

    def __init__(self, positions: torch.Tensor, cell: torch.Tensor, width: torch.Tensor) -> None:
        import torchpme  # only for charge equilibration in cells: other models do not load it (nor metatensor)

        self.positions, self.cell = positions, cell
        self.index, self.distance = periodic_pairs(positions, cell, PME_CUTOFF)
        self.pme = torchpme.PMECalculator(
            torchpme.CoulombPotential(smearing=PME_SMEARING, prefactor=COULOMB),
            mesh_spacing=PME_MESH_SPACING, interpolation_nodes=PME_NODES, full_neighbor_list=True,
        ).to(device=positions.device, dtype=positions.dtype)
        reach = max(6.0 * math.sqrt(2.0) * float(width.detach().max()), 1e-3)  # erfc(6 / sqrt 2) = 2e-9
        if reach <= PME_CUTOFF:
            near = self.distance < reach
            short_index, short_distance = self.index[near], self.distance[near]
        else:
            short_index, short_distance = periodic_pairs(positions, cell, reach)
        gamma = torch.sqrt(width[short_index[:, 0]] ** 2 + width[short_index[:, 1]] ** 2)
        self.short_index = short_index
        self.short_values = -COULOMB * torch.erfc(short_distance / (math.sqrt(2.0) * gamma)) / short_distance
        self.self_energy = COULOMB / (width * math.sqrt(math.pi))  # (n,) eV/e^2, the diagonal's main part

    def __call__(self, charges: torch.Tensor) -> torch.Tensor:
        """(n,) charges in e -> (n,) potentials in eV/e."""
        point = 2.0 * self.pme(charges.unsqueeze(1), self.cell, self.positions, self.index, self.distance).squeeze(1)
        short = torch.zeros_like(charges).index_add(0, self.short_index[:, 0],
                                                    self.short_values * charges[self.short_index[:, 1]])
        return point + short + self.self_energy * charges
