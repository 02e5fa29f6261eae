"""Stress components that a periodic cell's symmetry fixes at zero (found with spglib).

The stress tensor T of a cell is invariant under the rotations R of its point group,
R T R^T = T. A Voigt component that every invariant tensor has at zero (the three shear
components of a cubic or orthorhombic cell, for example) is known exactly: the reference and
an equivariant model both give zero there, so its error is zero and so is its uncertainty.
Calibrating on those components, or predicting a nonzero sigma for them, mixes exact zeros
into the error distribution: on the mlearn Ge and Si test cells 15 and 17 of the 75 shear
components are such zeros, and leaving them out moves the stress miscalibration area from
0.074 to 0.056 (Ge) and from 0.064 to 0.024 (Si) (``benchmarks/materials.py``, 2026-12-06).

Only fully periodic cells are analysed (a slab's vacuum direction is not a lattice
direction); symmetry is detected within ``SYMPREC_A``, tight enough that a structure
displaced from a symmetric one (a thermal snapshot) has no symmetry left.
"""

from __future__ import annotations

import numpy as np
import spglib
import torch

from incerta.data.graph import AtomicGraph
from incerta.uq.calibration import VOIGT, voigt_components

try:  # spglib's documented opt-in to exceptions (its default from 3.0) instead of a None and a warning
    spglib.error.OLD_ERROR_HANDLING = False
except AttributeError:
    pass
#: distance tolerance of the symmetry search, Å
SYMPREC_A = 1e-5
#: a predicted stress component below this fraction of the largest one may be fixed by symmetry
SCREEN = 1e-3


def free_stress_components(cell: np.ndarray, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Which Voigt components (6,) bool the point group of a periodic cell (lattice vectors as
    rows (3, 3) Å, positions (N, 3) Å, atomic numbers (N,)) leaves free (True) rather than
    fixing at zero."""
    cell = np.asarray(cell, dtype=float)
    scaled = np.linalg.solve(cell.T, np.asarray(positions, dtype=float).T).T
    try:
        found = spglib.get_symmetry((cell, scaled, np.asarray(numbers)), symprec=SYMPREC_A)
    except spglib.SpglibError:  # no search possible (e.g. atoms on top of each other): assume no symmetry
        found = None
    if found is None:
        return np.ones(6, dtype=bool)
    # fractional rotations W act on columns of fractional coordinates: Cartesian R = A^T W A^-T
    rotations = cell.T @ found["rotations"] @ np.linalg.inv(cell.T)
    free = np.empty(6, dtype=bool)
    for k, (i, j) in enumerate(VOIGT):
        unit = np.zeros((3, 3))
        unit[i, j] = unit[j, i] = 1.0
        symmetrised = np.mean(rotations @ unit @ rotations.transpose(0, 2, 1), axis=0)
        free[k] = np.abs(symmetrised).max() > 1e-8
    return free


def free_stress_mask(graph: AtomicGraph, stress: torch.Tensor | None = None) -> torch.Tensor:
    """Per structure (B, 6) bool on the graph's device: the Voigt components its symmetry leaves
    free (all six for structures that are not periodic in every direction). With the predicted
    ``stress`` (B, 3, 3), only cells where some component is below ``SCREEN`` of the largest are
    searched (an equivariant model gives a fixed component as zero to float precision, 1e-4 of
    the largest at most in float32; the search costs 5-15 ms for 64 atoms)."""
    mask = np.ones((graph.num_graphs, 6), dtype=bool)
    searched = graph.pbc.all(dim=1)
    if stress is not None and searched.any():
        voigt = voigt_components(stress.detach()).abs()
        searched &= voigt.amin(dim=1) <= SCREEN * voigt.amax(dim=1)
    searched = searched.cpu().numpy()
    if searched.any():
        positions, numbers, batch = (t.detach().cpu().numpy() for t in (graph.positions, graph.numbers, graph.batch))
        cells = graph.cell.detach().cpu().numpy()
        for b in np.flatnonzero(searched):
            atoms = batch == b
            mask[b] = free_stress_components(cells[b], positions[atoms], numbers[atoms])
    return torch.as_tensor(mask, device=graph.positions.device)
