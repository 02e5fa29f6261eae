"""Training loss: weighted per-atom energy MSE + force MSE (+ stress MSE for cells)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, known_rows


@dataclass(frozen=True)
class LossWeights:
    energy: float = 0.01
    forces: float = 0.99
    stress: float = 0.0
    charges: float = 0.0
    dipole: float = 0.0


def energy_forces_loss(
    outputs: dict[str, torch.Tensor], batch: AtomicGraph, weights: LossWeights, totals: tuple[int, int] | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = w_E mean_b ((E_b - E*_b)/N_b)^2 + w_F mean_ia (F_ia - F*_ia)^2 [+ w_S mean (S - S*)^2
    + w_q mean_i (q_i - q*_i)^2 + w_mu mean (mu - mu*)^2] (terms with labels and weights only;
    stress, charges and dipoles averaged over the structures or atoms that have them).

    Units: eV^2 per atom^2, (eV/Å)^2, (eV/Å^3)^2, e^2, (e Å)^2. Returns (loss, components).
    ``totals`` = (structures, atoms) of the whole global batch when this batch is one rank's
    share: energy and force terms are then sums divided by the global counts, so the sum
    over ranks equals the loss of the global batch.
    """
    structures, atoms = totals or (batch.num_graphs, batch.positions.shape[0])
    per_atom = (outputs[K.ENERGY] - batch.energy) / batch.num_atoms.to(batch.energy.dtype)
    parts = {"energy": per_atom.pow(2).sum() / structures}
    loss = weights.energy * parts["energy"]
    if weights.forces > 0:
        parts["forces"] = (outputs[K.FORCES] - batch.forces).pow(2).sum() / (3 * atoms)
        loss = loss + weights.forces * parts["forces"]
    for name, key, weight, label in (("stress", K.STRESS, weights.stress, batch.stress),
                                     ("charges", K.ATOMIC_CHARGES, weights.charges, batch.atomic_charges),
                                     ("dipole", K.DIPOLE, weights.dipole, batch.dipole)):
        if weight > 0 and label is not None and key in outputs:
            parts[name] = masked_mse(outputs[key], label)
            loss = loss + weight * parts[name]
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def masked_mse(prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the rows (structures or atoms) whose label is known (not NaN;
    a batch holds the label only when one of its structures has it)."""
    known = known_rows(label)
    return (prediction[known] - label[known]).pow(2).mean()
