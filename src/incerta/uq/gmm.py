"""Gaussian mixture on the frozen model's per-atom latent features (Zhu et al., JCP 158, 164111).

The per-atom score is the negative log-likelihood NLL(h_i) of the standardised invariant
features h_i under a mixture fitted (scikit-learn) to the training atoms, with the number
of components chosen by BIC. The mixture is evaluated in torch, so the score is
differentiable with respect to positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches
from incerta.models.potential import Potential
from incerta.uq.base import FitSettings, UncertainOutput, UncertaintyMethod, frozen


def latent_features(potential: Potential, graphs: Sequence[AtomicGraph], key: str = K.NODE_FEATURES) -> np.ndarray:
    """(atoms, C) features of every atom of ``graphs`` (no forces computed)."""
    chunks = []
    with torch.no_grad():
        for batch in batches(graphs, 32):
            chunks.append(potential(batch, compute_forces=False)[key].double().cpu().numpy())
    return np.concatenate(chunks)


class GMMUncertainty(UncertaintyMethod):
    """Per-atom NLL of latent features under a BIC-selected Gaussian mixture."""

    name = "gmm"
    score_kind = "log-density"
    scores_from_outputs = True

    def __init__(self, potential: Potential, n_components: int = 1, max_components: int = 12) -> None:
        super().__init__(frozen(potential))
        self.max_components = max_components
        register_mixture(self, potential.spec.num_channels, n_components)

    def options(self) -> dict:
        return {"n_components": int(self.log_weights.numel()), "max_components": self.max_components}

    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        return fit_mixture(self, latent_features(self.potential, train), self.max_components, settings.seed)

    def negative_log_likelihood(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) latent features -> (N,) NLL under the mixture."""
        return mixture_nll(features, self.center, self.scale, self.log_weights, self.means, self.precision_cholesky)

    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        return self.scores(graph, self.potential(graph, compute_forces=True, compute_stress=compute_stress,
                                                 create_graph=False))

    def output_scores(self, graph: AtomicGraph, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nll = self.negative_log_likelihood(outputs[K.NODE_FEATURES])
        return {K.ATOM_SCORE: nll, K.ENERGY_SCORE: segment_logsumexp(nll, graph.batch, graph.num_graphs)}


MIXTURE_BUFFERS = ("center", "scale", "log_weights", "means", "precision_cholesky")


def register_mixture(module: torch.nn.Module, dim: int, n_components: int) -> None:
    """Give ``module`` the float64 buffers of an ``n_components`` mixture on ``dim`` features:
    the standardisation (center, scale) and the mixture (log_weights, means, precision_cholesky)."""
    module.register_buffer("center", torch.zeros(dim, dtype=torch.float64))
    module.register_buffer("scale", torch.ones(dim, dtype=torch.float64))
    module.register_buffer("log_weights", torch.zeros(n_components, dtype=torch.float64))
    module.register_buffer("means", torch.zeros(n_components, dim, dtype=torch.float64))
    module.register_buffer("precision_cholesky", torch.eye(dim, dtype=torch.float64).repeat(n_components, 1, 1))


def fit_mixture(module: torch.nn.Module, features: np.ndarray, max_components: int, seed: int) -> dict:
    """Fit the mixture buffers of ``module`` (:func:`register_mixture`) to (atoms, C) features:
    full covariances, the number of components chosen by BIC (scikit-learn); returns the fit info."""
    from sklearn.mixture import GaussianMixture  # fitting only: inference does not load scikit-learn

    center, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    z = (features - center) / scale
    candidates = sorted({k for k in (1, 2, 3, 4, 6, 8, 10, 12, 16) if k <= max_components and k < len(z) // 10} | {1})
    fits = [GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed, n_init=1).fit(z)
            for k in candidates]
    bics = [m.bic(z) for m in fits]
    best = fits[int(np.argmin(bics))]
    fitted = (center, scale, np.log(best.weights_), best.means_, best.precisions_cholesky_)
    device = module.center.device
    for name, value in zip(MIXTURE_BUFFERS, fitted):
        setattr(module, name, torch.as_tensor(np.asarray(value), dtype=torch.float64, device=device))
    return {"components": best.n_components, "bic": dict(zip(map(str, candidates), map(float, bics))), "atoms": len(z)}


def mixture_nll(features: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, log_weights: torch.Tensor,
                means: torch.Tensor, precision_cholesky: torch.Tensor) -> torch.Tensor:
    """(N, C) features -> (N,) NLL under a full-covariance mixture of M components fitted to the
    standardised features (features - center) / scale: log_weights (M,), means (M, C) and the
    Cholesky factors of the precisions (M, C, C), all float64 (TorchScript-compatible)."""
    z = (features.double() - center) / scale
    projected = torch.einsum("nmc,mcd->nmd", z.unsqueeze(1) - means, precision_cholesky)
    log_det = torch.log(torch.diagonal(precision_cholesky, dim1=1, dim2=2)).sum(-1)
    log_prob = -0.5 * projected.pow(2).sum(-1) + log_det - 0.5 * z.shape[-1] * math.log(2 * math.pi)
    return -torch.logsumexp(log_prob + log_weights, dim=1)


def segment_logsumexp(values: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """log sum_i exp(values_i) over the atoms of each of ``num_graphs`` structures: (N,) -> (B,)
    (TorchScript-compatible).

    With per-atom variances proportional to exp(NLL_i), this is the log of the energy
    variance of independent atoms; calibration then fits its scale and power.
    """
    peak = torch.full((num_graphs,), -torch.inf, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(0, batch, values.detach(), reduce="amax", include_self=True)
    total = torch.zeros_like(peak).index_add(0, batch, torch.exp(values - peak[batch]))
    return torch.log(total) + peak
