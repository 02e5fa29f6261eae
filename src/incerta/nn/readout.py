"""Per-atom energy readout and the per-species shift/scale that restores physical units."""

from __future__ import annotations

import torch
from torch import nn


class EnergyReadout(nn.Module):
    """Invariant node features (N, C) -> (per-atom energy (N,), last hidden layer (N, H)).

    The hidden layer is the 'last-layer feature' that last-layer uncertainty methods use.
    """

    def __init__(self, num_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden)
        self.output = nn.Linear(hidden, 1)
        nn.init.zeros_(self.output.weight)  # start from the reference energies: E_i = shift[Z_i]
        nn.init.zeros_(self.output.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last_layer = torch.nn.functional.silu(self.hidden(features))
        return self.output(last_layer).squeeze(-1), last_layer


class SpeciesScaleShift(nn.Module):
    """E_i = scale * e_i + shift[Z_i]: network output (N,) -> atomic energy in eV (N,).

    ``shift`` (S,) holds per-species reference energies (isolated atoms or a fit to
    the training set) in eV; ``scale`` is one energy scale in eV (RMS of the forces
    times 1 Å), so the network itself works on numbers of order one.
    """

    def __init__(self, shift: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("shift", shift.clone().to(torch.get_default_dtype()))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.get_default_dtype()))

    def forward(self, energies: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.scale * energies + self.shift[species]
