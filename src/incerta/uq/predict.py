"""Run an uncertainty method or calibrated potential over many graphs, collecting arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches
from incerta.uq.base import UncertaintyMethod
from incerta.uq.model import UncertainPotential


def collect(predictor: UncertaintyMethod | UncertainPotential, graphs: Sequence[AtomicGraph], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Predictions, raw scores (and calibrated uncertainties) as flat numpy arrays.

    Per atom (N): atom_score, forces_pred/forces_ref (N, 3), numbers, structure (index of
    the structure); per structure (B): energy_score, energy_pred, energy_ref, n_atoms; with a
    calibrated :class:`UncertainPotential` also forces_uncertainty (N,), energy_uncertainty
    and structure_uncertainty (B,).
    """
    parts: dict[str, list[np.ndarray]] = {}
    offset = 0
    as_np = lambda t: t.detach().double().cpu().numpy()
    for batch in batches(graphs, batch_size):
        if isinstance(predictor, UncertainPotential):
            out = predictor(batch)
            row = {"energy_pred": out["energy"], "forces_pred": out["forces"], "atom_score": out["atom_score"],
                   "energy_score": out["energy_score"]}
            row.update({k: out[k] for k in (K.FORCES_UNCERTAINTY, K.ENERGY_UNCERTAINTY, K.STRUCTURE_UNCERTAINTY)})
        else:
            raw = predictor(batch)
            row = {"energy_pred": raw.energy, "forces_pred": raw.forces, "atom_score": raw.atom_score,
                   "energy_score": raw.energy_score}
        row = {k: as_np(v) for k, v in row.items()}
        row["n_atoms"] = as_np(batch.num_atoms)
        row["numbers"] = batch.numbers.cpu().numpy()
        row["structure"] = as_np(batch.batch) + offset
        offset += batch.num_graphs
        if batch.energy is not None:
            row["energy_ref"] = as_np(batch.energy)
        if batch.forces is not None:
            row["forces_ref"] = as_np(batch.forces)
        for key, value in row.items():
            parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}

