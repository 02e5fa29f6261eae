"""Local vs charge-aware (+ electrostatics) vs learned non-local models on charged systems.

Sets: Ag3+/Ag3- and singlet/triplet CH2 (shared SpookyNet data, GFN2-xTB), C10H2/C10H3+
(shared n2p2 4G example, PBE, with Hirshfeld charges; and a larger GFN2-xTB set made by
`incerta data generate c10h2`), Na8Cl8/Na9Cl8+ (`incerta data generate nacl`). Models:

* local: the equivariant potential alone;
* charge-aware: total charge and spin as inputs + charge equilibration + Coulomb energy;
* non-local: total charge and spin as inputs + learned global attention (no formula).

Per set and model: energy RMSE per atom, force RMSE, atomic-charge RMSE (where reference
charges exist: Hirshfeld in the 4G set, GFN2-xTB charges in the generated ones; the
charge-aware model trains against them). Goals: charge-aware energy error at least 100x
below the local model on Ag3+/-, and below the local model on every set.

Every model trains for the same number of epochs (a wall-time budget gives the slower
charge-aware models fewer steps, and a busy machine fewer to all), once per seed; the
table gives the median over seeds, the JSON every seed.

    .venv/bin/python benchmarks/charge_nonlocal.py --jobs 2     # 3 seeds: ~1.2 h on 2 cores
    .venv/bin/python benchmarks/charge_nonlocal.py --epochs 30 --frames 60 --seeds 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase.io
import numpy as np
import torch
from common import WORK, print_table, shared_data, write_results

from incerta.config import RunConfig
from incerta.data.generate import generate
from incerta.data.io import read_frames
from incerta.models.predict import error_metrics, graphs_for
from incerta.train.checkpoint import load_potential
from incerta.train.run import train_run

MODELS = {
    "local": {},
    "charge-aware": {"electronic_embedding": True, "electrostatics": "qeq"},
    "non-local": {"electronic_embedding": True, "global_attention": True},
}


def charge_rmse(model, frames) -> float | None:
    if any(f.atomic_charges is None for f in frames) or model.spec.electrostatics == "none":
        return None
    errors = []
    for graph, frame in zip(graphs_for(model, frames), frames):
        out = model(graph, compute_forces=False)
        errors.append(out["charges"].detach().double().numpy() - frame.atomic_charges)
    return 1e3 * float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def datasets(data, work, frames: int) -> dict[str, str]:
    paths = {
        "Ag3+/Ag3-": str(data / "spookynet_ag3_carbene" / "ag3_2200.db"),
        "CH2 singlet/triplet": str(data / "spookynet_ag3_carbene" / "carbene_2200.db"),
        "C10H2/C10H3+ (4G, PBE)": str(data / "n2p2_4g_examples" / "examples" / "nnp-train" / "Carbon_chain_4G" / "input.data"),
    }
    for system, name in (("c10h2", "C10H2/C10H3+ (xTB)"), ("nacl", "Na8Cl8/Na9Cl8+ (xTB)")):
        path = work / f"{system}_xtb.xyz"
        if not path.exists():
            made = generate(system, frames, 800.0, command=f"incerta data generate {system} --frames {frames} --temperature 800")
            ase.io.write(path, [f.to_atoms() for f in made], format="extxyz")
        paths[name] = str(path)
    return paths


def split(name: str, path: str, max_train: int) -> tuple[Path, int, list, bool]:
    """Set ``name``'s training file (written on first call) and its size, test frames (a fixed
    fifth) and whether the set has reference atomic charges."""
    frames = read_frames(path)
    order = np.random.default_rng(0).permutation(len(frames))
    test = [frames[i] for i in order[: max(10, len(frames) // 5)]]
    train_index = order[len(test): len(test) + max_train]
    subset = WORK / "charge_nonlocal" / f"{slug(name)}_train.xyz"
    if not subset.exists():
        ase.io.write(subset, [frames[i].to_atoms() for i in train_index], format="extxyz")
    return subset, len(train_index), test, frames[0].atomic_charges is not None


def slug(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_")


def train_and_score(name: str, path: str, seed: int, model_name: str, args) -> dict:
    """Train one model (one thread) on set ``name`` and score it on the set's test frames."""
    torch.set_num_threads(1)
    subset, n_train, test, has_charges = split(name, path, args.max_train)
    blocks = MODELS[model_name]
    config = RunConfig.model_validate({
        "seed": seed,
        "data": {"train": str(subset), "n_val": max(5, n_train // 10)},
        "model": {"l_max": 1, "num_channels": 32, "num_layers": 3, "cutoff": 5.0, **blocks},
        "training": {"epochs": args.epochs, "lr": 0.01, "scheduler_patience": 10,
                     "energy_weight": 0.1, "forces_weight": 0.9, "progress": False,
                     "charges_weight": 1.0 if has_charges and "electrostatics" in blocks else 0.0},
    })
    run = WORK / "charge_nonlocal" / f"{slug(name)}_{model_name}_seed{seed}"
    if not (run / "model").exists():
        train_run(config, run, resume=True)
    model = load_potential(run / "model")
    metrics = error_metrics(model, graphs_for(model, test))
    return {"energy_rmse_meV_per_atom": metrics["energy_per_atom_rmse_meV"],
            "forces_rmse_meV_per_A": metrics["forces_rmse_meV_per_A"],
            "charges_rmse_me": charge_rmse(model, test), "n_train": n_train, "n_test": len(test)}


def median(values: list) -> float | None:
    return None if values[0] is None else float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150, help="training epochs per model")
    parser.add_argument("--seeds", type=int, default=3, help="trainings per (set, model), seeds 0, 1, ...")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, one thread each")
    parser.add_argument("--frames", type=int, default=150, help="generated MD frames per structure")
    parser.add_argument("--max-train", type=int, default=400)
    args = parser.parse_args()
    work = WORK / "charge_nonlocal"
    work.mkdir(parents=True, exist_ok=True)
    sets = datasets(shared_data(), work, args.frames)
    for name, path in sets.items():
        split(name, path, args.max_train)  # training files written once, before the workers start
    jobs = [(name, path, seed, model) for seed in range(args.seeds) for name, path in sets.items() for model in MODELS]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        scores = list(pool.map(train_and_score, *zip(*jobs), [args] * len(jobs)))
    per_seed: dict = {}
    for (name, _, _, model), score in zip(jobs, scores):
        per_seed.setdefault(name, {}).setdefault(model, []).append(score)
    keys = ("energy_rmse_meV_per_atom", "forces_rmse_meV_per_A", "charges_rmse_me")
    results = {name: {model: {**{k: median([s[k] for s in runs]) for k in keys},
                              "energy_rmse_per_seed": [s["energy_rmse_meV_per_atom"] for s in runs],
                              "n_train": runs[0]["n_train"], "n_test": runs[0]["n_test"]}
                      for model, runs in by_model.items()}
               for name, by_model in per_seed.items()}
    rows = [[name, model, r["energy_rmse_meV_per_atom"], " / ".join(f"{e:.3g}" for e in r["energy_rmse_per_seed"]),
             r["forces_rmse_meV_per_A"], "-" if r["charges_rmse_me"] is None else r["charges_rmse_me"]]
            for name, by_model in results.items() for model, r in by_model.items()]
    print_table(f"charged / open-shell systems (median of {args.seeds} seeds, {args.epochs} epochs)",
                ["set", "model", "E RMSE meV/atom", "per seed", "F RMSE meV/Å", "q RMSE me"], rows)
    ag3 = results["Ag3+/Ag3-"]
    ratio = ag3["local"]["energy_rmse_meV_per_atom"] / ag3["charge-aware"]["energy_rmse_meV_per_atom"]
    better = {name: r["charge-aware"]["energy_rmse_meV_per_atom"] < r["local"]["energy_rmse_meV_per_atom"] for name, r in results.items()}
    print(f"\nAg3: local / charge-aware energy error = {ratio:.0f}x (goal >= 100); charge-aware better everywhere: {better}")
    write_results("charge_nonlocal", {"settings": vars(args), "results": results, "ag3_ratio": ratio, "better": better})


if __name__ == "__main__":
    main()
