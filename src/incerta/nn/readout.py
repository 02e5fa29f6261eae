"""Per-atom energy readout and the per-species shift/scale that restores physical units."""

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.nn.block import Block, Data


class EnergyReadout(Block):
    """Invariant node features (N, C), and any per-atom scalars named in ``extra_inputs`` (e.g.
    atomic charges), -> dimensionless per-atom output (N,) and last hidden layer (N, H).

    The hidden layer is the 'last-layer feature' that last-layer uncertainty methods use.
    """

    writes = (K.ATOMIC_READOUT, K.LAST_LAYER_FEATURES)
    extra_inputs: list[str]  # TorchScript reads this class annotation: no __future__ import in this module

    def __init__(self, num_features: int, hidden: int, extra_inputs: Sequence[str] = ()) -> None:
        super().__init__()
        self.extra_inputs = list(extra_inputs)
        self.reads = (K.NODE_FEATURES, *self.extra_inputs)
        self.irreps_in = {K.NODE_FEATURES: o3.Irreps(f"{num_features}x0e")}
        self.hidden = nn.Linear(num_features + len(self.extra_inputs), hidden)
        self.output = nn.Linear(hidden, 1)
        nn.init.zeros_(self.output.weight)  # start from the reference energies: E_i = shift[Z_i]
        nn.init.zeros_(self.output.bias)

    def forward(self, data: Data) -> Data:
        features = data[K.NODE_FEATURES]
        for key in self.extra_inputs:
            features = torch.cat([features, data[key].unsqueeze(-1)], dim=-1)
        last_layer = torch.nn.functional.silu(self.hidden(features))
        return {K.ATOMIC_READOUT: self.output(last_layer).squeeze(-1), K.LAST_LAYER_FEATURES: last_layer}


class SpeciesScaleShift(Block):
    """E_i = scale * e_i + shift[Z_i]: network output (N,) -> atomic energy in eV (N,).

    ``shift`` (S,) holds per-species reference energies (isolated atoms or a fit to
    the training set) in eV; ``scale`` is one energy scale in eV (RMS of the forces
    times 1 Å), so the network itself works on numbers of order one.
    """

    reads = (K.ATOMIC_READOUT, K.SPECIES)
    writes = (K.LOCAL_ENERGIES,)
    energy_key = K.LOCAL_ENERGIES

    def __init__(self, shift: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("shift", shift.clone().to(torch.get_default_dtype()))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.get_default_dtype()))

    def forward(self, data: Data) -> Data:
        return {K.LOCAL_ENERGIES: self.scale * data[K.ATOMIC_READOUT] + self.shift[data[K.SPECIES]]}
