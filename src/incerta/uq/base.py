"""The one small interface every uncertainty method implements.

A method owns whatever potential(s) it predicts with (the frozen base model, a
fine-tuned copy, or ensemble members) and answers every structure the same way:
energy, forces, a raw per-atom score and a raw per-structure energy score. Calibration
(:mod:`incerta.uq.calibration`) turns raw scores into eV/Å and eV; evaluation,
calculators and active learning only see :class:`~incerta.uq.model.UncertainPotential`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from incerta.config.uncertainty import CalibrationKind, FitSection
from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.models.potential import Potential
from incerta.uq.calibration import ScoreKind, voigt_components


@dataclass
class UncertainOutput:
    """Predictions of B structures with N atoms.

    energy (B,) eV; forces (N, 3) eV/Å; atom_score (N,) and energy_score (B,) raw
    scores (unit depends on the method, see ``score_kind``); stress (B, 3, 3) when asked;
    per-atom energies (N,) eV where the method defines them; the per-atom latent features
    (N, C) the prediction used, where the method has them (density scores reuse them); with
    stress, a method made of members (ensemble, shallow heads) also gives its own raw stress
    score (B,) eV/Å^3, the spread of the members' stresses (:func:`member_stress`).
    """

    energy: torch.Tensor
    forces: torch.Tensor
    atom_score: torch.Tensor
    energy_score: torch.Tensor
    stress: torch.Tensor | None = None
    energies: torch.Tensor | None = None
    features: torch.Tensor | None = None
    stress_score: torch.Tensor | None = None


def member_stress(stresses: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The :class:`UncertainOutput` fields of M members' stresses (M, B, 3, 3) eV/Å^3 (None: no
    stress asked, no fields): ``stress``, their mean (B, 3, 3), and ``stress_score`` (B,), the root
    of the mean over members of the squared distance of their six Voigt components from the mean."""
    if stresses is None:
        return {}
    mean = stresses.mean(0)
    spread = voigt_components(stresses - mean).pow(2).sum(-1).mean(0).sqrt()
    return {"stress": mean, "stress_score": spread}


class FitSettings(FitSection):
    """The configured fit budget (:class:`~incerta.config.uncertainty.FitSection`: epochs,
    learning rate, batch size, calibration) plus the seed, the progress bar and the device the
    fit runs on (cpu, cuda, cuda:N; the fitted method is saved device-free)."""

    seed: int = 0
    progress: bool = True
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")


class UncertaintyMethod(nn.Module, ABC):
    """fit / forward / options; weights are saved with ``state_dict`` by :mod:`incerta.uq.store`."""

    name: ClassVar[str]
    score_kind: ClassVar[ScoreKind] = "std"
    #: calibration map used unless the user picks one (None: chosen by ``score_kind``)
    default_calibration: ClassVar[CalibrationKind | None] = None
    #: False when the base potential is used frozen (its weights are not stored again).
    modifies_potential: ClassVar[bool] = False
    #: True when ``forward``'s energy and forces are those of ``self.potential`` (not a mean of members or heads)
    predicts_with_potential: ClassVar[bool] = True
    #: True when the raw scores follow from the potential's outputs alone (:meth:`scores`), so the
    #: outputs of a compiled potential serve the uncertainty pass too
    scores_from_outputs: ClassVar[bool] = False
    #: True when a method that predicts with more than its potential gives its predictions and raw
    #: scores in traceable operations (:meth:`output_predictions`), so ``incerta compile`` builds them
    compiles_predictions: ClassVar[bool] = False

    def __init__(self, potential: Potential) -> None:
        super().__init__()
        self.potential = potential

    @abstractmethod
    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        """Fit on training graphs (validation for early stopping / model choice); returns fit info."""

    @abstractmethod
    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        """Predictions and raw uncertainty scores for a batch."""

    def output_scores(self, graph: AtomicGraph, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The raw scores ``atom_score`` (N,) and ``energy_score`` (B,) from the potential's outputs
        for ``graph``, in traceable torch operations (``incerta compile`` builds them into the
        package); only for methods with ``scores_from_outputs``."""
        raise NotImplementedError(f"{self.name} computes its scores in its own pass")

    def output_predictions(self, graph: AtomicGraph, compute_stress: bool, species: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward``'s predictions for ``graph`` with species indices (N,) as the potential's
        output keys (energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å^3 when asked, per-atom
        energies (N,) eV, latent features) plus the raw scores ``atom_score`` (N,) and
        ``energy_score`` (B,), in traceable torch operations; only for ``compiles_predictions``."""
        raise NotImplementedError(f"{self.name} does not compile its predictions")

    def reads_scores(self, outputs: dict[str, torch.Tensor]) -> bool:
        """Whether :meth:`scores` gives ``forward``'s result from these outputs for a graph: they
        hold the raw scores (a package compiled with this fit) or the scores follow from them."""
        return self.scores_from_outputs or K.ATOM_SCORE in outputs

    def raw_scores(self, graph: AtomicGraph, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``atom_score`` (N,) and ``energy_score`` (B,) of ``outputs`` for ``graph``: those they hold
        (a package compiled with this method's weights, or this method's own predictions), else
        :meth:`output_scores` of the potential's outputs."""
        return outputs if K.ATOM_SCORE in outputs else self.output_scores(graph, outputs)

    def scores(self, graph: AtomicGraph, outputs: dict[str, torch.Tensor]) -> UncertainOutput:
        """``forward``'s result from ``outputs``, the potential's own outputs for ``graph`` (forces
        included) or this method's (:meth:`raw_scores`); only where :meth:`reads_scores`."""
        raw = self.raw_scores(graph, outputs)
        return UncertainOutput(outputs[K.ENERGY], outputs[K.FORCES], raw[K.ATOM_SCORE], raw[K.ENERGY_SCORE],
                               outputs.get(K.STRESS), outputs.get(K.ATOMIC_ENERGIES), outputs.get(K.NODE_FEATURES))

    def predict(self, graph: AtomicGraph, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """``forward``'s predictions (energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) when asked,
        per-atom energies (N,) where defined) without computing the uncertainty where that is cheaper."""
        if self.predicts_with_potential:
            return self.potential(graph, compute_forces=True, compute_stress=compute_stress, create_graph=False)
        raw = self.forward(graph, compute_stress)
        out = {K.ENERGY: raw.energy, K.FORCES: raw.forces}
        if raw.stress is not None:
            out[K.STRESS] = raw.stress
        if raw.energies is not None:
            out[K.ATOMIC_ENERGIES] = raw.energies
        return out

    def options(self) -> dict[str, Any]:
        """JSON-serialisable constructor options that rebuild this method before loading weights."""
        return {}

    @classmethod
    def rebuild(cls, potential: Potential, options: dict[str, Any]) -> UncertaintyMethod:
        return cls(potential, **options)


def frozen(module: nn.Module) -> nn.Module:
    """Set requires_grad=False on every parameter (forces still flow to positions)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()
