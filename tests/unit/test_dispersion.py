"""D3(BJ) dispersion through tad-dftd3: an R^-6 tail beyond the cutoff, with exact forces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.units import Bohr, Hartree
from pydantic import ValidationError

from conftest import make_model
from incerta.config import ModelConfig
from incerta.testing import (
    assert_e3_equivariant,
    assert_forces_are_gradients,
    assert_stress_is_strain_derivative,
    predict,
)


def dimer(separation: float):
    first, second = molecule("CH4"), molecule("CH4")
    second.translate([separation, 0.0, 0.0])
    return first + second


def test_dispersion_tail_beyond_the_cutoff_falls_as_r6():
    """Two methanes 15 and 30 Å apart (cutoff 4 Å): the interaction is D3 alone and scales as R^-6."""
    local, dispersive = make_model(), make_model(dispersion="pbe")
    interaction = {}
    for separation in (15.0, 30.0):
        whole = predict(dispersive, dimer(separation))["energy"] - predict(local, dimer(separation))["energy"]
        alone = predict(dispersive, molecule("CH4"))["energy"] - predict(local, molecule("CH4"))["energy"]
        interaction[separation] = whole - 2 * alone
    assert interaction[15.0] < 0, "dispersion attracts"
    assert interaction[30.0] / interaction[15.0] == pytest.approx(1 / 64, rel=0.05)


def test_dispersion_keeps_forces_exact_and_equivariant():
    model = make_model(dispersion="pbe")
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=1)
    assert_forces_are_gradients(model, ethanol)
    assert_e3_equivariant(model, ethanol)
    atomic = predict(model, ethanol)
    assert np.isfinite(atomic["energy"])


def d3_alone(atoms, **changes) -> float:
    """The dispersion energy a model adds (eV): with minus without, same network weights."""
    return predict(make_model(dispersion="pbe", **changes), atoms)["energy"] - predict(make_model(**changes), atoms)["energy"]


def test_molecular_and_periodic_libraries_agree_on_a_molecule():
    """tad-dftd3 (molecules) against simple-dftd3, the reference implementation (cells)."""
    from dftd3.interface import DispersionModel, RationalDampingParam

    ethanol = molecule("CH3CH2OH")
    for three_body in (True, False):
        reference = DispersionModel(ethanol.numbers, ethanol.positions / Bohr).get_dispersion(
            RationalDampingParam(method="pbe", atm=three_body), grad=False)["energy"] * Hartree
        assert d3_alone(ethanol, dispersion_three_body=three_body) == pytest.approx(reference, abs=1e-8)


def test_periodic_dispersion_is_extensive_and_reaches_the_isolated_limit():
    silicon = bulk("Si", "diamond", a=5.43)
    silicon.rattle(0.03, seed=4)
    species = {"species": (14,)}
    per_atom = d3_alone(silicon, **species) / len(silicon)
    assert per_atom < -0.25, "D3 binds silicon by about 0.3 eV/atom"
    assert d3_alone(silicon.repeat((2, 1, 2)), **species) / (4 * len(silicon)) == pytest.approx(per_atom, abs=1e-9)
    methane = molecule("CH4")
    boxed = methane.copy()
    boxed.set_cell([40.0, 40.0, 40.0])
    boxed.pbc = True
    assert d3_alone(boxed) == pytest.approx(d3_alone(methane), abs=1e-6)


def test_periodic_dispersion_forces_and_stress_are_exact():
    """Finite differences of the wrapped library energy (two-body: the three-body term takes the
    same autograd path and costs 30x per call)."""
    silicon = bulk("Si", "diamond", a=5.43)
    silicon.rattle(0.05, seed=2)
    silicon.set_cell(silicon.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(3).normal(size=(3, 3))),
                     scale_atoms=True)
    model = make_model(dispersion="pbe", dispersion_three_body=False, species=(14,))
    assert_forces_are_gradients(model, silicon)
    assert_stress_is_strain_derivative(model, silicon)


def test_training_through_periodic_dispersion_reaches_the_network():
    """A force loss differentiates the forces again (create_graph): the D3 forces are constants
    there, and every network weight still gets its gradient."""
    from incerta.data.frame import Frame
    from incerta.data.graph import frame_to_graph

    model = make_model(dispersion="pbe", species=(14,)).train()
    silicon = bulk("Si", "diamond", a=5.43)
    silicon.rattle(0.05, seed=1)
    graph = frame_to_graph(Frame.from_atoms(silicon), model.spec.cutoff).to(dtype=torch.float64)
    out = model(graph, compute_forces=True, compute_stress=True, create_graph=True)
    (out["forces"].pow(2).sum() + out["stress"].pow(2).sum()).backward()
    weight = model.readout.output.weight
    assert weight.grad is not None and bool(weight.grad.abs().sum() > 0)


def test_a_batch_mixes_molecules_and_cells():
    from incerta.data.frame import Frame
    from incerta.data.graph import collate, frame_to_graph

    model = make_model(dispersion="pbe", species=(1, 6, 14))
    structures = [molecule("CH4"), bulk("Si", "diamond", a=5.43), molecule("C2H6")]
    graph = collate([frame_to_graph(Frame.from_atoms(a), model.spec.cutoff).to(dtype=torch.float64) for a in structures])
    together = model(graph, compute_forces=True)
    alone = [predict(model, a) for a in structures]
    np.testing.assert_allclose(together["energy"].detach().numpy(), [a["energy"] for a in alone], rtol=1e-12)
    np.testing.assert_allclose(together["forces"].detach().numpy(), np.concatenate([a["forces"] for a in alone]),
                               atol=1e-10)


def test_dispersion_refuses_unknown_functionals():
    with pytest.raises(ValidationError, match="no D3"):
        ModelConfig.model_validate({"dispersion": "not-a-functional"})


def test_species_shifts_are_fitted_to_the_energy_without_dispersion():
    """Reference energies made of D3 plus per-species constants (molecules and a cell): with the
    dispersion in the model, the fitted shifts are those constants; counting it in the shifts
    too would add its mean, tens of meV per atom, to every prediction."""
    from incerta.data.frame import Frame
    from incerta.data.graph import frame_to_graph
    from incerta.models.build import DataStatistics, fixed_energy

    constants = {1: -13.6, 6: -1029.5, 8: -2040.1}
    structures = [molecule(name) for name in ("CH4", "H2O", "C2H6", "CH3OH", "H2CO", "CO2", "C6H6")]
    ice = molecule("H2O")
    ice.set_cell([3.2, 3.2, 3.2])
    ice.pbc = True
    structures.append(ice)
    energy = fixed_energy(ModelConfig(dispersion="pbe", dispersion_three_body=False))
    frames, graphs = [], []
    for atoms in structures:
        graph = frame_to_graph(Frame.from_atoms(atoms), 5.0)
        reference = energy(graph) + sum(constants[z] for z in atoms.numbers)
        frames.append(Frame.from_atoms(atoms))
        frames[-1].energy = reference
        graphs.append(graph)
    assert energy(graphs[-1]) < 2 * energy(frame_to_graph(Frame.from_atoms(molecule("H2O")), 5.0)) < 0, "images count"
    fitted = DataStatistics.from_frames(frames, graphs, fixed=energy).shift
    np.testing.assert_allclose(fitted, [constants[z] for z in (1, 6, 8)], atol=1e-8)
    counted_twice = DataStatistics.from_frames(frames, graphs).shift
    assert np.abs(np.subtract(counted_twice, fitted)).max() > 1e-2
    assert fixed_energy(ModelConfig()) is None


def test_periodic_dispersion_cache_is_bounded_and_exact(monkeypatch):
    """Cell results are reused for the very same coordinates only, and the cache keeps at most
    its atom budget (MD never repeats a structure: it must not grow without end)."""
    from incerta.nn import dispersion

    monkeypatch.setattr(dispersion, "_LATTICE_CACHE", type(dispersion._LATTICE_CACHE)())
    monkeypatch.setattr(dispersion, "LATTICE_CACHE_ATOMS", 20)
    silicon = bulk("Si", "diamond", a=5.43).repeat((2, 1, 1))  # 4 atoms
    model = make_model(dispersion="pbe", dispersion_three_body=False, species=(14,))
    first = predict(model, silicon)["energy"]
    assert predict(model, silicon)["energy"] == first and len(dispersion._LATTICE_CACHE) == 1, "reused"
    for seed in range(8):
        moved = silicon.copy()
        moved.rattle(0.01, seed=seed)
        assert predict(model, moved)["energy"] != first
    assert 0 < sum(len(entry[1]) for entry in dispersion._LATTICE_CACHE.values()) <= 20
