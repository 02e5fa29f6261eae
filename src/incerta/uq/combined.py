"""An error estimate and a density score combined into one uncertainty.

Error-estimating methods (LLPR, LNK, shallow ensembles) rank errors well near the
training data but can stay over-confident away from it; the Gaussian-mixture density of
the latent features detects that a structure left the training distribution but does not
say how large the error is. This method adds them as variances:

    u_i^2 = s_i^2 + r^2 * softplus(NLL_i - NLL_q)

s_i: the error method's raw per-atom score; NLL_i: the mixture negative log-likelihood of
atom i's latent features (:mod:`incerta.uq.gmm`, fitted to the training atoms); NLL_q: its
``quantile`` over the training atoms, so atoms like the training ones get (almost) nothing
from the density and atoms beyond it get a variance growing with the excess NLL (about
half a squared Mahalanobis distance). The weight r is fitted, with an overall scale, by
maximising the Gaussian likelihood of the force errors of the validation frames (and of
``calibration_data`` frames, which is what makes r measurable: frames in distribution
carry little information on it); the usual calibration then maps u to eV/Å per element.
``error_model`` reuses the error method already fitted on another folder of the same base
model (e.g. ``lnk`` attached before) instead of fitting it again.
The latent features are those of the error method's own prediction, so the density costs
one mixture evaluation per atom. Energy score: the error method's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn

from incerta.config.schema import ConfigError
from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches
from incerta.models.compiled import weights_digest
from incerta.models.potential import Potential
from incerta.train.checkpoint import load_potential
from incerta.uq.base import FitSettings, UncertainOutput, UncertaintyMethod
from incerta.uq.gmm import fit_mixture, latent_features, mixture_nll, register_mixture
from incerta.uq.methods import METHODS
from incerta.utils.tensor_files import read_tensors

#: methods whose per-atom score is a standard deviation and whose output carries the latent features
#: (their classes come from the registry, which imports only the one asked for)
ERROR_METHODS = ("llpr", "lnk", "svgp", "shallow", "ledl")


def fit_density_weight(score: np.ndarray, excess: np.ndarray, squared_error: np.ndarray) -> tuple[float, float]:
    """(a, r) maximising the likelihood of 3-D force errors with |error|^2 = ``squared_error`` (N,)
    under sigma^2 = a^2 (score^2 + r^2 excess) (per component sigma^2 / 3)."""
    score2 = np.maximum(score, 1e-30) ** 2
    informative = excess > 1.0
    ratio = np.median(score2) / np.median(excess[informative]) if informative.any() else np.median(score2)
    start = np.array([0.5 * np.log(np.mean(squared_error) / np.mean(score2)), 0.5 * np.log(ratio)])

    def nll(params: np.ndarray) -> float:
        variance = np.exp(2 * params[0]) * (score2 + np.exp(2 * params[1]) * excess)
        return float(np.mean(1.5 * np.log(variance) + 1.5 * squared_error / variance))

    bounds = [(start[0] - 20, start[0] + 20), (start[1] - 12, start[1] + 6)]
    best = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(best.x[0])), float(np.exp(best.x[1]))


class CombinedUncertainty(UncertaintyMethod):
    """See the module docstring; ``error`` names the error method, ``error_options`` its options."""

    name = "combined"

    def __init__(self, potential: Potential, error: str = "lnk", error_options: dict | None = None,
                 quantile: float = 0.99, max_components: int = 12, n_components: int = 1,
                 error_model: str | None = None) -> None:
        if error not in ERROR_METHODS:
            raise ConfigError(f"combined: error method '{error}' is not one of {', '.join(ERROR_METHODS)}")
        nn.Module.__init__(self)  # the potential is the error method's: held once, as error.potential
        self.error = METHODS[error](potential, **(error_options or {}))
        self.error_name, self.error_model = error, error_model
        self.quantile, self.max_components = quantile, max_components
        register_mixture(self, potential.spec.num_channels, n_components)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("weight", torch.zeros((), dtype=torch.float64))

    @property
    def potential(self) -> Potential:
        return self.error.potential

    @property
    def modifies_potential(self) -> bool:
        return self.error.modifies_potential

    @property
    def predicts_with_potential(self) -> bool:
        return self.error.predicts_with_potential

    @property
    def compiles_predictions(self) -> bool:
        return self.error.compiles_predictions

    def options(self) -> dict:
        return {"error": self.error_name, "error_options": self.error.options(), "quantile": self.quantile,
                "max_components": self.max_components, "n_components": int(self.log_weights.numel()),
                "error_model": self.error_model}

    def negative_log_likelihood(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) latent features -> (N,) NLL under the training mixture."""
        return mixture_nll(features, self.center, self.scale, self.log_weights, self.means, self.precision_cholesky)

    def _excess(self, features: torch.Tensor) -> torch.Tensor:
        """softplus(NLL - NLL_q) (N,) of latent features (N, C)."""
        return nn.functional.softplus(self.negative_log_likelihood(features) - self.threshold)

    def _score(self, atom_score: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """u_i (N,) from the error method's score s_i (N,) and the atoms' latent features (N, C)."""
        return (atom_score.double().pow(2) + self.weight * self._excess(features)).sqrt().to(atom_score.dtype)

    def _reuse_error(self) -> dict:
        """Load the error method already fitted on ``error_model`` (a model folder with the same
        base potential and that method attached, fitted for it); returns its fit report."""
        from incerta.uq.store import read_uncertainty_metadata, uncertainty_file, uncertainty_is_current

        metadata = read_uncertainty_metadata(self.error_model)
        if metadata["method"] != self.error_name:
            raise ConfigError(f"combined: {self.error_model} has '{metadata['method']}' attached, not '{self.error_name}'")
        if not uncertainty_is_current(self.error_model):
            raise ConfigError(f"combined: the '{self.error_name}' of {self.error_model} was fitted for other weights "
                              "than its potential (trained again since?): fit it again there, or drop error_model")
        if weights_digest(load_potential(self.error_model)) != weights_digest(self.potential):
            raise ConfigError(f"combined: {self.error_model} holds another potential than the model being fitted; "
                              "error_model must be a folder of the same model")
        state = {**self.error.state_dict(), **read_tensors(uncertainty_file(self.error_model), "uncertainty")}
        self.error.load_state_dict(state)
        return {"reused": str(self.error_model), **json.loads(metadata["report"])}

    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        info = {"error": self._reuse_error() if self.error_model else self.error.fit(train, validation, settings)}
        self.error.eval()
        features = latent_features(self.potential, train)
        info["density"] = fit_mixture(self, features, self.max_components, settings.seed)
        training_nll = self.negative_log_likelihood(torch.as_tensor(features, device=self.center.device)).cpu().numpy()
        self.threshold = torch.tensor(float(np.quantile(training_nll, self.quantile)), dtype=torch.float64,
                                      device=self.center.device)
        scores, excesses, squared = [], [], []
        for batch in batches(validation, 16):
            raw = self.error(batch)
            excess = self._excess(raw.features)
            scores.append(raw.atom_score.detach().double().cpu().numpy())
            excesses.append(excess.detach().cpu().numpy())
            squared.append((raw.forces.detach() - batch.forces).pow(2).sum(1).double().cpu().numpy())
        score, excess = np.concatenate(scores), np.concatenate(excesses)
        scale, ratio = fit_density_weight(score, excess, np.concatenate(squared))
        self.weight = torch.tensor(ratio**2, dtype=torch.float64, device=self.center.device)
        info.update({"threshold_nll": float(self.threshold), "density_weight": ratio, "scale": scale,
                     "validation_atoms_beyond_threshold": float(np.mean(excess > 1.0))})
        return info

    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        raw = self.error(graph, compute_stress=compute_stress)
        return UncertainOutput(raw.energy, raw.forces, self._score(raw.atom_score, raw.features), raw.energy_score,
                               raw.stress, raw.energies, raw.features, raw.stress_score)

    def output_predictions(self, graph: AtomicGraph, compute_stress: bool, species: torch.Tensor) -> dict[str, torch.Tensor]:
        """The error method's compiled predictions (LNK's) with the combined per-atom score."""
        out = self.error.output_predictions(graph, compute_stress, species)
        return {**out, K.ATOM_SCORE: self._score(out[K.ATOM_SCORE], out[K.NODE_FEATURES])}

    def predict(self, graph: AtomicGraph, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        return self.error.predict(graph, compute_stress)
