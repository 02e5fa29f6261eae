"""One labelled structure in physical units (numpy), as produced by every reader."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator


@dataclass
class Frame:
    """A structure with its optional reference labels.

    Attributes (units): numbers (N,) int; positions (N, 3) Å; cell (3, 3) Å (zeros for a
    molecule); pbc (3,) bool; energy eV; forces (N, 3) eV/Å; stress (3, 3) eV/Å^3 (ASE
    sign); charge e; spin = number of unpaired electrons; atomic_charges (N,) e; dipole
    (3,) e·Å; source names the file and frame index, for error messages.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charge: float = 0.0
    spin: float = 0.0
    atomic_charges: np.ndarray | None = None
    dipole: np.ndarray | None = None
    source: str = "<memory>"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def periodic(self) -> bool:
        return bool(np.any(self.pbc))

    def with_(self, **changes) -> Frame:
        return replace(self, **changes)

    @classmethod
    def from_atoms(cls, atoms: Atoms, source: str = "<atoms>") -> Frame:
        """Unlabelled frame from ASE atoms (charge/spin from ``atoms.info`` if present)."""
        info = atoms.info
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64),
            cell=np.asarray(atoms.cell.array, dtype=np.float64),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            charge=float(info.get("charge", info.get("total_charge", 0.0))),
            spin=float(info.get("spin", info.get("total_spin", 0.0))),
            source=source,
        )

    def to_atoms(self) -> Atoms:
        """ASE atoms carrying the labels in a SinglePointCalculator."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        atoms.info["charge"] = self.charge
        atoms.info["spin"] = self.spin
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if self.atomic_charges is not None:
            results["charges"] = self.atomic_charges
        if self.dipole is not None:
            results["dipole"] = self.dipole
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms
