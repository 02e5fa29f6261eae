"""Charge equilibration and electrostatics (4G-HDNNP, Ko et al. 2021).

Atomic charges minimise

    E_Qeq(q) = sum_i (chi_i q_i + 1/2 J_i q_i^2) + 1/2 q^T A q    subject to  sum_i q_i = Q,

with electronegativities chi_i predicted from each atom's features (eV/e), learned
per-species hardnesses J (eV/e^2) and Gaussian charge widths sigma (Å); A is the Coulomb
interaction of Gaussian charges, A_ij = k erf(r_ij / (sqrt 2 gamma_ij)) / r_ij with
gamma_ij = sqrt(sigma_i^2 + sigma_j^2) and A_ii = k / (sigma_i sqrt pi), k = 14.3996 eV Å/e^2.
The constrained minimum is one linear solve per structure (exact: the charges sum to Q to
machine precision), differentiable, so forces include the charge response. The
electrostatic energy is E_es = 1/2 q^T A q. Periodic cells use the Ewald sum
(:mod:`incerta.nn.ewald`) for the long-range part of A.
"""

from __future__ import annotations

import math

import torch
from ase.data import covalent_radii
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.nn.block import Block, Data
from incerta.nn.electronic import segment_sum
from incerta.nn.ewald import periodic_coulomb_matrix

COULOMB = 14.399645478425668  # eV Å / e^2 (Hartree * Bohr)


def gaussian_coulomb_matrix(positions: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(n, n) interaction of Gaussian charges in eV/e^2 for one molecule (no periodic images)."""
    n = positions.shape[0]
    eye = torch.eye(n, dtype=positions.dtype, device=positions.device)
    difference = positions.unsqueeze(1) - positions.unsqueeze(0)
    distance = torch.sqrt((difference**2).sum(-1) + eye)  # 1 on the diagonal avoids 0/0
    gamma = torch.sqrt(width.unsqueeze(1) ** 2 + width.unsqueeze(0) ** 2)
    off_diagonal = torch.erf(distance / (math.sqrt(2.0) * gamma)) / distance * (1 - eye)
    return COULOMB * (off_diagonal + torch.diag(1.0 / (width * math.sqrt(math.pi))))


class ChargeEquilibration(Block):
    """Features (N, F) -> atomic charges (N,) in e summing to Q, the dipole sum_i q_i r_i (B, 3)
    in e·Å, and per-atom electrostatic energies (N,) in eV (1/2 q_i (A q)_i, which sum to E_es)."""

    reads = (K.NODE_FEATURES, K.SPECIES, K.POSITIONS, K.CELL, K.PBC, K.BATCH, K.TOTAL_CHARGE)
    writes = (K.ATOMIC_CHARGES, K.DIPOLE, K.ELECTROSTATIC_ENERGIES)
    energy_key = K.ELECTROSTATIC_ENERGIES

    def __init__(self, num_features: int, species: list[int], hidden: int = 16) -> None:
        super().__init__()
        self.irreps_in = {K.NODE_FEATURES: o3.Irreps(f"{num_features}x0e")}
        self.electronegativity = nn.Sequential(nn.Linear(num_features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.raw_hardness = nn.Parameter(torch.full((len(species),), 2.0))
        self.raw_width = nn.Parameter(torch.log(torch.tensor([covalent_radii[z] for z in species])))

    def hardness(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_hardness)

    def width(self) -> torch.Tensor:
        return torch.exp(self.raw_width)

    def forward(self, data: Data) -> Data:
        chi = self.electronegativity(data[K.NODE_FEATURES]).squeeze(-1)
        species, batch, cell, total_charge = data[K.SPECIES], data[K.BATCH], data[K.CELL], data[K.TOTAL_CHARGE]
        hardness, width = self.hardness()[species], self.width()[species]
        charges = torch.zeros_like(chi)
        energies = torch.zeros_like(chi)
        for b in range(cell.shape[0]):
            index = torch.nonzero(batch == b).flatten()
            positions = data[K.POSITIONS][index]
            if bool(data[K.PBC][b].any()):
                matrix = periodic_coulomb_matrix(positions, cell[b], width[index])
            else:
                matrix = gaussian_coulomb_matrix(positions, width[index])
            n = index.numel()
            system = torch.zeros(n + 1, n + 1, dtype=chi.dtype, device=chi.device)
            system[:n, :n] = matrix + torch.diag(hardness[index])
            system[:n, n] = 1.0
            system[n, :n] = 1.0
            rhs = torch.cat([-chi[index], total_charge[b].to(chi.dtype).view(1)])
            solution = torch.linalg.solve(system, rhs)
            q = solution[:n]
            charges = charges.index_put((index,), q)
            energies = energies.index_put((index,), 0.5 * q * (matrix @ q))
        dipole = segment_sum(charges.unsqueeze(-1) * data[K.POSITIONS], batch, cell.shape[0])
        return {K.ATOMIC_CHARGES: charges, K.DIPOLE: dipole, K.ELECTROSTATIC_ENERGIES: energies}
