"""The potential is a checked list of blocks: contracts fail at build time, terms add by blocks,
and models saved before the blocks existed still load and predict the same numbers."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from e3nn import o3

from conftest import REPO, make_model
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph
from incerta.models.potential import INPUT_KEYS, Potential, potential_blocks
from incerta.models.spec import PotentialSpec
from incerta.nn.block import Block, BlockError, Data, check_blocks
from incerta.testing import assert_e3_equivariant, assert_forces_are_gradients, predict
from incerta.train.checkpoint import load_potential, save_potential
from incerta.uq.store import load_uncertain_potential

LEGACY = REPO / "tests" / "data" / "legacy_v0_1_0"
SPEC = PotentialSpec(species=[1, 6, 8], cutoff=4.0, l_max=1, num_channels=8, num_layers=2, radial_hidden=[16],
                     readout_hidden=8, avg_num_neighbors=6.0)


class PairRepulsion(Block):
    """A test term: per-atom energy 1/2 sum_j A exp(-|r_ij| / rho) over the model's edges (eV)."""

    reads = (K.EDGE_LENGTHS, K.EDGE_INDEX, K.POSITIONS)
    writes = ("repulsion_energies",)
    energy_key = "repulsion_energies"

    def __init__(self, strength: float = 2.0, length: float = 0.5) -> None:
        super().__init__()
        self.strength, self.length = strength, length

    def forward(self, data: Data) -> Data:
        pair = 0.5 * self.strength * torch.exp(-data[K.EDGE_LENGTHS] / self.length)
        energies = torch.zeros(data[K.POSITIONS].shape[0], dtype=pair.dtype).index_add(0, data[K.EDGE_INDEX][0], pair)
        return {"repulsion_energies": energies}


def test_a_missing_key_fails_at_build_time_naming_block_and_key():
    blocks = [(name, block) for name, block in potential_blocks(SPEC) if name != "radial"]
    with pytest.raises(BlockError, match=r"block 'interactions.0' \(Interaction\) reads 'edge_radial'"):
        Potential(SPEC, blocks)


def test_an_irreps_mismatch_fails_at_build_time():
    blocks = potential_blocks(SPEC)
    readout_at = [name for name, _ in blocks].index("readout")
    blocks[readout_at][1].irreps_in = {K.NODE_FEATURES: o3.Irreps("8x0e+8x1o")}
    with pytest.raises(BlockError, match=r"'readout' .* reads 'node_features' as 8x0e\+8x1o, but block 'interactions.1' "
                                         r"writes it as 8x0e"):
        check_blocks(blocks, INPUT_KEYS)


def test_a_declared_energy_term_must_be_written():
    class Broken(PairRepulsion):
        writes = ()

    with pytest.raises(BlockError, match="declares the energy term 'repulsion_energies' but does not write it"):
        Potential(SPEC, [*potential_blocks(SPEC), ("repulsion", Broken())])


def test_a_new_term_is_one_more_block(ethanol):
    torch.manual_seed(0)
    base = Potential(SPEC).double().eval()
    torch.manual_seed(0)
    extended = Potential(SPEC, [*potential_blocks(SPEC), ("repulsion", PairRepulsion())]).double().eval()
    assert extended.energy_terms == [K.LOCAL_ENERGIES, "repulsion_energies"]
    frame = Frame.from_atoms(ethanol)
    graph = frame_to_graph(frame, SPEC.cutoff).to(dtype=torch.float64)
    lengths = torch.linalg.norm(torch.as_tensor(ethanol.positions)[graph.edge_index[1]]
                                - torch.as_tensor(ethanol.positions)[graph.edge_index[0]], dim=1)
    expected = 0.5 * 2.0 * torch.exp(-lengths / 0.5).sum()  # every directed edge carries half a pair
    difference = predict(extended, ethanol)["energy"] - predict(base, ethanol)["energy"]
    assert difference == pytest.approx(float(expected), rel=1e-10)
    torch.nn.init.normal_(extended.readout.output.weight)
    assert_forces_are_gradients(extended, ethanol)
    assert_e3_equivariant(extended, ethanol)


def test_saved_weights_keep_their_names(tmp_path):
    model = make_model(electronic_embedding=True, global_attention=True, electrostatics="qeq")
    keys = set(model.state_dict())
    assert {"radial.basis.frequencies", "embedding.linear.weight", "interactions.1.tensor_product.weight",
            "electronic.charge.keys", "attention.query.weight", "charge_model.raw_hardness", "readout.hidden.weight",
            "scale_shift.shift"} <= keys
    save_potential(model, tmp_path / "model")
    assert set(load_potential(tmp_path / "model").state_dict()) == keys


@pytest.mark.parametrize("name", ["local", "charged"])
def test_models_saved_before_the_blocks_load_and_predict_the_same(name):
    expected = json.loads((LEGACY / "expected.json").read_text())[name]
    atoms = ase.io.read(LEGACY / "ethanol.xyz")
    result = predict(load_potential(LEGACY / name), atoms)
    assert result["energy"] == pytest.approx(expected["energy"], abs=1e-10)
    np.testing.assert_allclose(result["forces"], expected["forces"], atol=1e-10)


def test_uncertainty_files_saved_before_the_blocks_load_and_predict_the_same():
    expected = json.loads((LEGACY / "expected.json").read_text())["ledl"]
    uncertain = load_uncertain_potential(LEGACY / "ledl")
    atoms = ase.io.read(LEGACY / "ethanol.xyz")
    out = uncertain(frame_to_graph(Frame.from_atoms(atoms), uncertain.potential.spec.cutoff).to(dtype=torch.float64))
    assert float(out[K.ENERGY][0].detach()) == pytest.approx(expected["energy"], abs=1e-10)
    np.testing.assert_allclose(out[K.FORCES_UNCERTAINTY].detach().numpy(), expected["forces_uncertainty"], atol=1e-10)
