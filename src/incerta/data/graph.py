"""AtomicGraph: the tensors the model consumes, for one structure or a batch of them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from incerta.data.frame import Frame
from incerta.data.neighbors import neighbor_list


@dataclass
class AtomicGraph:
    """Inputs and (optional) labels of B structures with N atoms and E edges in total.

    See :mod:`incerta.data.keys` for the meaning and unit of every field.
    """

    positions: torch.Tensor  # (N, 3) Å
    numbers: torch.Tensor  # (N,) int64
    edge_index: torch.Tensor  # (2, E) int64, (receiver, sender)
    edge_shifts: torch.Tensor  # (E, 3) integer cell shifts, stored as float
    cell: torch.Tensor  # (B, 3, 3) Å
    pbc: torch.Tensor  # (B, 3) bool
    batch: torch.Tensor  # (N,) int64
    charge: torch.Tensor  # (B,) e
    spin: torch.Tensor  # (B,) unpaired electrons
    energy: torch.Tensor | None = None  # (B,) eV
    forces: torch.Tensor | None = None  # (N, 3) eV/Å
    stress: torch.Tensor | None = None  # (B, 3, 3) eV/Å^3
    atomic_charges: torch.Tensor | None = None  # (N,) e
    dipole: torch.Tensor | None = None  # (B, 3) e·Å

    @property
    def num_graphs(self) -> int:
        """B (a symbolic size while compiled inference traces the model, so it is not fixed)."""
        return self.cell.shape[0]

    @property
    def num_atoms(self) -> torch.Tensor:
        """(B,) atoms per structure."""
        return torch.bincount(self.batch, minlength=self.num_graphs)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AtomicGraph:
        """Move to a device; floating-point fields are cast to ``dtype`` when given."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if dtype is not None and value.is_floating_point():
                value = value.to(device=device, dtype=dtype)
            else:
                value = value.to(device=device)
            changes[f.name] = value
        return replace(self, **changes)


def frame_to_graph(frame: Frame, cutoff: float) -> AtomicGraph:
    """Build the neighbour graph of one frame (float64 tensors; cast later)."""
    edge_index, shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
    n = len(frame)
    as_t = lambda x: None if x is None else torch.as_tensor(np.asarray(x, dtype=np.float64))
    return AtomicGraph(
        positions=as_t(frame.positions),
        numbers=torch.as_tensor(np.asarray(frame.numbers, dtype=np.int64)),
        edge_index=torch.as_tensor(edge_index),
        edge_shifts=as_t(shifts),
        cell=as_t(frame.cell).reshape(1, 3, 3),
        pbc=torch.as_tensor(np.asarray(frame.pbc, dtype=bool)).reshape(1, 3),
        batch=torch.zeros(n, dtype=torch.int64),
        charge=torch.tensor([float(frame.charge)], dtype=torch.float64),
        spin=torch.tensor([float(frame.spin)], dtype=torch.float64),
        energy=None if frame.energy is None else torch.tensor([float(frame.energy)], dtype=torch.float64),
        forces=as_t(frame.forces),
        stress=None if frame.stress is None else as_t(frame.stress).reshape(1, 3, 3),
        atomic_charges=as_t(frame.atomic_charges),
        dipole=None if frame.dipole is None else as_t(frame.dipole).reshape(1, 3),
    )


def batched_graph(positions: torch.Tensor, numbers: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                  batch: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor, cutoff: float) -> AtomicGraph:
    """The neighbour graph of B structures held as batched tensors, as an MD engine keeps them:
    positions (N, 3) Å, numbers (N,), cell (B, 3, 3) Å in rows, pbc (B, 3), batch (N,) with each
    structure's atoms contiguous, charge and spin (B,). The tensors are used as given (device,
    dtype); the neighbour lists are found per structure on the CPU."""
    coordinates = positions.detach().cpu().double().numpy()
    boxes, periodic = cell.detach().cpu().double().numpy(), pbc.cpu().numpy()
    edges, shifts, start = [], [], 0
    for index, count in enumerate(torch.bincount(batch, minlength=cell.shape[0]).tolist()):
        pairs, images = neighbor_list(coordinates[start : start + count], boxes[index], periodic[index], cutoff)
        edges.append(pairs + start)
        shifts.append(images)
        start += count
    return AtomicGraph(
        positions=positions, numbers=numbers.long(),
        edge_index=torch.from_numpy(np.concatenate(edges, axis=1)).to(positions.device),
        edge_shifts=torch.from_numpy(np.concatenate(shifts)).to(positions.device, positions.dtype),
        cell=cell, pbc=pbc, batch=batch, charge=charge, spin=spin,
    )


#: labels that some structures of a batch may lack: missing entries become NaN (masked in losses
#: and errors); per structure (B, ...) or per atom (N,), with the shape of one entry
PARTIAL_LABELS = {"stress": ("structure", (3, 3)), "dipole": ("structure", (3,)), "atomic_charges": ("atom", ())}


def cell_volumes(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """(B,) volumes in Å^3 of cells (B, 3, 3), NaN where ``pbc`` (B, 3) is not all True
    (TorchScript-compatible, for exported models)."""
    return torch.where(pbc.all(dim=1), torch.linalg.det(cell).abs(), torch.nan)


def crosses_boundary(graph: AtomicGraph) -> bool:
    """Whether any atom of ``graph`` has a neighbour across a periodic boundary (an image)."""
    return bool(graph.edge_shifts.abs().sum() > 0)


def known_rows(label: torch.Tensor) -> torch.Tensor:
    """(rows,) bool: the structures (or atoms) whose label (rows, ...) is known, i.e. not NaN."""
    return torch.isfinite(label).reshape(label.shape[0], -1).all(dim=1)


def _missing(graph: AtomicGraph, name: str, like: torch.Tensor) -> torch.Tensor:
    """NaN placeholders for label ``name`` of every structure (or atom) of ``graph``."""
    per, shape = PARTIAL_LABELS[name]
    count = graph.num_graphs if per == "structure" else graph.positions.shape[0]
    return torch.full((count, *shape), torch.nan, dtype=like.dtype, device=like.device)


def collate(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate graphs into one batch (edge and batch indices offset accordingly). A label of
    :data:`PARTIAL_LABELS` that only some graphs carry is kept, NaN where it is missing."""
    if len(graphs) == 1:
        return graphs[0]
    atom_offsets = np.cumsum([0] + [g.positions.shape[0] for g in graphs[:-1]])
    graph_offsets = np.cumsum([0] + [g.num_graphs for g in graphs[:-1]])
    merged = {}
    for f in fields(AtomicGraph):
        values = [getattr(g, f.name) for g in graphs]
        known = [v for v in values if v is not None]
        if known and len(known) < len(values) and f.name in PARTIAL_LABELS:
            merged[f.name] = torch.cat([_missing(g, f.name, known[0]) if v is None else v for g, v in zip(graphs, values)])
        elif len(known) < len(values):
            merged[f.name] = None
        elif f.name == "edge_index":
            merged[f.name] = torch.cat([v + int(o) for v, o in zip(values, atom_offsets)], dim=1)
        elif f.name == "batch":
            merged[f.name] = torch.cat([v + int(o) for v, o in zip(values, graph_offsets)])
        else:
            merged[f.name] = torch.cat(values, dim=0)
    return AtomicGraph(**merged)


def batches(graphs: Sequence[AtomicGraph], batch_size: int, order: Iterable[int] | None = None):
    """Yield collated batches of ``batch_size`` graphs in ``order`` (default: as given)."""
    order = list(range(len(graphs))) if order is None else list(order)
    for start in range(0, len(order), batch_size):
        yield collate([graphs[i] for i in order[start : start + batch_size]])
