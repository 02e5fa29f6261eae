"""Scale-out on this machine: data-parallel training steps/s (1 vs N gloo processes) and the
on-disk store's read throughput and training speed against in-memory graphs; on a machine
with a GPU, one GPU at the same global batch and at a larger one as well.

    .venv/bin/python benchmarks/scaling.py [--frames 200] [--epochs 3] [--nprocs 2]

The training runs use the acac 300 K set; an epoch's wall time comes from history.csv
(``elapsed_s``), the first epoch is dropped as warm-up and the median of the rest is quoted.
Writes benchmarks/results/scaling.json (scaling_gpu.json on a machine with a GPU).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import shutil
import statistics
import time

import torch
from common import WORK, print_table, shared_data, write_results

from incerta.config import RunConfig
from incerta.data.graph import frame_to_graph
from incerta.data.io import read_frames
from incerta.data.store import GraphStore, write_store
from incerta.train.run import train_run, train_run_parallel

MODEL = {"l_max": 2, "num_channels": 32, "num_layers": 3, "cutoff": 5.0}


def config(train: dict, epochs: int, batch_size: int, device: str = "cpu") -> RunConfig:
    return RunConfig.model_validate({
        "seed": 0,
        "data": {"train": train, "n_val": 20},
        "model": MODEL,
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": 0.005, "progress": False, "device": device},
    })


def epoch_seconds(run_dir) -> float:
    """Median wall time of the epochs after the first (s)."""
    with open(run_dir / "history.csv") as handle:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(handle)]
    per_epoch = [b - a for a, b in itertools.pairwise(elapsed)]
    return statistics.median(per_epoch)


def timed_reads(read, count: int, repeats: int = 3) -> float:
    """Median structures/s of ``read(i)`` for i in range(count)."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(count):
            read(i)
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="training frames (acac 300 K)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split over the processes)")
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args()

    work = WORK / "scaling"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    xyz = shared_data() / "botnet" / "dataset_acac" / "train_300K.xyz"
    frames = read_frames(xyz)[: args.frames]
    store = work / "acac.h5"
    write_started = time.perf_counter()
    write_store(store, frames, cutoff=MODEL["cutoff"])
    write_seconds = time.perf_counter() - write_started

    graphs = [frame_to_graph(f, MODEL["cutoff"]) for f in frames]
    opened = GraphStore(store)
    reads = {
        "in-memory graphs": timed_reads(lambda i: graphs[i], len(graphs)),
        "store, sequential": timed_reads(lambda i: opened[i], len(opened)),
        "store, shuffled": timed_reads(lambda i: opened[(i * 7919) % len(opened)], len(opened)),
        "xyz frame -> graph (neighbour list)": timed_reads(lambda i: frame_to_graph(frames[i], MODEL["cutoff"]),
                                                           len(frames)),
    }

    source = {"path": str(xyz), "select": f":{args.frames}"}
    runs = [("1 process, in memory", "one", config(source, args.epochs, args.batch_size), 1),
            (f"{args.nprocs} gloo processes, in memory", "parallel", config(source, args.epochs, args.batch_size),
             args.nprocs),
            ("1 process, HDF5 store", "store", config({"path": str(store)}, args.epochs, args.batch_size), 1)]
    if torch.cuda.is_available():
        runs += [(f"1 GPU, batch {size}", f"gpu_{size}", config(source, args.epochs, size, "cuda"), 1)
                 for size in (args.batch_size, 4 * args.batch_size)]
    training = {}
    for name, directory, run_config, nprocs in runs:
        if nprocs > 1:
            train_run_parallel(run_config, work / directory, nprocs=nprocs)
        else:
            train_run(run_config, work / directory)
        batch, seconds = run_config.training.batch_size, epoch_seconds(work / directory)
        training[name] = {"batch": batch, "epoch_s": seconds, "steps_per_s": -(-(args.frames - 20) // batch) / seconds,
                          "structures_per_s": (args.frames - 20) / seconds}
    base = training["1 process, in memory"]["structures_per_s"]
    rows = [[name, v["batch"], v["epoch_s"], v["steps_per_s"], v["structures_per_s"], v["structures_per_s"] / base]
            for name, v in training.items()]
    print_table(f"training, acac {args.frames} frames, model {MODEL}",
                ["run", "global batch", "epoch s (median)", "steps/s", "structures/s", "vs 1 process"], rows)
    print_table("reading structures", ["source", "structures/s"], [[k, v] for k, v in reads.items()])
    print(f"\nstore written in {write_seconds:.2f} s ({store.stat().st_size / 1e6:.1f} MB)")
    write_results("scaling_gpu" if torch.cuda.is_available() else "scaling", {
        "settings": vars(args) | {"model": MODEL},
        "training": training,
        "reads_per_s": reads,
        "store_write_s": write_seconds,
        "store_bytes": store.stat().st_size,
    })


if __name__ == "__main__":
    main()
