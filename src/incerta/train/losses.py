"""Training loss: weighted per-atom energy MSE + force MSE (+ stress MSE for cells)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph


@dataclass(frozen=True)
class LossWeights:
    energy: float = 0.01
    forces: float = 0.99
    stress: float = 0.0


def energy_forces_loss(
    outputs: dict[str, torch.Tensor], batch: AtomicGraph, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = w_E mean_b ((E_b - E*_b)/N_b)^2 + w_F mean_ia (F_ia - F*_ia)^2 [+ w_S mean (S - S*)^2].

    Units: eV^2 per atom^2, (eV/Å)^2, (eV/Å^3)^2. Returns (loss, components as floats).
    """
    per_atom = (outputs[K.ENERGY] - batch.energy) / batch.num_atoms.to(batch.energy.dtype)
    parts = {"energy": per_atom.pow(2).mean()}
    loss = weights.energy * parts["energy"]
    if weights.forces > 0:
        parts["forces"] = (outputs[K.FORCES] - batch.forces).pow(2).mean()
        loss = loss + weights.forces * parts["forces"]
    if weights.stress > 0 and batch.stress is not None and K.STRESS in outputs:
        parts["stress"] = (outputs[K.STRESS] - batch.stress).pow(2).mean()
        loss = loss + weights.stress * parts["stress"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}
