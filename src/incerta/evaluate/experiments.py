"""Building blocks shared by the uncertainty experiments (temperature shift, OOD matrix).

Every step leaves a file behind and is skipped when that file exists, so a killed
experiment resumes where it stopped: trained models (resumable runs), fitted methods
(``uncertainty.safetensors``), predictions (``predictions_<group>.npz``).
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from incerta.config.sources import Splits
from incerta.config.uncertainty import FitSection
from incerta.data.frame import Frame
from incerta.models.predict import graphs_for
from incerta.train.checkpoint import MODEL_FILE, load_potential, potential_digest
from incerta.uq.base import FitSettings
from incerta.uq.fit import fit_uncertainty
from incerta.uq.model import Aggregate
from incerta.uq.predict import collect
from incerta.uq.store import has_uncertainty, load_uncertain_potential, read_uncertainty_metadata
from incerta.utils.files import atomic_write, atomic_write_text


def attach_method(base_model: Path, folder: Path, method: str, splits: Splits, fit: FitSection, seed: int,
                  progress: bool, options: dict | None = None) -> dict:
    """``folder`` = copy of ``base_model`` with ``method`` (built with ``options``) fitted and
    calibrated (skipped if done for the base model's present weights)."""
    if has_uncertainty(folder) and potential_digest(folder) == potential_digest(base_model):
        return json.loads(read_uncertainty_metadata(folder)["report"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(base_model / MODEL_FILE, folder / MODEL_FILE)
    settings = FitSettings(**fit.model_dump(), seed=seed, progress=progress)
    return fit_uncertainty(folder, method, splits.train, splits.validation, options, settings)


def predictions(model: Path, frames: Sequence[Frame], cache: Path, aggregate: Aggregate) -> dict[str, np.ndarray]:
    """:func:`incerta.uq.predict.collect` arrays of ``model`` on ``frames``, cached in ``cache`` (npz)."""
    if cache.is_file():
        with np.load(cache) as data:
            return dict(data)
    uncertain = load_uncertain_potential(model, aggregate)
    arrays = collect(uncertain, graphs_for(uncertain.potential, frames))
    atomic_write(cache, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    return arrays


def inference_overhead(model: Path, frames: Sequence[Frame], calls: int = 40) -> float:
    """Median over structures of the time of one prediction with uncertainty / without
    (bare potential); the two run alternately on each structure, so a load that comes
    and goes on the machine weighs on both alike."""
    uncertain = load_uncertain_potential(model)
    potential = load_potential(model)
    bare = partial(potential, compute_forces=True, create_graph=False)
    graphs = graphs_for(potential, frames[:calls])

    def seconds(predict, graph) -> float:
        started = time.perf_counter()
        predict(graph)
        return time.perf_counter() - started

    for graph in graphs[:3]:  # warm-up
        uncertain(graph)
        bare(graph)
    return float(np.median([seconds(uncertain, g) / seconds(bare, g) for g in graphs]))


def force_error_norms(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.linalg.norm(arrays["forces_pred"] - arrays["forces_ref"], axis=1)


def write_table(path: Path, header: list[str], rows: list[list]) -> None:
    """CSV (atomic)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    atomic_write(path, write)


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=float))
