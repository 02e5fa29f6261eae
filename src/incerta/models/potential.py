"""The equivariant potential: embedding -> interactions -> readout, forces/stress by autograd."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from ase.data import chemical_symbols
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.models.derivatives import derivatives, differentiable_inputs
from incerta.nn.dispersion import D3Dispersion
from incerta.nn.electronic import ElectronicEmbedding, segment_sum
from incerta.nn.electrostatics import ChargeEquilibration
from incerta.nn.embedding import SpeciesEmbedding
from incerta.nn.global_attention import GlobalAttention
from incerta.nn.interaction import Interaction, hidden_irreps
from incerta.nn.radial import RadialEmbedding
from incerta.nn.readout import EnergyReadout, SpeciesScaleShift


class UnknownSpeciesError(ValueError):
    """A structure contains an element the model was never trained on."""


@dataclass
class PotentialSpec:
    """Everything needed to rebuild a potential before loading its weights.

    Architecture: cutoff (Å), l_max (0 = invariant), num_channels, num_layers,
    num_radial_basis, cutoff_p (polynomial envelope order), radial_hidden (radial MLP
    widths), readout_hidden; electronic_embedding (total charge and spin as inputs),
    global_attention (learned non-local block), electrostatics ("none" or "qeq": charge
    equilibration + Coulomb/Ewald energy), dispersion (None or a functional name such as
    "pbe": fixed D3(BJ) energy added, molecules only). Data statistics: species (atomic numbers), avg_num_neighbors,
    energy_shift (eV per species, same order as species), energy_scale (eV).
    """

    species: list[int]
    cutoff: float = 5.0
    l_max: int = 2
    num_channels: int = 32
    num_layers: int = 3
    num_radial_basis: int = 8
    cutoff_p: int = 6
    radial_hidden: list[int] = field(default_factory=lambda: [64, 64])
    readout_hidden: int = 32
    electronic_embedding: bool = False
    global_attention: bool = False
    electrostatics: str = "none"
    dispersion: str | None = None
    avg_num_neighbors: float = 10.0
    energy_shift: list[float] = field(default_factory=list)
    energy_scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


class Potential(nn.Module):
    """E(3)-equivariant message-passing potential (NequIP-style).

    forward(graph) returns a dict with ``energy`` (B,) eV, ``energies`` (N,) eV,
    ``node_features`` (N, C), ``last_layer_features`` (N, H), and when asked
    ``forces`` (N, 3) eV/Å and ``stress`` (B, 3, 3) eV/Å^3.
    """

    def __init__(self, spec: PotentialSpec) -> None:
        super().__init__()
        self.spec = spec
        num_species = len(spec.species)
        lookup = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        lookup[torch.tensor(spec.species)] = torch.arange(num_species)
        self.register_buffer("species_lookup", lookup, persistent=False)

        irreps_sh = o3.Irreps.spherical_harmonics(spec.l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
        self.radial = RadialEmbedding(spec.cutoff, spec.num_radial_basis, spec.cutoff_p)
        self.embedding = SpeciesEmbedding(num_species, spec.num_channels)

        scalars = o3.Irreps(f"{spec.num_channels}x0e")
        hidden = hidden_irreps(spec.num_channels, spec.l_max)
        layers = []
        irreps_in = scalars
        for index in range(spec.num_layers):
            irreps_out = scalars if index == spec.num_layers - 1 else hidden
            layers.append(
                Interaction(irreps_in, irreps_out, irreps_sh, num_species, spec.num_radial_basis,
                            spec.radial_hidden, spec.avg_num_neighbors)
            )
            irreps_in = irreps_out
        self.interactions = nn.ModuleList(layers)
        self.electronic = ElectronicEmbedding(spec.num_channels) if spec.electronic_embedding else None
        self.attention = GlobalAttention(spec.num_channels) if spec.global_attention else None
        if spec.electrostatics not in ("none", "qeq"):
            raise ValueError(f"electrostatics must be 'none' or 'qeq', got {spec.electrostatics!r}")
        self.charge_model = ChargeEquilibration(spec.num_channels, spec.species) if spec.electrostatics == "qeq" else None
        self.dispersion = D3Dispersion(spec.dispersion) if spec.dispersion else None
        readout_inputs = spec.num_channels + (1 if self.charge_model is not None else 0)
        self.readout = EnergyReadout(readout_inputs, spec.readout_hidden)
        shift = torch.tensor(spec.energy_shift or [0.0] * num_species)
        self.scale_shift = SpeciesScaleShift(shift, spec.energy_scale)

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
    ) -> dict[str, torch.Tensor]:
        create_graph = self.training if create_graph is None else create_graph
        inputs = differentiable_inputs(graph, compute_forces, compute_stress)
        out = self.evaluate(inputs.graph)
        out.update(derivatives(out[K.ENERGY], inputs, create_graph))
        return out

    def evaluate(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        """Energies and features at the graph's positions and cell (no derivatives)."""
        species = self.species_index(graph.numbers)
        positions = graph.positions
        receivers, senders = graph.edge_index[0], graph.edge_index[1]
        edge_cell = graph.cell[graph.batch[receivers]]
        vectors = (
            positions.index_select(0, senders) - positions.index_select(0, receivers)
            + torch.einsum("ei,eij->ej", graph.edge_shifts, edge_cell)
        )
        lengths = torch.linalg.norm(vectors, dim=-1)
        edge_sh = self.spherical_harmonics(vectors)
        edge_radial, envelope = self.radial(lengths)

        one_hot = torch.nn.functional.one_hot(species, len(self.spec.species)).to(positions.dtype)
        features = self.embedding(one_hot)
        if self.electronic is not None:
            features = self.electronic(features, graph.charge.to(features.dtype), graph.spin.to(features.dtype), graph.batch)
        for layer in self.interactions:
            features = layer(features, one_hot, edge_sh, edge_radial, envelope, graph.edge_index)
        if self.attention is not None:
            features = self.attention(features, graph.batch, graph.num_graphs)
        out = {K.NODE_FEATURES: features}
        readout_input = features
        if self.charge_model is not None:
            charges, electrostatic = self.charge_model(features, species, graph)
            readout_input = torch.cat([features, charges.unsqueeze(-1)], dim=-1)
            out[K.ATOMIC_CHARGES] = charges
            out[K.DIPOLE] = segment_sum(charges.unsqueeze(-1) * positions, graph.batch, graph.num_graphs)
        raw, last_layer = self.readout(readout_input)
        atomic_energies = self.scale_shift(raw, species)
        if self.charge_model is not None:
            atomic_energies = atomic_energies + electrostatic
        if self.dispersion is not None:
            atomic_energies = atomic_energies + self.dispersion(graph)
        out.update({
            K.ENERGY: segment_sum(atomic_energies, graph.batch, graph.num_graphs),
            K.ATOMIC_ENERGIES: atomic_energies,
            K.LAST_LAYER_FEATURES: last_layer,
        })
        return out
