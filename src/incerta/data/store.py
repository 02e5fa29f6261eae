"""A preprocessed on-disk dataset (HDF5) for data larger than memory.

``write_store`` computes every neighbour list once and writes flat, concatenated arrays
with per-structure offsets; :class:`GraphStore` reads one structure at a time (lazily, the
file opened on first use in each process), so each training rank touches only its share.

Layout: datasets ``numbers`` (A,), ``positions`` (A, 3), ``forces`` (A, 3),
``atom_offsets`` (B+1,), ``edge_index`` (2, E) (per-structure atom indices),
``edge_shifts`` (E, 3), ``edge_offsets`` (B+1,), ``cell`` (B, 3, 3), ``pbc`` (B, 3),
``energy``, ``charge``, ``spin`` (B,), and where any frame has them ``stress`` (B, 3, 3),
``dipole`` (B, 3), ``atomic_charges`` (A,), NaN for the frames without; attributes ``format``,
``version``, ``cutoff`` (Å). Version 1 stores (no optional labels) are read as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from incerta.data.frame import Frame
from incerta.data.graph import PARTIAL_LABELS, AtomicGraph
from incerta.data.neighbors import neighbor_list
from incerta.data.validation import DataError
from incerta.utils.files import atomic_write

STORE_FORMAT = "incerta.graphs"
STORE_VERSION = 2


def write_store(path: str | Path, frames: Iterable[Frame], cutoff: float) -> int:
    """Write labelled ``frames`` with neighbour lists at ``cutoff`` Å; returns the count."""
    columns: dict[str, list] = {k: [] for k in ("numbers", "positions", "forces", "edge_index", "edge_shifts", "cell",
                                                   "pbc", "energy", "charge", "spin", *PARTIAL_LABELS)}
    atom_offsets, edge_offsets = [0], [0]
    for frame in frames:
        if frame.energy is None or frame.forces is None:
            raise DataError(f"{frame.source}: the on-disk store needs energy and forces")
        edges, shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
        columns["numbers"].append(frame.numbers)
        columns["positions"].append(frame.positions)
        columns["forces"].append(frame.forces)
        columns["edge_index"].append(edges)
        columns["edge_shifts"].append(shifts)
        columns["cell"].append(frame.cell)
        columns["pbc"].append(frame.pbc)
        for key in ("energy", "charge", "spin"):
            columns[key].append(getattr(frame, key))
        for key, (per, shape) in PARTIAL_LABELS.items():
            value = getattr(frame, key)
            columns[key].append(np.full((len(frame),) if per == "atom" else shape, np.nan) if value is None else value)
        atom_offsets.append(atom_offsets[-1] + len(frame))
        edge_offsets.append(edge_offsets[-1] + edges.shape[1])

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as handle:
            handle.attrs.update(format=STORE_FORMAT, version=STORE_VERSION, cutoff=float(cutoff))
            for key in ("numbers", "positions", "forces", "edge_shifts"):
                handle.create_dataset(key, data=np.concatenate(columns[key]), chunks=True)
            handle.create_dataset("edge_index", data=np.concatenate(columns["edge_index"], axis=1), chunks=True)
            for key in ("cell", "pbc", "energy", "charge", "spin"):
                handle.create_dataset(key, data=np.asarray(columns[key]))
            for key, (per, _) in PARTIAL_LABELS.items():
                data = np.concatenate(columns[key]) if per == "atom" else np.asarray(columns[key], dtype=float)
                if np.isfinite(data).any():
                    handle.create_dataset(key, data=data, chunks=per == "atom" or None)
            handle.create_dataset("atom_offsets", data=np.asarray(atom_offsets))
            handle.create_dataset("edge_offsets", data=np.asarray(edge_offsets))

    atomic_write(path, write)
    return len(atom_offsets) - 1


class GraphStore(Sequence[AtomicGraph]):
    """Lazy view of a store: ``store[i]`` is structure i's :class:`AtomicGraph` (float64)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as handle:
                if handle.attrs.get("format") != STORE_FORMAT:
                    raise DataError(f"{self.path}: not an incerta graph store")
                if int(handle.attrs["version"]) > STORE_VERSION:
                    raise DataError(f"{self.path}: written by a newer incerta; upgrade")
                self.cutoff = float(handle.attrs["cutoff"])
                self.atom_offsets = handle["atom_offsets"][()]
                self.edge_offsets = handle["edge_offsets"][()]
        except OSError as err:
            raise DataError(f"{self.path}: cannot read the store ({err})") from err
        self._handle: h5py.File | None = None

    def __len__(self) -> int:
        return len(self.atom_offsets) - 1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}  # reopened in each process

    def _file(self) -> h5py.File:
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle

    def atoms(self, index: int) -> int:
        return int(self.atom_offsets[index + 1] - self.atom_offsets[index])

    def __getitem__(self, index: int) -> AtomicGraph:
        if isinstance(index, slice):
            raise TypeError("GraphStore takes integer indices")
        handle = self._file()
        a0, a1 = self.atom_offsets[index], self.atom_offsets[index + 1]
        e0, e1 = self.edge_offsets[index], self.edge_offsets[index + 1]
        as_t = lambda x, dtype=torch.float64: torch.as_tensor(np.asarray(x), dtype=dtype)
        optional = {}
        for key, (per, _) in PARTIAL_LABELS.items():
            if key in handle:
                value = handle[key][a0:a1] if per == "atom" else handle[key][index][None]
                optional[key] = as_t(value) if np.isfinite(value).all() else None
        return AtomicGraph(
            positions=as_t(handle["positions"][a0:a1]),
            numbers=as_t(handle["numbers"][a0:a1], torch.int64),
            edge_index=as_t(handle["edge_index"][:, e0:e1], torch.int64),
            edge_shifts=as_t(handle["edge_shifts"][e0:e1]),
            cell=as_t(handle["cell"][index]).reshape(1, 3, 3),
            pbc=as_t(handle["pbc"][index], torch.bool).reshape(1, 3),
            batch=torch.zeros(a1 - a0, dtype=torch.int64),
            charge=as_t([handle["charge"][index]]),
            spin=as_t([handle["spin"][index]]),
            energy=as_t([handle["energy"][index]]),
            forces=as_t(handle["forces"][a0:a1]),
            **optional,
        )


def store_frames(store: GraphStore, indices: Sequence[int] | None = None) -> list[Frame]:
    """Frames back from a store (for statistics, reports and tests)."""
    frames = []
    for i in range(len(store)) if indices is None else indices:
        graph = store[i]
        frames.append(Frame(
            numbers=graph.numbers.numpy(), positions=graph.positions.numpy(), cell=graph.cell[0].numpy(),
            pbc=graph.pbc[0].numpy(), energy=float(graph.energy[0]), forces=graph.forces.numpy(),
            charge=float(graph.charge[0]), spin=float(graph.spin[0]), source=f"{store.path}, frame {i}",
            stress=None if graph.stress is None else graph.stress[0].numpy(),
            dipole=None if graph.dipole is None else graph.dipole[0].numpy(),
            atomic_charges=None if graph.atomic_charges is None else graph.atomic_charges.numpy(),
        ))
    return frames


class StoreView(Sequence[AtomicGraph]):
    """The structures ``indices`` of a store, read lazily and cast to ``dtype``."""

    def __init__(self, store: GraphStore, indices: Sequence[int], dtype: torch.dtype = torch.float64) -> None:
        self.store, self.indices, self.dtype = store, [int(i) for i in indices], dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return StoreView(self.store, self.indices[position], self.dtype)
        return self.store[self.indices[position]].to(dtype=self.dtype)

    def atom_counts(self) -> list[int]:
        """Atoms per structure, from the store's offsets (no structure is read)."""
        return [self.store.atoms(i) for i in self.indices]


def is_store(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".h5", ".hdf5")
