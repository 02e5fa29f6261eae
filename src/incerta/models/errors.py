"""Error metrics of predictions against reference labels, summed batch by batch (and over ranks)."""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

import numpy as np
import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, known_rows
from incerta.utils.distributed import all_reduce_sum


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
        """Add a predicted batch against its labels (the stress of the structures that have one)."""
        as_np = lambda t: t.detach().double().cpu().numpy()
        stress_known = None if batch.stress is None else known_rows(batch.stress)
        self.add(
            energy_error=None if batch.energy is None else as_np(outputs[K.ENERGY] - batch.energy),
            n_atoms=as_np(batch.num_atoms),
            forces_error=None if batch.forces is None or K.FORCES not in outputs else as_np(outputs[K.FORCES] - batch.forces),
            stress_error=None if stress_known is None or K.STRESS not in outputs
            else as_np(outputs[K.STRESS][stress_known] - batch.stress[stress_known]),
        )

    def add(
        self,
        energy_error: np.ndarray | None,
        n_atoms: np.ndarray,
        forces_error: np.ndarray | None = None,
        stress_error: np.ndarray | None = None,
    ) -> None:
        """Add errors (prediction - reference): energy (B,) eV, forces (N, 3) eV/Å, stress eV/Å^3."""
        if energy_error is not None:
            per_atom = energy_error / n_atoms
            self.n_structures += energy_error.size
            self.energy_abs += float(np.abs(energy_error).sum())
            self.energy_sq += float(np.square(energy_error).sum())
            self.per_atom_abs += float(np.abs(per_atom).sum())
            self.per_atom_sq += float(np.square(per_atom).sum())
        if forces_error is not None:
            self.n_force_components += forces_error.size
            self.forces_abs += float(np.abs(forces_error).sum())
            self.forces_sq += float(np.square(forces_error).sum())
        if stress_error is not None:
            self.n_stress_components += stress_error.size
            self.stress_abs += float(np.abs(stress_error).sum())
            self.stress_sq += float(np.square(stress_error).sum())

    def reduced(self) -> ErrorAccumulator:
        """The sums over all ranks of a distributed run (itself when not distributed)."""
        return ErrorAccumulator(*[type(v)(t) for v, t in zip(astuple(self), all_reduce_sum([float(v) for v in astuple(self)]))])

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
