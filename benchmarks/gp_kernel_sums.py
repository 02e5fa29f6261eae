"""Memory and time of the SVGP / LNK energy uncertainty of one large structure: kernel in blocks or whole.

A structure's GP energy variance sums the kernel over every pair of its atoms. Eagerly the
sum is taken in blocks of rows (``incerta.uq.gp.KERNEL_BLOCK`` kernel entries at a time);
evaluated whole it needs the (N, N) kernel, its mask and their product. For one structure of
N atoms with random standardised features (D = 8, 64 inducing points, float64, 2 threads),
each size and mode in a fresh process: wall time of ``_fixed_posterior`` and the growth of
the process's peak resident memory during it.

    .venv/bin/python benchmarks/gp_kernel_sums.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import ROOT, print_table, write_results

SIZES = (2000, 5000, 10000, 20000)

WORKER = """
import json, resource, sys, time, torch
sys.path.insert(0, {tests!r})
from conftest import make_model
from incerta.uq import gp
torch.set_num_threads(2)
torch.manual_seed(0)
if {whole}:
    gp.KERNEL_BLOCK = 2**62
method = gp.SVGPUncertainty(make_model(), num_inducing=64).eval()
z = torch.randn({atoms}, 8, dtype=torch.float64)
batch = torch.zeros({atoms}, dtype=torch.long)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
variance = method._fixed_posterior(z, batch, 1)[2]
print(json.dumps({{"s": time.perf_counter() - started, "variance": float(variance[0]),
                  "peak_growth_MB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}}))
"""


def measure(atoms: int, whole: bool) -> dict:
    code = WORKER.format(tests=str(ROOT / "tests"), whole=whole, atoms=atoms)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    results, rows = {}, []
    for atoms in args.sizes:
        results[atoms] = {mode: measure(atoms, mode == "whole") for mode in ("blocks", "whole")}
        same = results[atoms]["blocks"]["variance"] == results[atoms]["whole"]["variance"]
        rows.append([atoms, results[atoms]["whole"]["s"], results[atoms]["blocks"]["s"],
                     results[atoms]["whole"]["peak_growth_MB"], results[atoms]["blocks"]["peak_growth_MB"],
                     "yes" if same else "NO"])
    print_table("GP energy variance of one structure: kernel whole vs in blocks",
                ["atoms", "whole s", "blocks s", "whole peak MB", "blocks peak MB", "same value"], rows)
    write_results("gp_kernel_sums", {"features": 8, "inducing": 64, "threads": 2, "sizes": results})


if __name__ == "__main__":
    main()
