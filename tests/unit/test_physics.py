"""Symmetry and consistency of the potential's energies, forces and stress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from conftest import make_model
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph
from incerta.models.derivatives import differentiable_inputs, position_jacobian
from incerta.testing import (
    assert_e3_equivariant,
    assert_forces_are_gradients,
    assert_stress_is_strain_derivative,
    predict,
)


def test_equivariance_molecule(model_any_lmax, ethanol):
    assert_e3_equivariant(model_any_lmax, ethanol)


def test_equivariance_periodic(model_any_lmax, silicon):
    assert_e3_equivariant(model_any_lmax, silicon)


def test_equivariance_checker_catches_a_broken_model(ethanol, monkeypatch):
    """A model that sees absolute x coordinates must fail the check (the checker can fail)."""
    model = make_model()
    original = model.spherical_harmonics.harmonics.forward
    monkeypatch.setattr(model.spherical_harmonics.harmonics, "forward", lambda v: original(v + v.new_tensor([0.3, 0.0, 0.0])))
    with pytest.raises(AssertionError, match="rotation"):
        assert_e3_equivariant(model, ethanol)


@pytest.mark.parametrize("l_max", [0, 2])
def test_forces_are_minus_energy_gradient(l_max, ethanol):
    assert_forces_are_gradients(make_model(l_max=l_max), ethanol)


def test_forces_are_minus_energy_gradient_periodic(model, silicon):
    assert_forces_are_gradients(model, silicon)


def test_stress_is_strain_derivative(model, silicon):
    result = predict(model, silicon)
    assert np.abs(result["stress"]).max() > 1e-4, "stress should not vanish for a distorted cell"
    assert_stress_is_strain_derivative(model, silicon)


def test_stress_matches_ase_numerical_stress(model, silicon):
    from ase.calculators.fd import calculate_numerical_stress

    from incerta.calculators.ase import IncertaCalculator

    silicon.calc = IncertaCalculator(model)
    np.testing.assert_allclose(silicon.get_stress(), calculate_numerical_stress(silicon, eps=1e-5), atol=1e-6)


def test_supercell_gives_same_energy_per_atom(model, silicon):
    unit = predict(model, silicon)
    for repeat in [(2, 1, 1), (2, 2, 3)]:
        big = silicon.repeat(repeat)
        result = predict(model, big)
        factor = np.prod(repeat)
        assert result["energy"] == pytest.approx(unit["energy"] * factor, rel=1e-10)
        np.testing.assert_allclose(result["forces"], np.tile(unit["forces"], (factor, 1)), atol=1e-10)
        np.testing.assert_allclose(result["stress"], unit["stress"], atol=1e-10)


def test_energy_and_forces_continuous_at_cutoff():
    model = make_model(cutoff=4.0)
    pair = lambda r: Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])
    inside, outside = predict(model, pair(4.0 - 1e-3)), predict(model, pair(4.0 + 1e-3))
    assert abs(inside["energy"] - outside["energy"]) < 1e-9
    assert np.abs(inside["forces"]).max() < 1e-6
    assert np.abs(outside["forces"]).max() == 0.0
    near = predict(model, pair(3.0))
    assert abs(near["energy"] - outside["energy"]) > 1e-4, "the pair must interact inside the cutoff"
    energies = [predict(model, pair(r))["energy"] for r in np.linspace(3.9, 4.1, 41)]
    assert np.max(np.abs(np.diff(energies))) < 1e-4


def test_far_apart_fragments_are_additive(model):
    water, methane = molecule("H2O"), molecule("CH4")
    both = water + methane.copy()
    both.positions[len(water):] += [20.0, 0, 0]
    a, b, ab = predict(model, water), predict(model, methane), predict(model, both)
    assert ab["energy"] == pytest.approx(a["energy"] + b["energy"], abs=1e-10)
    np.testing.assert_allclose(ab["forces"], np.vstack([a["forces"], b["forces"]]), atol=1e-12)


def test_isolated_atom_has_reference_energy_and_no_force(model):
    lone = predict(model, Atoms("O", positions=[[0, 0, 0]]))
    assert np.all(lone["forces"] == 0.0)
    far = Atoms("OH", positions=[[0, 0, 0], [10, 0, 0]])
    result = predict(model, far)
    assert result["energies"][0] == pytest.approx(lone["energy"])
    assert np.all(result["forces"] == 0.0)


def test_per_atom_energies_sum_to_total(model, ethanol):
    result = predict(model, ethanol)
    assert result["energies"].sum() == pytest.approx(result["energy"], abs=1e-10)


@pytest.mark.parametrize("batched", [True, False])
def test_position_jacobian_rows_are_atomic_energy_gradients(model, ethanol, batched):
    graph = frame_to_graph(Frame.from_atoms(ethanol), model.spec.cutoff).to(dtype=torch.float64)
    inputs = differentiable_inputs(graph, forces=True, stress=False)
    atomic = model(inputs.graph, compute_forces=False)[K.ATOMIC_ENERGIES]
    jacobian = position_jacobian(atomic, inputs.positions, batched=batched)  # (N, N, 3)
    assert jacobian.shape == (len(ethanol), len(ethanol), 3)
    forces = predict(model, ethanol)["forces"]
    np.testing.assert_allclose(-jacobian.sum(0).detach().numpy(), forces, atol=1e-10)
    row = torch.autograd.grad(atomic[3], inputs.positions, retain_graph=True)[0]
    np.testing.assert_allclose(jacobian[3].detach().numpy(), row.numpy(), atol=1e-12)


def test_chunked_messages_change_memory_not_results(silicon, monkeypatch):
    """Above EDGE_CHUNK edges a layer's messages are summed over chunks and recomputed in the
    backward pass: the same energy, forces, stress and training gradients (second derivatives
    through the recomputation), with fewer per-edge tensors held for the backward."""
    import incerta.nn.interaction as interaction

    model = make_model().train()
    graph = frame_to_graph(Frame.from_atoms(silicon.repeat((2, 2, 1))), model.spec.cutoff)
    assert graph.edge_index.shape[1] > 6 * 16

    def run() -> tuple[dict[str, torch.Tensor], list[torch.Tensor], int]:
        out = model(graph, compute_forces=True, compute_stress=True, create_graph=True)
        loss = (out[K.FORCES] ** 2).sum() + (out[K.STRESS] ** 2).sum() + out[K.ENERGY].sum()
        held = {}

        def pack(tensor):
            held[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model.evaluate(differentiable_inputs(graph, forces=True, stress=True).graph)
        return out, torch.autograd.grad(loss, list(model.parameters())), sum(held.values())

    whole, whole_grads, whole_held = run()
    monkeypatch.setattr(interaction, "EDGE_CHUNK", 16)
    chunked, chunked_grads, chunked_held = run()
    for key in (K.ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-10, atol=1e-12)
    for chunked_grad, whole_grad in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-9, atol=1e-12)
    assert chunked_held < 0.5 * whole_held, (chunked_held, whole_held)
