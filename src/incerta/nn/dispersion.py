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

from incerta.data import keys as K
from incerta.nn.block import Block, Data


class D3Dispersion(Block):
    """Atom-resolved D3(BJ) energies (N,) in eV for the functional the data were computed with
    (Becke-Johnson damping, three-body term included; the functional name is checked by the
    model configuration)."""

    reads = (K.NUMBERS, K.POSITIONS, K.PBC, K.BATCH, K.CELL)
    writes = (K.DISPERSION_ENERGIES,)
    energy_key = K.DISPERSION_ENERGIES

    def __init__(self, functional: str) -> None:
        super().__init__()
        self.functional = functional
        parameters = tad_dftd3.param.get_functional_params(functional, damping="bj", dtype=torch.float64)
        for name, value in parameters.items():
            self.register_buffer(f"param_{name}", value, persistent=False)

    def forward(self, data: Data) -> Data:
        batch, numbers_in, positions_in = data[K.BATCH], data[K.NUMBERS], data[K.POSITIONS]
        num_graphs = data[K.CELL].shape[0]
        if bool(data[K.PBC].any()):
            raise ValueError("model.dispersion: tad-dftd3 handles molecules only; this structure is periodic "
                             "(train without dispersion, or with data whose reference excludes it)")
        counts = torch.bincount(batch, minlength=num_graphs)
        size = int(counts.max())
        slot = torch.arange(batch.numel(), device=batch.device) - (torch.cumsum(counts, 0) - counts)[batch]
        numbers = numbers_in.new_zeros(num_graphs, size)  # 0 marks padding for tad-dftd3
        numbers[batch, slot] = numbers_in
        positions = positions_in.new_zeros(num_graphs, size, 3).index_put((batch, slot), positions_in / Bohr)
        param = {name[len("param_"):]: value.to(positions.dtype) for name, value in self.named_buffers()}
        energies = tad_dftd3.dftd3(numbers, positions, param)  # (B, size) Hartree
        return {K.DISPERSION_ENERGIES: energies[batch, slot] * Hartree}
