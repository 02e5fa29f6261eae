"""NequIP (peer code) on acetylacetone: train, compile (AOTInductor, CPU), evaluate, time through ASE.

Runs under the NequIP venv only (``python benchmarks/peers.py nequip`` creates it), never
under the project's .venv, and imports nothing from incerta:

    PY=benchmarks/.venvs/nequip/bin/python
    OMP_NUM_THREADS=1 $PY benchmarks/nequip_peer.py train --minutes 30
    OMP_NUM_THREADS=1 $PY benchmarks/nequip_peer.py compile
    OMP_NUM_THREADS=1 $PY benchmarks/nequip_peer.py evaluate
    OMP_NUM_THREADS=1 $PY benchmarks/nequip_peer.py time --system acac_15 --threads 1

Same 450/50 split of train_300K.xyz as ``accuracy_acac.write_split`` (seed 0). Model and
training follow NequIP's tutorial config (configs/tutorial.yaml of nequip 0.19): 4 layers,
l_max 1, 32 features, r_max 5 Å, float32, Adam lr 0.01, EnergyForceLoss (per-atom energy,
coefficients 1:1), EMA 0.999, ReduceLROnPlateau(0.6, patience 5, threshold 0.2); batch 5.
Differences from the tutorial: CPU eager training; no early stopping unless
``--early-stopping`` (the tutorial's min_delta 1e-3, patience 20 stopped a 30-min run after
20 min), so the wall-time budget is used in full like the other codes; no ZBL pair term
(the other codes have none); isolated-atom energies as per-type energy shifts (the
tutorial's recommended choice); CSV logger instead of wandb; no dataloader workers.

A timing script in this venv uses ``calculator(path)``:
``atoms.calc = calculator(path); atoms.get_forces()``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import WORK, shared_data  # noqa: E402  (stdlib-only helpers)

RUN = WORK / "nequip_acac"
CHECKPOINT = RUN / "best.ckpt"
PACKAGE = RUN / "nequip_acac.nequip.pt2"
TYPE_NAMES = ["H", "C", "O"]
TESTS = ("test_MD_300K", "test_MD_600K")
SYSTEMS = ("acac_15", "ethanol_cluster_27", "water_box_1536")


def acac_dir() -> Path:
    return shared_data() / "botnet" / "dataset_acac"


def write_split(acac: Path, work: Path, seed: int) -> None:
    """Same frames as ``accuracy_acac.write_split``: seeded permutation, 450 train / 50 validation."""
    import ase.io

    frames = ase.io.read(acac / "train_300K.xyz", ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    ase.io.write(work / "train.xyz", [frames[i] for i in order[:450]], format="extxyz")
    ase.io.write(work / "valid.xyz", [frames[i] for i in order[450:500]], format="extxyz")


def isolated_energies(acac: Path) -> dict[str, float]:
    import ase.io

    return {a.get_chemical_symbols()[0]: float(a.get_potential_energy()) for a in ase.io.read(acac / "isolated_atoms.xyz", ":")}


def config(work: Path, minutes: float, e0s: dict[str, float], seed: int, early_stopping: bool = False) -> dict:
    """The Hydra config for ``nequip-train`` (tutorial defaults, see the module docstring)."""
    monitored = "val0_epoch/weighted_sum"
    days, rest = divmod(round(60 * minutes), 86400)
    max_time = f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    loader = {"_target_": "torch.utils.data.DataLoader", "num_workers": 0}
    return {
        "run": ["train"],
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": seed,
            "train_file_path": str(work / "train.xyz"),
            "val_file_path": str(work / "valid.xyz"),
            "transforms": [
                {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper", "model_type_names": TYPE_NAMES},
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": 5.0},
            ],
            "train_dataloader": {**loader, "batch_size": 5, "shuffle": True},
            "val_dataloader": {**loader, "batch_size": 10},
            "stats_manager": {"_target_": "nequip.data.CommonDataStatisticsManager", "type_names": TYPE_NAMES,
                              "dataloader_kwargs": {"batch_size": 10}},
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "cpu",
            "devices": 1,
            "enable_checkpointing": True,
            "enable_progress_bar": False,
            "max_epochs": 100000,
            "max_time": max_time,
            "log_every_n_steps": 90,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(work), "name": "csv", "version": 0},
            "callbacks": [
                *([{"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": monitored, "min_delta": 1e-3,
                    "patience": 20}] if early_stopping else []),
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "monitor": monitored, "dirpath": str(work),
                 "filename": "best", "save_last": True},
                {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor", "logging_interval": "epoch"},
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": 0.999,
            "loss": {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
                     "coeffs": {"total_energy": 1.0, "forces": 1.0}},
            "val_metrics": {"_target_": "nequip.train.EnergyForceMetrics",
                            "coeffs": {"total_energy_mae": 1.0, "forces_mae": 1.0}},
            "train_metrics": "${training_module.val_metrics}",
            "test_metrics": "${training_module.val_metrics}",
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.01},
            "lr_scheduler": {
                "scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "factor": 0.6, "patience": 5,
                              "threshold": 0.2, "min_lr": 1e-6},
                "monitor": monitored, "interval": "epoch", "frequency": 1,
            },
            "model": {
                "_target_": "nequip.model.NequIPGNNModel",
                "seed": seed,
                "model_dtype": "float32",
                "type_names": TYPE_NAMES,
                "r_max": 5.0,
                "num_bessels": 8,
                "bessel_trainable": False,
                "polynomial_cutoff_p": 6,
                "num_layers": 4,
                "l_max": 1,
                "parity": True,
                "num_features": 32,
                "radial_mlp_depth": 2,
                "radial_mlp_width": 64,
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_scales": "${training_data_stats:per_type_forces_rms}",
                "per_type_energy_shifts": e0s,
                "per_type_energy_scales_trainable": False,
                "per_type_energy_shifts_trainable": False,
            },
        },
    }


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def train(minutes: float = 30.0, seed: int = 0, threads: int = 1, run: Path = RUN, early_stopping: bool = False) -> dict:
    """Train with ``nequip-train`` into ``run`` (best.ckpt, last.ckpt, csv/version_0/metrics.csv)."""
    import yaml

    run = Path(run).resolve()
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    acac = acac_dir()
    write_split(acac, run, seed)
    (run / "config.yaml").write_text(yaml.safe_dump(config(run, minutes, isolated_energies(acac), seed, early_stopping), sort_keys=False))
    started = time.perf_counter()
    with open(run / "train.log", "w") as log:
        subprocess.run([_bin("nequip-train"), "-cp", str(run), "-cn", "config", f"hydra.run.dir={run / 'hydra'}"],
                       cwd=run, stdout=log, stderr=subprocess.STDOUT, check=True, env=_env(threads))
    wall = time.perf_counter() - started
    summary = {"wall_s": wall, "checkpoint": str(run / "best.ckpt"), **_history(run)}
    (run / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _history(run: Path) -> dict:
    """Epochs run and the last validation metrics from Lightning's CSV log."""
    import csv

    rows = list(csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")))
    val = [r for r in rows if r.get("val0_epoch/weighted_sum")]
    if not val:
        return {"epochs": 0}
    last = val[-1]
    best = min(val, key=lambda r: float(r["val0_epoch/weighted_sum"]))
    pick = lambda r: {k: float(v) for k, v in r.items() if v and k.startswith("val0_epoch/")}
    return {"epochs": int(float(last["epoch"])) + 1, "last_val": pick(last), "best_val": pick(best),
            "best_epoch": int(float(best["epoch"])) + 1}


def compile_model(checkpoint: Path = CHECKPOINT, output: Path = PACKAGE, threads: int = 1) -> Path:
    """``nequip-compile --mode aotinductor --device cpu --target ase`` (float32 is the model's dtype)."""
    checkpoint, output = Path(checkpoint).resolve(), Path(output).resolve()
    started = time.perf_counter()
    with open(output.parent / "compile.log", "w") as log:
        subprocess.run([_bin("nequip-compile"), str(checkpoint), str(output), "--mode", "aotinductor", "--device", "cpu",
                        "--target", "ase"], cwd=output.parent, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env=_env(threads))
    print(f"compiled {output} in {time.perf_counter() - started:.0f} s")
    return output


def calculator(model_path: str | Path = PACKAGE):
    """NequIP's ASE calculator for a compiled (AOTInductor, ``--target ase``) package, on CPU."""
    from nequip.integrations.ase import NequIPCalculator

    return NequIPCalculator.from_compiled_model(str(model_path), device="cpu",
                                                chemical_species_to_atom_type_map={s: s for s in TYPE_NAMES})


def errors(model_path: Path, frames) -> dict:
    """MAE/RMSE of energy per atom (meV/atom), total energy (meV) and force components (meV/Å)."""
    calc = calculator(model_path)
    de, de_atom, df = [], [], []
    for ref in frames:
        e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
        atoms = ref.copy()
        atoms.calc = calc
        de.append(atoms.get_potential_energy() - e_ref)
        de_atom.append(de[-1] / len(atoms))
        df.append((atoms.get_forces() - f_ref).ravel())
    de, de_atom, df = np.array(de), np.array(de_atom), np.concatenate(df)
    mae = lambda x: 1e3 * float(np.abs(x).mean())
    rmse = lambda x: 1e3 * float(np.sqrt(np.square(x).mean()))
    return {"n_structures": len(de), "energy_mae_meV": mae(de), "energy_rmse_meV": rmse(de),
            "energy_per_atom_mae_meV": mae(de_atom), "energy_per_atom_rmse_meV": rmse(de_atom),
            "forces_mae_meV_per_A": mae(df), "forces_rmse_meV_per_A": rmse(df)}


def evaluate(model_path: Path = PACKAGE) -> dict:
    import ase.io

    acac = acac_dir()
    return {name: errors(model_path, ase.io.read(acac / f"{name}.xyz", ":")) for name in TESTS}


def time_calls(model_path: Path, system: str, threads: int = 1, calls: int = 30) -> dict:
    """As speed_worker.py: median ms per ``get_forces`` after 3 warm-up calls, 1e-3 Å random moves between calls."""
    import resource

    import torch
    from speed_worker import build_system

    torch.set_num_threads(threads)
    atoms = build_system(system, shared_data())
    atoms.calc = calculator(model_path)
    rng = np.random.default_rng(0)
    times = []
    for call in range(calls + 3):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        started = time.perf_counter()
        atoms.get_forces()
        if call >= 3:
            times.append(time.perf_counter() - started)
    median = float(np.median(times))
    return {"code": "nequip", "system": system, "atoms": len(atoms), "threads": threads,
            "median_ms": 1e3 * median, "q25_ms": 1e3 * float(np.percentile(times, 25)),
            "q75_ms": 1e3 * float(np.percentile(times, 75)), "atom_steps_per_s": len(atoms) / median,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train on the 450/50 split of train_300K.xyz")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-time budget (Lightning max_time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run", type=Path, default=RUN)
    p.add_argument("--early-stopping", action="store_true", help="the tutorial's EarlyStopping (min_delta 1e-3, patience 20)")
    p = sub.add_parser("compile", help="AOTInductor package for CPU, target ase")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--output", type=Path, default=PACKAGE)
    p = sub.add_parser("evaluate", help="JSON errors of the compiled model on test_MD_300K/600K")
    p.add_argument("--model", type=Path, default=PACKAGE)
    p = sub.add_parser("time", help="JSON timing of get_forces through ASE (speed_worker.py's protocol)")
    p.add_argument("--model", type=Path, default=PACKAGE)
    p.add_argument("--system", choices=SYSTEMS, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    if args.command == "train":
        print(json.dumps(train(args.minutes, args.seed, args.threads, args.run, args.early_stopping), indent=1))
    elif args.command == "compile":
        compile_model(args.checkpoint, args.output)
    elif args.command == "evaluate":
        import torch

        torch.set_num_threads(1)
        print(json.dumps(evaluate(args.model), indent=1))
    else:
        print(json.dumps(time_calls(args.model, args.system, args.threads, args.calls)))


if __name__ == "__main__":
    main()
