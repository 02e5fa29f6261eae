"""Canonical names, shapes and units of every quantity that flows through incerta.

Shapes use N = atoms in a batch, B = structures in a batch, E = directed edges.
Units: Å, eV, eV/Å, eV/Å^3 (ASE sign convention: stress = (1/V) dE/d(strain)),
e (elementary charge). Readers convert everything to these units on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpec:
    name: str
    shape: str
    unit: str
    description: str


POSITIONS = "positions"
NUMBERS = "numbers"
CELL = "cell"
PBC = "pbc"
BATCH = "batch"
EDGE_INDEX = "edge_index"
EDGE_SHIFTS = "edge_shifts"
ENERGY = "energy"
FORCES = "forces"
STRESS = "stress"
ATOMIC_ENERGIES = "energies"
NODE_FEATURES = "node_features"
LAST_LAYER_FEATURES = "last_layer_features"
TOTAL_CHARGE = "charge"
SPIN = "spin"
ATOMIC_CHARGES = "charges"
DIPOLE = "dipole"

KEYS: tuple[KeySpec, ...] = (
    KeySpec(POSITIONS, "(N, 3)", "Å", "Cartesian atomic positions."),
    KeySpec(NUMBERS, "(N,)", "-", "Atomic numbers Z."),
    KeySpec(CELL, "(B, 3, 3)", "Å", "Cell vectors as rows; zeros for a molecule."),
    KeySpec(PBC, "(B, 3)", "-", "Periodic boundary conditions along each cell vector."),
    KeySpec(BATCH, "(N,)", "-", "Index of the structure each atom belongs to."),
    KeySpec(EDGE_INDEX, "(2, E)", "-", "Directed neighbour pairs (receiver i, sender j) within the cutoff."),
    KeySpec(EDGE_SHIFTS, "(E, 3)", "cells", "Integer cell shifts S: r_ij = r_j - r_i + S @ cell."),
    KeySpec(ENERGY, "(B,)", "eV", "Total potential energy."),
    KeySpec(FORCES, "(N, 3)", "eV/Å", "Forces F = -dE/dr."),
    KeySpec(STRESS, "(B, 3, 3)", "eV/Å^3", "Stress (1/V) dE/d(strain), ASE sign convention; periodic cells only."),
    KeySpec(ATOMIC_ENERGIES, "(N,)", "eV", "Per-atom energies (model output; they sum to the total energy)."),
    KeySpec(NODE_FEATURES, "(N, C)", "-", "Invariant per-atom latent features entering the energy readout."),
    KeySpec(LAST_LAYER_FEATURES, "(N, H)", "-", "Last hidden layer of the readout (last-layer uncertainty methods)."),
    KeySpec(TOTAL_CHARGE, "(B,)", "e", "Total charge Q of the structure (default 0)."),
    KeySpec(SPIN, "(B,)", "-", "Number of unpaired electrons 2S (multiplicity 2S+1; default 0, singlet)."),
    KeySpec(ATOMIC_CHARGES, "(N,)", "e", "Per-atom partial charges (e.g. Hirshfeld)."),
    KeySpec(DIPOLE, "(B, 3)", "e·Å", "Dipole moment."),
)


def markdown_table() -> str:
    """The key table as Markdown, for the documentation."""
    rows = ["| key | shape | unit | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k.name}` | {k.shape} | {k.unit} | {k.description} |" for k in KEYS]
    return "\n".join(rows)
