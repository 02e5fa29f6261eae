"""Charge equilibration and electrostatics (4G-HDNNP, Ko et al. 2021).

Atomic charges minimise

    E_Qeq(q) = sum_i (chi_i q_i + 1/2 J_i q_i^2) + 1/2 q^T A q    subject to  sum_i q_i = Q,

with electronegativities chi_i predicted from each atom's features (eV/e), learned
per-species hardnesses J (eV/e^2) and Gaussian charge widths sigma (Å); A is the Coulomb
interaction of Gaussian charges, A_ij = k erf(r_ij / (sqrt 2 gamma_ij)) / r_ij with
gamma_ij = sqrt(sigma_i^2 + sigma_j^2) and A_ii = k / (sigma_i sqrt pi), k = 14.3996 eV Å/e^2.
The electrostatic energy is E_es = 1/2 q^T A q. Both solves are differentiable, so forces
include the charge response:

* molecules: one batched dense solve of the bordered system [[A + J, 1], [1^T, 0]] for all
  molecules of a batch (exact: the charges sum to Q to machine precision);
* periodic cells: A is applied by particle-mesh Ewald (:mod:`incerta.nn.periodic_coulomb`)
  and the minimum found by preconditioned conjugate gradients on the charges that keep the
  total Q (:func:`incerta.nn.solvers.constrained_conjugate_gradient`), so the cost grows as
  n log n per iteration instead of n^3 (``benchmarks/materials.py`` measures it).
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
from incerta.nn.periodic_coulomb import PeriodicCoulomb
from incerta.nn.solvers import constrained_conjugate_gradient

COULOMB = 14.399645478425668  # eV Å / e^2 (Hartree * Bohr)


def gaussian_coulomb_matrix(positions: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(..., n, n) interaction of Gaussian charges in eV/e^2 for molecules (no periodic images);
    positions (..., n, 3) Å, widths (..., n) Å."""
    n = positions.shape[-2]
    eye = torch.eye(n, dtype=positions.dtype, device=positions.device)
    difference = positions.unsqueeze(-2) - positions.unsqueeze(-3)
    distance = torch.sqrt((difference**2).sum(-1) + eye)  # 1 on the diagonal avoids 0/0
    gamma = torch.sqrt(width.unsqueeze(-1) ** 2 + width.unsqueeze(-2) ** 2)
    off_diagonal = torch.erf(distance / (math.sqrt(2.0) * gamma)) / distance * (1 - eye)
    return COULOMB * (off_diagonal + torch.diag_embed(1.0 / (width * math.sqrt(math.pi))))


def equilibrate_molecules(positions: torch.Tensor, width: torch.Tensor, hardness: torch.Tensor, chi: torch.Tensor,
                          batch: torch.Tensor, total_charge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Charges (n,) e and electrostatic energies (n,) eV of the atoms of B molecules (``batch``
    (n,) their structure index, ``total_charge`` (B,) e) by one batched bordered solve; a
    structure without atoms here gets none."""
    num_graphs = total_charge.shape[0]
    counts = torch.bincount(batch, minlength=num_graphs)
    size = int(counts.max())
    slot = torch.arange(batch.numel(), device=batch.device) - (torch.cumsum(counts, 0) - counts)[batch]
    pad = lambda values, fill: values.new_full((num_graphs, size, *values.shape[1:]), fill).index_put((batch, slot), values)
    present = pad(torch.ones_like(chi), 0.0)  # (B, size) 1 for an atom, 0 for padding
    coulomb = gaussian_coulomb_matrix(pad(positions, 0.0), pad(width, 1.0))
    coulomb = coulomb * present.unsqueeze(-1) * present.unsqueeze(-2)
    system = chi.new_zeros(num_graphs, size + 1, size + 1)
    system[:, :size, :size] = coulomb + torch.diag_embed(pad(hardness, 1.0))  # padding: q = 0
    system[:, :size, size] = present
    system[:, size, :size] = present
    system[:, size, size] = (counts == 0).to(chi.dtype)  # no atoms: a trivial row
    rhs = torch.cat([pad(-chi, 0.0), (total_charge.to(chi.dtype) * (counts > 0)).unsqueeze(1)], dim=1)
    padded = torch.linalg.solve(system, rhs)[:, :size]
    potential = torch.einsum("bij,bj->bi", coulomb, padded)
    return padded[batch, slot], 0.5 * padded[batch, slot] * potential[batch, slot]


def equilibrate_cell(positions: torch.Tensor, cell: torch.Tensor, width: torch.Tensor, hardness: torch.Tensor,
                     chi: torch.Tensor, total_charge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Charges (n,) e and electrostatic energies (n,) eV of one periodic cell, by conjugate
    gradients with the particle-mesh Ewald operator."""
    coulomb = PeriodicCoulomb(positions, cell, width)
    charges = constrained_conjugate_gradient(lambda q: coulomb(q) + hardness * q, -chi, total_charge.to(chi.dtype),
                                             coulomb.self_energy + hardness)
    return charges, 0.5 * charges * coulomb(charges)


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
        positions, hardness, width = data[K.POSITIONS], self.hardness()[species], self.width()[species]
        periodic = data[K.PBC].any(dim=1)  # (B,)
        charges, energies = torch.zeros_like(chi), torch.zeros_like(chi)
        molecular = ~periodic[batch]
        if bool(molecular.any()):
            solved = equilibrate_molecules(positions[molecular], width[molecular], hardness[molecular], chi[molecular],
                                           batch[molecular], total_charge)
            charges, energies = (t.index_put((molecular,), s) for t, s in zip((charges, energies), solved))
        for graph in torch.nonzero(periodic).flatten().tolist():
            atoms = batch == graph
            solved = equilibrate_cell(positions[atoms], cell[graph], width[atoms], hardness[atoms], chi[atoms],
                                      total_charge[graph])
            charges, energies = (t.index_put((atoms,), s) for t, s in zip((charges, energies), solved))
        dipole = segment_sum(charges.unsqueeze(-1) * positions, batch, cell.shape[0])
        return {K.ATOMIC_CHARGES: charges, K.DIPOLE: dipole, K.ELECTROSTATIC_ENERGIES: energies}
