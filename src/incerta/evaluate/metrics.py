"""Error metrics of predictions against reference labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph


@dataclass
class ErrorAccumulator:
    """Running sums for energy, per-atom energy, force and stress errors.

    Force errors are taken over Cartesian components (the convention of NequIP and
    MACE papers). ``result()`` gives MAE/RMSE in meV, meV/atom, meV/Å, meV/Å^3.
    """

    n_structures: int = 0
    n_force_components: int = 0
    n_stress_components: int = 0
    energy_abs: float = 0.0
    energy_sq: float = 0.0
    per_atom_abs: float = 0.0
    per_atom_sq: float = 0.0
    forces_abs: float = 0.0
    forces_sq: float = 0.0
    stress_abs: float = 0.0
    stress_sq: float = 0.0

    def update(self, outputs: dict[str, torch.Tensor], batch: AtomicGraph) -> None:
        if batch.energy is not None:
            error = (outputs[K.ENERGY] - batch.energy).detach().double()
            per_atom = error / batch.num_atoms.double()
            self.n_structures += error.numel()
            self.energy_abs += float(error.abs().sum())
            self.energy_sq += float(error.pow(2).sum())
            self.per_atom_abs += float(per_atom.abs().sum())
            self.per_atom_sq += float(per_atom.pow(2).sum())
        if batch.forces is not None and K.FORCES in outputs:
            error = (outputs[K.FORCES] - batch.forces).detach().double()
            self.n_force_components += error.numel()
            self.forces_abs += float(error.abs().sum())
            self.forces_sq += float(error.pow(2).sum())
        if batch.stress is not None and K.STRESS in outputs:
            error = (outputs[K.STRESS] - batch.stress).detach().double()
            self.n_stress_components += error.numel()
            self.stress_abs += float(error.abs().sum())
            self.stress_sq += float(error.pow(2).sum())

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {"n_structures": self.n_structures}
        mean = lambda total, n: total / n if n else math.nan
        n, nf, ns = self.n_structures, self.n_force_components, self.n_stress_components
        out["energy_mae_meV"] = 1e3 * mean(self.energy_abs, n)
        out["energy_rmse_meV"] = 1e3 * math.sqrt(mean(self.energy_sq, n))
        out["energy_per_atom_mae_meV"] = 1e3 * mean(self.per_atom_abs, n)
        out["energy_per_atom_rmse_meV"] = 1e3 * math.sqrt(mean(self.per_atom_sq, n))
        out["forces_mae_meV_per_A"] = 1e3 * mean(self.forces_abs, nf)
        out["forces_rmse_meV_per_A"] = 1e3 * math.sqrt(mean(self.forces_sq, nf))
        if ns:
            out["stress_mae_meV_per_A3"] = 1e3 * mean(self.stress_abs, ns)
            out["stress_rmse_meV_per_A3"] = 1e3 * math.sqrt(mean(self.stress_sq, ns))
        return out
