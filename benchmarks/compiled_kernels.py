"""Serial or OpenMP-parallel CPU kernels in a compiled package: which is faster, at which size?

``incerta compile`` generates serial CPU kernels by default and parallel ones with
``--parallel-kernels`` (models/compiled.py says why). This script compiles the fast preset's
model both ways and times the two programs alone (energy and forces, no calculator), their
calls alternating in one process so that the machine's drift hits both: acetylacetone (15
atoms), one frame of the shared water box (192 atoms) and that frame repeated 2x2x2 (1,536
atoms), float32, ``--threads`` threads, medians. Timing does not depend on the weights.

    .venv/bin/python benchmarks/compiled_kernels.py      # after accuracy_acac.py --preset fast
    .venv/bin/python benchmarks/compiled_kernels.py --threads 8   # on a machine with more cores
"""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path

import torch
from common import WORK, alternating_medians, print_table, shared_data, write_results
from speed_worker import build_system

from incerta.calculators.compiling import compile_model
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph
from incerta.models.compiled import CompiledPotential

#: calls per system (after 3 warm-up calls), systems of speed_worker.py
CALLS = {"acac_15": 400, "water_192": 40, "water_box_1536": 8}


def packages(trained: Path) -> dict[str, Path]:
    """The trained model compiled with serial and with parallel kernels (each once)."""
    found = {}
    for name, parallel in (("serial", False), ("parallel", True)):
        folder = WORK / "compiled_kernels" / name
        package = folder / "compiled.pt2"
        if not package.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(trained / "potential.safetensors", folder / "potential.safetensors")
            compile_model(folder, package, "cpu", stress=False, parallel_kernels=parallel)
        found[name] = package
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=WORK / "accuracy_acac" / "incerta-fast" / "model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.model / "potential.safetensors").exists():
        raise SystemExit(f"{args.model} missing: run benchmarks/accuracy_acac.py --preset fast first")
    torch.set_num_threads(args.threads)
    programs = {name: CompiledPotential(path) for name, path in packages(args.model).items()}
    results, rows = {}, []
    for system in CALLS:
        frame = Frame.from_atoms(build_system(system, shared_data()))
        graph = frame_to_graph(frame, programs["serial"].spec.cutoff).to(dtype=torch.float32)
        medians = alternating_medians({name: partial(program, graph) for name, program in programs.items()},
                                      CALLS[system], warmup=3)
        results[system] = {"atoms": len(frame.numbers), "serial_ms": medians["serial"],
                           "parallel_ms": medians["parallel"], "parallel_over_serial": medians["parallel"] / medians["serial"]}
        rows.append([system, len(frame.numbers), medians["serial"], medians["parallel"], medians["parallel"] / medians["serial"]])
    print_table(f"compiled fast model, energy + forces, {args.threads} threads (medians, alternating calls)",
                ["system", "atoms", "serial kernels ms", "parallel kernels ms", "parallel / serial"], rows)
    write_results("compiled_kernels", {"threads": args.threads, "model": str(args.model), "systems": results})


if __name__ == "__main__":
    main()
