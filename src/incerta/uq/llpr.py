"""Last-layer prediction rigidity (Bigi et al. 2024): post-hoc, no retraining.

The energy readout is linear in its last hidden layer phi_i (plus a bias): with
g_b = sum_i [phi_i, 1] the energy is E_b = s w^T g_b + shift. The Gauss-Newton curvature
of the training loss with respect to the last-layer weights w is

    C = sum_b w_E g_b g_b^T / N_b^2 + sum_{i,a} w_F / (3 N_b) J_ia J_ia^T,   J_ia = dg_b / dr_ia,

and the weights' posterior covariance is (C + s I)^-1. Propagated to predictions:
force variance of atom i = sum_a J_ia^T (C + s I)^-1 J_ia (the per-atom score, as RMS of
the force vector), energy variance = g_b^T (C + s I)^-1 g_b. The Jacobians take one
vector-Jacobian product per last-layer feature (see :func:`~incerta.models.derivatives.position_jacobian`). The regulariser
s is chosen on validation data (best rank correlation with force errors); calibration
fixes the overall scale.

With ``rank = k`` the force variance keeps k directions of the weights' posterior,
(C + s I)^-1 ~ P P^T with P = F Q_k (F F^T the phi block of (C + s I)^-1, Q_k orthonormal):
the last-layer weights perturbed along each column of P give k force perturbations
dF_k = -d(P_k^T sum_i phi_i)/dr, and the atom's variance is sum_k |dF_ik|^2: k
vector-Jacobian products instead of H, never above the exact variance and equal to it when
k = H (test), a deterministic version of propagating posterior samples of the weights like an
ensemble. Two choices of Q_k are candidates: the posterior's k widest directions
(F = U Lambda^(1/2), Q_k its first k axes) and the k that keep the most force variance over
the validation atoms (Q_k the leading eigenvectors of F^T A F, A = sum_ia J_ia J_ia^T there);
the fit keeps the one whose per-atom scores rank the validation atoms more like the exact
propagation (Spearman). Neither wins everywhere: k = 8 on acac test frames (300 / 600 K), a
fast-preset model ranked like the exact propagation at 0.89 / 0.93 with the variance directions
and 0.62 / 0.76 with the widest (``benchmarks/llpr_cheaper.py``), an accurate-preset model at
0.93 against 0.96 over both temperatures (``benchmarks/llpr_rank.py``).

With ``samples = M`` the columns of P are instead M draws of the last-layer weights from
the posterior, P = L Z / sqrt(M) (L L^T the phi block of (C + s I)^-1, Z standard normal,
drawn once at fit from the seed): the heads of an ensemble sampled from the LLPR
posterior, propagated like the shallow ensemble's heads in one batched backward; the
variance is then an unbiased Monte Carlo estimate of the exact one (its mean over draws
equals it, test) instead of a truncation that is never above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches
from incerta.models.derivatives import differentiable_inputs, stacked_derivatives
from incerta.models.potential import Potential
from incerta.uq.base import FitSettings, UncertainOutput, UncertaintyMethod, frozen
from incerta.uq.metrics import spearman


class LLPRUncertainty(UncertaintyMethod):
    """Last-layer covariance propagated to forces (per atom) and energies (per structure)."""

    name = "llpr"

    def __init__(self, potential: Potential, energy_weight: float = 0.01, forces_weight: float = 0.99,
                 rank: int | None = 8, samples: int | None = None) -> None:
        super().__init__(frozen(potential))
        size = potential.spec.readout_hidden + 1
        self.energy_weight, self.forces_weight = energy_weight, forces_weight
        self.rank = min(rank, size - 1) if rank is not None and samples is None else None
        self.samples = samples
        self.register_buffer("inverse", torch.eye(size, dtype=torch.float64))
        if self.columns is not None:
            self.register_buffer("projection", torch.zeros(size - 1, self.columns, dtype=torch.float64))

    @property
    def columns(self) -> int | None:
        """Columns of the projection P: the rank, the number of posterior samples, or None (exact)."""
        return self.samples if self.samples is not None else self.rank

    def options(self) -> dict:
        return {"energy_weight": self.energy_weight, "forces_weight": self.forces_weight, "rank": self.rank,
                "samples": self.samples}

    @classmethod
    def rebuild(cls, potential: Potential, options: dict) -> LLPRUncertainty:
        """Methods saved before ``rank`` existed used the exact propagation."""
        return cls(potential, **{"rank": None, **options})

    def _set_inverse(self, inverse: torch.Tensor, seed: int = 0) -> None:
        """Store (C + s I)^-1 and, with a rank or samples, the projection P (H, k) of its phi block
        (with a rank, the posterior's widest directions)."""
        self.inverse = inverse
        if self.samples is not None:
            draws = torch.randn(len(inverse) - 1, self.samples, dtype=inverse.dtype,
                                generator=torch.Generator().manual_seed(seed)).to(inverse.device)
            self.projection = self.posterior_factor() @ draws / self.samples**0.5
        elif self.rank is not None:
            self.projection = self.posterior_factor(self.rank)

    def choose_directions(self, jacobian: torch.Tensor, exact_scores: np.ndarray) -> dict:
        """With a rank, keep of the posterior's widest directions and :meth:`variance_factor`'s
        those whose per-atom scores rank the atoms of ``jacobian`` (N, 3, H) more like the exact
        propagation's ``exact_scores`` (N,) (Spearman). Returns the fit-report entries: the kept
        directions, their Spearman and each candidate's (a sampled projection is only scored)."""
        candidates = {"sampled" if self.samples is not None else "widest": self.projection}
        if self.rank is not None:
            candidates["validation variance"] = self.variance_factor(jacobian, self.rank)
        ranking = {name: spearman(self.projected_scores(jacobian, p).cpu().numpy(), exact_scores)
                   for name, p in candidates.items()}
        kept = max(ranking, key=ranking.get)
        self.projection = candidates[kept]
        return {"directions": kept, "validation_spearman_vs_exact": ranking[kept],
                "validation_spearman_vs_exact_by_directions": ranking}

    def posterior_factor(self, rank: int | None = None) -> torch.Tensor:
        """P (H, k) with P P^T the best rank-k approximation of the phi block of (C + s I)^-1
        (all H directions, so exact, for ``rank=None``)."""
        values, vectors = torch.linalg.eigh(self.inverse[:-1, :-1])  # ascending
        leading = slice(0 if rank is None else len(values) - rank, None)
        return vectors[:, leading] * values[leading].clamp_min(0).sqrt()

    def variance_factor(self, jacobian: torch.Tensor, rank: int) -> torch.Tensor:
        """P = F Q_k (H, k): F (H, H) the exact posterior factor, Q_k the k = ``rank`` leading
        eigenvectors of F^T A F with A = sum_ia J_ia J_ia^T over ``jacobian`` (N, 3, H), so that
        sum_ia |J_ia P|^2, the force variance P keeps over those atoms, is the largest of any k
        directions (P P^T <= F F^T)."""
        factor = self.posterior_factor()
        whitened = jacobian.reshape(-1, jacobian.shape[-1]) @ factor
        _, vectors = torch.linalg.eigh(whitened.T @ whitened)  # ascending
        return factor @ vectors[:, len(vectors) - rank:]

    def _features(self, graph: AtomicGraph, compute_stress: bool = False, exact: bool = True) -> LastLayerTerms:
        """:func:`last_layer_terms` with the Jacobian of the features (``exact``) or of their k
        projections (N, 3, k)."""
        return last_layer_terms(self.potential, graph, compute_stress, None if exact else self.projection)

    def _curvature(self, graphs: Sequence[AtomicGraph]) -> torch.Tensor:
        size = self.inverse.shape[0]
        curvature = torch.zeros(size, size, dtype=torch.float64, device=self.inverse.device)
        for batch in batches(graphs, 16):
            terms = self._features(batch)
            g, jacobian = terms.summed, terms.jacobian
            n_atoms = batch.num_atoms.double()
            per_atom = g / n_atoms.unsqueeze(1)
            curvature += self.energy_weight * per_atom.T @ per_atom
            weight = self.forces_weight / (3 * n_atoms[batch.batch])
            curvature[:-1, :-1] += torch.einsum("nah,nak,n->hk", jacobian, jacobian, weight)
        return curvature

    @staticmethod
    def projected_scores(jacobian: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """RMS force uncertainty per atom kept by the directions P (H, k): sqrt(sum_a |J_ia P|^2), (N,)."""
        return torch.einsum("nah,hk->nak", jacobian, projection).pow(2).sum((1, 2)).sqrt()

    @staticmethod
    def _atom_scores(jacobian: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """RMS force uncertainty per atom: sqrt(sum_a J_ia^T [C^-1]_phi J_ia), (N,)."""
        return torch.einsum("nah,hk,nak->n", jacobian, inverse[:-1, :-1], jacobian).clamp_min(0).sqrt()

    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        curvature = self._curvature(train)
        identity = torch.eye(curvature.shape[0], dtype=torch.float64, device=curvature.device)
        mean_diagonal = float(torch.diagonal(curvature).mean())
        features = []
        for batch in batches(validation, 16):
            terms = self._features(batch)
            features.append((terms.jacobian, torch.linalg.norm(terms.derivatives[K.FORCES].detach() - batch.forces, dim=1)))
        errors = np.concatenate([e.cpu().numpy() for _, e in features])
        choices = {}
        for relative in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
            inverse = torch.linalg.inv(curvature + relative * mean_diagonal * identity)
            scores = np.concatenate([self._atom_scores(j, inverse).cpu().numpy() for j, _ in features])
            choices[relative] = (spearman(scores, errors), inverse, scores)
        best = max(choices, key=lambda r: choices[r][0])
        _, inverse, exact_scores = choices[best]
        self._set_inverse(inverse, settings.seed)
        info = {"regulariser_relative": best, "validation_spearman": {str(k): v[0] for k, v in choices.items()},
                "rank": self.rank, "samples": self.samples}
        if self.columns is not None:  # how closely the k rows rank the validation atoms like all H
            info |= self.choose_directions(torch.cat([j for j, _ in features]), exact_scores)
        return info

    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        exact = self.columns is None
        out, g, jacobian, grads, _ = self._features(graph, compute_stress, exact)
        energy = torch.einsum("bh,hk,bk->b", g, self.inverse, g).clamp_min(0).sqrt()
        atom = self._atom_scores(jacobian, self.inverse) if exact else jacobian.pow(2).sum(dim=(1, 2)).sqrt()
        return UncertainOutput(out[K.ENERGY].detach(), grads[K.FORCES], atom, energy, grads.get(K.STRESS),
                               out[K.ATOMIC_ENERGIES].detach(), out[K.NODE_FEATURES])


class LastLayerTerms(NamedTuple):
    """What is linear in the readout's last layer phi_i (H features), for B structures of N atoms."""

    outputs: dict[str, torch.Tensor]  # the model's outputs
    summed: torch.Tensor  # g (B, H+1): per-structure sums of [phi_i, 1], float64 (the last column counts atoms)
    jacobian: torch.Tensor  # position Jacobian of sum_i phi_i (N, 3, H), float64 (or of its k projections)
    derivatives: dict[str, torch.Tensor]  # forces (N, 3) eV/Å, and stress (B, 3, 3) eV/Å^3 when asked
    stress_jacobian: torch.Tensor | None  # (1/V) d g[:, :H] / d strain (H, B, 3, 3) (or k), float64, with stress


def last_layer_terms(potential: Potential, graph: AtomicGraph, compute_stress: bool = False,
                     projection: torch.Tensor | None = None) -> LastLayerTerms:
    """:class:`LastLayerTerms` of ``graph`` (Jacobians of the projections of sum_i phi_i on the
    columns of ``projection`` (H, k) when given). The energy's derivatives ride in the same
    vector-Jacobian products as the Jacobians."""
    inputs = differentiable_inputs(graph, forces=True, stress=compute_stress)
    out = potential.evaluate(inputs.graph)
    phi = out[K.LAST_LAYER_FEATURES]
    summed = phi.sum(0) if projection is None else phi.sum(0) @ projection.to(phi.dtype)
    rows = stacked_derivatives(torch.cat([out[K.ENERGY].sum().unsqueeze(0), summed]), inputs,
                               batched=graph.num_graphs == 1)
    grads = {key: value[0] for key, value in rows.items()}
    stress_jacobian = rows[K.STRESS][1:].detach().double() if compute_stress else None
    augmented = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1)
    g = torch.zeros(graph.num_graphs, augmented.shape[1], dtype=phi.dtype, device=phi.device).index_add(0, graph.batch, augmented)
    jacobian = -rows[K.FORCES][1:].detach().double().permute(1, 2, 0)
    return LastLayerTerms(out, g.detach().double(), jacobian, grads, stress_jacobian)
