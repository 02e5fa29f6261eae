"""ASE calculator backed by an incerta potential."""

from __future__ import annotations

from pathlib import Path

from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph
from incerta.data.validation import DataError, frame_problems
from incerta.evaluate.predict import check_species, model_dtype
from incerta.models.potential import Potential
from incerta.train.checkpoint import load_potential


class IncertaCalculator(Calculator):
    """Energy (eV), forces (eV/Å), per-atom energies (eV) and stress (eV/Å^3, periodic only).

    ``model`` is a path (model folder, run folder, .safetensors or training checkpoint)
    or a loaded :class:`~incerta.models.potential.Potential`. Structures with elements the
    model never saw, or with overlapping atoms (closer than ``min_distance`` Å), raise a
    clear error instead of returning a meaningless number.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(
        self,
        model: str | Path | Potential,
        device: str = "cpu",
        min_distance: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.model = (model if isinstance(model, Potential) else load_potential(model)).to(device).eval()
        self.device = device
        self.min_distance = min_distance

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        frame = Frame.from_atoms(self.atoms, source="atoms")
        check_species(self.model, [frame])
        problems = frame_problems(frame, min_distance=self.min_distance)
        if problems:
            raise DataError("; ".join(problems))
        periodic = frame.periodic
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress needs a periodic cell (atoms.pbc)")
        graph = frame_to_graph(frame, self.model.spec.cutoff).to(self.device, model_dtype(self.model))
        outputs = self.model(graph, compute_forces=True, compute_stress=periodic, create_graph=False)
        as_np = lambda t: t.detach().cpu().double().numpy()
        energy = float(outputs[K.ENERGY][0].detach())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": as_np(outputs[K.FORCES]),
            "energies": as_np(outputs[K.ATOMIC_ENERGIES]),
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(as_np(outputs[K.STRESS][0]))
