"""Reusable physics checks for any potential (used by the test-suite; handy for new blocks).

Each ``assert_*`` takes a :class:`~incerta.models.potential.Potential` (float64 advised)
and an ``ase.Atoms`` and raises ``AssertionError`` with the size of the violation.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from scipy.spatial.transform import Rotation

from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph
from incerta.models.potential import Potential
from incerta.models.predict import model_dtype


def predict(model: Potential, atoms: Atoms) -> dict[str, np.ndarray]:
    """energy (eV), forces (N, 3) eV/Å, energies (N,), and stress (3, 3) for periodic atoms."""
    frame = Frame.from_atoms(atoms)
    graph = frame_to_graph(frame, model.spec.cutoff).to(dtype=model_dtype(model))
    out = model(graph, compute_forces=True, compute_stress=frame.periodic, create_graph=False)
    result = {
        "energy": float(out[K.ENERGY][0].detach()),
        "forces": out[K.FORCES].detach().double().numpy(),
        "energies": out[K.ATOMIC_ENERGIES].detach().double().numpy(),
    }
    if frame.periodic:
        result["stress"] = out[K.STRESS][0].detach().double().numpy()
    return result


def _close(a, b, atol: float, what: str) -> None:
    error = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    assert error <= atol, f"{what}: max deviation {error:.3g} > {atol:.3g}"


def _not_vacuous(forces: np.ndarray) -> None:
    assert np.abs(forces).max() > 1e-6, "forces vanish: the check would prove nothing (untrained flat model?)"


def assert_e3_equivariant(model: Potential, atoms: Atoms, seed: int = 0, atol: float = 1e-8) -> None:
    """Energy invariant and forces equivariant under rotation, reflection, translation, permutation."""
    rng = np.random.default_rng(seed)
    reference = predict(model, atoms)
    _not_vacuous(reference["forces"])
    rotation = Rotation.random(random_state=seed).as_matrix()
    for name, matrix in (("rotation", rotation), ("reflection", -rotation)):
        moved = atoms.copy()
        moved.positions = atoms.positions @ matrix.T
        if atoms.pbc.any():
            moved.cell = atoms.cell.array @ matrix.T
        result = predict(model, moved)
        _close(result["energy"], reference["energy"], atol * len(atoms), f"energy under {name}")
        _close(result["forces"], reference["forces"] @ matrix.T, atol, f"forces under {name}")
    moved = atoms.copy()
    moved.positions += rng.normal(size=3) * 3.0
    result = predict(model, moved)
    _close(result["energy"], reference["energy"], atol * len(atoms), "energy under translation")
    _close(result["forces"], reference["forces"], atol, "forces under translation")
    order = rng.permutation(len(atoms))
    result = predict(model, atoms[order])
    _close(result["energy"], reference["energy"], atol * len(atoms), "energy under permutation")
    _close(result["forces"], reference["forces"][order], atol, "forces under permutation")


def assert_forces_are_gradients(model: Potential, atoms: Atoms, delta: float = 1e-4, atol: float = 1e-6) -> None:
    """F = -dE/dr against central finite differences of the energy."""
    forces = predict(model, atoms)["forces"]
    _not_vacuous(forces)
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for a in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * delta
                energies.append(predict(model, moved)["energy"])
            numeric[i, a] = -(energies[0] - energies[1]) / (2 * delta)
    _close(forces, numeric, atol, "forces vs -dE/dr (finite differences)")


def assert_stress_is_strain_derivative(model: Potential, atoms: Atoms, delta: float = 1e-5, atol: float = 1e-6) -> None:
    """stress = (1/V) dE/d(strain) against central differences of a homogeneous strain."""
    stress = predict(model, atoms)["stress"]
    volume = atoms.get_volume()
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * delta
                moved = atoms.copy()
                moved.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                energies.append(predict(model, moved)["energy"])
            numeric[a, b] = (energies[0] - energies[1]) / (2 * delta * volume)
    numeric = 0.5 * (numeric + numeric.T)
    _close(stress, numeric, atol, "stress vs strain derivative (finite differences)")
