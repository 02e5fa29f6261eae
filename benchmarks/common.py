"""Helpers shared by the benchmark scripts: paths, machine description, tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work"
INCERTA = ROOT / ".venv" / "bin" / "incerta"


def shared_data() -> Path:
    """$INCERTA_SHARED_DATA or ../shared/data next to the repository."""
    path = Path(os.environ.get("INCERTA_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise SystemExit(f"reference data not found at {path}; set INCERTA_SHARED_DATA")
    return path


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        import torch

        torch_info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            torch_info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        torch_info = {}
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), **torch_info}


def run_timed(command: list, log: Path, cwd: Path | None = None, env: dict | None = None) -> float:
    """Run ``command`` with output to ``log``; return its wall time in seconds."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run([str(c) for c in command], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                       check=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - started


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path, partial = RESULTS / f"{name}.json", RESULTS / f".{name}.json.partial"
    partial.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    partial.replace(path)
    print(f"\nresults written to {path}")
    return path


def alternating_medians(calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median ms of each call over ``repeats`` rounds after ``warmup`` rounds, the calls
    alternating within a round, so that the machine's drift hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(1e3 * (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in times.items()}


def held_MB(run: Callable[..., object], *inputs) -> float:
    """Size (MB) of the tensors autograd holds for the backward of ``run(*inputs)``."""
    held = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        held[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run(*inputs)
    return sum(held.values()) / 1e6
