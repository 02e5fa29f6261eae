"""Low-rank LLPR against the exact propagation on acetylacetone: ranking, calibration and cost.

A model trained on 450 frames at 300 K (l_max 2, 32 channels, 3 layers, float32; the
``--minutes`` budget), LLPR fitted exactly on its training and validation frames, then for
ranks k = 2, 4, 8, 16 (the directions ``incerta uq fit`` keeps: of the posterior's k widest and
the k that keep the most force variance over the validation atoms, those that rank these atoms
more like the exact propagation; and, for comparison, the 8 widest, which LLPR always kept
before) and the exact propagation on 300 K and 600 K test frames: Spearman of
the per-atom force uncertainty against the exact one and against the force error, and the
cost of one calculator call with the uncertainty relative to energy + forces alone (median,
2 threads, single structures as in MD).

    .venv/bin/python benchmarks/llpr_rank.py --minutes 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import WORK, print_table, shared_data, write_results

from incerta import IncertaCalculator
from incerta.config import RunConfig
from incerta.config.sources import prepare_splits
from incerta.data.io import read_frames
from incerta.models.predict import graphs_for
from incerta.train.checkpoint import load_potential
from incerta.train.run import train_run
from incerta.uq.base import FitSettings
from incerta.uq.fit import calibrate
from incerta.uq.llpr import LLPRUncertainty
from incerta.uq.metrics import spearman
from incerta.uq.model import UncertainPotential
from incerta.uq.predict import collect

RANKS = (2, 4, 8, 16)


def trained_model(minutes: float):
    acac = shared_data() / "botnet" / "dataset_acac"
    run = WORK / "llpr_rank" / "run"
    config = RunConfig.model_validate({
        "seed": 0,
        "data": {"train": str(acac / "train_300K.xyz"), "n_val": 50, "e0s": str(acac / "isolated_atoms.xyz")},
        "model": {"l_max": 2, "num_channels": 32, "num_layers": 3},
        "training": {"epochs": 100000, "max_time_minutes": minutes, "lr": 0.01, "progress": False},
    })
    if not (run / "model").exists():
        train_run(config, run)
    return load_potential(run / "model"), prepare_splits(config.data, config.seed), acac


def call_ms(model, atoms, uncertainty: bool, calls: int = 20) -> float:
    calculator = IncertaCalculator(model, annotate=False)
    name = "forces_uncertainty" if uncertainty else "forces"
    times = []
    for call in range(calls + 2):
        atoms.positions[0, 0] += 1e-6
        started = time.perf_counter()
        calculator.get_property(name, atoms)
        if call >= 2:
            times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    potential, splits, acac = trained_model(args.minutes)
    train, validation = graphs_for(potential, splits.train), graphs_for(potential, splits.validation)
    exact = LLPRUncertainty(potential, rank=None)
    exact.fit(train, validation, FitSettings(progress=False))
    tests = {t: read_frames(acac / f"test_MD_{t}.xyz")[:100] for t in ("300K", "600K")}
    test_graphs = [g for frames in tests.values() for g in graphs_for(potential, frames)]
    validation_jacobian = torch.cat([exact._features(g).jacobian for g in validation])
    exact_scores = exact._atom_scores(validation_jacobian, exact.inverse).numpy()
    methods = {"exact": exact}
    for rank in RANKS:
        method = LLPRUncertainty(potential, rank=rank)
        method._set_inverse(exact.inverse)
        method.choose_directions(validation_jacobian, exact_scores)
        methods[f"rank {rank}"] = method
    widest = methods["rank 8 (widest)"] = LLPRUncertainty(potential, rank=8)
    widest._set_inverse(exact.inverse)
    reference = None
    atoms = tests["300K"][0].to_atoms()
    bare_ms = call_ms(potential, atoms, uncertainty=False)
    rows, results = [], {"bare_ms": bare_ms}
    for label, method in methods.items():
        uncertain = UncertainPotential(method, calibrate(method, validation))
        arrays = collect(uncertain, test_graphs)
        sigma = arrays["forces_uncertainty"]
        error = np.linalg.norm(arrays["forces_pred"] - arrays["forces_ref"], axis=1)
        reference = sigma if reference is None else reference
        ms = call_ms(uncertain, atoms, uncertainty=True)
        results[label] = {"spearman_vs_exact": spearman(sigma, reference), "spearman_vs_error": spearman(sigma, error),
                          "call_ms": ms, "cost_over_bare": ms / bare_ms}
        rows.append([label, f"{results[label]['spearman_vs_exact']:.3f}", f"{results[label]['spearman_vs_error']:.3f}",
                     f"{ms:.1f}", f"{ms / bare_ms:.2f}"])
    print_table(f"LLPR on acac test frames (300 + 600 K); bare energy + forces {bare_ms:.1f} ms per call",
                ["propagation", "Spearman vs exact", "Spearman vs |force error|", "ms per call", "x bare"], rows)
    write_results("llpr_rank", results)


if __name__ == "__main__":
    main()
