"""A training step on periodic cells with each layer's messages held whole or recomputed in chunks.

Above ``EDGE_CHUNK`` edges (8,192) a layer computes its messages in chunks of that size and
recomputes each in the backward pass (``incerta.nn.interaction``), which the 1,536-atom water
box needs to stay under 1 GB. Training batches of periodic cells pass that size too, and there
the forces are differentiated a second time. This times one training step (energy and forces with the graph kept,
the loss, its backward, an Adam step) on a batch of the shared liquid-water frames (64 H2O,
~10,000 edges each at 5 Å) with the messages whole and with chunks of 4,096, 8,192 (the
default) and 16,384 edges, for the fast preset and the l_max 2 model; the settings alternate
within each round, medians over the rounds. Also the size of the tensors autograd holds for
the backward of the step's forward and forces.

    .venv/bin/python benchmarks/training_step.py            # about 3 minutes on one thread (--repeats 7: 4)

Results in ``results/training_step.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import alternating_medians, held_MB, print_table, shared_data, write_results

import incerta.nn.interaction as interaction
from incerta.config import ModelConfig
from incerta.data.graph import collate, frame_to_graph
from incerta.data.io import read_frames
from incerta.models.build import DataStatistics, build_potential
from incerta.train.losses import LossWeights, energy_forces_loss

MODELS = {"fast preset (l_max 1)": {"preset": "fast"}, "l_max 2, 32 channels": {"l_max": 2}}
#: edges per chunk (None: the messages held whole)
CHUNKS = {"whole": None, "chunks of 4,096": 4096, "chunks of 8,192": 8192, "chunks of 16,384": 16384}


def with_chunks(chunk: int | None, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` run with layers chunking at ``chunk`` edges (None: never)."""
    def run() -> object:
        default = interaction.EDGE_CHUNK
        interaction.EDGE_CHUNK = chunk or 2**62
        try:
            return call()
        finally:
            interaction.EDGE_CHUNK = default
    return run


def measure(options: dict, frames: list, repeats: int) -> dict:
    """Step times (ms) and held sizes (MB) of a fresh model built with ``options`` on one batch of ``frames``."""
    config = ModelConfig(**options)
    graphs = [frame_to_graph(f, config.cutoff) for f in frames]
    model = build_potential(config, DataStatistics.from_frames(frames, graphs), seed=0).train()
    batch = collate([g.to(dtype=torch.float32) for g in graphs])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def forward() -> dict[str, torch.Tensor]:
        return model(batch, compute_forces=True)

    def step() -> None:
        loss, _ = energy_forces_loss(forward(), batch, LossWeights())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = alternating_medians({setting: with_chunks(chunk, step) for setting, chunk in CHUNKS.items()}, repeats, warmup=1)
    held = {setting: with_chunks(chunk, lambda: held_MB(forward))() for setting, chunk in CHUNKS.items()}
    return {"edges": int(batch.edge_index.shape[1]), "default_chunk": interaction.EDGE_CHUNK, "step_ms": times, "held_MB": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="water frames per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = read_frames(shared_data() / "water_rpbe_d3" / "test-H2O_RPBE-D3.xyz")[:args.batch]
    rows = [{"model": name, **measure(options, frames, args.repeats)} for name, options in MODELS.items()]
    print_table(f"training step on {args.batch} water frames, {args.threads} thread(s), ms (medians of {args.repeats}) "
                "and MB held for the backward",
                ["model", "edges", *(f"{setting} ms" for setting in CHUNKS), *(f"{setting} MB" for setting in CHUNKS)],
                [[r["model"], r["edges"], *(f"{r['step_ms'][setting]:.0f}" for setting in CHUNKS),
                  *(f"{r['held_MB'][setting]:.0f}" for setting in CHUNKS)] for r in rows])
    write_results("training_step", {"threads": args.threads, "batch_frames": args.batch, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
