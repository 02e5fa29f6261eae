"""Run an uncertainty method or calibrated potential over many graphs, collecting arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches, cell_volumes, known_rows
from incerta.uq.base import UncertaintyMethod
from incerta.uq.model import UncertainPotential


def collect(predictor: UncertaintyMethod | UncertainPotential, graphs: Sequence[AtomicGraph], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Predictions, raw scores (and calibrated uncertainties) as flat numpy arrays; the
    predictor runs on its own device (the graphs are moved there batch by batch).

    Per atom (N): atom_score, forces_pred/forces_ref (N, 3), numbers, structure (index of
    the structure); per structure (B): energy_score, energy_pred, energy_ref, n_atoms, volume
    (Å^3, NaN unless periodic); with a calibrated :class:`UncertainPotential` also
    forces_uncertainty (N,), energy_uncertainty and structure_uncertainty (B,). When any graph
    has a stress label: stress_pred and stress_ref (B, 3, 3) eV/Å^3 (NaN where unknown), and
    stress_uncertainty (B, 6) from a potential with a stress calibration; from a method made of
    members, also its own raw stress_score (B,) eV/Å^3.
    """
    parts: dict[str, list[np.ndarray]] = {}
    offset = 0
    as_np = lambda t: t.detach().double().cpu().numpy()
    with_stress = any(g.stress is not None and bool(known_rows(g.stress).any()) for g in graphs)
    device = next(predictor.parameters()).device
    for batch in batches(graphs, batch_size):
        batch = batch.to(device)
        if isinstance(predictor, UncertainPotential):
            out = predictor(batch, compute_stress=with_stress)
            row = {"energy_pred": out["energy"], "forces_pred": out["forces"], "atom_score": out["atom_score"],
                   "energy_score": out["energy_score"]}
            row.update({k: out[k] for k in (K.FORCES_UNCERTAINTY, K.ENERGY_UNCERTAINTY, K.STRUCTURE_UNCERTAINTY,
                                            K.STRESS_UNCERTAINTY) if k in out})
            stress = out.get(K.STRESS)
        else:
            raw = predictor(batch, compute_stress=with_stress)
            row = {"energy_pred": raw.energy, "forces_pred": raw.forces, "atom_score": raw.atom_score,
                   "energy_score": raw.energy_score}
            if with_stress and raw.stress_score is not None:
                row["stress_score"] = raw.stress_score
            stress = raw.stress
        if with_stress:
            row["stress_pred"] = stress
            row["stress_ref"] = batch.stress if batch.stress is not None else torch.full_like(stress, torch.nan)
        row["volume"] = cell_volumes(batch.cell, batch.pbc)
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

