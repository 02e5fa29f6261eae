"""Draw the figures of the Concepts pages into docs/figures/.

    .venv/bin/python docs/concept_figures.py [--model demo-output/model]

equivariance.png needs a trained model (the demo's by default: run `make demo` first);
charge_equilibration.png is computed from the charge-equilibration equations alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from ase.io import read

from incerta import IncertaCalculator
from incerta.data import default
from incerta.nn.electrostatics import gaussian_coulomb_matrix

FIGURES = Path(__file__).parent / "figures"
#: Rappé-Goddard QEq parameters (eV/e and eV/e^2) and covalent radii as Gaussian widths (Å)
NA_CL = {"chi": [2.84, 8.56], "hardness": [4.59, 9.73], "width": [1.66, 1.02]}


def equivariance(model: Path) -> None:
    """Energy and one atom's force as an ethanol frame turns about z: E stays, F turns with it."""
    atoms = read(default.path("test_300K"), 0)
    atoms.calc = IncertaCalculator(model)
    forces0 = atoms.get_forces()[0]
    angles = np.linspace(0, 360, 25)
    energies, forces, expected = [], [], []
    for angle in angles:
        turned = atoms.copy()
        turned.calc = atoms.calc
        turned.rotate(angle, "z", center="COM")
        energies.append(turned.get_potential_energy())
        forces.append(turned.get_forces()[0])
        radians = np.radians(angle)
        rotation = np.array([[np.cos(radians), -np.sin(radians), 0], [np.sin(radians), np.cos(radians), 0], [0, 0, 1]])
        expected.append(rotation @ forces0)
    energies, forces, expected = np.array(energies), np.array(forces), np.array(expected)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(angles, 1e3 * (energies - energies[0]), "o-")
    left.set(xlabel="rotation about z (degrees)", ylabel="E - E(0) (meV)", title="energy: invariant")
    left.set_ylim(-1, 1)
    for k, name in enumerate("xyz"):
        right.plot(angles, forces[:, k], "o", label=f"F{name} predicted on the turned frame")
        right.plot(angles, expected[:, k], "-", color=right.lines[-1].get_color(), label=f"F{name} of frame 0, turned")
    right.set(xlabel="rotation about z (degrees)", ylabel="force on atom 0 (eV/Å)", title="forces: equivariant")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "equivariance.png", dpi=110)


def charge_equilibration() -> None:
    """Na-Cl at growing distance: the charges that minimise the QEq energy, for Q = 0 and Q = +1."""
    distances = np.linspace(1.5, 12.0, 60)
    chi, hardness, width = (torch.tensor(NA_CL[k], dtype=torch.float64) for k in ("chi", "hardness", "width"))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for total, style in ((0.0, "-"), (1.0, "--")):
        sodium, chlorine = [], []
        for d in distances:
            positions = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], dtype=torch.float64)
            matrix = gaussian_coulomb_matrix(positions, width) + torch.diag(hardness)
            system = torch.zeros(3, 3, dtype=torch.float64)
            system[:2, :2], system[:2, 2], system[2, :2] = matrix, 1.0, 1.0
            solution = torch.linalg.solve(system, torch.cat([-chi, torch.tensor([total], dtype=torch.float64)]))
            sodium.append(float(solution[0]))
            chlorine.append(float(solution[1]))
        ax.plot(distances, sodium, style, color="tab:purple", label=f"Na, Q = {total:+.0f}")
        ax.plot(distances, chlorine, style, color="tab:green", label=f"Cl, Q = {total:+.0f}")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set(xlabel="Na-Cl distance (Å)", ylabel="atomic charge (e)", title="charge equilibration: sum of charges = Q")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "charge_equilibration.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo-output/model"))
    args = parser.parse_args()
    FIGURES.mkdir(exist_ok=True)
    equivariance(args.model)
    charge_equilibration()


if __name__ == "__main__":
    main()
