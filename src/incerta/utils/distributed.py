"""Data-parallel training with torch.distributed (gloo on CPU, NCCL on GPU).

``incerta train CONFIG --nprocs N`` starts N processes on this machine (loopback); under
``torchrun`` or ``srun`` the usual environment variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT; SLURM_PROCID / SLURM_NTASKS) are used instead. Every rank sees the same
global batch order; rank r takes items r, r+N, ... of each global batch, the model is
wrapped in DistributedDataParallel (gradients averaged), validation sums are reduced, and
only rank 0 writes checkpoints, logs and reports.
"""

from __future__ import annotations

import os
import socket
from contextlib import closing

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_from_environment(device: str = "auto") -> bool:
    """Join the process group described by torchrun/SLURM variables; False when there is none.

    The backend is NCCL when the ranks train on GPUs of their own (``device`` resolves to
    CUDA and this node has a GPU per local rank), gloo otherwise."""
    if is_distributed():
        return True
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env.setdefault("RANK", env["SLURM_PROCID"])
        env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    if int(env.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in env:
        return False
    local_ranks = int((env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE", "1")).split("(")[0])  # "4(x2)"
    on_gpus = training_device(device).type == "cuda" and torch.cuda.device_count() >= local_ranks
    dist.init_process_group("nccl" if on_gpus else "gloo")
    return True


class DeviceError(RuntimeError):
    """A device was asked for that PyTorch cannot see; the message names the setting."""


def training_device(requested: str = "auto", setting: str = "training.device") -> torch.device:
    """The device this process works on (``setting``: the configuration key that asked for it,
    named in the error): ``auto`` takes a GPU when there is one; a data-parallel rank on GPUs
    takes the one numbered by its LOCAL_RANK."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{setting} is '{requested}' but PyTorch sees no GPU here; use cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a list of floats over ranks (identity when not distributed)."""
    if not is_distributed():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def shard(items: list, part: int | None = None, parts: int | None = None) -> list:
    """This rank's share of ``items`` (every ``world_size``-th item)."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    return items[part::parts]


def _entry(rank_: int, world: int, port: int, function, arguments: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank_), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank_))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank_, world_size=world)
    try:
        function(*arguments)
    finally:
        dist.destroy_process_group()


def spawn(function, nprocs: int, *arguments) -> None:
    """Run ``function(*arguments)`` in ``nprocs`` gloo processes on loopback (a picklable function)."""
    torch.multiprocessing.spawn(_entry, args=(nprocs, free_port(), function, arguments), nprocs=nprocs, join=True)
