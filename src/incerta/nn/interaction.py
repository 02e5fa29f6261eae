"""Equivariant interaction block (NequIP-style convolution).

For a receiving atom i with neighbours j (edges i <- j):

    m_i = 1/sqrt(<n>) sum_j  R(|r_ij|) [ (W_up h_j) (x) Y(r_ij / |r_ij|) ]
    h_i' = Gate( W_down m_i + SC_{Z_i}(h_i) ) (+ h_i when shapes allow)

R is a radial MLP on the Bessel embedding (scaled by the smooth cutoff), (x) is a
Clebsch–Gordan tensor product with one weight per channel and path ("uvu"), SC a
species-dependent self-connection and Gate the gated non-linearity of e3nn.

No ``from __future__ import annotations`` here: TorchScript (model export) reads the
annotations of the chunked path it skips, and resolves only real types, not strings.
"""

import copy

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn
from torch.utils.checkpoint import checkpoint

from incerta.data import keys as K
from incerta.nn.block import Block, Data

#: edges per chunk of a layer whose messages are recomputed in the backward pass instead of
#: held for it, when a structure has more edges than this and gradients are on. Measured eagerly
#: on the 1,536-atom water box (79k edges, fast preset, 2 threads): peak memory of energy,
#: forces and stress 1.72 GB unchunked, 1.19 GB at 20,000 edges, 0.96 GB at 8,000, 0.93 GB at
#: 4,000, at about the same time per call (708 vs 725 ms; interleaved reruns 717/753 vs 639/813).
#: A training step on 4 water frames (40k edges, one thread; benchmarks/training_step.py) takes
#: 1.64 s chunked against 1.46 s whole with the fast preset, but 5.15 s against 5.76 s at l_max 2
EDGE_CHUNK = 8192


def hidden_irreps(num_channels: int, l_max: int) -> o3.Irreps:
    """Irreps of natural parity up to l_max: C x 0e + C x 1o + C x 2e + ..."""
    return o3.Irreps([(num_channels, (degree, (-1) ** degree)) for degree in range(l_max + 1)])


def _gate_for(irreps_out: o3.Irreps) -> nn.Module:
    """Gated non-linearity producing ``irreps_out`` (SiLU on scalars, sigmoid gates)."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    gates = o3.Irreps([(mul, "0e") for mul, _ in gated])
    return enn.Gate(scalars, [torch.nn.functional.silu], gates, [torch.sigmoid] * len(gates), gated)


class Interaction(Block):
    """One message-passing layer: node irreps ``irreps_in`` -> ``irreps_out``.

    Reads node_features (N, irreps_in.dim), species_one_hot (N, S), edge_sh (E, sh.dim),
    edge_radial (E, num_basis), edge_envelope (E,), edge_index (2, E) as (receiver, sender);
    writes node_features (N, irreps_out.dim).
    """

    reads = (K.NODE_FEATURES, K.SPECIES_ONE_HOT, K.EDGE_SH, K.EDGE_RADIAL, K.EDGE_ENVELOPE, K.EDGE_INDEX)
    writes = (K.NODE_FEATURES,)

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_species: int,
        num_basis: int,
        radial_hidden: list[int],
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        irreps_in, irreps_out, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_out), o3.Irreps(irreps_sh)
        self.irreps_in = {K.NODE_FEATURES: irreps_in, K.EDGE_SH: irreps_sh}
        self.irreps_out = {K.NODE_FEATURES: irreps_out}
        self.inv_sqrt_neighbors = float(avg_num_neighbors) ** -0.5

        self.gate = _gate_for(irreps_out)
        # Paths reaching the same output irrep are summed inside the tensor product (each with
        # its own per-edge radial weights): one output block per irrep instead of one per
        # path, which makes training about 1.5x faster on CPU (benchmarks/speed.py).
        wanted = {ir for _, ir in irreps_out}
        paths = [
            (i1, i2, mul, ir_out)
            for i1, (mul, ir_in) in enumerate(irreps_in)
            for i2, (_, ir_sh) in enumerate(irreps_sh)
            for ir_out in ir_in * ir_sh
            if ir_out in wanted
        ]
        mid = sorted({(mul, ir_out) for _, _, mul, ir_out in paths}, key=lambda block: block[1])
        irreps_mid = o3.Irreps(mid)
        instructions = [(i1, i2, mid.index((mul, ir_out)), "uvu", True) for i1, i2, mul, ir_out in paths]

        self.linear_up = o3.Linear(irreps_in, irreps_in)
        # held as a copy: copying e3nn's generated code re-traces it, and for l = 3 paths the
        # re-traced code reads some constants as new buffers; built so from the start, every
        # later copy (training's weight average, loading) has the same buffers as the original
        self.tensor_product = copy.deepcopy(o3.TensorProduct(
            irreps_in, irreps_sh, irreps_mid, instructions,
            shared_weights=False, internal_weights=False,
        ))
        self.radial = enn.FullyConnectedNet(
            [num_basis, *radial_hidden, self.tensor_product.weight_numel], torch.nn.functional.silu
        )
        self.linear_down = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.self_connection = o3.FullyConnectedTensorProduct(
            irreps_in, o3.Irreps(f"{num_species}x0e"), self.gate.irreps_in
        )
        self.residual = irreps_in == self.gate.irreps_out

    def forward(self, data: Data) -> Data:
        node_features = data[K.NODE_FEATURES]
        self_term = self.self_connection(node_features, data[K.SPECIES_ONE_HOT])
        up = self.linear_up(node_features)
        edges = [data[K.EDGE_INDEX][0], data[K.EDGE_INDEX][1], data[K.EDGE_SH], data[K.EDGE_RADIAL],
                 data[K.EDGE_ENVELOPE]]
        if not torch.jit.is_scripting() and self.recomputes(edges[0]):
            aggregated = self.chunked_messages(up, edges)
        else:
            aggregated = self.messages(up, edges[0], edges[1], edges[2], edges[3], edges[4])
        out = self.gate(self.linear_down(aggregated * self.inv_sqrt_neighbors) + self_term)
        return {K.NODE_FEATURES: node_features + out if self.residual else out}

    def messages(self, up: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor, sh: torch.Tensor,
                 radial: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """Each atom's sum of R(|r_ij|) [(W_up h_j) (x) Y(r_ij)] over the given edges: ``up``
        (N, irreps_in.dim), edges (E,), (E,), (E, sh.dim), (E, num_basis), (E,) -> (N, irreps_mid.dim)."""
        weights = self.radial(radial) * envelope.unsqueeze(-1)
        messages = self.tensor_product(up.index_select(0, senders), sh, weights)
        return torch.zeros(up.shape[0], messages.shape[1], dtype=messages.dtype,
                           device=messages.device).index_add_(0, receivers, messages)

    @torch.jit.unused
    def recomputes(self, receivers: torch.Tensor) -> bool:
        """Whether the messages of these edges (receivers (E,)) are computed in chunks of
        :data:`EDGE_CHUNK` and recomputed in the backward pass (not while tracing for
        compilation, whose sizes are symbolic)."""
        num_edges = receivers.shape[0]
        return torch.is_grad_enabled() and isinstance(num_edges, int) and num_edges > EDGE_CHUNK

    @torch.jit.unused
    def chunked_messages(self, up: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`messages` summed over chunks of :data:`EDGE_CHUNK` edges, each recomputed in the
        backward pass (activation checkpointing): the per-edge buffers of one chunk at a time."""
        total = None
        for start in range(0, edges[0].shape[0], EDGE_CHUNK):
            part = checkpoint(self.messages, up, *(t[start:start + EDGE_CHUNK] for t in edges), use_reentrant=False)
            total = part if total is None else total + part
        return total
