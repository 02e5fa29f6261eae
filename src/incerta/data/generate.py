"""Labelled data sets for charged systems, made with the project's reference calculators.

Systems (GFN2-xTB through tblite by default):

* ``ag3``: Ag3+ and Ag3- -- geometries sampled by Langevin MD of the cation, every geometry
  labelled in both charge states (the case a local model cannot resolve);
* ``c10h2``: the carbon chain C10H2 (neutral) and C10H3+ (protonated end), each by MD;
* ``nacl``: the rock-salt cluster Na8Cl8 and Na9Cl8+ (one extra Na on a face), each by MD.

Frames carry ``info['charge']`` (e) and ``info['spin']`` (unpaired electrons) and the
generating command in ``info['generator']``. Example:
``incerta data generate ag3 --frames 200 --temperature 1000 --out ag3_xtb.xyz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.build import bulk

from incerta.data.frame import Frame
from incerta.data.md_sampling import sample_md
from incerta.data.oracles import OracleFailure, PySCFOracle, TBLiteOracle


def ag3() -> Atoms:
    side = 2.7
    return Atoms("Ag3", positions=[[0, 0, 0], [side, 0, 0], [side / 2, side * np.sqrt(3) / 2, 0]])


def c10h2(protonated: bool = False) -> Atoms:
    bonds = [1.06] + [1.23 if k % 2 == 0 else 1.34 for k in range(9)] + [1.06]
    x = np.concatenate([[0.0], np.cumsum(bonds)])
    atoms = Atoms("H" + "C" * 10 + "H", positions=np.c_[x, np.zeros(12), np.zeros(12)])
    if protonated:
        atoms.positions[0] = [x[1] - 0.55, 0.93, 0.0]
        atoms += Atoms("H", positions=[[x[1] - 0.55, -0.93, 0.0]])
    return atoms


def nacl_cluster(extra_sodium: bool = False) -> Atoms:
    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((1, 1, 2))  # Na8Cl8, 16 atoms
    atoms = Atoms(crystal.numbers, positions=crystal.positions)
    if extra_sodium:
        centre = atoms.positions[atoms.numbers == 17].mean(axis=0)
        atoms += Atoms("Na", positions=[centre + np.array([0.0, 0.0, 6.5])])
    return atoms


#: name -> list of (structure factory, charge, spin, label in which charge states)
SYSTEMS: dict[str, list[tuple[Callable[[], Atoms], float, float, tuple[float, ...]]]] = {
    "ag3": [(ag3, 1.0, 0.0, (1.0, -1.0))],
    "c10h2": [(c10h2, 0.0, 0.0, (0.0,)), (lambda: c10h2(protonated=True), 1.0, 0.0, (1.0,))],
    "nacl": [(nacl_cluster, 0.0, 0.0, (0.0,)), (lambda: nacl_cluster(extra_sodium=True), 1.0, 0.0, (1.0,))],
}


def generate(system: str, frames: int, temperature_K: float, oracle: str = "tblite", seed: int = 0,
             interval: int = 20, equilibration: int = 1000, command: str = "") -> list[Frame]:
    """``frames`` geometries per structure of ``system`` (MD snapshots every ``interval`` steps after
    ``equilibration`` steps), labelled in each listed charge state."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    labeller = TBLiteOracle() if oracle == "tblite" else PySCFOracle()
    labelled: list[Frame] = []
    for index, (factory, charge, spin, states) in enumerate(SYSTEMS[system]):
        start = factory()
        start.info.update(charge=charge, spin=spin)

        def calculator(charge=charge, spin=spin):
            from tblite.ase import TBLite

            return TBLite(method="GFN2-xTB", charge=charge, multiplicity=int(spin) + 1, verbosity=0)

        snapshots = sample_md(start, calculator, temperature_K, frames, interval=interval, equilibration=equilibration,
                              seed=seed + index, label=f"{system}-{index}")
        for k, atoms in enumerate(snapshots):
            for state in states:
                frame = Frame.from_atoms(atoms, source=f"{system} structure {index}, frame {k}").with_(
                    charge=state, spin=spin, info={"generator": command or f"incerta data generate {system}",
                                                   "config_type": f"{system}_q{state:+.0f}"})
                try:
                    labelled.append(labeller.label(frame))
                except OracleFailure:
                    continue  # a geometry whose state does not converge is left out
    return labelled
