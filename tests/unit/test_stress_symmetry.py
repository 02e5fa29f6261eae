"""Stress components fixed at zero by a cell's symmetry: found by spglib's point group and
checked against a real calculator's stress (EMT), which obeys the symmetry exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT

from incerta.data.frame import Frame
from incerta.data.graph import collate, frame_to_graph
from incerta.uq.stress_symmetry import free_stress_components, free_stress_mask


def copper(deformation: np.ndarray | None = None, rattle: float = 0.0, rotate: float = 0.0):
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)
    if deformation is not None:
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    if rattle:
        atoms.rattle(rattle, seed=3)
    if rotate:
        atoms.rotate(rotate, "z", rotate_cell=True)
    atoms.calc = EMT()
    return atoms


def sheared(xy: float) -> np.ndarray:
    deformation = np.eye(3)
    deformation[0, 1] = xy
    return deformation


@pytest.mark.parametrize(("name", "atoms", "free"), [
    ("cubic", copper(), [1, 1, 1, 0, 0, 0]),
    ("stretched along x", copper(np.diag([1.02, 1.0, 1.0])), [1, 1, 1, 0, 0, 0]),
    ("sheared in xy", copper(sheared(0.03)), [1, 1, 1, 0, 0, 1]),
    ("sheared, then turned 30 degrees about z", copper(sheared(0.03), rotate=30.0), [1, 1, 1, 0, 0, 1]),
    ("rattled", copper(rattle=0.02), [1, 1, 1, 1, 1, 1]),
])
def test_fixed_components_are_those_the_reference_gives_as_zero(name, atoms, free):
    found = free_stress_components(atoms.cell.array, atoms.positions, atoms.numbers)
    assert found.tolist() == [bool(f) for f in free], name
    stress = atoms.get_stress()  # Voigt, eV/Å^3
    scale = np.abs(stress).max()
    assert np.all(np.abs(stress[~found]) < 1e-10 * scale), f"{name}: EMT gives a fixed component as nonzero"
    assert np.all(np.abs(stress[found]) > 1e-6 * scale), f"{name}: a free component is zero, so the test proves nothing"


def test_mask_of_a_batch_searches_only_where_a_component_could_be_fixed():
    """Per structure of a batch: a slab (not periodic along z) keeps all six; a cubic cell whose
    predicted stress has no small component is not searched (all six free), one whose shear
    stress is zero is."""
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    frames = [Frame.from_atoms(a) for a in (copper(), slab, copper(rattle=0.02))]
    graph = collate([frame_to_graph(f, cutoff=4.0) for f in frames])
    assert free_stress_mask(graph).int().tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [1] * 6]
    full = torch.ones(3, 3, 3, dtype=torch.float64)
    assert free_stress_mask(graph, full).all(), "no small predicted component: nothing searched"
    diagonal = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    assert free_stress_mask(graph, diagonal).int().tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [1] * 6]
