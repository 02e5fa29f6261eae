"""Accuracy at equal training budget on acetylacetone: incerta (each model preset), MACE and NequIP.

Train on dataset_acac/train_300K.xyz (450 train / 50 validation, seeded split shared by
every code), test on test_MD_300K.xyz and test_MD_600K.xyz. Each code gets the same
wall-time budget on ``--threads`` threads (two one-thread trainings may share the 2 cores):
incerta stops itself (training.max_time_minutes); MACE has no time limit, so its epoch count
is calibrated from a 2-epoch run; NequIP stops itself (Lightning's max_time, and its early
stopping), trained and compiled by ``nequip_peer.py`` in its own venv. Errors of incerta and
MACE are computed by the same code; NequIP's by its compiled model through ASE.

Runs can be split (``--codes``): each run adds its codes to results/accuracy_acac.json when the
budget and threads are those already there (read when the run ends, so runs side by side keep
each other's codes), and replaces the file otherwise.

    .venv/bin/python benchmarks/accuracy_acac.py --minutes 15                    # incerta (accurate) and MACE
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_acac.py --minutes 30 --threads 1 --codes incerta --preset fast
    .venv/bin/python benchmarks/accuracy_acac.py --minutes 2 --codes incerta   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

import ase.io
import numpy as np
import yaml
from common import INCERTA, RESULTS, WORK, machine, print_table, run_timed, shared_data, write_results

from incerta.config import apply_overrides
from incerta.config.model import PRESETS
from incerta.data.io import read_frames
from incerta.models.errors import ErrorAccumulator
from incerta.models.predict import error_metrics, graphs_for
from incerta.train.checkpoint import load_potential

INCERTA_SETTINGS = {
    "model": {"preset": "accurate", "cutoff": 5.0},
    "training": {"epochs": 100000, "batch_size": 5, "lr": 0.01, "scheduler_patience": 10, "progress": False},
}
MACE_ARGS = [
    "--model", "MACE", "--hidden_irreps", "64x0e + 64x1o", "--r_max", "5.0", "--batch_size", "5",
    "--ema", "--ema_decay", "0.99", "--amsgrad", "--device", "cpu", "--default_dtype", "float32",
    "--energy_key", "energy", "--forces_key", "forces", "--eval_interval", "1", "--seed", "0",
]
TESTS = ("test_MD_300K", "test_MD_600K")


def write_split(acac: Path, work: Path, seed: int) -> None:
    """The seeded 450 / 50 split, each file written whole before it replaces the last (runs side by side)."""
    frames = ase.io.read(acac / "train_300K.xyz", ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    for name, picked in (("train", order[:450]), ("valid", order[450:500])):
        partial = work / f"{name}.{os.getpid()}.xyz"
        ase.io.write(partial, [frames[i] for i in picked], format="extxyz")
        partial.replace(work / f"{name}.xyz")


def incerta_settings(preset: str, overrides: list[str]) -> dict:
    settings = json.loads(json.dumps(INCERTA_SETTINGS))
    settings["model"]["preset"] = preset
    return apply_overrides(settings, overrides)


def run_incerta(acac: Path, work: Path, minutes: float, settings: dict, threads: int) -> dict:
    """Train in ``work``/incerta-PRESET; the model lands in its ``model`` folder."""
    settings = json.loads(json.dumps(settings))
    settings["training"]["max_time_minutes"] = minutes
    settings["data"] = {
        "train": str(work / "train.xyz"), "validation": [str(work / "valid.xyz")],
        "e0s": str(acac / "isolated_atoms.xyz"),
    }
    run = work / f"incerta-{settings['model']['preset']}"
    config = run.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(settings))
    shutil.rmtree(run, ignore_errors=True)
    wall = run_timed([INCERTA, "train", config, "--run-dir", run, "--no-resume"], run.with_suffix(".log"),
                     env=threads_env(threads))
    model = load_potential(run)
    history = json.loads((run / "metrics.json").read_text())
    tests = {name: error_metrics(model, graphs_for(model, read_frames(acac / f"{name}.xyz"))) for name in TESTS}
    return {"wall_s": wall, "epochs": history["epochs_run"], "tests": tests,
            "parameters": sum(p.numel() for p in model.parameters())}


def _mace_epoch_times(log: Path) -> list[datetime]:
    stamps = re.findall(r"^(\S+ \S+) INFO: Epoch \d+:", log.read_text(), flags=re.M)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f") for s in stamps]


def threads_env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_nequip(minutes: float, threads: int) -> dict:
    """NequIP trained, compiled and evaluated by nequip_peer.py in its own venv."""
    from nequip_peer import PACKAGE, RUN
    from peers import peer_python

    python, script = peer_python("nequip"), Path(__file__).resolve().parent / "nequip_peer.py"
    env = threads_env(threads)
    wall = run_timed([python, script, "train", "--minutes", minutes, "--threads", threads], WORK / "nequip_train.log", env=env)
    run_timed([python, script, "compile"], WORK / "nequip_compile.log", env=env)
    run_timed([python, script, "evaluate", "--model", PACKAGE], WORK / "nequip_evaluate.log", env=env)
    summary = json.loads((RUN / "train_summary.json").read_text())
    tests = json.loads((RUN / "evaluate.json").read_text())
    return {"wall_s": wall, "epochs": summary["epochs"], "tests": tests}


def run_mace(acac: Path, work: Path, minutes: float, threads: int) -> dict:
    from peers import peer_python

    python = peer_python("mace")
    train = python.parent / "mace_run_train"
    e0s = {int(f.numbers[0]): f.energy for f in read_frames(acac / "isolated_atoms.xyz")}
    common = ["--train_file", work / "train.xyz", "--valid_file", work / "valid.xyz", "--E0s", str(e0s), *MACE_ARGS]
    calibration, run = work / "mace_calibration", work / "mace"
    for folder in (calibration, run):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    env = threads_env(threads)
    total = run_timed([train, "--name", "calib", "--max_num_epochs", "2", *common], work / "mace_calibration.log",
                      cwd=calibration, env=env)
    stamps = _mace_epoch_times(calibration / "logs" / "calib_run-0.log")
    epoch_s = (stamps[1] - stamps[0]).total_seconds()
    epochs = max(1, int((60 * minutes - (total - 2 * epoch_s)) / epoch_s))
    wall = run_timed([train, "--name", "mace", "--max_num_epochs", epochs, *common], work / "mace.log", cwd=run, env=env)
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
    parser.add_argument("--threads", type=int, default=2, help="threads of each training")
    parser.add_argument("--codes", nargs="+", choices=["incerta", "mace", "nequip"], default=["incerta", "mace"])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="accurate", help="incerta's model size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override an incerta setting, e.g. --set model.num_layers=4")
    args = parser.parse_args()
    acac = shared_data() / "botnet" / "dataset_acac"
    work, results_file = WORK / "accuracy_acac", RESULTS / "accuracy_acac.json"
    work.mkdir(parents=True, exist_ok=True)
    write_split(acac, work, args.seed)
    settings = incerta_settings(args.preset, args.overrides)
    results, all_settings = {}, {}
    if "incerta" in args.codes:
        results[f"incerta ({args.preset})"] = run_incerta(acac, work, args.minutes, settings, args.threads)
        all_settings[f"incerta ({args.preset})"] = settings
    if "mace" in args.codes:
        results["mace"] = run_mace(acac, work, args.minutes, args.threads)
        all_settings["mace"] = MACE_ARGS
    if "nequip" in args.codes:
        results["nequip"] = run_nequip(args.minutes, args.threads)
        all_settings["nequip"] = "nequip_peer.py (4 layers, l_max 1, 32 features, r_max 5 Å, tutorial training)"
    for entry in results.values():  # entries of earlier runs kept beside them may come from another machine
        entry["measured_on"] = machine()
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}  # read last: runs side by side
    if (previous.get("budget_minutes"), previous.get("threads")) == (args.minutes, args.threads):
        results, all_settings = {**previous["results"], **results}, {**previous["settings"], **all_settings}
    rows = []
    for code, r in results.items():
        for name, m in r["tests"].items():
            rows.append([code, round(r["wall_s"] / 60, 1), r["epochs"], name, m["energy_per_atom_mae_meV"],
                         m["energy_per_atom_rmse_meV"], m["forces_mae_meV_per_A"], m["forces_rmse_meV_per_A"]])
    print_table(f"acac, train 300 K (450/50), budget {args.minutes} min per code on {args.threads} thread(s)",
                ["code", "wall min", "epochs", "test", "E MAE meV/at", "E RMSE meV/at", "F MAE meV/Å", "F RMSE meV/Å"], rows)
    ratios = {}
    for code, peer in (("incerta (accurate)", "mace"), ("incerta (accurate)", "nequip"), ("incerta (fast)", "mace"),
                       ("incerta (fast)", "nequip")):
        if code in results and peer in results:
            ratios[f"{code} / {peer}"] = {name: results[code]["tests"][name]["forces_rmse_meV_per_A"]
                                         / results[peer]["tests"][name]["forces_rmse_meV_per_A"] for name in TESTS}
    for name, values in ratios.items():
        print(f"force RMSE ratio {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    write_results("accuracy_acac", {"budget_minutes": args.minutes, "threads": args.threads, "settings": all_settings,
                                    "results": results, "force_rmse_ratios": ratios})


if __name__ == "__main__":
    main()
