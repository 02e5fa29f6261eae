"""Neighbour lists with periodic images, computed by vesin."""

from __future__ import annotations

import numpy as np
import vesin


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """All directed pairs closer than ``cutoff`` (Å), periodic images included.

    Returns edge_index (2, E) int64 as (receiver i, sender j) and integer cell shifts
    (E, 3) such that r_ij = r_j - r_i + shifts @ cell.
    """
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(
        np.asarray(positions, dtype=np.float64), box, [bool(p) for p in pbc], "ijS"
    )
    edge_index = np.stack([i.astype(np.int64), j.astype(np.int64)])
    return edge_index, shifts.astype(np.int64)


def edge_lengths(positions: np.ndarray, cell: np.ndarray, edges: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(E,) Å: the length of each pair of a :func:`neighbor_list` (edges (2, E), shifts (E, 3))."""
    positions = np.asarray(positions, dtype=float)
    return np.linalg.norm(positions[edges[1]] - positions[edges[0]] + shifts @ np.asarray(cell, dtype=float), axis=1)
