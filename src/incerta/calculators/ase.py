"""ASE calculator backed by an incerta potential, with calibrated uncertainties when attached."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import AtomicGraph, crosses_boundary, frame_to_graph
from incerta.data.validation import DataError, frame_problems, overlaps_on_edges
from incerta.models.compiled import COMPILED_SUFFIX, CompiledPotential, CompileError, compiled_path
from incerta.models.potential import Potential
from incerta.models.predict import check_species, model_dtype
from incerta.train.checkpoint import load_potential, model_file
from incerta.uq.model import SIGMA_KEYS, Aggregate, UncertainPotential
from incerta.uq.store import has_uncertainty, load_uncertain_potential

#: what the calculator runs compiled: the model folder's package if any (None), none (False), or this package
CompiledChoice = Literal[False] | str | Path | CompiledPotential | None
UNCERTAINTY_KEYS = (K.FORCES_UNCERTAINTY, K.ENERGY_UNCERTAINTY, K.STRUCTURE_UNCERTAINTY, K.STRESS_UNCERTAINTY)
#: ``atoms.info`` keys of the total charge and spin (unpaired electrons), as :meth:`Frame.from_atoms` reads them
STATE_KEYS = {"charge": ("charge", "total_charge"), "spin": ("spin", "total_spin")}


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _same(before: np.ndarray, after: np.ndarray, tol: float) -> bool:
    """Equal shapes and every element within ``tol`` (NaN differs), as ASE's ``equal(atol=tol)``."""
    if np.shape(before) != np.shape(after):
        return False
    if np.array_equal(before, after):
        return True
    return np.asarray(before).dtype.kind == "f" and bool(np.all(np.abs(np.asarray(before) - after) <= tol))


def system_changes(before: Atoms | None, after: Atoms, tol: float, ignored: Collection[str] = ()) -> list[str]:
    """What ASE's ``compare_atoms`` reports changed between the last call's atoms and these
    (:data:`all_changes`, less ``ignored``, that differ by more than ``tol``), at a seventh of
    its cost (12 vs 86 µs on ethanol, paid twice per checked MD step): exact comparisons first,
    the tolerance only for arrays that differ."""
    if before is None:
        return list(all_changes)
    changes = [name for name, old, new in (("cell", before.cell.array, after.cell.array), ("pbc", before.pbc, after.pbc))
               if name not in ignored and not _same(old, new, tol)]
    old_arrays, new_arrays = before.arrays, after.arrays
    for name in all_changes:
        if name in ("cell", "pbc") or name in ignored:
            continue
        if (name in old_arrays) != (name in new_arrays) or (
                name in old_arrays and not _same(old_arrays[name], new_arrays[name], tol)):
            changes.append(name)
    return changes


def model_outputs(model: Potential | UncertainPotential | None, graph: AtomicGraph, stress: bool,
                  uncertain: bool, compiled: CompiledPotential | None = None) -> dict[str, torch.Tensor]:
    """Energy (B,) eV, forces (N, 3) eV/Å and, with ``stress``, stress (B, 3, 3) eV/Å^3 of a
    checked graph; with ``uncertain`` (a model with an uncertainty attached) the calibrated
    uncertainties too, otherwise without the uncertainty pass. ``compiled``, a package of the
    model's potential, replaces its eager pass where it can (stress only if compiled with it);
    ``model`` may then be None (energy, forces and stress only)."""
    fast = compiled if compiled is not None and (compiled.stress or not stress or model is None) else None
    if uncertain:
        return model(graph, compute_stress=stress, outputs=None if fast is None else fast(graph, compute_stress=stress))
    if fast is not None:
        return fast(graph, compute_stress=stress)
    if isinstance(model, UncertainPotential):
        return model.predict(graph, compute_stress=stress)
    return model(graph, compute_forces=True, compute_stress=stress, create_graph=False)


def usable_compiled(model: Potential | UncertainPotential, choice: CompiledChoice, folder: Path | None,
                    device: str) -> CompiledPotential | None:
    """The compiled package the calculator runs ``model``'s potential with. ``choice`` False: none;
    a path or a loaded package: that one, which must hold these weights; None: the package of the
    model folder ``folder`` for ``device`` and the weights' dtype, if there is one, and if it
    cannot serve (other weights, unreadable, a method predicting with more than the potential
    and not compiled with it, or another method's predictions) a one-line warning and the eager
    model. Uncertainties compiled from another fit, calibration or aggregation of the attached
    method are dropped (warned), and then computed eagerly."""
    if choice is False or (choice is None and folder is None):
        return None
    potential = model.potential if isinstance(model, UncertainPotential) else model
    path = compiled_path(folder, device, model_dtype(potential)) if choice is None else choice
    if choice is None and not path.exists():
        return None
    try:
        method = model.method if isinstance(model, UncertainPotential) else None
        if method is not None and not (method.predicts_with_potential or method.compiles_predictions):
            raise CompileError(f"the '{method.name}' method predicts with more than its potential")
        compiled = path if isinstance(path, CompiledPotential) else CompiledPotential(path, device)
        compiled.check_weights(potential)
        fit = None if method is None else model.fingerprint()
        own_predictions = method is not None and method.compiles_predictions
        if compiled.predictor != own_predictions or (own_predictions and compiled.scorer != fit):
            raise CompileError(f"{compiled.path} holds the predictions of another fit than this model's "
                               "(run `incerta compile` again)")
        if method is not None and compiled.scorer not in (None, fit):
            warnings.warn(f"{compiled.path}: its uncertainties come from another fit, calibration or aggregation "
                          f"of '{method.name}' than this calculator's, so they run eagerly (run `incerta "
                          "compile` again)", stacklevel=3)
            compiled.scorer = None
    except CompileError as err:
        if choice is not None:
            raise
        warnings.warn(f"{path} not used, the model runs eagerly: {err}", stacklevel=3)
        return None
    return compiled


class IncertaCalculator(Calculator):
    """Energy (eV), forces (eV/Å), per-atom energies (eV), stress (eV/Å^3, periodic only).

    When the model has an uncertainty method attached (``incerta uq fit`` or an
    ensemble), these properties are computed when asked for
    (``atoms.calc.get_property("forces_uncertainty", atoms)``), never on the way to
    energies and forces, so MD pays for them only at the steps that look (a package compiled
    with the fit, ``incerta compile`` of a GMM or LNK model, computes them in every call: asked
    for after the step's forces, they are read from that call's outputs):

    * ``forces_uncertainty`` (N,) eV/Å: predicted RMS of each atom's force error;
    * ``energy_uncertainty`` eV: predicted standard deviation of the energy error;
    * ``structure_uncertainty`` eV/Å: max (or ``aggregate``) of ``forces_uncertainty``;
    * ``stress_uncertainty`` (6,) eV/Å^3, Voigt order like ``stress``: predicted RMS error of
      each stress component (one value for the normal components, one for the shear ones,
      zero for those the cell's symmetry fixes at zero), for periodic cells when the
      calibration data had stress.

    With ``annotate=True`` the uncertainties, once computed, are also copied into
    ``atoms.arrays`` / ``atoms.info``, so ``ase.io.write(..., format="extxyz")`` keeps them.

    ``model`` is a path (model folder, run folder, .safetensors or training checkpoint) or a
    loaded potential. Elements the model never saw, or overlapping atoms (closer than
    ``min_distance`` Å), raise a clear error instead of returning a meaningless number; a
    periodic structure given to a model trained only on molecules gets a warning (once).

    >>> from ase.build import molecule
    >>> from incerta.models.potential import Potential
    >>> from incerta.models.spec import PotentialSpec
    >>> water = molecule("H2O")
    >>> water.calc = IncertaCalculator(Potential(PotentialSpec(species=[1, 8])))  # or a model folder
    >>> water.get_forces().shape  # eV/Å
    (3, 3)
    >>> methane = molecule("CH4")
    >>> methane.calc = water.calc
    >>> methane.get_potential_energy()
    Traceback (most recent call last):
    ...
    incerta.models.potential.UnknownSpeciesError: atoms: element(s) C not in the model, which knows only H, O; ...
    """

    implemented_properties = [  # noqa: RUF012 (the ASE calculator convention)
        "energy", "free_energy", "forces", "energies", "stress", "charges", "dipole", *UNCERTAINTY_KEYS,
    ]

    def __init__(
        self,
        model: str | Path | Potential | UncertainPotential,
        device: str = "cpu",
        min_distance: float = 0.1,
        aggregate: Aggregate = "max",
        annotate: bool = True,
        compiled: CompiledChoice = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        folder = None
        if isinstance(model, (str, Path)) and Path(model).suffix == COMPILED_SUFFIX:
            model, compiled = None, CompiledPotential(model, device)
        elif isinstance(model, (str, Path)):
            folder = model_file(model).parent
            model = load_uncertain_potential(model, aggregate) if has_uncertainty(model) else load_potential(model)
        self.model = None if model is None else model.to(device).eval()
        self.compiled = compiled if model is None else usable_compiled(self.model, compiled, folder, device)
        #: what the structure checks read (species, cutoff, charge/spin inputs): the potential or the package
        self.potential: Potential | CompiledPotential = (
            self.compiled if model is None else model.potential if isinstance(model, UncertainPotential) else model)
        self.dtype = self.compiled.dtype if model is None else model_dtype(self.potential)
        if not 0 <= min_distance < self.potential.spec.cutoff:
            raise ValueError(f"min_distance must be in [0, cutoff = {self.potential.spec.cutoff} Å), got {min_distance}")
        self.device = device
        self.min_distance = min_distance
        self.annotate = annotate
        self._warned_state = False
        self._warned_periodic = False
        self._warned_stress = False
        #: the last call's graph and outputs, reused when uncertainties are asked for on the same structure
        self._last: tuple[AtomicGraph, dict[str, torch.Tensor]] | None = None

    def _check_electronic_state(self, atoms: Atoms) -> None:
        """A model trained with total charge/spin needs them; warn once when they are missing."""
        if not self.potential.spec.electronic_embedding or self._warned_state:
            return
        missing = [name for name, keys in STATE_KEYS.items() if not any(k in atoms.info for k in keys)]
        if missing:
            warnings.warn(
                f"this model takes the total charge and spin as inputs, but atoms.info has no {' or '.join(missing)}; "
                "assuming a neutral singlet (set atoms.info['charge'] = Q and atoms.info['spin'] = unpaired electrons)",
                stacklevel=3,
            )
            self._warned_state = True

    def _check_periodic_domain(self, graph: AtomicGraph) -> None:
        """A model trained on molecules only, given atoms that see periodic images: warn once."""
        if self.potential.spec.trained_on_periodic is False and not self._warned_periodic and crosses_boundary(graph):
            warnings.warn(
                "this model was trained on structures without periodic images (molecules), but these atoms interact "
                "across the cell boundary: energies, forces and stress are extrapolations; check the uncertainty "
                "(`incerta uq fit`) or train on periodic data",
                stacklevel=3,
            )
            self._warned_periodic = True

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes (positions, numbers, cell, pbc, ...) and a changed total charge or spin in
        ``atoms.info``: they are model inputs, so a new value must not return the cached result."""
        changes = system_changes(self.atoms, atoms, tol, self.ignored_changes)
        if self.atoms is not None and any(self.atoms.info.get(key) != atoms.info.get(key)
                                          for keys in STATE_KEYS.values() for key in keys):
            changes.append("info")
        return changes

    @property
    def has_uncertainty(self) -> bool:
        return isinstance(self.model, UncertainPotential)

    def predict(self, graph: AtomicGraph, stress: bool, uncertain: bool) -> dict[str, torch.Tensor]:
        """The model's outputs for one checked structure, its stress with ``stress``; the
        uncertainty pass only when ``uncertain``."""
        return model_outputs(self.model, graph, stress, uncertain, self.compiled)

    def _computes_stress(self, wanted: set[str]) -> bool:
        """Whether a call on a periodic structure computes the stress: when asked for, or when it
        comes at no extra cost (the eager model, or a package compiled with it), so that NPT's
        forces and stress are one pass. A package compiled without stress runs the forces alone,
        and a stress asked of it runs eagerly, with a one-time warning."""
        asked = bool(wanted & {"stress", K.STRESS_UNCERTAINTY})
        if self.compiled is None or self.compiled.stress:
            return True
        if asked and self.model is not None and not self._warned_stress:
            warnings.warn(f"{self.compiled.path} was compiled without stress: the stress runs on the eager model "
                          "(`incerta compile --stress` compiles it in)", stacklevel=4)
            self._warned_stress = True
        return asked

    def _checked_graph(self) -> AtomicGraph:
        """The graph of ``self.atoms`` after the input checks (elements, overlaps, charge and spin)."""
        frame = Frame.from_atoms(self.atoms, source="atoms")
        self._check_electronic_state(self.atoms)
        check_species(self.potential, [frame])
        problems = frame_problems(frame, min_distance=0.0)
        if problems:
            raise DataError("; ".join(problems))
        graph = frame_to_graph(frame, self.potential.spec.cutoff)  # its edges reach min_distance (checked at init)
        problems = overlaps_on_edges(frame, graph.edge_index.numpy(), graph.edge_shifts.numpy(), self.min_distance)
        if problems:
            raise DataError("; ".join(problems))
        graph = graph.to(self.device, self.dtype)
        self._check_periodic_domain(graph)
        return graph

    def _check_properties(self, wanted: set[str], periodic: bool) -> None:
        if "stress" in wanted and not periodic:
            raise PropertyNotImplementedError("stress needs a periodic cell (atoms.pbc)")
        if wanted & set(UNCERTAINTY_KEYS) and not self.has_uncertainty:
            raise PropertyNotImplementedError("this model has no uncertainty attached; run `incerta uq fit` first")
        if K.STRESS_UNCERTAINTY in wanted and not (periodic and self.model.calibration.stress is not None):
            raise PropertyNotImplementedError(
                "stress_uncertainty needs a periodic cell and a model calibrated on validation data with stress "
                f"(this structure is {'periodic' if periodic else 'not periodic'}; the calibration has "
                f"{'a' if self.model.calibration.stress is not None else 'no'} stress map)")

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        wanted = set(properties)
        uncertain = bool(wanted & set(UNCERTAINTY_KEYS))
        # uncertainty asked for on the structure of the last call (an MD check after the step's
        # forces): a method that can takes its scores from that call's outputs, checks and graph
        again = uncertain and not system_changes and self._last is not None and self.has_uncertainty
        if again and K.FORCES_UNCERTAINTY in self._last[1] and wanted <= set(SIGMA_KEYS):
            self._store_uncertainties(self._last[1], atoms)  # a package compiled with the fit computed them
            return
        if not again:  # (self.atoms already is this structure)
            super().calculate(atoms, properties, system_changes)
        graph = self._last[0] if again else self._checked_graph()
        periodic = bool(graph.pbc.any())
        self._check_properties(wanted, periodic)
        stress = periodic and self._computes_stress(wanted)
        if again and self.model.method.reads_scores(self._last[1]) and (K.STRESS in self._last[1] or not stress):
            outputs = self.model(graph, compute_stress=stress, outputs=self._last[1])
        else:
            outputs = self.predict(graph, stress, uncertain)
        self._last = (graph, outputs)
        energy = float(outputs[K.ENERGY][0].detach())
        self.results = {"energy": energy, "free_energy": energy, "forces": _as_numpy(outputs[K.FORCES])}
        if K.ATOMIC_ENERGIES in outputs:
            self.results["energies"] = _as_numpy(outputs[K.ATOMIC_ENERGIES])
        if K.STRESS in outputs:
            self.results["stress"] = full_3x3_to_voigt_6_stress(_as_numpy(outputs[K.STRESS][0]))
        if K.ATOMIC_CHARGES in outputs:
            self.results["charges"] = _as_numpy(outputs[K.ATOMIC_CHARGES])
            if not periodic:
                self.results["dipole"] = _as_numpy(outputs[K.DIPOLE][0])
        if uncertain:
            self._store_uncertainties(outputs, atoms)

    def _store_uncertainties(self, outputs: dict[str, torch.Tensor], atoms: Atoms | None) -> None:
        """The calibrated uncertainties of ``outputs`` into the results (and, with ``annotate``, ``atoms``)."""
        sigma = _as_numpy(outputs[K.FORCES_UNCERTAINTY])
        self.results[K.FORCES_UNCERTAINTY] = sigma
        self.results[K.ENERGY_UNCERTAINTY] = float(outputs[K.ENERGY_UNCERTAINTY][0].detach())
        self.results[K.STRUCTURE_UNCERTAINTY] = float(outputs[K.STRUCTURE_UNCERTAINTY][0].detach())
        if K.STRESS_UNCERTAINTY in outputs:
            self.results[K.STRESS_UNCERTAINTY] = _as_numpy(outputs[K.STRESS_UNCERTAINTY][0])
        if self.annotate and atoms is not None:
            atoms.arrays[K.FORCES_UNCERTAINTY] = sigma.copy()
            atoms.info[K.ENERGY_UNCERTAINTY] = self.results[K.ENERGY_UNCERTAINTY]
            atoms.info[K.STRUCTURE_UNCERTAINTY] = self.results[K.STRUCTURE_UNCERTAINTY]
            if K.STRESS_UNCERTAINTY in self.results:
                atoms.info[K.STRESS_UNCERTAINTY] = self.results[K.STRESS_UNCERTAINTY]
