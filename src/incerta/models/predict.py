"""The inference core: neighbour graphs for frames (species checked), batched prediction, errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from incerta.data.frame import Frame
from incerta.data.graph import AtomicGraph, batches, frame_to_graph
from incerta.models.errors import ErrorAccumulator
from incerta.models.potential import Potential, UnknownSpeciesError


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def check_species(model: Potential, frames: Sequence[Frame]) -> None:
    """Raise, naming the file and frame, if any frame holds an element the model lacks."""
    known = set(model.species)
    for frame in frames:
        unknown = sorted(set(frame.numbers.tolist()) - known)
        if unknown:
            raise UnknownSpeciesError(
                f"{frame.source}: element(s) {', '.join(chemical_symbols[z] for z in unknown)} not in the model, "
                f"which knows only {', '.join(chemical_symbols[z] for z in model.species)}; "
                "a prediction would be meaningless. Retrain with data containing them."
            )


def graphs_for(model: Potential, frames: Sequence[Frame]) -> list[AtomicGraph]:
    """Neighbour graphs of ``frames`` at the model's cutoff, in the model's dtype."""
    check_species(model, frames)
    dtype = model_dtype(model)
    return [frame_to_graph(f, model.spec.cutoff).to(dtype=dtype) for f in frames]


def predict_batches(
    model: Potential, graphs: Sequence[AtomicGraph], batch_size: int = 16
) -> Iterator[tuple[AtomicGraph, dict[str, torch.Tensor]]]:
    """Yield (batch, outputs) with forces, and stress for periodic batches; the model runs
    on its own device, the outputs come back on the CPU."""
    device = next(model.parameters()).device
    for batch in batches(graphs, batch_size):
        periodic = bool(batch.pbc.any())
        outputs = model(batch.to(device), compute_forces=True, compute_stress=periodic, create_graph=False)
        yield batch, {k: v.detach().cpu() for k, v in outputs.items()}


def error_metrics(model: Potential, graphs: Sequence[AtomicGraph], batch_size: int = 16, reduce: bool = False) -> dict[str, float]:
    """Energy / force (/ stress) MAE and RMSE of ``model`` on labelled ``graphs``; with
    ``reduce``, the sums of all ranks of a distributed run are combined."""
    accumulator = ErrorAccumulator()
    for batch, outputs in predict_batches(model, graphs, batch_size):
        accumulator.update(outputs, batch)
    return (accumulator.reduced() if reduce else accumulator).result()


def collect_predictions(model: Potential, graphs: Sequence[AtomicGraph], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Reference and predicted labels as flat arrays, for plots.

    Keys: n_atoms (B,), energy_ref/energy_pred (B,) eV, forces_ref/forces_pred (N, 3) eV/Å.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("n_atoms", "energy_ref", "energy_pred", "forces_ref", "forces_pred")}
    for batch, outputs in predict_batches(model, graphs, batch_size):
        parts["n_atoms"].append(batch.num_atoms.numpy())
        parts["energy_pred"].append(outputs["energy"].double().numpy())
        parts["forces_pred"].append(outputs["forces"].double().numpy())
        parts["energy_ref"].append(
            np.full(batch.num_graphs, np.nan) if batch.energy is None else batch.energy.double().numpy()
        )
        parts["forces_ref"].append(
            np.full((batch.positions.shape[0], 3), np.nan) if batch.forces is None else batch.forces.double().numpy()
        )
    return {k: np.concatenate(v) for k, v in parts.items()}
