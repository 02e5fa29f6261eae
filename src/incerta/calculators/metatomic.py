"""Export a potential, with its calibrated uncertainty, as a metatomic model for MD engines.

The exported file is one TorchScript program (no incerta needed to load it) that LAMMPS
(``pair_style metatomic``), i-PI, ASE (metatomic's calculator) and TorchSim run. It
computes, for a list of systems the engine gives with a full neighbour list of the
model's cutoff:

* ``energy`` (per system or per atom) in eV; the engine gets forces and stress by autograd
  through positions and cell;
* ``energy_uncertainty`` (per system or per atom) in eV: the calibrated energy sigma of
  the attached method; per atom, the structure's sigma shared out in proportion to each
  atom's variance score, so the squares of the atoms' values add up to the square of
  the structure's;
* ``incerta::forces_uncertainty`` (per atom, eV/Å): the calibrated RMS force error, the
  calculator's ``forces_uncertainty``;
* ``incerta::stress_uncertainty`` (per system, eV/Å^3, six properties in Voigt order) when the
  calibration has a stress map; the map as it is, also for the components a cell's symmetry
  fixes at zero (the symmetry search, :mod:`incerta.uq.stress_symmetry`, is not TorchScript), so
  there it errs on the safe side where the calculator gives zero.

The blocks of the potential are scripted as they are (one copy of the physics); the
uncertainty is exported for the methods in :data:`EXPORTABLE_METHODS`, whose score is a
function of the model's own features. Anything that cannot be exported (a block
TorchScript cannot compile, such as D3 dispersion through its C library, or another
uncertainty method) stops the export with an error that names it.

No ``from __future__ import annotations`` here: TorchScript reads the class annotations.
"""

import copy
import json
from pathlib import Path
from typing import Dict, Final, List, Optional

import torch
from ase.data import chemical_symbols
from e3nn.util import jit as e3nn_jit
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import cell_volumes
from incerta.models.potential import Potential
from incerta.nn.codegen import CODEGEN_LOCK
from incerta.nn.electronic import segment_sum
from incerta.train.checkpoint import load_potential
from incerta.uq.calibration import Calibration, ScoreMap, StressMaps, map_score, stress_score, voigt_sigma
from incerta.uq.gmm import GMMUncertainty, mixture_nll, segment_logsumexp
from incerta.uq.llpr import LLPRUncertainty
from incerta.uq.model import UncertainPotential
from incerta.uq.store import has_uncertainty, load_uncertain_potential
from incerta.utils.version import __version__

#: uncertainty methods whose calibrated uncertainty goes into the exported file
EXPORTABLE_METHODS = ("gmm", "llpr")
FORCES_UNCERTAINTY_OUTPUT = "incerta::forces_uncertainty"
STRESS_UNCERTAINTY_OUTPUT = "incerta::stress_uncertainty"


class ExportError(ValueError):
    """The model holds a term or method that the exported file could not compute."""


class ExportedScoreMap(nn.Module):
    """One :class:`~incerta.uq.calibration.ScoreMap` as a module: raw score (any shape) -> sigma."""

    def __init__(self, score_map: ScoreMap) -> None:
        super().__init__()
        self.isotonic = score_map.kind == "isotonic"
        self.log_density = score_map.score_kind == "log-density"
        self.c0, self.c1, self.offset = float(score_map.c0), float(score_map.c1), float(score_map.offset)
        knots_x, knots_y = score_map.knots(torch.zeros((), dtype=torch.float64))
        self.register_buffer("knots_x", knots_x)
        self.register_buffer("knots_y", knots_y)

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        return map_score(score, self.isotonic, self.log_density, self.c0, self.c1, self.offset,
                         self.knots_x.to(score.dtype), self.knots_y.to(score.dtype))


class ExportedStressMaps(nn.Module):
    """:class:`~incerta.uq.calibration.StressMaps` as a module: stress score (B,) -> sigma (B, 6)
    (the score of the force uncertainties: the methods with a stress score of their own, made of
    members, are not in :data:`EXPORTABLE_METHODS`)."""

    def __init__(self, maps: StressMaps) -> None:
        super().__init__()
        self.normal, self.shear = ExportedScoreMap(maps.normal), ExportedScoreMap(maps.shear)

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        return voigt_sigma(self.normal(score), self.shear(score))


class ExportedForceMaps(nn.Module):
    """Per-atom raw scores (N,) and atomic numbers (N,) -> force sigma (N,) eV/Å, per element
    where the calibration has a map for it (:meth:`Calibration.atom_sigma`)."""

    numbers: List[int]

    def __init__(self, calibration: Calibration) -> None:
        super().__init__()
        self.overall = ExportedScoreMap(calibration.forces)
        self.numbers = list(calibration.forces_by_species)
        self.by_species = nn.ModuleList([ExportedScoreMap(m) for m in calibration.forces_by_species.values()])

    def forward(self, score: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        sigma = self.overall(score)
        for index, score_map in enumerate(self.by_species):
            sigma = torch.where(numbers == self.numbers[index], score_map(score), sigma)
        return sigma


class GMMScores(nn.Module):
    """Raw GMM scores: per-atom NLL of the node features (N,), the per-structure log-sum-exp (B,)
    and each atom's share of its structure's energy variance (N,)."""

    needs_position_gradients = False

    def __init__(self, method: GMMUncertainty) -> None:
        super().__init__()
        for name in ("center", "scale", "log_weights", "means", "precision_cholesky"):
            self.register_buffer(name, getattr(method, name).clone())

    def forward(self, data: Dict[str, torch.Tensor], positions: torch.Tensor, batch: torch.Tensor,
                num_graphs: int) -> List[torch.Tensor]:
        nll = mixture_nll(data[K.NODE_FEATURES], self.center, self.scale, self.log_weights, self.means,
                          self.precision_cholesky)
        energy_score = segment_logsumexp(nll, batch, num_graphs)
        return [nll, energy_score, torch.exp(nll - energy_score[batch])]


class LLPRScores(nn.Module):
    """Raw LLPR scores: per-atom force-variance score (N,) from the k posterior directions P
    (one vector-Jacobian product each), per-structure energy score (B,) and each atom's share
    of its structure's energy variance (N,)."""

    needs_position_gradients = True

    def __init__(self, method: LLPRUncertainty) -> None:
        super().__init__()
        self.register_buffer("inverse", method.inverse.clone())
        factor = method.posterior_factor() if method.columns is None else method.projection
        self.register_buffer("projection", factor.clone())

    def forward(self, data: Dict[str, torch.Tensor], positions: torch.Tensor, batch: torch.Tensor,
                num_graphs: int) -> List[torch.Tensor]:
        phi = data[K.LAST_LAYER_FEATURES]
        projected = phi.sum(0) @ self.projection.to(phi.dtype)
        squares = torch.zeros_like(positions)
        for k in range(projected.shape[0]):
            gradient = torch.autograd.grad([projected[k]], [positions], retain_graph=True, allow_unused=True)[0]
            if gradient is not None:
                squares = squares + gradient.pow(2)
        augmented = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1).double()
        g = segment_sum(augmented, batch, num_graphs)
        energy_score = torch.einsum("bh,hk,bk->b", g, self.inverse, g).clamp_min(0).sqrt()
        atom_variance = torch.einsum("nh,hk,nk->n", augmented, self.inverse, augmented).clamp_min(0)
        share = atom_variance / segment_sum(atom_variance, batch, num_graphs).clamp_min(1e-300)[batch]
        return [squares.sum(1).sqrt().double(), energy_score, share]


def _tensor_map(values: torch.Tensor, samples: Labels, name: str) -> TensorMap:
    """One-block TensorMap of ``values`` (rows, P) with properties ``name`` = 0 .. P-1."""
    properties = torch.arange(values.shape[1], dtype=torch.int32, device=values.device).unsqueeze(1)
    block = TensorBlock(values=values, samples=samples, components=torch.jit.annotate(List[Labels], []),
                        properties=Labels([name], properties))
    return TensorMap(keys=Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=values.device)), blocks=[block])


class MetatomicPotential(nn.Module):
    """The metatomic ``ModelInterface`` of a potential (and calibrated uncertainty): the
    systems are batched into one graph, the potential's blocks run in order, and each
    requested output is returned as a TensorMap (see the module docstring)."""

    energy_terms: List[str]
    #: constants to TorchScript: without a method the uncertainty code is not compiled
    has_uncertainty: Final[bool]
    has_stress_map: Final[bool]

    def __init__(self, potential: Potential, blocks: nn.ModuleList, uncertain: UncertainPotential | None) -> None:
        """``blocks``: the potential's blocks, scripted (:func:`scripted_blocks`), in its dtype."""
        super().__init__()
        self.blocks = blocks
        self.energy_terms = list(potential.energy_terms)
        self.register_buffer("species_lookup", potential.species_lookup.clone())
        self.num_species = len(potential.spec.species)
        self.neighbors = NeighborListOptions(cutoff=float(potential.spec.cutoff), full_list=True, strict=True)
        self.state_inputs = bool(potential.spec.electronic_embedding)
        self.has_uncertainty = uncertain is not None
        self.forces_output, self.stress_output = FORCES_UNCERTAINTY_OUTPUT, STRESS_UNCERTAINTY_OUTPUT
        calibration = uncertain.calibration if uncertain is not None else None
        self.has_stress_map = calibration is not None and calibration.stress is not None
        if uncertain is None:
            self.scores, self.scores_need_gradients = nn.Identity(), False
        else:
            scores = GMMScores(uncertain.method) if isinstance(uncertain.method, GMMUncertainty) else LLPRScores(uncertain.method)
            self.scores, self.scores_need_gradients = scores, scores.needs_position_gradients
        self.force_maps = ExportedForceMaps(calibration) if calibration is not None else nn.Identity()
        self.energy_map = ExportedScoreMap(calibration.energy) if calibration is not None else nn.Identity()
        self.stress_map = ExportedStressMaps(calibration.stress) if self.has_stress_map else nn.Identity()

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.neighbors]

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        if not self.state_inputs:
            return {}
        return {"charge": ModelOutput(unit="e", sample_kind="system"),
                "spin_multiplicity": ModelOutput(unit="", sample_kind="system")}

    def _inputs(self, systems: List[System], positions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The potential's input keys for all systems batched into one graph."""
        numbers, batch, edges, shifts, cells, pbcs, charges, spins = [], [], [], [], [], [], [], []
        offset = 0
        for index, system in enumerate(systems):
            neighbors = system.get_neighbor_list(self.neighbors)
            samples = neighbors.samples
            edges.append(torch.stack([samples.column("first_atom"), samples.column("second_atom")]).long() + offset)
            shifts.append(torch.stack([samples.column("cell_shift_a"), samples.column("cell_shift_b"),
                                       samples.column("cell_shift_c")], dim=1).to(positions.dtype))
            numbers.append(system.types.long())
            batch.append(torch.full((len(system),), index, dtype=torch.long, device=positions.device))
            cells.append(system.cell)
            pbcs.append(system.pbc)
            if self.state_inputs:
                charges.append(system.get_data("charge").block().values.reshape(1).to(positions.dtype))
                spins.append(system.get_data("spin_multiplicity").block().values.reshape(1).to(positions.dtype) - 1)
            else:
                charges.append(torch.zeros(1, dtype=positions.dtype, device=positions.device))
                spins.append(torch.zeros(1, dtype=positions.dtype, device=positions.device))
            offset += len(system)
        all_numbers = torch.cat(numbers)
        species = self.species_lookup[all_numbers]  # metatomic has checked the types against atomic_types
        return {
            K.POSITIONS: positions, K.NUMBERS: all_numbers, K.CELL: torch.stack(cells), K.PBC: torch.stack(pbcs),
            K.BATCH: torch.cat(batch), K.EDGE_INDEX: torch.cat(edges, dim=1), K.EDGE_SHIFTS: torch.cat(shifts),
            K.TOTAL_CHARGE: torch.cat(charges), K.SPIN: torch.cat(spins), K.SPECIES: species,
            K.SPECIES_ONE_HOT: nn.functional.one_hot(species, self.num_species).to(positions.dtype),
        }

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
        device = systems[0].positions.device
        num_graphs = len(systems)
        uncertain = ("energy_uncertainty" in outputs or self.forces_output in outputs
                     or self.stress_output in outputs)
        positions = torch.cat([system.positions for system in systems])
        if uncertain and self.scores_need_gradients and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        data = self._inputs(systems, positions)
        for block in self.blocks:
            data.update(block(data))
        atomic = data[self.energy_terms[0]]
        for term in self.energy_terms[1:]:
            atomic = atomic + data[term]
        batch = data[K.BATCH]
        system_index = batch.to(torch.int32)
        atom_index = torch.cat([torch.arange(len(s), dtype=torch.int32, device=device) for s in systems])
        selected = torch.ones_like(atomic, dtype=torch.bool)
        if selected_atoms is not None:
            selected = torch.zeros_like(selected)
            starts = torch.cumsum(torch.tensor([0] + [len(s) for s in systems], device=device), 0)
            rows = starts[selected_atoms.column("system").long()] + selected_atoms.column("atom").long()
            selected[rows] = True
        atom_samples = Labels(["system", "atom"], torch.stack([system_index, atom_index], dim=1)[selected])
        system_samples = Labels(["system"], torch.arange(num_graphs, dtype=torch.int32, device=device).unsqueeze(1))

        results: Dict[str, TensorMap] = {}
        if "energy" in outputs:
            if outputs["energy"].sample_kind == "atom":
                results["energy"] = _tensor_map(atomic[selected].unsqueeze(1), atom_samples, "energy")
            else:
                total = segment_sum(atomic * selected.to(atomic.dtype), batch, num_graphs)
                results["energy"] = _tensor_map(total.unsqueeze(1), system_samples, "energy")
        if uncertain:
            if self.has_uncertainty:
                results.update(self._uncertainties(data, positions, outputs, selected, atom_samples, system_samples))
            else:
                raise ValueError("incerta: this model was exported without an uncertainty method")
        return results

    def _uncertainties(self, data: Dict[str, torch.Tensor], positions: torch.Tensor, outputs: Dict[str, ModelOutput],
                       selected: torch.Tensor, atom_samples: Labels, system_samples: Labels) -> Dict[str, TensorMap]:
        """The calibrated uncertainty outputs that ``outputs`` asks for."""
        batch, num_graphs, dtype = data[K.BATCH], data[K.CELL].shape[0], positions.dtype
        scores = [score.detach() for score in self.scores(data, positions, batch, num_graphs)]
        atom_score, energy_score, share = scores[0], scores[1], scores[2]
        results: Dict[str, TensorMap] = {}
        sigma = self.force_maps(atom_score, data[K.NUMBERS])
        if self.forces_output in outputs:
            results[self.forces_output] = _tensor_map(
                sigma[selected].to(dtype).unsqueeze(1), atom_samples, "forces_uncertainty")
        if "energy_uncertainty" in outputs:
            sigma_energy = self.energy_map(energy_score)
            if outputs["energy_uncertainty"].sample_kind == "atom":
                per_atom = (sigma_energy[batch].pow(2) * share).sqrt()[selected]
                results["energy_uncertainty"] = _tensor_map(per_atom.to(dtype).unsqueeze(1), atom_samples, "energy")
            else:
                results["energy_uncertainty"] = _tensor_map(sigma_energy.to(dtype).unsqueeze(1), system_samples, "energy")
        if self.stress_output in outputs:
            if not self.has_stress_map:
                raise ValueError("incerta: the calibration of this model has no stress map (no periodic validation "
                                 "structures with stress)")
            volume = cell_volumes(data[K.CELL].detach(), data[K.PBC]).double()
            per_component = self.stress_map(stress_score(sigma, batch, volume))
            results[self.stress_output] = _tensor_map(per_component.to(dtype), system_samples, "stress_uncertainty")
        return results


def scripted_blocks(potential: Potential, uncertain: UncertainPotential | None) -> nn.ModuleList:
    """The potential's blocks compiled by TorchScript (each once, reused by the export); an
    :class:`ExportError` naming every block that does not compile and a method that cannot be exported."""
    problems, scripted = [], nn.ModuleList()
    for name, block in potential.blocks:
        try:
            scripted.append(e3nn_jit.script(block))
        except Exception as err:  # TorchScript raises many types; each is reported
            reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            problems.append(f"block '{name}' ({type(block).__name__}) cannot be compiled by TorchScript: {reason}")
    if uncertain is not None and uncertain.method.name not in EXPORTABLE_METHODS:
        problems.append(f"uncertainty method '{uncertain.method.name}' cannot be exported (exportable: "
                        f"{', '.join(EXPORTABLE_METHODS)}); attach one of those with `incerta uq fit --method gmm` "
                        "or export without uncertainty (--no-uncertainty)")
    if problems:
        raise ExportError("the model cannot be exported to metatomic without losing a term:\n  " + "\n  ".join(problems))
    return scripted


def _outputs(has_uncertainty: bool, has_stress_map: bool) -> dict[str, ModelOutput]:
    outputs = {"energy": ModelOutput(unit="eV", sample_kind="atom", description="potential energy")}
    if has_uncertainty:
        outputs["energy_uncertainty"] = ModelOutput(
            unit="eV", sample_kind="atom", description="calibrated standard deviation of the energy error")
        outputs[FORCES_UNCERTAINTY_OUTPUT] = ModelOutput(
            unit="eV/Angstrom", sample_kind="atom", description="calibrated RMS error of each atom's force vector")
    if has_stress_map:
        outputs[STRESS_UNCERTAINTY_OUTPUT] = ModelOutput(
            unit="eV/Angstrom^3", sample_kind="system",
            description="calibrated RMS error of each stress component, Voigt order (xx, yy, zz, yz, xz, xy)")
    return outputs


def export_model(model: str | Path | Potential | UncertainPotential, out: str | Path, *, uncertainty: bool = True,
                 dtype: str = "float32") -> Path:
    """Write ``model`` (a model folder or a loaded potential, with or without uncertainty) as a
    metatomic model file ``out``; ``uncertainty=False`` leaves the attached method out.
    Returns the path written; raises :class:`ExportError` when a term cannot be exported."""
    name = Path(model).name if isinstance(model, (str, Path)) else "incerta potential"
    if isinstance(model, (str, Path)):
        model = load_uncertain_potential(model) if uncertainty and has_uncertainty(model) else load_potential(model)
    uncertain = model if isinstance(model, UncertainPotential) and uncertainty else None
    with CODEGEN_LOCK:
        potential = copy.deepcopy(model.potential if isinstance(model, UncertainPotential) else model)
    potential = potential.to(getattr(torch, dtype)).eval()
    module = MetatomicPotential(potential, scripted_blocks(potential, uncertain), uncertain)
    capabilities = ModelCapabilities(
        outputs=_outputs(module.has_uncertainty, module.has_stress_map),
        atomic_types=list(potential.spec.species),
        interaction_range=float(potential.spec.cutoff * potential.spec.num_layers),
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype=dtype,
    )
    elements = ", ".join(chemical_symbols[z] for z in potential.spec.species)
    method = uncertain.method.name if uncertain is not None else "none"
    metadata = ModelMetadata(
        name=name,
        description=f"incerta {__version__} E(3)-equivariant potential for {elements}; uncertainty: {method}",
        references={"implementation": ["incerta (this package)"]},
        extra={"incerta_version": __version__, "spec": potential.spec.model_dump_json(), "uncertainty_method": method,
               "calibration": uncertain.calibration.to_json() if uncertain is not None else json.dumps(None)},
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    AtomisticModel(module.eval(), metadata, capabilities).save(str(temporary))
    temporary.replace(out)
    return out
