"""The contract every step of a potential keeps: named keys in, named keys out.

A :class:`Block` reads tensors from a dict of keys (:mod:`incerta.data.keys`) and returns the
keys it writes. It declares ``reads`` and ``writes``, the irreps of the equivariant keys
it reads and writes, and, if one of its outputs is a per-atom energy (N,) in eV that the
potential adds to the total, that key as ``energy_key``. :func:`check_blocks` verifies a
list of blocks before any data flows, so a missing key or an irreps mismatch fails when the
model is built, naming the block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from e3nn import o3
from torch import nn

Data = dict[str, torch.Tensor]


class Block(nn.Module):
    """One step of a potential. Subclasses set ``reads`` / ``writes`` (key names), optionally
    ``irreps_in`` / ``irreps_out`` (key -> irreps) and ``energy_key``, and implement
    ``forward(data) -> {written key: tensor}``."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    energy_key: str | None = None
    #: the declarations are for :func:`check_blocks`; TorchScript (model export) skips them
    __jit_ignored_attributes__ = ("reads", "writes", "energy_key", "irreps_in", "irreps_out")

    def __init__(self) -> None:
        super().__init__()
        self.irreps_in: dict[str, o3.Irreps] = {}
        self.irreps_out: dict[str, o3.Irreps] = {}

    def forward(self, data: Data) -> Data:
        raise NotImplementedError


class BlockError(ValueError):
    """A list of blocks does not fit together; the message names the block and the key."""


def check_blocks(blocks: Sequence[tuple[str, Block]], inputs: Iterable[str]) -> None:
    """Check that every block finds the keys it reads, written by the ``inputs`` or an earlier
    block, with the irreps it expects (where both sides declare them)."""
    available: dict[str, o3.Irreps | None] = dict.fromkeys(inputs)
    producer = dict.fromkeys(available, "the inputs")
    for name, block in blocks:
        for key in block.reads:
            if key not in available:
                raise BlockError(f"block '{name}' ({type(block).__name__}) reads '{key}', which neither the inputs "
                                 f"nor an earlier block write (available: {', '.join(sorted(available))})")
            expected, found = block.irreps_in.get(key), available[key]
            if expected is not None and found is not None and o3.Irreps(expected) != o3.Irreps(found):
                raise BlockError(f"block '{name}' ({type(block).__name__}) reads '{key}' as {expected}, "
                                 f"but {producer[key]} writes it as {found}")
        for key in block.writes:
            available[key] = block.irreps_out.get(key)
            producer[key] = f"block '{name}'"
        if block.energy_key is not None and block.energy_key not in block.writes:
            raise BlockError(f"block '{name}' declares the energy term '{block.energy_key}' but does not write it")
