"""Reference calculators that label structures ("oracles"), for data generation and active learning.

An oracle is a small picklable description (so it can travel to Dask workers) whose
``label(frame)`` returns the frame with energy (eV) and forces (eV/Å) -- the stress (eV/Å^3,
ASE sign) of a periodic frame, and atomic charges (e) and dipole (e·Å), where the calculator
gives them (tblite gives charges and dipoles), so that
charge-aware models can be trained against them -- passing the frame's total charge and
spin (number of unpaired electrons) through, or raises
:class:`OracleFailure` (SCF not converged, calculator error). Ready oracles:

* ``tblite``: GFN2-xTB / GFN1-xTB through tblite's ASE calculator (one thread);
* ``pyscf``: DFT (default PBE/def2-SVP) with a second-order SCF fallback when the
  first SCF does not converge, and optional D3(BJ) dispersion;
* ``emt``: ASE's effective-medium theory, for toy metals;
* ``ase``: any ASE calculator class given by its import path and keyword arguments;
* ``lookup``: structures whose labels are already known (benchmarks).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from ase import units

from incerta.data.frame import Frame


class OracleFailure(RuntimeError):
    """The reference calculation did not produce a trustworthy label."""


class Oracle(Protocol):
    name: str

    def label(self, frame: Frame) -> Frame: ...


def _finite(frame: Frame, who: str, energy: float, forces: np.ndarray, **extra: np.ndarray | None) -> Frame:
    """``frame`` with the labels (and any ``extra`` ones given: stress, atomic_charges, dipole), all finite."""
    labels = {"energy": float(energy), "forces": np.asarray(forces, dtype=float)}
    labels |= {name: np.asarray(value, dtype=float) for name, value in extra.items() if value is not None}
    bad = [name for name, value in labels.items() if not np.all(np.isfinite(value))]
    if bad:
        raise OracleFailure(f"{who}: non-finite {', '.join(bad)} for {frame.source}")
    return frame.with_(**labels)


def _with_ase(frame: Frame, calculator, who: str) -> Frame:
    atoms = frame.to_atoms()
    atoms.calc = calculator
    offered = getattr(calculator, "implemented_properties", ())
    try:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        stress = atoms.get_stress(voigt=False) if "stress" in offered and frame.periodic else None
        charges = atoms.get_charges() if "charges" in offered else None
        dipole = atoms.get_dipole_moment() if "dipole" in offered else None
    except Exception as err:  # calculators raise many types
        raise OracleFailure(f"{who}: {type(err).__name__}: {err}") from err
    return _finite(frame, who, energy, forces, stress=stress, atomic_charges=charges, dipole=dipole)


@dataclass(frozen=True)
class TBLiteOracle:
    """GFN-xTB through tblite; one OpenMP thread (tblite slows down badly on a busy machine).

    The periodic reference that runs here: tblite labels cells with energy, forces and a stress
    that is the strain derivative of its energy (finite differences agree to 1e-6 eV/Å^3, test).
    It samples the Gamma point only, so give it supercells: GFN1-xTB on rattled silicon gives
    -48.94 eV/atom and -15 GPa for 8 atoms but -49.88 eV/atom and -12.7 GPa for 64. Measured on
    this 2-core machine (loaded): GFN1 0.2 s for 8 atoms and 6 s for 64; GFN2 0.4 s and 44 s.
    PySCF's periodic DFT was slower (13 s for the energy of a 2-atom cell with a minimal basis,
    forces only through multigrid) and its stress failed, so it is not offered for cells.
    """

    method: str = "GFN2-xTB"
    name: str = "tblite"
    accuracy: float = 1.0

    def calculator(self, charge: float = 0.0, spin: float = 0.0):
        """tblite's ASE calculator for total ``charge`` (e) and ``spin`` (unpaired electrons)."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from tblite.ase import TBLite

        return TBLite(method=self.method, charge=float(charge), multiplicity=round(spin) + 1, accuracy=self.accuracy,
                      verbosity=0)

    def label(self, frame: Frame) -> Frame:
        return _with_ase(frame, self.calculator(frame.charge, frame.spin), f"{self.method}")


@dataclass(frozen=True)
class PySCFOracle:
    """Kohn-Sham DFT with PySCF: energy and analytic forces, eV and eV/Å.

    Restricted for singlets, unrestricted otherwise; when the DIIS SCF does not converge,
    the second-order (Newton) solver is tried; if that fails too, :class:`OracleFailure`.
    """

    xc: str = "PBE"
    basis: str = "def2-SVP"
    dispersion: str | None = None  # e.g. "d3bj" (needs pyscf-dispersion)
    max_cycle: int = 100
    conv_tol: float = 1e-9
    name: str = "pyscf"

    def label(self, frame: Frame) -> Frame:
        from ase.data import chemical_symbols
        from pyscf import dft, gto, lib

        lib.num_threads(1)
        spin = round(frame.spin)
        molecule = gto.M(
            atom=[(chemical_symbols[z], tuple(p)) for z, p in zip(frame.numbers, frame.positions)],
            basis=self.basis, charge=round(frame.charge), spin=spin, unit="Angstrom", verbose=0,
        )
        solver = (dft.RKS if spin == 0 else dft.UKS)(molecule)
        solver.xc, solver.max_cycle, solver.conv_tol = self.xc, self.max_cycle, self.conv_tol
        if self.dispersion:
            solver.disp = self.dispersion
        energy = solver.kernel()
        if not solver.converged:
            solver = solver.newton()
            energy = solver.kernel()
        if not solver.converged:
            raise OracleFailure(f"PySCF {self.xc}/{self.basis}: SCF not converged for {frame.source} "
                                "(also with the second-order solver)")
        gradient = solver.nuc_grad_method().kernel()
        return _finite(frame, "PySCF", energy * units.Hartree, -np.asarray(gradient) * units.Hartree / units.Bohr)


@dataclass(frozen=True)
class EMTOracle:
    name: str = "emt"

    def label(self, frame: Frame) -> Frame:
        from ase.calculators.emt import EMT

        return _with_ase(frame, EMT(), "EMT")


@dataclass(frozen=True)
class ASEOracle:
    """Any ASE calculator: ``calculator`` = 'module.Class', ``parameters`` its keyword arguments."""

    calculator: str
    parameters: dict[str, Any] = field(default_factory=dict)
    name: str = "ase"

    def label(self, frame: Frame) -> Frame:
        module, _, cls = self.calculator.rpartition(".")
        try:
            calculator = getattr(importlib.import_module(module), cls)(**self.parameters)
        except (ImportError, AttributeError, TypeError) as err:
            raise OracleFailure(f"cannot build ASE calculator {self.calculator}: {err}") from err
        return _with_ase(frame, calculator, self.calculator)


@dataclass(frozen=True)
class LookupOracle:
    """Labels already known: the frame must carry them (pool read from labelled data)."""

    name: str = "lookup"

    def label(self, frame: Frame) -> Frame:
        if frame.energy is None or frame.forces is None:
            raise OracleFailure(f"lookup oracle: {frame.source} has no stored energy and forces")
        return frame


ORACLES = {"tblite": TBLiteOracle, "pyscf": PySCFOracle, "emt": EMTOracle, "ase": ASEOracle, "lookup": LookupOracle}
OracleName = Literal["tblite", "pyscf", "emt", "ase", "lookup"]


def build_oracle(kind: OracleName, **options) -> Oracle:
    return ORACLES[kind](**options)
