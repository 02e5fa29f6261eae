"""The equivariant potential: an ordered list of blocks, forces and stress by autograd.

The blocks (:mod:`incerta.nn`) are, in order: edge vectors -> spherical harmonics and
radial basis -> species embedding [-> charge/spin embedding] -> interactions [-> global
attention] [-> charge equilibration and electrostatics] -> energy readout -> per-species
scale and shift [-> D3 dispersion]. Each block reads and writes named keys
(:mod:`incerta.data.keys`); the list is checked when the potential is built, and the
per-atom energy is the sum of the energy terms the blocks declare. A new physical term is a
new block in :func:`potential_blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase.data import chemical_symbols
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.models.derivatives import derivatives, differentiable_inputs
from incerta.models.spec import PotentialSpec
from incerta.nn.block import Block, BlockError, Data, check_blocks
from incerta.nn.codegen import CODEGEN_LOCK
from incerta.nn.dispersion import D3Dispersion
from incerta.nn.edges import EdgeHarmonics, EdgeVectors
from incerta.nn.electronic import ElectronicEmbedding, segment_sum
from incerta.nn.electrostatics import ChargeEquilibration
from incerta.nn.embedding import SpeciesEmbedding
from incerta.nn.global_attention import GlobalAttention
from incerta.nn.interaction import Interaction, hidden_irreps
from incerta.nn.radial import RadialEmbedding
from incerta.nn.readout import EnergyReadout, SpeciesScaleShift

#: keys the potential hands to its first block (from the graph and the species lookup)
INPUT_KEYS = (K.POSITIONS, K.NUMBERS, K.CELL, K.PBC, K.BATCH, K.EDGE_INDEX, K.EDGE_SHIFTS, K.TOTAL_CHARGE, K.SPIN,
              K.SPECIES, K.SPECIES_ONE_HOT)


class UnknownSpeciesError(ValueError):
    """A structure contains an element the model was never trained on."""


def potential_blocks(spec: PotentialSpec) -> list[tuple[str, Block]]:
    """The blocks of the potential described by ``spec``, in order, with their names (which are
    also the prefixes of their weights in saved models; ``interactions.k`` is the k-th layer)."""
    num_species = len(spec.species)
    harmonics = EdgeHarmonics(spec.l_max)
    scalars, hidden = o3.Irreps(f"{spec.num_channels}x0e"), hidden_irreps(spec.num_channels, spec.l_max)
    blocks: list[tuple[str, Block]] = [
        ("edge_vectors", EdgeVectors()),
        ("spherical_harmonics", harmonics),
        ("radial", RadialEmbedding(spec.cutoff, spec.num_radial_basis, spec.cutoff_p)),
        ("embedding", SpeciesEmbedding(num_species, spec.num_channels)),
    ]
    if spec.electronic_embedding:
        blocks.append(("electronic", ElectronicEmbedding(spec.num_channels)))
    irreps_in = scalars
    for index in range(spec.num_layers):
        irreps_out = scalars if index == spec.num_layers - 1 else hidden
        blocks.append((f"interactions.{index}", Interaction(
            irreps_in, irreps_out, harmonics.irreps_out[K.EDGE_SH], num_species, spec.num_radial_basis, spec.radial_hidden,
            spec.avg_num_neighbors)))
        irreps_in = irreps_out
    if spec.global_attention:
        blocks.append(("attention", GlobalAttention(spec.num_channels)))
    extra_readout_inputs: tuple[str, ...] = ()
    if spec.electrostatics == "qeq":
        blocks.append(("charge_model", ChargeEquilibration(spec.num_channels, spec.species)))
        extra_readout_inputs = (K.ATOMIC_CHARGES,)
    shift = torch.tensor(spec.energy_shift or [0.0] * num_species)
    blocks += [
        ("readout", EnergyReadout(spec.num_channels, spec.readout_hidden, extra_readout_inputs)),
        ("scale_shift", SpeciesScaleShift(shift, spec.energy_scale)),
    ]
    if spec.dispersion:
        blocks.append(("dispersion", D3Dispersion(spec.dispersion, spec.dispersion_three_body)))
    return blocks


class Potential(nn.Module):
    """E(3)-equivariant message-passing potential (NequIP-style) made of blocks.

    forward(graph) returns a dict with ``energy`` (B,) eV, ``energies`` (N,) eV,
    ``node_features`` (N, C), ``last_layer_features`` (N, H), ``charges`` (N,) e and
    ``dipole`` (B, 3) e·Å with charge equilibration, and when asked ``forces`` (N, 3) eV/Å
    and ``stress`` (B, 3, 3) eV/Å^3. ``blocks`` defaults to :func:`potential_blocks`.
    """

    def __init__(self, spec: PotentialSpec, blocks: Sequence[tuple[str, Block]] | None = None) -> None:
        super().__init__()
        self.spec = spec
        lookup = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        lookup[torch.tensor(spec.species)] = torch.arange(len(spec.species))
        self.register_buffer("species_lookup", lookup, persistent=False)
        with CODEGEN_LOCK:
            blocks = list(potential_blocks(spec) if blocks is None else blocks)
        check_blocks(blocks, INPUT_KEYS)
        self.energy_terms = [block.energy_key for _, block in blocks if block.energy_key is not None]
        if not self.energy_terms:
            raise BlockError("no block writes a per-atom energy term (energy_key): the potential would have no energy")
        for name, block in blocks:
            self._register(name, block)
        self.blocks = blocks

    def _register(self, name: str, block: Block) -> None:
        """``name`` becomes the block's attribute; ``group.k`` appends to the ModuleList ``group``."""
        group, _, index = name.partition(".")
        if not index:
            self.add_module(name, block)
            return
        if group not in self._modules:
            self.add_module(group, nn.ModuleList())
        modules = self._modules[group]
        if int(index) != len(modules):
            raise BlockError(f"block '{name}': blocks of group '{group}' must be numbered 0, 1, ... in order")
        modules.append(block)

    @property
    def species(self) -> list[int]:
        return list(self.spec.species)

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (N,) -> species indices (N,); unknown elements raise."""
        if numbers.numel() and (int(numbers.min()) < 1 or int(numbers.max()) >= len(self.species_lookup)):
            raise UnknownSpeciesError(f"invalid atomic number in {numbers.tolist()}")
        index = self.species_lookup[numbers]
        unknown = torch.nonzero(index < 0).flatten()
        if unknown.numel():
            atoms = ", ".join(f"atom {int(a)} ({chemical_symbols[int(numbers[a])]})" for a in unknown[:10])
            known = ", ".join(chemical_symbols[z] for z in self.species)
            raise UnknownSpeciesError(
                f"element not in the model: {atoms}; the model knows only {known}. "
                "Predictions for unseen elements would be meaningless; retrain with such data."
            )
        return index

    def forward(
        self,
        graph: AtomicGraph,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool | None = None,
        species: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``species``: the species indices (N,) of the graph's atoms when the caller already
        checked them (compiled inference traces this path without the data-dependent check)."""
        create_graph = self.training if create_graph is None else create_graph
        inputs = differentiable_inputs(graph, compute_forces, compute_stress)
        out = self.evaluate(inputs.graph, species)
        out.update(derivatives(out[K.ENERGY], inputs, create_graph))
        return out

    def inputs(self, graph: AtomicGraph, species: torch.Tensor | None = None) -> Data:
        """The keys :data:`INPUT_KEYS` of ``graph``; unknown elements raise unless ``species``
        (N,) gives the checked species indices."""
        species = self.species_index(graph.numbers) if species is None else species
        return {
            K.POSITIONS: graph.positions, K.NUMBERS: graph.numbers, K.CELL: graph.cell, K.PBC: graph.pbc,
            K.BATCH: graph.batch, K.EDGE_INDEX: graph.edge_index, K.EDGE_SHIFTS: graph.edge_shifts,
            K.TOTAL_CHARGE: graph.charge, K.SPIN: graph.spin, K.SPECIES: species,
            K.SPECIES_ONE_HOT: torch.nn.functional.one_hot(species, len(self.spec.species)).to(graph.positions.dtype),
        }

    def evaluate(self, graph: AtomicGraph, species: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Energies and features (:data:`~incerta.data.keys.MODEL_OUTPUTS`) at the graph's
        positions and cell (no derivatives); ``species`` as in :meth:`forward`."""
        data = self.inputs(graph, species)
        for _, block in self.blocks:
            data.update(block(data))
        atomic_energies = data[self.energy_terms[0]]
        for term in self.energy_terms[1:]:
            atomic_energies = atomic_energies + data[term]
        data[K.ATOMIC_ENERGIES] = atomic_energies
        data[K.ENERGY] = segment_sum(atomic_energies, graph.batch, graph.num_graphs)
        return {key: data[key] for key in K.MODEL_OUTPUTS if key in data}
