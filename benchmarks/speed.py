"""Inference speed of incerta vs MACE through their ASE calculators, measured in one run.

Systems: acetylacetone (15 atoms), a cluster of three ethanol molecules (27 atoms) and a
periodic liquid-water box (1536 atoms, the shared RPBE-D3 frame repeated 2x2x2). Each
(code, system) pair runs in a fresh process (peak memory is per process); medians of
repeated energy+forces calls after 3 warm-up calls, 2 threads. The models are the ones
trained by accuracy_acac.py (same accuracy class); run that first.

    .venv/bin/python benchmarks/speed.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import WORK, print_table, shared_data, write_results

SYSTEMS = ("acac_15", "ethanol_cluster_27", "water_box_1536")
WORKER = Path(__file__).resolve().parent / "speed_worker.py"


def measure(python: Path, code: str, model: Path, system: str, data: Path, calls: int) -> dict:
    output = subprocess.run(
        [str(python), str(WORKER), "--code", code, "--model", str(model), "--system", system,
         "--data", str(data), "--calls", str(calls)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--peer", choices=["mace", "none"], default="mace")
    args = parser.parse_args()
    data = shared_data()
    trained = WORK / "accuracy_acac"
    codes = {"incerta": (Path(sys.executable), trained / "incerta" / "model")}
    if args.peer == "mace":
        from peers import peer_python

        codes["mace"] = (peer_python("mace"), trained / "mace" / "mace.model")
    for _, model in codes.values():
        if not model.exists():
            raise SystemExit(f"{model} missing: run benchmarks/accuracy_acac.py first")
    results = []
    for system in SYSTEMS:
        calls = args.calls if system != "water_box_1536" else max(5, args.calls // 3)
        for code, (python, model) in codes.items():
            results.append(measure(python, code, model, system, data, calls))
    rows = [[r["code"], r["system"], r["atoms"], r["median_ms"], r["q25_ms"], r["q75_ms"],
             r["atom_steps_per_s"], r["peak_rss_MB"]] for r in results]
    print_table("energy+forces through ASE (2 threads)", ["code", "system", "atoms", "median ms", "q25 ms", "q75 ms",
                                                          "atom-steps/s", "peak RSS MB"], rows)
    ratios = {}
    if args.peer == "mace":
        for system in SYSTEMS:
            ours, theirs = (next(r for r in results if r["code"] == c and r["system"] == system) for c in ("incerta", "mace"))
            ratios[system] = theirs["median_ms"] / ours["median_ms"]
        print("\nspeed-up incerta vs MACE (MACE ms / incerta ms): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    write_results("speed", {"results": results, "speedup_mace_over_incerta": ratios})


if __name__ == "__main__":
    main()
