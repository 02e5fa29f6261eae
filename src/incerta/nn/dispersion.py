"""DFT-D3(BJ) dispersion as a fixed physical term: tad-dftd3 for molecules, simple-dftd3 for cells.

When the reference data include a D3 correction (e.g. PBE-D3(BJ)), adding the same term to
the model leaves the network the short-range remainder, and the long-range R^-6 tail
holds beyond the cutoff. The term has no trainable parameters.

Molecules go through tad-dftd3 (torch autodiff, any device, batched). tad-dftd3 has no
periodic images, so periodic structures go through simple-dftd3 (``dftd3`` on PyPI, the
reference implementation by the same group, with lattice sums), wrapped in an autograd
function whose backward uses its analytic gradient and strain derivative: forces and stress
are exact, but the periodic term has no second derivatives (its forces are constants to
autograd: fine for training, where it has no parameters, but a Hessian would miss it). The
two libraries agree to 1e-9 eV on a molecule (test). Measured here (one thread):
the two-body lattice sum takes 0.01 s for 64 Si atoms and 0.11 s for 512; the three-body
(Axilrod-Teller-Muto) term, 4 % of silicon's D3 energy, takes 2.1 s and 20 s, so
``dispersion_three_body: false`` is offered for large cells (and matches references computed
without it, as VASP's and CP2K's D3 are by default).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import tad_dftd3
import torch
from ase.units import Bohr, Hartree

from incerta.data import keys as K
from incerta.nn.block import Block, Data

#: periodic D3 results kept for reuse, by a digest of the structure (see :func:`_lattice_d3`)
_LATTICE_CACHE: OrderedDict[str, tuple[float, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
#: atoms whose results the cache holds at most (an atomic energy and a gradient, 32 bytes each: about 32 MB)
LATTICE_CACHE_ATOMS = 1_000_000


def _lattice_d3(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, functional: str,
                three_body: bool) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """simple-dftd3 on one periodic structure (numbers (N,), float64 positions (N, 3) and cell
    (3, 3) in Å, pbc (3,)): total energy (eV), atomic energies (N,) eV, dE/dr (N, 3) eV/Å and
    dE/dH (3, 3) eV/Å. Kept by a digest of the exact coordinates, least recently used dropped
    beyond :data:`LATTICE_CACHE_ATOMS`: training passes the same frames every epoch, and the
    lattice sum took 0.18 s of a 0.45 s training step per 192-atom water cell (one thread);
    MD never repeats a structure, so there it only costs the digest."""
    from dftd3.interface import DispersionModel, RationalDampingParam

    digest = hashlib.sha256()
    for part in (numbers.astype(np.int64), positions, cell, pbc.astype(bool), f"{functional} {three_body}".encode()):
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else part)
    key = digest.hexdigest()
    if key in _LATTICE_CACHE:
        _LATTICE_CACHE.move_to_end(key)
        return _LATTICE_CACHE[key]
    param = RationalDampingParam(method=functional, atm=three_body)
    model = DispersionModel(numbers, positions / Bohr, cell / Bohr, pbc)
    result = model.get_dispersion(param, grad=True)
    pairs = model.get_pairwise_dispersion(param)
    atomic = (pairs["additive pairwise energy"] + pairs["non-additive pairwise energy"]).sum(1) * Hartree
    gradient = result["gradient"] * Hartree / Bohr  # dE/dr, eV/Å
    # strain derivative dE/deps = R^T dE/dR + H^T dE/dH, so dE/dH = H^-T (dE/deps - R^T dE/dR)
    cell_gradient = np.linalg.solve(cell.T, result["virial"] * Hartree - positions.T @ gradient)
    _LATTICE_CACHE[key] = found = (float(result["energy"] * Hartree), atomic, gradient, cell_gradient)
    held = sum(len(entry[1]) for entry in _LATTICE_CACHE.values())
    while held > LATTICE_CACHE_ATOMS:
        held -= len(_LATTICE_CACHE.popitem(last=False)[1][1])
    return found


class _PeriodicD3(torch.autograd.Function):
    """Total D3 energy (eV) of one periodic structure, differentiable in positions and cell (Å)."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, cell: torch.Tensor, numbers: np.ndarray, pbc: np.ndarray,
                functional: str, three_body: bool) -> tuple[torch.Tensor, torch.Tensor]:
        as_numpy = lambda t: t.detach().cpu().double().numpy()
        energy, atomic, gradient, cell_gradient = _lattice_d3(numbers, as_numpy(positions), as_numpy(cell), pbc,
                                                              functional, three_body)
        ctx.save_for_backward(torch.tensor(gradient).to(positions), torch.tensor(cell_gradient).to(cell))  # copies:
        return (torch.tensor(energy, dtype=positions.dtype, device=positions.device),  # the cache keeps its arrays
                torch.tensor(atomic).to(positions))

    @staticmethod
    def backward(ctx, grad_energy: torch.Tensor, grad_atomic: torch.Tensor):
        gradient, cell_gradient = ctx.saved_tensors
        return grad_energy * gradient, grad_energy * cell_gradient, None, None, None, None


class D3Dispersion(Block):
    """Atom-resolved D3(BJ) energies (N,) in eV for the functional the data were computed with
    (Becke-Johnson damping, with or without the three-body term; the functional name is
    checked by the model configuration)."""

    reads = (K.NUMBERS, K.POSITIONS, K.PBC, K.BATCH, K.CELL)
    writes = (K.DISPERSION_ENERGIES,)
    energy_key = K.DISPERSION_ENERGIES

    def __init__(self, functional: str, three_body: bool = True) -> None:
        super().__init__()
        self.functional, self.three_body = functional, three_body
        parameters = tad_dftd3.param.get_functional_params(functional, damping="bj", dtype=torch.float64)
        if not three_body:
            parameters["s9"] = torch.zeros_like(parameters["s9"])
        for name, value in parameters.items():
            self.register_buffer(f"param_{name}", value, persistent=False)

    def forward(self, data: Data) -> Data:
        batch, numbers, positions, pbc = data[K.BATCH], data[K.NUMBERS], data[K.POSITIONS], data[K.PBC]
        periodic = pbc.any(dim=1)  # (B,)
        energies = positions.new_zeros(len(numbers))
        if not bool(periodic.all()):
            molecular = ~periodic[batch]
            energies = energies.index_put((molecular,), self._molecules(batch[molecular], numbers[molecular],
                                                                        positions[molecular], len(periodic)))
        for graph in torch.nonzero(periodic).flatten().tolist():
            atoms = batch == graph
            energy, atomic = _PeriodicD3.apply(positions[atoms], data[K.CELL][graph], numbers[atoms].cpu().numpy(),
                                               pbc[graph].cpu().numpy(), self.functional, self.three_body)
            # the atomic split is the library's; its derivatives are carried by the total
            energies = energies.index_put((atoms,), atomic + (energy - energy.detach()) / atomic.numel())
        return {K.DISPERSION_ENERGIES: energies}

    def _molecules(self, batch: torch.Tensor, numbers_in: torch.Tensor, positions_in: torch.Tensor,
                   num_graphs: int) -> torch.Tensor:
        """tad-dftd3 on padded (B, size) arrays; atomic energies (n,) eV of the listed atoms."""
        counts = torch.bincount(batch, minlength=num_graphs)
        size = int(counts.max())
        slot = torch.arange(batch.numel(), device=batch.device) - (torch.cumsum(counts, 0) - counts)[batch]
        numbers = numbers_in.new_zeros(num_graphs, size)  # 0 marks padding for tad-dftd3
        numbers[batch, slot] = numbers_in
        positions = positions_in.new_zeros(num_graphs, size, 3).index_put((batch, slot), positions_in / Bohr)
        param = {name[len("param_"):]: value.to(positions.dtype) for name, value in self.named_buffers()}
        energies = tad_dftd3.dftd3(numbers, positions, param)  # (B, size) Hartree
        return energies[batch, slot] * Hartree
