"""Dataset statistics that fix the model's physical scale: reference energies, scale, neighbours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from incerta.data.frame import Frame
from incerta.data.validation import DataError


def species_of(frames: Sequence[Frame]) -> list[int]:
    """Sorted atomic numbers present in ``frames``."""
    return sorted({int(z) for f in frames for z in np.unique(f.numbers)})


def composition_matrix(frames: Sequence[Frame], species: Sequence[int]) -> np.ndarray:
    """(B, S) count of each species in each frame."""
    index = {z: k for k, z in enumerate(species)}
    counts = np.zeros((len(frames), len(species)))
    for b, frame in enumerate(frames):
        for z, n in zip(*np.unique(frame.numbers, return_counts=True)):
            counts[b, index[int(z)]] = n
    return counts


def fit_species_energies(frames: Sequence[Frame], species: Sequence[int]) -> np.ndarray:
    """Per-species energies (S,) in eV minimising sum_b (E_b - sum_s n_bs e_s)^2.

    With a single composition the system is underdetermined and the minimum-norm
    solution is returned (it still reproduces the mean total energy exactly).
    """
    counts = composition_matrix(frames, species)
    energies = np.array([f.energy for f in frames], dtype=float)
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution


def isolated_atom_energies(e0s: Mapping[str | int, float] | Sequence[Frame], species: Sequence[int]) -> np.ndarray:
    """E0 per species (S,) in eV from a {symbol or Z: eV} mapping or one-atom frames."""
    table: dict[int, float] = {}
    if isinstance(e0s, Mapping):
        for key, value in e0s.items():
            z = int(key) if str(key).isdigit() else atomic_numbers.get(str(key))
            if z is None:
                raise DataError(f"e0s: unknown element '{key}'")
            table[z] = float(value)
    else:
        for frame in e0s:
            if len(frame) != 1 or frame.energy is None:
                raise DataError(f"{frame.source}: isolated-atom file must hold one-atom frames with an energy")
            table[int(frame.numbers[0])] = float(frame.energy)
    missing = [chemical_symbols[z] for z in species if z not in table]
    if missing:
        raise DataError(f"e0s: no isolated-atom energy for {', '.join(missing)}")
    return np.array([table[z] for z in species])


def reference_energies(frames: Sequence[Frame], species: Sequence[int], e0s=None) -> np.ndarray:
    """Per-species energy shift (S,) in eV.

    Without ``e0s``: least-squares fit to the training energies. With ``e0s``: the
    isolated-atom energies plus the mean per-atom binding energy of the training set,
    so the network starts from zero-mean residuals while E0s keep their meaning.
    """
    if e0s is None:
        return fit_species_energies(frames, species)
    e0 = isolated_atom_energies(e0s, species)
    counts = composition_matrix(frames, species)
    energies = np.array([f.energy for f in frames], dtype=float)
    binding_per_atom = (energies - counts @ e0) / counts.sum(axis=1)
    return e0 + binding_per_atom.mean()


def force_rms(frames: Sequence[Frame]) -> float:
    """Root mean square of all force components (eV/Å); 1.0 when no forces are known."""
    forces = [f.forces for f in frames if f.forces is not None]
    if not forces:
        return 1.0
    rms = float(np.sqrt(np.mean(np.concatenate([np.ravel(x) for x in forces]) ** 2)))
    return rms if rms > 1e-8 else 1.0
