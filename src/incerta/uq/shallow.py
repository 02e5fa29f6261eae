"""Shallow (last-layer) ensemble (Kellner & Ceriotti 2024), trained by its own likelihood.

M linear readout heads w_k, b_k share the backbone. Head k's energy is the model's energy
with the readout's last layer (w_0, b_0) replaced by the head's:

    E_k = E + s * sum_i [(w_k - w_0) . phi_i + (b_k - b_0)],   F_k = -dE_k/dr,

so every other energy term (electrostatics, dispersion) is kept. The heads start from the
trained readout plus noise and are fitted to the Gaussian negative log-likelihood of the
reference energies AND force components, each with the mean of the heads as its mean and
the heads' spread as its variance: the force term is what makes the force spread a
per-atom error estimate (an energy-only likelihood leaves it under-dispersed where errors
are small). Periodic structures with stress labels add the six Voigt stress components,
each weighted by ``stress_weight``: the heads' mean replaces the model's stress, and heads
fitted without it drift there. Measured on EMT copper (8-atom cells, 8 last-layer features):
head-mean stress error 0.031-0.039 eV/Å^3 against the model's 0.003 with weights 0 and 1 (the
spread grows to cover the error instead), 0.002-0.003 with weights 3 to 100 (stress Spearman
0.78-0.80 against -0.28); the default 10 leaves margin.

By default the backbone stays frozen, so phi_i and its position and strain Jacobians are
computed once and the fit is a small full-batch problem (L-BFGS); ``backbone=True``
fine-tunes the whole model on the same likelihood (differentiating through the heads'
forces, much slower).

Prediction: per-atom score = RMS spread of the head force vectors (eV/Å), energy score =
std of the head energies (eV), stress score = RMS spread of the heads' Voigt stresses
(eV/Å^3); the heads' forces (and stresses) of one structure come from one batched backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches, known_rows
from incerta.models.derivatives import differentiable_inputs, stacked_derivatives
from incerta.models.potential import Potential
from incerta.uq.base import FitSettings, UncertainOutput, UncertaintyMethod, frozen, member_stress
from incerta.uq.calibration import voigt_components
from incerta.uq.finetune import train_module
from incerta.uq.llpr import last_layer_terms

#: variance floors of the likelihood, eV^2, (eV/Å)^2 and (eV/Å^3)^2 per component (1 meV, 1 meV/Å and
#: 1e-4 eV/Å^3 = 16 MPa)
ENERGY_VARIANCE_FLOOR = 1e-6
FORCE_VARIANCE_FLOOR = 1e-6
STRESS_VARIANCE_FLOOR = 1e-8


def gaussian_nll(members: torch.Tensor, reference: torch.Tensor, floor: float) -> torch.Tensor:
    """Gaussian NLL, elementwise (...), of ``reference`` (...) under the mean and the variance
    (plus ``floor``) of the M members (M, ...)."""
    variance = members.var(0, unbiased=False) + floor
    return 0.5 * (torch.log(variance) + (reference - members.mean(0)).pow(2) / variance)


def ensemble_nll(energies: torch.Tensor, forces: torch.Tensor, energy_ref: torch.Tensor, forces_ref: torch.Tensor,
                 forces_weight: float = 1.0, stresses: torch.Tensor | None = None,
                 stress_ref: torch.Tensor | None = None, stress_weight: float = 1.0) -> torch.Tensor:
    """Gaussian NLL per structure of B reference energies (B,) eV and N x 3 force components
    (N, 3) eV/Å under an ensemble's mean and spread: head energies (B, M), head forces (M, N, 3);
    with head stresses (M, B, 3, 3) and reference stresses (B, 3, 3) eV/Å^3, also of the six
    Voigt components of every periodic structure whose stress is known (not NaN) (all terms in nats)."""
    total = gaussian_nll(energies.T, energy_ref, ENERGY_VARIANCE_FLOOR).sum()
    total = total + forces_weight * gaussian_nll(forces, forces_ref, FORCE_VARIANCE_FLOOR).sum()
    if stresses is not None and stress_ref is not None:
        known = known_rows(stress_ref)
        total = total + stress_weight * gaussian_nll(voigt_components(stresses[:, known]),
                                                     voigt_components(stress_ref[known]), STRESS_VARIANCE_FLOOR).sum()
    return total / energies.shape[0]


class _FrozenBatch(NamedTuple):
    """What the heads' likelihood needs of one batch, the backbone frozen (heads' dtype)."""

    energy: torch.Tensor  # (B,) eV, the model's
    forces: torch.Tensor  # (N, 3) eV/Å, the model's
    summed: torch.Tensor  # (B, H) per-structure sums of the last-layer features
    counts: torch.Tensor  # (B,) atoms
    jacobian: torch.Tensor  # (H, N, 3) position Jacobian of the summed features
    energy_ref: torch.Tensor  # (B,)
    forces_ref: torch.Tensor  # (N, 3)
    stress: torch.Tensor | None  # (B, 3, 3) eV/Å^3, the model's, when the batch has stress labels
    stress_jacobian: torch.Tensor | None  # (H, B, 3, 3) (1/V) d summed / d strain
    stress_ref: torch.Tensor | None  # (B, 3, 3), NaN where unknown


def periodic_stress_labels(batch: AtomicGraph) -> torch.Tensor | None:
    """The batch's stress labels (B, 3, 3) eV/Å^3, NaN for the structures that are not periodic;
    None when no periodic structure of the batch has one."""
    if batch.stress is None:
        return None
    labels = torch.where(batch.pbc.all(dim=1).view(-1, 1, 1), batch.stress, torch.nan)
    return labels if bool(known_rows(labels).any()) else None


class ShallowEnsemble(UncertaintyMethod):
    """See the module docstring."""

    name = "shallow"
    predicts_with_potential = False

    def __init__(self, potential: Potential, heads: int = 8, init_noise: float = 0.1, forces_weight: float = 1.0,
                 backbone: bool = False, stress_weight: float = 10.0) -> None:
        super().__init__(potential if backbone else frozen(potential))
        self.num_heads, self.init_noise, self.forces_weight, self.backbone = heads, init_noise, forces_weight, backbone
        self.stress_weight = stress_weight
        source = potential.readout.output
        self.heads = nn.Linear(source.in_features, heads).to(source.weight.dtype)
        self._initialise_heads(seed=0)

    def _initialise_heads(self, seed: int) -> None:
        """Heads = the readout's last layer plus noise of relative size ``init_noise``, drawn from
        ``seed`` (not the global generator, whose state depends on what ran before)."""
        source = self.potential.readout.output
        noise = torch.randn(self.heads.weight.shape, generator=torch.Generator().manual_seed(seed), dtype=source.weight.dtype)
        with torch.no_grad():
            spread = self.init_noise * (source.weight.abs().mean() + 1e-2)
            self.heads.weight.copy_(source.weight.expand(self.num_heads, -1) + spread * noise.to(source.weight.device))
            self.heads.bias.copy_(source.bias.expand(self.num_heads))

    @property
    def modifies_potential(self) -> bool:
        """The fine-tuned backbone is saved with the heads."""
        return self.backbone

    def options(self) -> dict:
        return {"heads": self.num_heads, "init_noise": self.init_noise, "forces_weight": self.forces_weight,
                "backbone": self.backbone, "stress_weight": self.stress_weight}

    @classmethod
    def rebuild(cls, potential: Potential, options: dict) -> ShallowEnsemble:
        """Heads saved before ``backbone`` existed were trained with the backbone (saved with them)."""
        return cls(potential, **{"backbone": True, **options})

    def _offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads minus the readout's last layer: weights (M, H) and biases (M,), times the energy scale."""
        source, scale = self.potential.readout.output, self.potential.scale_shift.scale
        return scale * (self.heads.weight - source.weight), scale * (self.heads.bias - source.bias)

    def _head_energies(self, out: dict[str, torch.Tensor], graph: AtomicGraph) -> torch.Tensor:
        """(B, M) energy of every head, eV, from the model's outputs on ``graph``."""
        weights, bias = self._offsets()
        atomic = out[K.LAST_LAYER_FEATURES] @ weights.T + bias
        shifts = torch.zeros(graph.num_graphs, self.num_heads, dtype=atomic.dtype, device=atomic.device)
        return out[K.ENERGY].unsqueeze(1) + shifts.index_add(0, graph.batch, atomic)

    def _stress_labels(self, batch: AtomicGraph) -> torch.Tensor | None:
        """:func:`periodic_stress_labels`, None when the likelihood has no stress term."""
        return periodic_stress_labels(batch) if self.stress_weight > 0 else None

    def _backbone_loss(self, batch: AtomicGraph) -> torch.Tensor:
        stress_ref = self._stress_labels(batch)
        inputs = differentiable_inputs(batch, forces=True, stress=stress_ref is not None)
        energies = self._head_energies(self.potential.evaluate(inputs.graph), inputs.graph)
        heads = stacked_derivatives(energies.sum(0), inputs, batched=False, create_graph=True)
        return ensemble_nll(energies, heads[K.FORCES], batch.energy, batch.forces, self.forces_weight,
                            heads.get(K.STRESS), stress_ref, self.stress_weight)

    def _frozen_terms(self, graphs: Sequence[AtomicGraph]) -> list[_FrozenBatch]:
        """Per batch of the frozen model (:func:`~incerta.uq.llpr.last_layer_terms`), with the
        strain derivatives of the summed features where the batch has stress labels."""
        terms = []
        dtype = self.heads.weight.dtype
        for batch in batches(graphs, 16):
            stress_ref = self._stress_labels(batch)
            t = last_layer_terms(self.potential, batch, compute_stress=stress_ref is not None)
            values = (t.outputs[K.ENERGY], t.derivatives[K.FORCES], t.summed[:, :-1], t.summed[:, -1],
                      t.jacobian.permute(2, 0, 1), batch.energy, batch.forces, t.derivatives.get(K.STRESS),
                      t.stress_jacobian, stress_ref)
            terms.append(_FrozenBatch(*(None if v is None else v.detach().to(dtype) for v in values)))
        return terms

    def _frozen_nll(self, terms: list[_FrozenBatch]) -> torch.Tensor:
        """Mean NLL per structure over the precomputed batches (linear in the heads)."""
        weights, bias = self._offsets()
        total = 0.0
        for t in terms:
            energies = t.energy.unsqueeze(1) + t.summed @ weights.T + t.counts.unsqueeze(1) * bias
            forces = t.forces - torch.einsum("hnc,mh->mnc", t.jacobian, weights)
            stresses = None
            if t.stress is not None:
                stresses = t.stress + torch.einsum("hbij,mh->mbij", t.stress_jacobian, weights)
            nll = ensemble_nll(energies, forces, t.energy_ref, t.forces_ref, self.forces_weight, stresses,
                               t.stress_ref, self.stress_weight)
            total = total + nll * len(t.energy)
        return total / sum(len(t.energy) for t in terms)

    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        self._initialise_heads(settings.seed)
        if self.backbone:
            return train_module(self, self._backbone_loss, train, validation, settings.epochs, settings.lr,
                                settings.batch_size, settings.seed, settings.progress, "shallow ensemble")
        terms, held_out = self._frozen_terms(train), self._frozen_terms(validation)
        optimizer = torch.optim.LBFGS(self.heads.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-9,
                                      tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = self._frozen_nll(terms)
            loss.backward()
            return loss

        start = float(self._frozen_nll(terms).detach())
        optimizer.step(closure)
        with torch.no_grad():
            return {"train_nll_start": start, "train_nll": float(self._frozen_nll(terms)),
                    "validation_nll": float(self._frozen_nll(held_out))}

    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        inputs = differentiable_inputs(graph, forces=True, stress=compute_stress)
        out = self.potential.evaluate(inputs.graph)
        energies = self._head_energies(out, inputs.graph)
        # one structure (MD) in one batched backward: 71 ms instead of 127 ms on acac with 8 heads
        heads = stacked_derivatives(energies.sum(0), inputs, batched=graph.num_graphs == 1)
        forces, stresses = heads[K.FORCES], heads.get(K.STRESS)  # (M, N, 3), (M, B, 3, 3)
        mean_forces = forces.mean(0)
        atom = (forces - mean_forces).pow(2).sum(-1).mean(0).sqrt()
        return UncertainOutput(energies.mean(1).detach(), mean_forces, atom, energies.std(1, unbiased=False).detach(),
                               features=out[K.NODE_FEATURES], **member_stress(stresses))
