"""Active learning vs random selection, and one on-the-fly MD run with GFN2-xTB labels.

1. Pool-based (configs/al_acac_pool.yaml): acac pool = train_300K + train_600K with known
   labels (lookup oracle); force RMSE on the 300 K and 600 K test sets against the number
   of labels, for uncertainty selection with two methods and for random selection, 3 seeds.
   Goal: the error random selection reaches with its full budget is reached by uncertainty
   selection with at most half the labels. A reference strategy, "true-error", ranks the
   pool by each frame's actual error under the current model (known here, never in real
   use): the ranking every uncertainty estimate aims at.
2. Pool-based on rMD17 aspirin (train split as pool, test split for the curve).
3. On-the-fly (configs/al_ethanol_md_xtb.yaml): MD at 600 K + GFN2-xTB labels, wall time.

Every (study, strategy, seed) loop runs in its own process with one thread, ``--jobs`` at
a time; its learning curve is kept in benchmarks/work/active_learning/<run>/curve.json,
so a rerun skips finished loops.

    .venv/bin/python benchmarks/active_learning.py --jobs 2       # long: ~4 h on 2 cores
    .venv/bin/python benchmarks/active_learning.py --seeds 1 --skip-rmd17
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT, WORK, print_table, shared_data, write_results

STRATEGIES = {"llpr": ["active.uncertainty.method=llpr"], "gmm": ["active.uncertainty.method=gmm"],
              "random": ["active.selection.strategy=random"]}
#: not a method: selection by each pool frame's actual error (GMM fitted only for the latent features)
REFERENCE = {"true-error": ["active.uncertainty.method=gmm"]}


def true_error_loop():
    """An ActiveLearning whose score is each candidate's actual force RMSE (eV/Å) under the
    current model, read off the pool's known labels: the ranking every uncertainty estimate
    aims at, so its curve shows what uncertainty selection could save on this pool at best."""
    from incerta.active.loop import ActiveLearning

    class TrueErrorSelection(ActiveLearning):
        def structure_scores(self, predictions):
            structure = predictions["structure"].astype(int)
            squared = ((predictions["forces_pred"] - predictions["forces_ref"]) ** 2).sum(axis=1)
            return np.sqrt(np.bincount(structure, squared) / (3 * np.bincount(structure)))

    return TrueErrorSelection


def run_loop(config_path: str, overrides: list[str], folder: Path, strategy: str) -> list[dict]:
    """One active-learning run from scratch; returns its learning curve (also kept in curve.json)."""
    from incerta.active.loop import ActiveLearning
    from incerta.active.report import learning_rows
    from incerta.config import ALConfig, load_experiment

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    loop_class = true_error_loop() if strategy == "true-error" else ActiveLearning
    loop = loop_class(load_experiment(config_path, ALConfig, overrides), folder, progress=False)
    loop.run()
    rows = learning_rows(loop.state)
    (folder / "curve.json").write_text(json.dumps({"rows": rows, "wall_time_s": time.perf_counter() - started}))
    return rows


def run_in_process(config_path: Path, overrides: list[str], folder: Path, strategy: str) -> dict:
    """run_loop in a fresh one-thread process (skipped when its curve.json exists)."""
    curve = folder / "curve.json"
    if not curve.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.log", "w") as log:
            subprocess.run([sys.executable, __file__, "--one", json.dumps([str(config_path), overrides, str(folder), strategy])],
                           check=True, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return json.loads(curve.read_text())


def labels_to_reach(rows: list[dict], key: str, target: float) -> int | None:
    for row in rows:
        if row[key] <= target:
            return row["n_labels"]
    return None


def pool_runs(name: str, config_path: Path, extra: list[str], seeds: int, strategies: dict) -> list[tuple]:
    return [(name, strategy, seed, config_path, [*extra, *overrides, f"seed={seed}", "training.progress=false"])
            for seed in range(seeds) for strategy, overrides in strategies.items()]  # seed by seed


def error_at(rows: list[dict], key: str, labels: int) -> float:
    return next(row[key] for row in rows if row["n_labels"] >= labels)


def summarise(curves: dict[str, list[list[dict]]]) -> dict:
    """Per test set: random's median final error, the labels each strategy needs to reach it,
    and each strategy's median error with half random's budget."""
    keys = [k for k in curves["random"][0][0] if k.endswith("(meV/Å)") and not k.startswith("validation")]
    summary = {}
    for key in keys:
        random_final = float(np.median([c[-1][key] for c in curves["random"]]))
        budget = curves["random"][0][-1]["n_labels"]
        summary[key] = {"random_final": random_final, "random_labels": budget}
        for strategy in curves:
            summary[key][strategy] = {"labels_to_reach_random_final": [labels_to_reach(c, key, random_final) for c in curves[strategy]],
                                      "at_half_budget": float(np.median([error_at(c, key, budget // 2) for c in curves[strategy]])),
                                      "final": float(np.median([c[-1][key] for c in curves[strategy]]))}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rmd17-seeds", type=int, help="seeds of the aspirin study (default: --seeds)")
    parser.add_argument("--jobs", type=int, default=2, help="loops run at once (one thread each)")
    parser.add_argument("--skip-rmd17", action="store_true")
    parser.add_argument("--skip-md", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        config_path, overrides, folder, strategy = json.loads(args.one)
        run_loop(config_path, overrides, Path(folder), strategy)
        return

    started = time.perf_counter()
    acac_config = ROOT / "configs" / "al_acac_pool.yaml"
    runs = pool_runs("acac", acac_config, [], args.seeds, {**STRATEGIES, **REFERENCE})
    if not args.skip_rmd17:
        rmd17 = shared_data() / "rmd17"
        extra = [f"data.train={{path: {rmd17 / 'rmd17_aspirin_train_01.npz'}, select: '::50'}}", "data.e0s=null",
                 f"active.candidates.pool=[{rmd17 / 'rmd17_aspirin_train_01.npz'}]",
                 f"active.test=[{{path: {rmd17 / 'rmd17_aspirin_test_01.npz'}, select: '::4'}}]"]
        runs += pool_runs("rmd17_aspirin", acac_config, extra, args.rmd17_seeds or args.seeds, STRATEGIES)
    if not args.skip_md:
        runs.append(("md_xtb", "llpr", 0, ROOT / "configs" / "al_ethanol_md_xtb.yaml", ["training.progress=false"]))

    def execute(run: tuple) -> tuple:
        name, strategy, seed, config_path, overrides = run
        return run, run_in_process(config_path, overrides, WORK / "active_learning" / name / f"{strategy}_{seed}", strategy)

    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(execute, runs))

    results: dict = {"settings": {"seeds": args.seeds, "rmd17_seeds": args.rmd17_seeds or args.seeds,
                                  "jobs": args.jobs, "threads_per_job": 1}}
    for (name, strategy, _, _, _), curve in outcomes:
        if name == "md_xtb":
            results["md_xtb"] = curve
            continue
        results.setdefault(name, {"curves": {}, "wall_time_s": {}})
        results[name]["curves"].setdefault(strategy, []).append(curve["rows"])
        results[name]["wall_time_s"].setdefault(strategy, []).append(curve["wall_time_s"])
    for name in ("acac", "rmd17_aspirin"):
        if name not in results:
            continue
        results[name]["summary"] = summarise(results[name]["curves"])
        table = []
        for key, s in results[name]["summary"].items():
            for strategy in results[name]["curves"]:
                table.append([name, key, s["random_labels"], s["random_final"], strategy,
                              str(s[strategy]["labels_to_reach_random_final"]), s[strategy]["at_half_budget"],
                              s[strategy]["final"]])
        print_table(f"{name}: labels needed to reach random's final error (median over seeds)",
                    ["study", "test set", "random labels", "random final", "strategy", "labels needed (per seed)",
                     "at half budget", "final"], table)
    if "md_xtb" in results:
        md = results["md_xtb"]
        print(f"\non-the-fly MD + GFN2-xTB: {md['rows'][-1]['n_labels']} labels, wall time {md['wall_time_s'] / 60:.1f} min")
    results["wall_time_s"] = time.perf_counter() - started
    write_results("active_learning", results)


if __name__ == "__main__":
    main()
