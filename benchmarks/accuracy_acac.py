"""Accuracy at equal wall time on acetylacetone: incerta vs MACE, trained side by side.

Train on dataset_acac/train_300K.xyz (450 train / 50 validation, seeded split shared by
both codes), test on test_MD_300K.xyz and test_MD_600K.xyz. Each code gets the same
wall-time budget on this machine, one after the other (never concurrently):
incerta stops itself (training.max_time_minutes); MACE has no time limit, so its epoch
count is calibrated from a 2-epoch run. Errors of both are computed by the same code.

    .venv/bin/python benchmarks/accuracy_acac.py --minutes 15          # ~35 min in all
    .venv/bin/python benchmarks/accuracy_acac.py --minutes 2 --peer none   # quick check
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import ase.io
import numpy as np
import yaml
from common import INCERTA, WORK, print_table, run_timed, shared_data, write_results

from incerta.config import apply_overrides
from incerta.data.io import read_frames
from incerta.models.errors import ErrorAccumulator
from incerta.models.predict import error_metrics, graphs_for
from incerta.train.checkpoint import load_potential

INCERTA_SETTINGS = {
    "model": {"l_max": 2, "num_channels": 32, "num_layers": 3, "cutoff": 5.0},
    "training": {"epochs": 100000, "batch_size": 5, "lr": 0.01, "scheduler_patience": 10, "progress": False},
}
MACE_ARGS = [
    "--model", "MACE", "--hidden_irreps", "64x0e + 64x1o", "--r_max", "5.0", "--batch_size", "5",
    "--ema", "--ema_decay", "0.99", "--amsgrad", "--device", "cpu", "--default_dtype", "float32",
    "--energy_key", "energy", "--forces_key", "forces", "--eval_interval", "1", "--seed", "0",
]
TESTS = ("test_MD_300K", "test_MD_600K")


def write_split(acac: Path, work: Path, seed: int) -> None:
    frames = ase.io.read(acac / "train_300K.xyz", ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    ase.io.write(work / "train.xyz", [frames[i] for i in order[:450]], format="extxyz")
    ase.io.write(work / "valid.xyz", [frames[i] for i in order[450:500]], format="extxyz")


def run_incerta(acac: Path, work: Path, minutes: float, overrides: list[str]) -> dict:
    settings = json.loads(json.dumps(INCERTA_SETTINGS))
    settings["training"]["max_time_minutes"] = minutes
    apply_overrides(settings, overrides)
    settings["data"] = {
        "train": str(work / "train.xyz"), "validation": [str(work / "valid.xyz")],
        "e0s": str(acac / "isolated_atoms.xyz"),
    }
    config = work / "incerta.yaml"
    config.write_text(yaml.safe_dump(settings))
    shutil.rmtree(work / "incerta", ignore_errors=True)
    wall = run_timed([INCERTA, "train", config, "--run-dir", work / "incerta", "--no-resume"], work / "incerta.log")
    model = load_potential(work / "incerta")
    history = json.loads((work / "incerta" / "metrics.json").read_text())
    tests = {name: error_metrics(model, graphs_for(model, read_frames(acac / f"{name}.xyz"))) for name in TESTS}
    return {"wall_s": wall, "epochs": history["epochs_run"], "tests": tests,
            "parameters": sum(p.numel() for p in model.parameters())}


def _mace_epoch_times(log: Path) -> list[datetime]:
    stamps = re.findall(r"^(\S+ \S+) INFO: Epoch \d+:", log.read_text(), flags=re.M)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f") for s in stamps]


def run_mace(acac: Path, work: Path, minutes: float) -> dict:
    from peers import peer_python

    python = peer_python("mace")
    train = python.parent / "mace_run_train"
    e0s = {int(f.numbers[0]): f.energy for f in read_frames(acac / "isolated_atoms.xyz")}
    common = ["--train_file", work / "train.xyz", "--valid_file", work / "valid.xyz", "--E0s", str(e0s), *MACE_ARGS]
    calibration, run = work / "mace_calibration", work / "mace"
    for folder in (calibration, run):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    total = run_timed([train, "--name", "calib", "--max_num_epochs", "2", *common], work / "mace_calibration.log", cwd=calibration)
    stamps = _mace_epoch_times(calibration / "logs" / "calib_run-0.log")
    epoch_s = (stamps[1] - stamps[0]).total_seconds()
    epochs = max(1, int((60 * minutes - (total - 2 * epoch_s)) / epoch_s))
    wall = run_timed([train, "--name", "mace", "--max_num_epochs", epochs, *common], work / "mace.log", cwd=run)
    tests = {}
    for name in TESTS:
        out = run / f"{name}_pred.xyz"
        run_timed([python.parent / "mace_eval_configs", "--configs", acac / f"{name}.xyz", "--model", run / "mace.model",
                   "--output", out, "--default_dtype", "float32"], work / f"mace_eval_{name}.log")
        reference, predicted = read_frames(acac / f"{name}.xyz"), ase.io.read(out, ":")
        accumulator = ErrorAccumulator()
        for ref, pred in zip(reference, predicted):
            accumulator.add(np.array([pred.info["MACE_energy"] - ref.energy]), np.array([len(ref)]),
                            pred.arrays["MACE_forces"] - ref.forces)
        tests[name] = accumulator.result()
    return {"wall_s": wall, "epochs": epochs, "epoch_s": epoch_s, "tests": tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-time budget per code")
    parser.add_argument("--peer", choices=["mace", "none"], default="mace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override an incerta setting, e.g. --set model.num_layers=4")
    args = parser.parse_args()
    acac = shared_data() / "botnet" / "dataset_acac"
    work = WORK / "accuracy_acac"
    work.mkdir(parents=True, exist_ok=True)
    write_split(acac, work, args.seed)
    results = {"incerta": run_incerta(acac, work, args.minutes, args.overrides)}
    if args.peer == "mace":
        results["mace"] = run_mace(acac, work, args.minutes)
    rows = []
    for code, r in results.items():
        for name, m in r["tests"].items():
            rows.append([code, round(r["wall_s"] / 60, 1), r["epochs"], name, m["energy_per_atom_mae_meV"],
                         m["energy_per_atom_rmse_meV"], m["forces_mae_meV_per_A"], m["forces_rmse_meV_per_A"]])
    print_table(f"acac, train 300 K (450/50), budget {args.minutes} min per code",
                ["code", "wall min", "epochs", "test", "E MAE meV/at", "E RMSE meV/at", "F MAE meV/Å", "F RMSE meV/Å"], rows)
    ratios = {}
    if "mace" in results:
        ratios = {name: results["incerta"]["tests"][name]["forces_rmse_meV_per_A"] / results["mace"]["tests"][name]["forces_rmse_meV_per_A"]
                  for name in TESTS}
        print("\nforce RMSE ratio incerta / MACE: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + " (goal <= 0.8)")
    incerta_settings = apply_overrides(json.loads(json.dumps(INCERTA_SETTINGS)), args.overrides)
    write_results("accuracy_acac", {"budget_minutes": args.minutes, "settings": {"incerta": incerta_settings, "mace": MACE_ARGS},
                                    "results": results, "force_rmse_ratio_incerta_over_mace": ratios})


if __name__ == "__main__":
    main()
