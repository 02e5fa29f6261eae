"""Uncertainty-biased MD: a calculator whose energy surface is tilted towards what the model has not seen.

After Zaverkin et al. 2024 ("uncertainty-biased molecular dynamics") and van der Oord et al.
2023 ("hyperactive learning"): exploration for active learning adds to the potential energy a
bias -k log(1 + softplus(S(r) - S0) / s), where S is the log-sum-exp over atoms of each
atom's negative log-likelihood under a Gaussian mixture of the training set's latent features
(the same score the uncertainty attack climbs), S0 its mean and s its spread over the training
structures. The logarithm limits the bias: S grows like a squared distance far from the
data, and with a bias linear in S the atoms of acetylacetone (AL's first model) flew
thousands of Å apart within tens of steps; with this one, about k per e-fold of
unfamiliarity, they stayed within a few Å at k = 0.2 eV, though a bond could still break
(the right k is for the active-learning benchmark to set). Its forces push atoms towards
unfamiliar environments, so MD reaches rare, high-error regions in fewer steps than unbiased
MD at the same temperature. The biased energies and forces drive the exploration only: the
frames it finds are labelled by the reference, never by this calculator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from incerta.calculators.ase import IncertaCalculator
from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.models.derivatives import derivatives, differentiable_inputs
from incerta.uq.gmm import GMMUncertainty

BIAS_ENERGY = "bias_energy"


def density_score(density: GMMUncertainty, features: torch.Tensor) -> torch.Tensor:
    """S (scalar): log-sum-exp over the atoms of one structure of the GMM negative log-likelihood
    of their latent features (N, C); the score the uncertainty attack climbs too."""
    return torch.logsumexp(density.negative_log_likelihood(features), dim=0)


def score_reference(density: GMMUncertainty, graphs: Sequence[AtomicGraph]) -> tuple[float, float]:
    """Mean and standard deviation of S over the (training) structures: S0 and s of the bias."""
    with torch.no_grad():
        scores = [float(density_score(density, density.potential.evaluate(g)[K.NODE_FEATURES])) for g in graphs]
    return float(np.mean(scores)), max(float(np.std(scores)), 1e-6)


def bias_energy(score: torch.Tensor, strength: float, reference: tuple[float, float]) -> torch.Tensor:
    """-k log(1 + softplus(S - S0) / s) in eV."""
    mean, spread = reference
    return -strength * torch.log1p(torch.nn.functional.softplus(score - mean) / spread)


class UncertaintyBiasedCalculator(IncertaCalculator):
    """:class:`IncertaCalculator` with the energy E + :func:`bias_energy` (eV) and its forces
    (eV/Å) and, for cells, stress (eV/Å^3, the bias's strain derivative included, so NPT stays
    consistent); ``strength`` k in eV, ``density`` a GMM fitted on the training structures'
    features, ``reference`` (S0, s) from :func:`score_reference` on them.

    ``bias_energy`` (eV) holds the bias; uncertainties and per-atom energies stay the model's.
    The bias is evaluated on the calculator's own graph: one more forward and backward per call.
    """

    implemented_properties = [*IncertaCalculator.implemented_properties, BIAS_ENERGY]  # noqa: RUF012

    def __init__(self, model, density: GMMUncertainty, strength: float, reference: tuple[float, float],
                 **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.density = density.to(self.device)
        self.strength, self.reference = strength, reference

    def predict(self, graph: AtomicGraph, stress: bool, uncertain: bool) -> dict[str, torch.Tensor]:
        outputs = dict(super().predict(graph, stress, uncertain))
        inputs = differentiable_inputs(graph, forces=True, stress=stress)
        features = self.density.potential.evaluate(inputs.graph)[K.NODE_FEATURES]
        bias = bias_energy(density_score(self.density, features), self.strength, self.reference)
        for key, value in derivatives(bias.unsqueeze(0), inputs, create_graph=False).items():
            outputs[key] = outputs[key] + value
        outputs[K.ENERGY] = outputs[K.ENERGY] + bias.detach()
        self._bias = float(bias.detach())
        return outputs

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.results[BIAS_ENERGY] = self._bias
