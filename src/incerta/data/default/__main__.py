"""Regenerate the embedded demo data: ``python -m incerta.data.default [OUT_DIR]``.

GFN2-xTB (tblite, one thread) Langevin MD of ethanol, 0.5 fs steps, friction
0.02/fs, 1 ps equilibration, one frame every 20 fs; independent trajectories (seeds)
for training and for each test temperature. Isolated-atom energies use the atoms'
ground-state spins (H: 1, C: 2, O: 2 unpaired electrons).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import ase.io
from ase import Atoms
from ase.build import molecule

from incerta.data.default import FILES
from incerta.data.md_sampling import labelled_copy, sample_md

UNPAIRED = {"H": 1, "C": 2, "O": 2}
PLAN = {"train": (300.0, 400, 1), "test_300K": (300.0, 100, 2), "test_600K": (600.0, 100, 3), "test_1200K": (1200.0, 100, 4)}


def xtb(uhf: int = 0):
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0, multiplicity=uhf + 1)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    ethanol = molecule("CH3CH2OH")
    for key, (temperature, n_frames, seed) in PLAN.items():
        frames = sample_md(ethanol, xtb, temperature, n_frames, interval=40, equilibration=2000, seed=seed, label=key)
        ase.io.write(out_dir / FILES[key], frames, format="extxyz")
    isolated = []
    for symbol, unpaired in UNPAIRED.items():
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        atom.calc = xtb(unpaired)
        isolated.append(labelled_copy(atom, config_type="isolated_atom", spin=unpaired))
    ase.io.write(out_dir / FILES["isolated_atoms"], isolated, format="extxyz")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
