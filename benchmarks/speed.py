"""Inference speed, side by side in one run: incerta (the accurate preset eager and compiled, the
fast preset compiled, alone and with GMM or LLPR), MACE and NequIP compiled with AOTInductor,
through their ASE calculators.

Systems: acetylacetone (15 atoms), a cluster of three ethanol molecules (27 atoms) and a
periodic liquid-water box (1,536 atoms, the shared RPBE-D3 frame repeated 2x2x2). Every
(row, system) pair runs in a fresh process (peak memory is per process): medians and
quartiles of repeated energy+forces calls after 3 warm-up calls, float32, ``--threads``
threads; every row is measured ``--rounds`` times, the rounds interleaved, and the median of
the rounds' medians kept (the machine's speed drifts). The "+ GMM", "+ LNK" and "+ LLPR" rows ask for
the per-atom force uncertainty at every call (what an MD check step costs), their calls
alternating with energy+forces calls of the bare fast package in the same process: the
uncertainty's cost (``gmm_over_compiled``, ``lnk_over_compiled``, ``llpr_over_compiled``) is the
ratio of the two, paired in time, because between processes the machine's drift (up to 2x
between rounds of one row, seen here) exceeds what is measured. GMM's scores and calibrated
uncertainties are compiled into the package (``incerta compile`` on a model with GMM attached),
and so is LNK's whole prediction (its energy is its GP readout on the backbone's features, the
backbone trained with it). LLPR's pass runs eagerly, and on the water box its row had not
finished its 13 calls after 5 minutes, so it is left out there.

Models: incerta's (both presets) and MACE's are the ones trained by ``accuracy_acac.py`` (run it
first; the incerta models are compiled here, and GMM and LLPR are fitted on the fast one's
training split and calibrated on its validation frames; LNK's joint fit is one epoch of
``incerta uq fit --method lnk``, ``FIT_OPTIONS``), NequIP's the one trained and compiled by ``nequip_peer.py`` (in its own venv,
``peers.py nequip``; ``accuracy_acac.py --codes nequip`` runs it).
Timing does not depend on the weights, so the water box runs the acac models (H, C, O).

    .venv/bin/python benchmarks/speed.py
    .venv/bin/python benchmarks/speed.py --peers none --calls 10 --rounds 1   # incerta rows only
    .venv/bin/python benchmarks/speed.py --peers none --rows "fast preset compiled" "fast compiled + LNK" \
        --results speed_lnk   # some rows, into their own results file
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from common import INCERTA, WORK, print_table, shared_data, write_results

from incerta.uq.methods import METHODS

SYSTEMS = ("acac_15", "ethanol_cluster_27", "water_box_1536")
WORKER = Path(__file__).resolve().parent / "speed_worker.py"
PACKAGE = "compiled-cpu-float32.pt2"
#: the compiled model the peers' ratios refer to: the fast preset, whose acac force RMSE at the
#: training budget of accuracy_acac.py is below NequIP's and MACE's (results/accuracy_acac.json)
TIMED = "fast preset compiled"
#: options of a method's fit here: timing does not depend on how well it is fitted, and LNK's joint
#: training took 126 s per epoch on this machine (30 by default), so it trains one epoch
FIT_OPTIONS = {"lnk": ("--epochs", "1")}
#: row label -> (code, model key, compiled, uncertainty asked at every call)
ROWS = {
    "incerta eager": ("incerta", "bare", False, False),
    "incerta compiled": ("incerta", "bare", True, False),
    "fast preset compiled": ("incerta", "fast", True, False),
    "fast compiled + GMM": ("incerta", "fast-gmm", True, True),
    "fast compiled + LNK": ("incerta", "fast-lnk", True, True),
    "fast compiled + LLPR": ("incerta", "fast-llpr", True, True),
    "MACE": ("mace", "mace", False, False),
    "NequIP compiled": ("nequip", "nequip", False, False),
}


def measure(python: Path, row: tuple, model: Path, system: str, data: Path, calls: int, threads: int,
            bare: Path | None = None) -> dict:
    """One row on one system in a fresh worker; an uncertainty row's calls alternate with ``bare``'s."""
    code, _, compiled, uncertainty = row
    command = [str(python), str(WORKER), "--code", code, "--model", str(model), "--system", system,
               "--data", str(data), "--calls", str(calls), "--threads", str(threads)]
    command += ["--compiled"] * compiled + ["--uncertainty"] * uncertainty
    command += ["--paired-with", str(bare)] if uncertainty and bare is not None else []
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def compiled_copy(trained: Path, folder: Path) -> Path:
    """``folder`` holding the trained potential and its compiled package (compiled once)."""
    if not (folder / "potential.safetensors").exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / "potential.safetensors", folder / "potential.safetensors")
    if not (folder / PACKAGE).exists():
        subprocess.run([INCERTA, "compile", folder], check=True)
    return folder


def incerta_models(trained: Path, work: Path, methods: tuple[str, ...]) -> dict[str, Path]:
    """Model folders under ``work`` holding the trained potential and its package, bare
    (``work.name``) and with each of ``methods`` (``work.name-method``; fitted on the accuracy
    benchmark's training split, calibrated on its validation frames; the package is copied from
    the bare folder, and compiled again for a method whose uncertainties compile into it, GMM,
    or whose whole prediction does, LNK)."""
    split = trained.parent.parent
    folders = {work.name: compiled_copy(trained, work)}
    for name in methods:
        folders[f"{work.name}-{name}"] = folder = work.with_name(f"{work.name}-{name}")
        if not (folder / "potential.safetensors").exists():
            shutil.copytree(work, folder)
        if not (folder / "uncertainty.safetensors").exists():
            subprocess.run([INCERTA, "uq", "fit", folder, "--method", name, "--train", split / "train.xyz",
                            "--val", split / "valid.xyz", *FIT_OPTIONS.get(name, ())], check=True)
            if METHODS[name].scores_from_outputs or METHODS[name].compiles_predictions:
                subprocess.run([INCERTA, "compile", folder], check=True)
    return folders


def summary(label: str, measured: list[dict]) -> dict:
    """One row of one system over its rounds: the median of the rounds' medians (and of their
    quartiles), the largest peak memory, and every round's median."""
    median = lambda key: float(statistics.median(m[key] for m in measured))
    row = {**measured[0], "row": label, "median_ms": median("median_ms"), "q25_ms": median("q25_ms"),
           "q75_ms": median("q75_ms"), "atom_steps_per_s": measured[0]["atoms"] / median("median_ms") * 1e3,
           "peak_rss_MB": max(m["peak_rss_MB"] for m in measured), "round_medians_ms": [m["median_ms"] for m in measured]}
    if "without_uncertainty_median_ms" in measured[0]:
        row["without_uncertainty_median_ms"] = median("without_uncertainty_median_ms")
        row["uncertainty_cost_paired"] = float(statistics.median(
            m["median_ms"] / m["without_uncertainty_median_ms"] for m in measured))
    return row


def time_ratios(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per system, a row's median time over a compiled incerta model's: the peers over ``TIMED``
    (and, ``*_accurate``, over the accurate preset's) and the eager model over the compiled one;
    the uncertainty rows' cost is their paired ratio (calls with and without the uncertainty,
    alternating in one process, median over the rounds)."""
    median = {(r["row"], r["system"]): r["median_ms"] for r in results}
    pairs = {
        "nequip_over_incerta_compiled": ("NequIP compiled", TIMED),
        "mace_over_incerta_compiled": ("MACE", TIMED),
        "nequip_over_incerta_compiled_accurate": ("NequIP compiled", "incerta compiled"),
        "mace_over_incerta_compiled_accurate": ("MACE", "incerta compiled"),
        "eager_over_compiled": ("incerta eager", "incerta compiled"),
    }
    ratios = {name: {s: median[(row, s)] / median[(reference, s)] for s in SYSTEMS
                     if (row, s) in median and (reference, s) in median}
              for name, (row, reference) in pairs.items()}
    paired = {"gmm_over_compiled": "fast compiled + GMM", "lnk_over_compiled": "fast compiled + LNK",
              "llpr_over_compiled": "fast compiled + LLPR"}
    ratios |= {name: {r["system"]: r["uncertainty_cost_paired"] for r in results if r["row"] == row}
               for name, row in paired.items()}
    return {name: values for name, values in ratios.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="measurements of every row, interleaved")
    parser.add_argument("--peers", choices=["all", "none"], default="all")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to measure")
    parser.add_argument("--results", default="speed", help="name of the results file (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    data = shared_data()
    rows = {label: ROWS[label] for label in args.rows if ROWS[label][0] == "incerta" or args.peers == "all"}
    keys = {row[1] for row in rows.values()}
    methods = tuple(sorted(key.removeprefix("fast-") for key in keys if key.startswith("fast-")))
    presets = {"accurate": "bare"} if "bare" in keys else {}
    presets |= {"fast": "fast"} if methods or "fast" in keys else {}
    trained = {preset: WORK / "accuracy_acac" / f"incerta-{preset}" / "model" for preset in presets}
    for folder in trained.values():
        if not folder.exists():
            raise SystemExit(f"{folder} missing: run benchmarks/accuracy_acac.py first")
    folders = {key: path for preset, name in presets.items()
               for key, path in incerta_models(trained[preset], WORK / "speed" / name,
                                               methods if preset == "fast" else ()).items()}
    models = {key: (Path(sys.executable), folder) for key, folder in folders.items()}
    if args.peers == "all":
        from nequip_peer import PACKAGE
        from peers import peer_python

        models["mace"] = (peer_python("mace"), WORK / "accuracy_acac" / "mace" / "mace.model")
        models["nequip"] = (peer_python("nequip"), PACKAGE)
    for _, model in models.values():
        if not model.exists():
            raise SystemExit(f"{model} missing: run benchmarks/accuracy_acac.py and benchmarks/nequip_peer.py first")
    rounds: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):  # rows interleaved, so a burst of load elsewhere hits one round of each
        for system in SYSTEMS:
            calls = args.calls if system != "water_box_1536" else max(5, args.calls // 3)
            for label, row in rows.items():
                if label.endswith("+ LLPR") and system == "water_box_1536":
                    continue  # LLPR's eager pass is too slow there (see the module docstring)
                python, model = models[row[1]]
                rounds.setdefault((label, system), []).append(
                    measure(python, row, model, system, data, calls, args.threads, folders.get("fast")))
                print(f"round {round_}  {system:20s} {label:22s} {rounds[label, system][-1]['median_ms']:10.2f} ms",
                      flush=True)
    results = [summary(label, measured) for (label, _), measured in rounds.items()]
    table = [[r["row"], r["system"], r["atoms"], r["median_ms"], r["q25_ms"], r["q75_ms"], r["atom_steps_per_s"],
              r["peak_rss_MB"]] for r in results]
    print_table(f"energy+forces through ASE ({args.threads} threads, float32)",
                ["row", "system", "atoms", "median ms", "q25 ms", "q75 ms", "atom-steps/s", "peak RSS MB"], table)
    ratios = time_ratios(results)
    print("\ntime ratios (> 1: the compiled incerta model is faster; gmm / lnk / llpr: the uncertainty's cost)")
    for name, values in ratios.items():
        print(f"  {name}: " + ", ".join(f"{s} {x:.2f}" for s, x in values.items()))
    water = [r["peak_rss_MB"] for r in results if r["row"] == TIMED and r["system"] == "water_box_1536"]
    write_results(args.results, {"threads": args.threads, "timed_row": TIMED, "results": results, "ratios": ratios,
                                 **({"water_peak_rss_MB": water[0]} if water else {})})


if __name__ == "__main__":
    main()
