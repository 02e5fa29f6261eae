"""Active learning against the practice it replaces, then against random selection on a pool.

1. Exploration (the first table; issue 18): GFN2-xTB through tblite is the oracle, so labels
   are cheap and exact. Per molecule (acetylacetone, aspirin) the reference MD of
   al_reference.py gives 20 initial frames at 300 K and test sets at 300, 600 and 1200 K
   (independent trajectories, never used for training or selection). At equal label budgets:
   uniform (label the reference MD at 300/600/1200 K at a stride: what users do without active
   learning), random-md (random frames of model-driven MD), uncertainty-md (incerta's loop:
   model-driven MD at 300, 600 and 1200 K, going back to the last frame below the threshold
   whenever a check passes it, the frames above it selected with farthest-point diversity;
   the threshold is adaptive, ``--threshold-factor`` times the current model's typical
   calibrated uncertainty on its validation frames) and biased-md (the same MD pushed along
   the gradient of the GMM density score). Every model-driven run ends where its molecule
   comes apart or atoms clash (the loop's default watch; a proton moving between the
   oxygens of acac is explored). Metrics: labels each strategy needs to reach uniform's full-budget
   force RMSE at every test temperature, errors at the full budget, stability of 1200 K MD
   with the final model (``--stability-ps`` runs: the fraction without an unphysical event
   and the median time to the first one), wall time split into oracle / training / exploration;
   three seeds; the median learning curves drawn in docs/figures/al_exploration_<molecule>.png.
   ``labels_ratio_vs_uniform``: labels the best of uncertainty-md and biased-md needs / labels
   uniform needs, median over seeds (None where it never reaches uniform's error).
   ``reference_calls_ratio_vs_uniform``: the same strategies' reference evaluations at the full
   budget over uniform's, whose frames come from a reference MD that costs one call per step.
2. Pool-based (configs/al_acac_pool.yaml, with --pool): acac pool = train_300K + train_600K with
   known labels (lookup oracle); force RMSE on the 300 K and 600 K test sets against the number
   of labels, for uncertainty selection with two methods and for random selection, 3 seeds. A
   reference strategy, "true-error", ranks the pool by each frame's actual error under the
   current model (known here, never in real use): the ranking every uncertainty estimate aims
   at. The same on rMD17 aspirin, and one on-the-fly MD run with GFN2-xTB labels. Without
   --pool the last pool results are kept in the JSON.

Every (study, strategy, seed) loop runs in its own process with one thread, ``--jobs`` at
a time; its learning curve is kept in benchmarks/work/active_learning/<run>/curve.json,
so a rerun skips finished loops. A rerun of some molecules (``--molecules``) keeps the others'
last exploration results, each entry dated.

    .venv/bin/python benchmarks/active_learning.py --jobs 2           # exploration, ~90 min on 2 cores
    .venv/bin/python benchmarks/active_learning.py --jobs 2 --pool    # and the pool study: +4 h
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
import yaml
from al_reference import STABILITY_STEP_FS, TEMPERATURES_K, reference_sets, stable_run
from common import RESULTS, ROOT, WORK, machine, print_table, shared_data, write_results

STRATEGIES = {"llpr": ["active.uncertainty.method=llpr"], "gmm": ["active.uncertainty.method=gmm"],
              "random": ["active.selection.strategy=random"]}
#: not a method: selection by each pool frame's actual error (GMM fitted only for the latent features)
REFERENCE = {"true-error": ["active.uncertainty.method=gmm"]}
#: the exploration study's strategies, as overrides of exploration_config
EXPLORATION = {
    "uniform": ["active.candidates.source=pool", "active.selection.strategy=uniform"],
    "random-md": ["active.selection.strategy=random", "active.selection.threshold_factor=null",
                  "active.candidates.md.check_every=34"],
    "uncertainty-md": ["active.candidates.md.on_flag=rewind"],
    "biased-md": ["active.candidates.source=biased-md", "active.candidates.md.on_flag=rewind"],
}
INCERTA_STRATEGIES = ("uncertainty-md", "biased-md")
#: the keys of the exploration results that are not a molecule's
NOT_MOLECULES = ("settings", "wall_time_s")
#: what each step of the loop is counted as in the wall-time split
PHASES = {"train": "training", "candidates": "exploration", "choose": "exploration", "label": "oracle"}


def exploration_config(files: dict[str, Path], threshold_factor: float, budget: int, batch: int) -> dict:
    """The loop of the exploration study: 20 initial frames (5 for validation), GMM uncertainty,
    model-driven MD from one start at each test temperature (1000 steps, 0.5 ps; every 10th frame
    a candidate when above ``threshold_factor`` times the model's typical uncertainty on its
    validation frames; random-md: every 34th frame), ``batch`` labels per iteration up to ``budget``."""
    from incerta.data import default

    return {
        "seed": 0,
        "data": {"train": str(files["initial"]), "n_val": 5, "e0s": str(default.path("isolated_atoms"))},
        "model": {"l_max": 1, "num_channels": 32, "num_layers": 3, "cutoff": 5.0},
        "training": {"epochs": 150, "lr": 0.01, "scheduler_patience": 5, "progress": False},
        "active": {
            "oracle": {"type": "tblite"},
            "candidates": {"source": "md", "pool": [str(files["uniform_pool"])],
                           "structures": {"path": str(files["initial"]), "select": ":1"}, "max_candidates": 90,
                           "md": {"temperatures_K": list(TEMPERATURES_K), "steps": 1000, "check_every": 10,
                                  "on_flag": "continue"}},
            "uncertainty": {"method": "gmm"},
            "selection": {"threshold_factor": threshold_factor, "batch_size": batch, "diversity": "fps"},
            "stop": {"max_labels": budget, "max_iterations": -(-budget // batch)},
            "epochs_per_iteration": 40,
            "cluster": {"workers": 1},
            "test": [str(files[f"test_{t:.0f}K"]) for t in TEMPERATURES_K],
        },
    }


def timed(loop_class: type) -> type:
    """``loop_class`` with the wall time of its steps summed per phase (``PHASES``) in ``seconds``."""

    class Timed(loop_class):
        seconds = dict.fromkeys(PHASES.values(), 0.0)

    def wrap(name: str):
        method = getattr(loop_class, name)

        def step(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                self.seconds[PHASES[name]] += time.perf_counter() - started

        return step

    for name in PHASES:
        setattr(Timed, name, wrap(name))
    return Timed


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


def run_loop(config_path: str, overrides: list[str], folder: Path, strategy: str, stability: dict | None = None) -> dict:
    """One active-learning run from scratch; returns its learning curve, wall time per phase and,
    with ``stability`` ({runs, steps, temperature_K}), the 1200 K MD runs of the final model
    (also kept in curve.json)."""
    from incerta.active.loop import ActiveLearning
    from incerta.active.report import learning_rows
    from incerta.calculators.ase import IncertaCalculator
    from incerta.config import ALConfig, load_experiment
    from incerta.data.io import read_frames
    from incerta.train.checkpoint import load_potential

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    loop_class = timed(true_error_loop() if strategy == "true-error" else ActiveLearning)
    loop = loop_class(load_experiment(config_path, ALConfig, overrides), folder, progress=False)
    loop.run()
    curve = {"rows": learning_rows(loop.state), "wall_time_s": time.perf_counter() - started, "phases_s": loop.seconds}
    if stability:
        last = loop.state.events("trained")[-1]["iteration"]
        potential = load_potential(loop.iteration_dir(last) / "run" / "model")
        start = read_frames(folder / "initial_train.xyz")[0].to_atoms()
        curve["stability"] = [stable_run(start, IncertaCalculator(potential, annotate=False), stability["temperature_K"],
                                         stability["steps"], seed=run) for run in range(stability["runs"])]
    (folder / "curve.json").write_text(json.dumps(curve))
    return curve


def run_in_process(config_path: Path, overrides: list[str], folder: Path, strategy: str, stability: dict | None = None) -> dict:
    """run_loop in a fresh one-thread process (skipped when its curve.json exists)."""
    curve = folder / "curve.json"
    if not curve.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        job = json.dumps([str(config_path), overrides, str(folder), strategy, stability])
        with open(folder.parent / f"{folder.name}.log", "w") as log:
            subprocess.run([sys.executable, __file__, "--one", job], check=True, stdout=log, stderr=subprocess.STDOUT,
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
    """The error of the last model trained on at most ``labels`` labels (a loop may stop early
    when nothing is above its threshold: its last model stands)."""
    return [row[key] for row in rows if row["n_labels"] <= labels][-1]


def median_error_at(seeds: list[list[dict]], key: str, labels: int) -> float:
    """:func:`error_at`, median over the seeds' curves."""
    return float(np.median([error_at(rows, key, labels) for rows in seeds]))


def summarise(curves: dict[str, list[list[dict]]], baseline: str) -> dict:
    """Per test set: the ``baseline`` strategy's median final error, the labels each strategy
    needs to reach it (per seed), and each strategy's median error at half the baseline's
    budget and at the end."""
    keys = [k for k in curves[baseline][0][0] if k.endswith("(meV/Å)") and not k.startswith("validation")]
    summary = {}
    for key in keys:
        target = float(np.median([c[-1][key] for c in curves[baseline]]))
        budget = curves[baseline][0][-1]["n_labels"]
        summary[key] = {"baseline": baseline, "baseline_final": target, "baseline_labels": budget}
        for strategy in curves:
            summary[key][strategy] = {"labels_to_reach_baseline_final": [labels_to_reach(c, key, target) for c in curves[strategy]],
                                      "at_half_budget": median_error_at(curves[strategy], key, budget // 2),
                                      "final": float(np.median([c[-1][key] for c in curves[strategy]]))}
    return summary


def labels_ratio(summary: dict, strategy: str) -> float | None:
    """Median over seeds of (labels ``strategy`` needs to reach the baseline's final error on
    every test set) / (the baseline's labels); None when the median seed never gets there."""
    per_set = [s[strategy]["labels_to_reach_baseline_final"] for s in summary.values()]
    budget = next(iter(summary.values()))["baseline_labels"]
    ratios = [np.inf if None in seed else max(seed) / budget for seed in zip(*per_set)]
    median = float(np.median(ratios))
    return median if np.isfinite(median) else None


def print_summary(name: str, results: dict) -> None:
    table = []
    for key, s in results["summary"].items():
        for strategy in results["curves"]:
            table.append([name, key, s["baseline_labels"], s["baseline_final"], strategy,
                          str(s[strategy]["labels_to_reach_baseline_final"]), s[strategy]["at_half_budget"],
                          s[strategy]["final"]])
    baseline = next(iter(results["summary"].values()))["baseline"]
    print_table(f"{name}: labels needed to reach {baseline}'s final error (median over seeds)",
                ["study", "test set", f"{baseline} labels", f"{baseline} final", "strategy", "labels needed (per seed)",
                 "at half budget", "final"], table)


def exploration_runs(args: argparse.Namespace) -> list[tuple]:
    """Reference data and one config per molecule; the runs of every strategy and seed."""
    runs = []
    stability = {"runs": args.stability_runs, "steps": round(1000 * args.stability_ps / STABILITY_STEP_FS),
                 "temperature_K": 1200.0}
    for molecule in args.molecules:
        folder = WORK / "active_learning" / "explore" / molecule
        files = reference_sets(shared_data(), molecule, folder, initial=20, per_temperature=100, test=60)
        config_path = folder / "config.yaml"
        config_path.write_text(yaml.safe_dump(exploration_config(files, args.threshold_factor, args.budget, args.batch)))
        runs += [(f"explore_{molecule}", strategy, seed, config_path, [*overrides, f"seed={seed}"], stability)
                 for seed in range(args.seeds) for strategy, overrides in EXPLORATION.items()]
    return runs


def reference_calls(molecule: str, labels: dict[str, float]) -> dict[str, float]:
    """Reference (GFN2-xTB) evaluations behind each strategy's ``labels`` (the labels it spent,
    median over seeds: a loop may stop before the budget): the reference MD of the initial
    frames, then for uniform the reference MD its frames are cut from (a frame's label comes
    with its MD step), for the others one call per label (their MD runs on the model)."""
    timing = json.loads((WORK / "active_learning" / "explore" / molecule / "timing.json").read_text())
    initial, trajectory = timing["initial"]["md_steps"], timing["uniform_pool"]["md_steps"]
    return {s: initial + (trajectory if s == "uniform" else spent) for s, spent in labels.items()}


def exploration_results(molecule: str, curves: list[tuple[str, dict]], stability_ps: float) -> dict:
    """Curves, summary against uniform, 1200 K stability (the fraction of ``stability_ps`` runs
    without an event, and the median time to the first event, a run without one counting its
    whole length), wall-time split and reference calls of one molecule."""
    result: dict = {"curves": {}, "wall_time_s": {}, "phases_s": {}, "stability": {}}
    for strategy, curve in curves:
        result["curves"].setdefault(strategy, []).append(curve["rows"])
        result["wall_time_s"].setdefault(strategy, []).append(curve["wall_time_s"])
        result["phases_s"].setdefault(strategy, []).append(curve["phases_s"])
        result["stability"].setdefault(strategy, []).extend(curve.get("stability", []))
    result["summary"] = summarise(result["curves"], "uniform")
    result["labels_ratio"] = {s: labels_ratio(result["summary"], s) for s in result["curves"]}
    result["stable_fraction"] = {s: float(np.mean([r["stable"] for r in runs])) if runs else None
                                 for s, runs in result["stability"].items()}
    result["median_ps_to_event"] = {
        s: float(np.median([stability_ps if r["stable"] else r["event_step"] * STABILITY_STEP_FS / 1000 for r in runs]))
        if runs else None for s, runs in result["stability"].items()}
    result["labels_spent"] = {s: float(np.median([c[-1]["n_labels"] for c in cs])) for s, cs in result["curves"].items()}
    result["reference_calls"] = reference_calls(molecule, result["labels_spent"])
    print_summary(molecule, result)
    print_table(f"{molecule}: final model at 1200 K, wall time (median over seeds)",
                ["strategy", "labels / uniform's (median)", "labels spent", "reference calls", "stable 1200 K runs",
                 "ps to an event (median)", "oracle s", "training s", "exploration s"],
                [[s, str(result["labels_ratio"][s]), result["labels_spent"][s], result["reference_calls"][s],
                  str(result["stable_fraction"][s]), str(result["median_ps_to_event"][s]),
                  *[float(np.median([p[k] for p in result["phases_s"][s]])) for k in ("oracle", "training", "exploration")]]
                 for s in result["curves"]])
    return result


def median_curves(seeds: list[list[dict]]) -> tuple[list[int], dict[str, list[float]]]:
    """Labels and, per test set ("test 300 K", ...), the median force RMSE (meV/Å) over seeds at each
    label count (a seed that stopped early keeps its last model's error)."""
    labels = [row["n_labels"] for row in max(seeds, key=len)]
    keys = [k for k in seeds[0][0] if k.startswith("test_") and k.endswith("(meV/Å)")]
    return labels, {"test " + k.split()[0].removeprefix("test_").replace("K", " K"):
                    [median_error_at(seeds, k, n) for n in labels] for k in keys}


def plot_exploration(exploration: dict) -> list[Path]:
    """docs/figures/al_exploration_<molecule>.png: a panel per test temperature, a line per
    strategy, median force RMSE over seeds against the labels spent."""
    import matplotlib.pyplot as plt

    from incerta.evaluate import plots

    paths = []
    for molecule, entry in exploration.items():
        if molecule in NOT_MOLECULES:
            continue
        fig = plots.al_strategies({strategy: median_curves(seeds) for strategy, seeds in entry["curves"].items()})
        path = ROOT / "docs" / "figures" / f"al_exploration_{molecule}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def pool_study(args: argparse.Namespace) -> list[tuple]:
    acac_config = ROOT / "configs" / "al_acac_pool.yaml"
    runs = pool_runs("acac", acac_config, [], args.seeds, {**STRATEGIES, **REFERENCE})
    rmd17 = shared_data() / "rmd17"
    extra = [f"data.train={{path: {rmd17 / 'rmd17_aspirin_train_01.npz'}, select: '::50'}}", "data.e0s=null",
             f"active.candidates.pool=[{rmd17 / 'rmd17_aspirin_train_01.npz'}]",
             f"active.test=[{{path: {rmd17 / 'rmd17_aspirin_test_01.npz'}, select: '::4'}}]"]
    runs += pool_runs("rmd17_aspirin", acac_config, extra, args.rmd17_seeds or args.seeds, STRATEGIES)
    runs.append(("md_xtb", "llpr", 0, ROOT / "configs" / "al_ethanol_md_xtb.yaml", ["training.progress=false"], None))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--molecules", nargs="+", default=["acac", "aspirin"])
    parser.add_argument("--budget", type=int, default=32, help="labels of each exploration loop")
    parser.add_argument("--batch", type=int, default=8, help="labels per iteration")
    parser.add_argument("--threshold-factor", type=float, default=1.5,
                        help="the MD's flag and the selection threshold, times the model's typical uncertainty")
    parser.add_argument("--stability-runs", type=int, default=1, help="1200 K MD runs of each final model")
    parser.add_argument("--stability-ps", type=float, default=10.0, help="length of each run (ps)")
    parser.add_argument("--pool", action="store_true", help="run the pool study too (else its last results are kept)")
    parser.add_argument("--rmd17-seeds", type=int, help="seeds of the aspirin pool study (default: --seeds)")
    parser.add_argument("--jobs", type=int, default=2, help="loops run at once (one thread each)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        config_path, overrides, folder, strategy, stability = json.loads(args.one)
        run_loop(config_path, overrides, Path(folder), strategy, stability)
        return

    started = time.perf_counter()
    runs = exploration_runs(args) + (pool_study(args) if args.pool else [])

    def execute(run: tuple) -> tuple:
        name, strategy, seed, config_path, overrides, stability = run
        folder = WORK / "active_learning" / name / f"{strategy}_{seed}"
        return run, run_in_process(config_path, [*overrides, "training.progress=false"], folder, strategy, stability)

    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(execute, runs))

    previous = RESULTS / "active_learning.json"
    results: dict = json.loads(previous.read_text()) if previous.exists() and not args.pool else {}
    measured_on = results.pop("machine", {}).get("date")
    settings = {key: getattr(args, key) for key in ("seeds", "molecules", "budget", "batch", "threshold_factor",
                                                     "stability_runs", "stability_ps", "jobs")}
    # molecules not rerun keep their last results, each with the date it was measured on
    kept = {m: {"date": measured_on, **entry} for m, entry in results.get("exploration", {}).items()
            if m not in (*NOT_MOLECULES, *args.molecules)}
    results["exploration"] = {"settings": {**settings, "threads_per_job": 1}, **kept}
    by_study: dict[str, list] = {}
    for (name, strategy, _, _, _, _), curve in outcomes:
        by_study.setdefault(name, []).append((strategy, curve))
    for molecule in args.molecules:
        results["exploration"][molecule] = {"date": machine()["date"],
                                            **exploration_results(molecule, by_study[f"explore_{molecule}"], args.stability_ps)}
    molecules = [m for m in results["exploration"] if m not in NOT_MOLECULES]
    results["labels_ratio_vs_uniform"] = {
        m: min((r for s in INCERTA_STRATEGIES if (r := results["exploration"][m]["labels_ratio"][s]) is not None), default=None)
        for m in molecules}
    results["reference_calls_ratio_vs_uniform"] = {
        m: min(results["exploration"][m]["reference_calls"][s] for s in INCERTA_STRATEGIES)
        / results["exploration"][m]["reference_calls"]["uniform"] for m in molecules}
    if args.pool:
        results["settings"] = {"seeds": args.seeds, "rmd17_seeds": args.rmd17_seeds or args.seeds,
                               "jobs": args.jobs, "threads_per_job": 1}
        for name in ("acac", "rmd17_aspirin"):
            results[name] = {"curves": {}, "wall_time_s": {}}
            for strategy, curve in by_study[name]:
                results[name]["curves"].setdefault(strategy, []).append(curve["rows"])
                results[name]["wall_time_s"].setdefault(strategy, []).append(curve["wall_time_s"])
            results[name]["summary"] = summarise(results[name]["curves"], "random")
            print_summary(name, results[name])
        results["md_xtb"] = by_study["md_xtb"][0][1]
        md = results["md_xtb"]
        print(f"\non-the-fly MD + GFN2-xTB: {md['rows'][-1]['n_labels']} labels, wall time {md['wall_time_s'] / 60:.1f} min")
    print(f"\nlabels needed / uniform's, best of {', '.join(INCERTA_STRATEGIES)}: {results['labels_ratio_vs_uniform']}")
    results["exploration"]["wall_time_s"] = time.perf_counter() - started  # with --pool: both studies
    write_results("active_learning", results)
    for path in plot_exploration(results["exploration"]):
        print(f"learning curves drawn in {path}")


if __name__ == "__main__":
    main()
