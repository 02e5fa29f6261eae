"""A potential with calibrated uncertainty: what calculators, evaluation and AL consume."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, cell_volumes
from incerta.models.compiled import weights_digest
from incerta.models.potential import Potential
from incerta.uq.base import UncertaintyMethod
from incerta.uq.calibration import Calibration
from incerta.uq.stress_symmetry import free_stress_mask

Aggregate = Literal["max", "mean", "sum"]
#: the calibrated uncertainties of a structure's atoms and of the structure
SIGMA_KEYS = (K.FORCES_UNCERTAINTY, K.ENERGY_UNCERTAINTY, K.STRUCTURE_UNCERTAINTY)


def aggregate_atoms(values: torch.Tensor, batch: torch.Tensor, num_graphs: int, how: Aggregate) -> torch.Tensor:
    """Per-atom values (N,) -> per-structure (B,) by max, mean or sum."""
    if how == "max":
        out = torch.full((num_graphs,), -torch.inf, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, batch, values, reduce="amax", include_self=True)
    total = torch.zeros(num_graphs, dtype=values.dtype, device=values.device).index_add(0, batch, values)
    if how == "sum":
        return total
    return total / torch.bincount(batch, minlength=num_graphs).to(values.dtype)


class UncertainPotential(nn.Module):
    """Energy, forces and calibrated uncertainties from any :class:`UncertaintyMethod`.

    Outputs of B structures with N atoms (keys of :mod:`incerta.data.keys`): ``energy`` (B,)
    eV, ``forces`` (N, 3) eV/Å, ``forces_uncertainty`` (N,) eV/Å, ``energy_uncertainty`` (B,)
    eV, ``structure_uncertainty`` (B,) eV/Å (``aggregate`` of the atoms), the raw scores
    ``atom_score`` (N,) and ``energy_score`` (B,), ``stress`` / ``energies`` where given, and
    ``stress_uncertainty`` (B, 6) eV/Å^3 per Voigt component with stress and a stress calibration
    (zero for the components a cell's symmetry fixes at zero, :mod:`incerta.uq.stress_symmetry`).

    >>> from incerta.data import default
    >>> from incerta.data.graph import collate
    >>> from incerta.data.io import read_frames
    >>> from incerta.models.potential import Potential
    >>> from incerta.models.predict import graphs_for
    >>> from incerta.models.spec import PotentialSpec
    >>> from incerta.uq.base import FitSettings
    >>> from incerta.uq.fit import calibrate
    >>> from incerta.uq.gmm import GMMUncertainty
    >>> potential = Potential(PotentialSpec(species=[1, 6, 8], num_channels=8, l_max=1))
    >>> graphs = graphs_for(potential, read_frames(default.path("train"))[:30])
    >>> method = GMMUncertainty(potential)
    >>> _ = method.fit(graphs[:20], graphs[20:], FitSettings(progress=False))
    >>> uncertain = UncertainPotential(method, calibrate(method, graphs[20:]))
    >>> out = uncertain(collate(graphs[:2]))  # two ethanol structures, 18 atoms
    >>> out["forces_uncertainty"].shape, out["structure_uncertainty"].shape
    (torch.Size([18]), torch.Size([2]))
    >>> bool(out["structure_uncertainty"][0] == out["forces_uncertainty"][:9].max())
    True
    """

    def __init__(self, method: UncertaintyMethod, calibration: Calibration, aggregate: Aggregate = "max") -> None:
        super().__init__()
        self.method = method
        self.calibration = calibration
        self.aggregate = aggregate

    @property
    def potential(self) -> Potential:
        return self.method.potential

    def calibrated(self, atom_score: torch.Tensor, energy_score: torch.Tensor,
                   graph: AtomicGraph) -> dict[str, torch.Tensor]:
        """The calibrated uncertainties (:data:`SIGMA_KEYS`) of raw scores (N,) and (B,): per atom
        (N,) eV/Å, per structure in energy (B,) eV and aggregated over atoms (B,) eV/Å."""
        sigma_atoms = self.calibration.atom_sigma(atom_score, graph.numbers)
        return {K.FORCES_UNCERTAINTY: sigma_atoms, K.ENERGY_UNCERTAINTY: self.calibration.energy(energy_score),
                K.STRUCTURE_UNCERTAINTY: aggregate_atoms(sigma_atoms, graph.batch, graph.num_graphs, self.aggregate)}

    def output_uncertainties(self, graph: AtomicGraph, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The raw scores and calibrated uncertainties from the potential's outputs for ``graph``
        (elements known to the model) or the method's own (holding its raw scores), in traceable
        torch operations: what ``incerta compile`` builds into the package of a method with
        ``scores_from_outputs`` or ``compiles_predictions``."""
        raw = self.method.raw_scores(graph, outputs)
        return {**raw, **self.calibrated(raw[K.ATOM_SCORE], raw[K.ENERGY_SCORE], graph)}

    def fingerprint(self) -> str:
        """SHA-256 of all that :meth:`output_uncertainties` reads: the method's weights, the
        calibration and the aggregation (ties a compiled package's uncertainties to this fit)."""
        text = f"{weights_digest(self.method)} {self.calibration.to_json()} {self.aggregate}"
        return hashlib.sha256(text.encode()).hexdigest()

    def predict(self, graph: AtomicGraph, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """The same energy, forces (and stress) as ``forward``, without the uncertainty where the method
        allows it (MD steps between checks); the graph's elements must be known to the model."""
        return self.method.predict(graph, compute_stress)

    def forward(self, graph: AtomicGraph, compute_stress: bool = False,
                outputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Predictions and uncertainties; structures holding elements the model never saw get
        NaN energies and forces and infinite uncertainties (flagged, never predicted).

        ``outputs``: the potential's outputs for ``graph``, already computed (e.g. by a compiled
        package); a method that can (:meth:`UncertaintyMethod.reads_scores`) takes its scores from
        them instead of running its own pass, and the calibrated uncertainties too where they hold
        them (a package compiled with this fit, :meth:`output_uncertainties`)."""
        known = self.potential.species_lookup[graph.numbers.clamp(0, len(self.potential.species_lookup) - 1)] >= 0
        all_known = bool(known.all())
        if not all_known:
            placeholder = torch.full_like(graph.numbers, self.potential.species[0])
            graph = replace(graph, numbers=torch.where(known, graph.numbers, placeholder))
            outputs = None
        if outputs is not None and self.method.reads_scores(outputs):
            raw = self.method.scores(graph, outputs)
        else:
            raw = self.method(graph, compute_stress=compute_stress)
        if outputs is not None and K.FORCES_UNCERTAINTY in outputs:  # a package compiled with this fit
            sigmas = {key: outputs[key] for key in SIGMA_KEYS}
        else:
            sigmas = self.calibrated(raw.atom_score, raw.energy_score, graph)
        sigma_atoms = sigmas[K.FORCES_UNCERTAINTY]
        out = {K.ENERGY: raw.energy, K.FORCES: raw.forces, **sigmas, K.ATOM_SCORE: raw.atom_score,
               K.ENERGY_SCORE: raw.energy_score}
        if raw.stress is not None:
            out[K.STRESS] = raw.stress
            if self.calibration.stress is not None:
                sigma_stress = self.calibration.stress_sigma(
                    sigma_atoms, graph.batch, cell_volumes(graph.cell, graph.pbc), raw.stress_score)
                out[K.STRESS_UNCERTAINTY] = sigma_stress * free_stress_mask(graph, raw.stress).to(sigma_stress.dtype)
        if raw.energies is not None:
            out[K.ATOMIC_ENERGIES] = raw.energies
        if not all_known:
            _flag_unknown(out, graph, known)
        return out


def _flag_unknown(out: dict[str, torch.Tensor], graph: AtomicGraph, known: torch.Tensor) -> None:
    """NaN predictions and infinite uncertainty for structures with unknown elements."""
    bad_structures = torch.zeros(graph.num_graphs, dtype=torch.bool, device=known.device).index_fill(0, graph.batch[~known], True)
    bad_atoms = bad_structures[graph.batch]
    for key in (K.ENERGY, K.ENERGY_UNCERTAINTY, K.STRUCTURE_UNCERTAINTY, K.STRESS_UNCERTAINTY, K.STRESS):
        if key in out:
            fill = torch.nan if key in (K.ENERGY, K.STRESS) else torch.inf
            mask = bad_structures.view(-1, *[1] * (out[key].dim() - 1))
            out[key] = out[key].detach().masked_fill(mask, fill)
    out[K.FORCES] = out[K.FORCES].detach().masked_fill(bad_atoms.unsqueeze(1), torch.nan)
    out[K.FORCES_UNCERTAINTY] = out[K.FORCES_UNCERTAINTY].detach().masked_fill(~known, torch.inf)
    if K.ATOMIC_ENERGIES in out:
        out[K.ATOMIC_ENERGIES] = out[K.ATOMIC_ENERGIES].detach().masked_fill(bad_atoms, torch.nan)
