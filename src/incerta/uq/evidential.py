"""Localised deep evidential regression on forces (LEDL; report section 3.2.3 and annex 5.2.2).

Per atom, a head on the latent features outputs Normal-Inverse-Gamma parameters
(v, alpha, beta) for the force vector F_i ~ N(mu_i, sigma^2), mu_i ~ N(-dE/dr_i, sigma^2/v),
sigma^2 ~ InvGamma(alpha, beta). Training loss per atom (vector, 3-D) with
dF_i = |F_pred_i - F_i|^2 and omega = 2 beta (1 + v):

    L_i = 3/2 log(1/v) - alpha log(omega) + (alpha + 3/2) log(v dF_i + omega)
          + log Gamma(alpha) - log Gamma(alpha + 3/2) + lambda dF_i (2 v + alpha)

plus the per-atom energy MSE (divided by the current force MSE, so that it keeps its weight
against the NLL, which scales force errors by 1/sigma^2), and optionally the uncertainty-regularised term of Ye et al.
(2024) that keeps gradients alive where alpha -> 1. The score is the epistemic spread
sqrt(3 beta / (v (alpha - 1))) (eV/Å), and the energy score sqrt(sum_i beta/(v(alpha-1))).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.models.potential import Potential
from incerta.uq.base import FitSettings, UncertainOutput, UncertaintyMethod
from incerta.uq.finetune import train_module


class EvidentialHead(nn.Module):
    """Latent features (N, C) -> (v, alpha, beta), each (N,), positive (alpha > 1)."""

    def __init__(self, num_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.SiLU(), nn.Linear(hidden, 3))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.net(features)
        softplus = nn.functional.softplus
        return softplus(raw[:, 0]) + 1e-6, softplus(raw[:, 1]) + 1.0 + 1e-6, softplus(raw[:, 2]) + 1e-6


def evidential_nll(sq_error: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-atom 3-D Normal-Inverse-Gamma negative log-likelihood (N,)."""
    omega = 2 * beta * (1 + v)
    return (
        1.5 * torch.log(1 / v) - alpha * torch.log(omega) + (alpha + 1.5) * torch.log(v * sq_error + omega)
        + torch.lgamma(alpha) - torch.lgamma(alpha + 1.5)
    )


class EvidentialUncertainty(UncertaintyMethod):
    """Fine-tunes the potential jointly with the evidential head."""

    name = "ledl"
    modifies_potential = True

    def __init__(self, potential: Potential, regularizer: float = 0.01, uncertainty_regularizer: float = 0.0,
                 energy_weight: float = 0.1, hidden: int = 32) -> None:
        super().__init__(potential)
        self.head = EvidentialHead(potential.spec.num_channels, hidden).to(next(potential.parameters()).dtype)
        self.regularizer, self.uncertainty_regularizer = regularizer, uncertainty_regularizer
        self.energy_weight, self.hidden = energy_weight, hidden

    def options(self) -> dict:
        return {"regularizer": self.regularizer, "uncertainty_regularizer": self.uncertainty_regularizer,
                "energy_weight": self.energy_weight, "hidden": self.hidden}

    def _outputs(self, graph: AtomicGraph, compute_stress: bool = False):
        out = self.potential(graph, compute_forces=True, compute_stress=compute_stress, create_graph=self.training)
        return out, self.head(out[K.NODE_FEATURES])

    def loss(self, batch: AtomicGraph) -> torch.Tensor:
        out, (v, alpha, beta) = self._outputs(batch)
        sq_error = (out[K.FORCES] - batch.forces).pow(2).sum(-1)
        per_atom = evidential_nll(sq_error, v, alpha, beta) + self.regularizer * sq_error * (2 * v + alpha)
        if self.uncertainty_regularizer > 0:
            per_atom = per_atom - self.uncertainty_regularizer * sq_error.sqrt() * torch.log(torch.expm1(alpha - 1).clamp_min(1e-8))
        energy_mse = ((out[K.ENERGY] - batch.energy) / batch.num_atoms).pow(2).mean()
        # the NLL weighs force errors by ~1/sigma^2; weigh the energy term the same way
        force_mse = (sq_error.mean() / 3).detach().clamp_min(1e-8)
        return per_atom.mean() + self.energy_weight * energy_mse / force_mse

    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        torch.manual_seed(settings.seed)
        return train_module(self, self.loss, train, validation, settings.epochs, settings.lr, settings.batch_size,
                            settings.seed, settings.progress, "evidential")

    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        out, (v, alpha, beta) = self._outputs(graph, compute_stress)
        variance = beta / (v * (alpha - 1))  # epistemic variance per force component
        energy_variance = torch.zeros(graph.num_graphs, dtype=variance.dtype, device=variance.device).index_add(0, graph.batch, variance)
        return UncertainOutput(out[K.ENERGY], out[K.FORCES], (3 * variance).sqrt(), energy_variance.sqrt(),
                               out.get(K.STRESS), out[K.ATOMIC_ENERGIES], out[K.NODE_FEATURES])
