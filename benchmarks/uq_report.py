"""The report's two experiments on the shared data, end to end, with their wall time.

1. Temperature shift on acac (configs/uq_shift_acac.yaml): every method + deep ensemble
   (reuses benchmarks/work/uq_shift_acac when uq_methods.py already ran it).
2. OOD matrix on rMD17 split 01 over six molecules (configs/uq_ood_rmd17.yaml).

Goals: every method's mean uncertainty rises with temperature; mean off-diagonal AUROC
>= 0.99 for the best single-model method (quoted over the pairs of molecules with the same
elements too: a model meeting an element it never saw flags it without predicting);
diagonal within 0.5 +/- 0.1.

    .venv/bin/python benchmarks/uq_report.py

Wall time on 2 cores shared with other benchmarks (2026-11-23): the shift experiment
1.8 h when run first (as uq_methods.py; reused here), the OOD matrix 61 min (six models,
three methods each, every model on every molecule's 400 test frames).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import ROOT, WORK, print_table, write_results

from incerta.config import OODConfig, ShiftConfig, load_experiment
from incerta.evaluate.ood import run_ood
from incerta.evaluate.shift import run_shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shift-set", action="append", default=[], help="override in the shift config")
    parser.add_argument("--ood-set", action="append", default=[], help="override in the OOD config")
    args = parser.parse_args()
    started = time.perf_counter()
    shift = run_shift(load_experiment(ROOT / "configs" / "uq_shift_acac.yaml", ShiftConfig, args.shift_set),
                      WORK / "uq_shift_acac", progress=False).results
    shift_wall = time.perf_counter() - started
    ood = run_ood(load_experiment(ROOT / "configs" / "uq_ood_rmd17.yaml", OODConfig, args.ood_set),
                  WORK / "uq_ood_rmd17", progress=False)
    ood_wall = time.perf_counter() - started - shift_wall

    print_table("temperature shift (acac): mean σ per group (meV/Å)", ["method", *shift["groups"], "rises"],
                [[m, *r["mean_uncertainty_meV_per_A"].values(), "yes" if r["means_ordered"] else "NO"]
                 for m, r in shift["methods"].items()])
    rows = []
    for method, r in ood["methods"].items():
        diagonal = np.array(r["diagonal"])
        rows.append([method, r["mean_off_diagonal"], r["mean_off_diagonal_same_elements"],
                     r["min_off_diagonal_same_elements"], float(diagonal.min()), float(diagonal.max())])
    print_table(f"OOD on rMD17 ({', '.join(ood['datasets'])})",
                ["method", "mean off-diag AUROC", "same elements: mean", "same elements: min", "diagonal min",
                 "diagonal max"], rows)
    print("flagged by the element check (AUROC 1, not predicted): "
          + "; ".join(f"{a} model on {b}" for a, b, _ in ood["element_flagged"]))
    best = max(ood["methods"], key=lambda m: ood["methods"][m]["mean_off_diagonal_same_elements"])
    print(f"\nbest single-model method: {best}; wall time: shift {shift_wall / 60:.1f} min, OOD {ood_wall / 60:.1f} min")
    write_results("uq_report", {"shift": shift, "ood": ood, "wall_time_s": {"shift": shift_wall, "ood": ood_wall},
                                "best_ood_method": best})


if __name__ == "__main__":
    main()
