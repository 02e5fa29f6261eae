"""Active learning vs random selection, and one on-the-fly MD run with GFN2-xTB labels.

1. Pool-based (configs/al_acac_pool.yaml): acac pool = train_300K + train_600K with known
   labels (lookup oracle); force RMSE on the 300 K and 600 K test sets against the number
   of labels, for uncertainty selection with two methods and for random selection, 3 seeds.
   Goal: the error random selection reaches with its full budget is reached by uncertainty
   selection with at most half the labels.
2. Pool-based on rMD17 aspirin (train split as pool, test split for the curve).
3. On-the-fly (configs/al_ethanol_md_xtb.yaml): MD at 600 K + GFN2-xTB labels, wall time.

    .venv/bin/python benchmarks/active_learning.py            # long: ~2-3 h on 2 cores
    .venv/bin/python benchmarks/active_learning.py --seeds 1 --skip-rmd17
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
from common import ROOT, WORK, print_table, shared_data, write_results

from incerta.active.loop import ActiveLearning
from incerta.active.report import learning_rows
from incerta.config import ALConfig, load_experiment

STRATEGIES = {"llpr": ["active.uncertainty.method=llpr"], "gmm": ["active.uncertainty.method=gmm"],
              "random": ["active.selection.strategy=random"]}


def run(config_path, overrides, folder) -> list[dict]:
    shutil.rmtree(folder, ignore_errors=True)
    loop = ActiveLearning(load_experiment(config_path, ALConfig, overrides), folder, progress=False)
    loop.run()
    return learning_rows(loop.state)


def labels_to_reach(rows: list[dict], key: str, target: float) -> int | None:
    for row in rows:
        if row[key] <= target:
            return row["n_labels"]
    return None


def pool_study(name: str, config_path, extra: list[str], seeds: int) -> dict:
    curves = {}
    for strategy, overrides in STRATEGIES.items():
        for seed in range(seeds):
            rows = run(config_path, [*extra, *overrides, f"seed={seed}", "training.progress=false"],
                       WORK / "active_learning" / name / f"{strategy}_{seed}")
            curves.setdefault(strategy, []).append(rows)
    keys = [k for k in curves["random"][0][0] if k.endswith("(meV/Å)") and not k.startswith("validation")]
    summary = {}
    for key in keys:
        random_final = float(np.median([c[-1][key] for c in curves["random"]]))
        budget = curves["random"][0][-1]["n_labels"]
        summary[key] = {"random_final": random_final, "random_labels": budget}
        for strategy in ("llpr", "gmm"):
            needed = [labels_to_reach(c, key, random_final) for c in curves[strategy]]
            summary[key][strategy] = {"labels_to_reach_random_final": needed,
                                      "final": float(np.median([c[-1][key] for c in curves[strategy]]))}
    return {"curves": curves, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-rmd17", action="store_true")
    parser.add_argument("--skip-md", action="store_true")
    args = parser.parse_args()
    results = {}
    acac_config = ROOT / "configs" / "al_acac_pool.yaml"
    results["acac"] = pool_study("acac", acac_config, [], args.seeds)
    if not args.skip_rmd17:
        rmd17 = shared_data() / "rmd17"
        extra = [f"data.train={{path: {rmd17 / 'rmd17_aspirin_train_01.npz'}, select: '::50'}}", "data.e0s=null",
                 f"active.candidates.pool=[{rmd17 / 'rmd17_aspirin_train_01.npz'}]",
                 f"active.test=[{{path: {rmd17 / 'rmd17_aspirin_test_01.npz'}, select: '::4'}}]"]
        results["rmd17_aspirin"] = pool_study("rmd17_aspirin", acac_config, extra, args.seeds)
    if not args.skip_md:
        started = time.perf_counter()
        rows = run(ROOT / "configs" / "al_ethanol_md_xtb.yaml", ["training.progress=false"], WORK / "active_learning" / "md_xtb")
        results["md_xtb"] = {"rows": rows, "wall_time_s": time.perf_counter() - started}
    for name in ("acac", "rmd17_aspirin"):
        if name not in results:
            continue
        table = []
        for key, s in results[name]["summary"].items():
            for strategy in ("llpr", "gmm"):
                table.append([name, key, s["random_labels"], s["random_final"], strategy,
                              str(s[strategy]["labels_to_reach_random_final"]), s[strategy]["final"]])
        print_table(f"{name}: labels needed to reach random's final error",
                    ["study", "test set", "random labels", "random final", "method", "labels needed (per seed)", "final"], table)
    if "md_xtb" in results:
        md = results["md_xtb"]
        print(f"\non-the-fly MD + GFN2-xTB: {md['rows'][-1]['n_labels']} labels, wall time {md['wall_time_s'] / 60:.1f} min")
    write_results("active_learning", results)


if __name__ == "__main__":
    main()
