"""Canonical names, shapes and units of every quantity that flows through incerta.

Shapes use N = atoms in a batch, B = structures in a batch, E = directed edges.
Units: Å, eV, eV/Å, eV/Å^3 (ASE sign convention: stress = (1/V) dE/d(strain)),
e (elementary charge). Readers convert everything to these units on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpec:
    """A key's name, shape, unit and meaning; ``internal`` keys pass between the model's blocks."""

    name: str
    shape: str
    unit: str
    description: str
    internal: bool = False


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
# intermediate quantities written by the potential's blocks (:mod:`incerta.nn`)
SPECIES = "species"
SPECIES_ONE_HOT = "species_one_hot"
EDGE_VECTORS = "edge_vectors"
EDGE_LENGTHS = "edge_lengths"
EDGE_SH = "edge_sh"
EDGE_RADIAL = "edge_radial"
EDGE_ENVELOPE = "edge_envelope"
ATOMIC_READOUT = "atomic_readout"
LOCAL_ENERGIES = "local_energies"
ELECTROSTATIC_ENERGIES = "electrostatic_energies"
DISPERSION_ENERGIES = "dispersion_energies"
# uncertainties (:mod:`incerta.uq`)
FORCES_UNCERTAINTY = "forces_uncertainty"
ENERGY_UNCERTAINTY = "energy_uncertainty"
STRUCTURE_UNCERTAINTY = "structure_uncertainty"
STRESS_UNCERTAINTY = "stress_uncertainty"
ATOM_SCORE = "atom_score"
ENERGY_SCORE = "energy_score"

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
    KeySpec(SPECIES, "(N,)", "-", "Index of each atom's element in the model's species list.", internal=True),
    KeySpec(SPECIES_ONE_HOT, "(N, S)", "-", "One-hot encoding of the species index (S elements in the model).", internal=True),
    KeySpec(EDGE_VECTORS, "(E, 3)", "Å", "Edge vectors r_ij = r_j - r_i + S @ cell.", internal=True),
    KeySpec(EDGE_LENGTHS, "(E,)", "Å", "Edge lengths |r_ij|.", internal=True),
    KeySpec(EDGE_SH, "(E, (l_max+1)^2)", "-", "Spherical harmonics of the edge directions (component normalisation).", internal=True),
    KeySpec(EDGE_RADIAL, "(E, K)", "-", "Bessel radial basis times the smooth cutoff envelope.", internal=True),
    KeySpec(EDGE_ENVELOPE, "(E,)", "-", "Polynomial cutoff envelope, 1 at r = 0 and 0 at the cutoff.", internal=True),
    KeySpec(ATOMIC_READOUT, "(N,)", "-", "Dimensionless per-atom output of the energy readout.", internal=True),
    KeySpec(LOCAL_ENERGIES, "(N,)", "eV", "Learned short-range atomic energies (scaled readout + per-species shift).", internal=True),
    KeySpec(ELECTROSTATIC_ENERGIES, "(N,)", "eV", "Per-atom electrostatic energies of the equilibrated charges.", internal=True),
    KeySpec(DISPERSION_ENERGIES, "(N,)", "eV", "Per-atom D3(BJ) dispersion energies.", internal=True),
    KeySpec(FORCES_UNCERTAINTY, "(N,)", "eV/Å", "Calibrated uncertainty: predicted RMS of each atom's force-error vector."),
    KeySpec(ENERGY_UNCERTAINTY, "(B,)", "eV", "Calibrated uncertainty: predicted standard deviation of the energy error."),
    KeySpec(STRUCTURE_UNCERTAINTY, "(B,)", "eV/Å", "Aggregate (max, mean or sum) of forces_uncertainty over a structure."),
    KeySpec(STRESS_UNCERTAINTY, "(B, 6)", "eV/Å^3", "Calibrated uncertainty: predicted RMS error of each stress "
            "component, Voigt order (xx, yy, zz, yz, xz, xy; one value for the normal components, one for the shear "
            "ones; zero for those the cell's symmetry fixes at zero); periodic cells with a stress calibration only, "
            "NaN otherwise. 1 eV/Å^3 = 160.2 GPa."),
    KeySpec(ATOM_SCORE, "(N,)", "method", "Raw per-atom score of an uncertainty method, before calibration."),
    KeySpec(ENERGY_SCORE, "(B,)", "method", "Raw per-structure score of an uncertainty method, before calibration."),
)

#: what :meth:`incerta.models.potential.Potential.evaluate` returns, where the model defines it
MODEL_OUTPUTS = (NODE_FEATURES, ATOMIC_CHARGES, DIPOLE, ENERGY, ATOMIC_ENERGIES, LAST_LAYER_FEATURES)


def markdown_table(include_internal: bool = True) -> str:
    """The key table as Markdown, for the documentation (the README leaves out internal keys)."""
    rows = ["| key | shape | unit | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k.name}` | {k.shape} | {k.unit} | {k.description} |" for k in KEYS if include_internal or not k.internal]
    return "\n".join(rows)
