"""Forces and stress of any energy by automatic differentiation.

Usage: ``inputs = differentiable_inputs(graph, forces, stress)``, compute an energy (B,)
from ``inputs.graph`` (positions and cell displaced by a zero strain), then
``derivatives(energy, inputs, create_graph)`` gives forces = -dE/dr (N, 3) in eV/Å and
stress = (1/V) dE/d(strain) (B, 3, 3) in eV/Å^3.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph


@dataclass
class DifferentiableInputs:
    graph: AtomicGraph  # positions/cell to evaluate the energy at
    positions: torch.Tensor | None  # leaf for forces
    strain: torch.Tensor | None  # leaf for stress
    volume: torch.Tensor | None  # (B,) Å^3


def differentiable_inputs(graph: AtomicGraph, forces: bool, stress: bool) -> DifferentiableInputs:
    """Graph whose positions (and, for stress, cell) depend on fresh leaf tensors."""
    if not (forces or stress):
        return DifferentiableInputs(graph, None, None, None)
    positions = graph.positions.detach().requires_grad_(True)
    if not stress:
        return DifferentiableInputs(replace(graph, positions=positions), positions, None, None)
    strain = torch.zeros_like(graph.cell, requires_grad=True)
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    moved = positions + torch.einsum("ni,nij->nj", positions, symmetric[graph.batch])
    cell = graph.cell + torch.bmm(graph.cell, symmetric)
    volume = torch.linalg.det(graph.cell).abs().clamp_min(1e-12)
    return DifferentiableInputs(replace(graph, positions=moved, cell=cell), positions, strain, volume)


def derivatives(
    energy: torch.Tensor, inputs: DifferentiableInputs, create_graph: bool, retain_graph: bool | None = None
) -> dict[str, torch.Tensor]:
    """{forces, stress} of ``energy`` (B,) with respect to the leaves of ``inputs``.

    ``retain_graph`` keeps the graph for further derivatives (default: ``create_graph``).
    """
    leaves = [t for t in (inputs.positions, inputs.strain) if t is not None]
    if not leaves:
        return {}
    grads = torch.autograd.grad(
        [energy.sum()], leaves, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]  # no edges: no force
    out = {}
    if inputs.positions is not None:
        out[K.FORCES] = -grads[0]
    if inputs.strain is not None:
        out[K.STRESS] = grads[-1] / inputs.volume.view(-1, 1, 1)
    return out


def position_jacobian(values: torch.Tensor, positions: torch.Tensor, batched: bool,
                      create_graph: bool = False) -> torch.Tensor:
    """d values_h / d positions, (H, N, 3), for a vector ``values`` (H,): one vector-Jacobian
    product per entry; the graph is kept for more derivatives (and the Jacobian is itself
    differentiable with ``create_graph``, for losses on it).

    ``batched`` runs them as one batched backward (``torch.func.vmap`` over the products;
    autograd's ``is_grads_batched`` runs the same on an older vmap, 10-20% slower here), else
    one by one. Measured per structure on acac (H = 32, one thread): batched 47 ms for one
    structure but 88 ms in batches of 16 (its cost grows with the batch); one by one 130 ms
    alone and 45 ms in batches of 4 to 32. So: batched for a single structure (MD, the
    calculator), one by one for batches (fitting, scoring candidates).
    """
    return _jacobians(values, [positions], batched, create_graph)[0]


def stacked_derivatives(values: torch.Tensor, inputs: DifferentiableInputs, batched: bool,
                        create_graph: bool = False) -> dict[str, torch.Tensor]:
    """:func:`derivatives` of each entry of ``values`` (H,), stacked: forces (H, N, 3) and, when
    ``inputs`` has a strain, stress (H, B, 3, 3) (an entry summed over structures gives each
    structure's own stress, as its strain moves that structure only). The vector-Jacobian
    products run as in :func:`position_jacobian`, one per entry for both leaves together."""
    leaves = [t for t in (inputs.positions, inputs.strain) if t is not None]
    grads = _jacobians(values, leaves, batched, create_graph)
    out = {K.FORCES: -grads[0]}
    if inputs.strain is not None:
        out[K.STRESS] = grads[-1] / inputs.volume.view(1, -1, 1, 1)
    return out


def _jacobians(values: torch.Tensor, leaves: list[torch.Tensor], batched: bool,
               create_graph: bool) -> list[torch.Tensor]:
    """d values_h / d leaf, (H, *leaf.shape) for each leaf (see :func:`position_jacobian`)."""
    if batched:
        eye = torch.eye(values.numel(), dtype=values.dtype, device=values.device)
        return list(torch.func.vmap(lambda row: torch.autograd.grad(values, leaves, row, retain_graph=True,
                                                                    create_graph=create_graph))(eye))
    rows = [torch.autograd.grad(value, leaves, retain_graph=True, create_graph=create_graph) for value in values]
    return [torch.stack(column) for column in zip(*rows)]
