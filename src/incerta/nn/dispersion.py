"""DFT-D3(BJ) dispersion as a fixed physical term, through tad-dftd3 (torch autodiff D3).

When the reference data include a D3 correction (e.g. PBE-D3(BJ)), adding the same term to
the model leaves the network the short-range remainder, and the long-range R^-6 tail
holds beyond the cutoff. The term has no trainable parameters; its forces and stress come
from autograd with the rest of the energy. tad-dftd3 (0.7) works on molecules only: a
periodic structure raises an error rather than silently dropping its images.
"""

from __future__ import annotations

import tad_dftd3
import torch
from ase.units import Bohr, Hartree
from torch import nn

from incerta.data.graph import AtomicGraph


def damping_parameters(functional: str) -> dict[str, torch.Tensor]:
    """Becke-Johnson damping parameters of ``functional`` (e.g. "pbe"), three-body term included."""
    try:
        return tad_dftd3.param.get_functional_params(functional, damping="bj", dtype=torch.float64)
    except (KeyError, ValueError) as err:
        raise ValueError(f"model.dispersion: no D3(BJ) parameters for functional {functional!r} ({err})") from err


class D3Dispersion(nn.Module):
    """Atom-resolved D3(BJ) energies (N,) in eV for the functional the data were computed with."""

    def __init__(self, functional: str) -> None:
        super().__init__()
        self.functional = functional
        for name, value in damping_parameters(functional).items():
            self.register_buffer(f"param_{name}", value, persistent=False)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        if bool(graph.pbc.any()):
            raise ValueError("model.dispersion: tad-dftd3 handles molecules only; this structure is periodic "
                             "(train without dispersion, or with data whose reference excludes it)")
        counts = torch.bincount(graph.batch, minlength=graph.num_graphs)
        size = int(counts.max())
        slot = torch.arange(graph.batch.numel(), device=graph.batch.device) - (torch.cumsum(counts, 0) - counts)[graph.batch]
        numbers = graph.numbers.new_zeros(graph.num_graphs, size)  # 0 marks padding for tad-dftd3
        numbers[graph.batch, slot] = graph.numbers
        positions = graph.positions.new_zeros(graph.num_graphs, size, 3).index_put(
            (graph.batch, slot), graph.positions / Bohr)
        param = {name[len("param_"):]: value.to(positions.dtype) for name, value in self.named_buffers()}
        energies = tad_dftd3.dftd3(numbers, positions, param)  # (B, size) Hartree
        return energies[graph.batch, slot] * Hartree
