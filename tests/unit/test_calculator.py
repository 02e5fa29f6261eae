"""The ASE calculator: results, units, and refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from incerta import IncertaCalculator
from incerta.data.validation import DataError
from incerta.models.potential import UnknownSpeciesError
from incerta.testing import predict


def test_results_match_the_model(model, ethanol):
    ethanol.calc = IncertaCalculator(model)
    direct = predict(model, ethanol)
    assert ethanol.get_potential_energy() == pytest.approx(direct["energy"])
    assert ethanol.get_potential_energy(force_consistent=True) == pytest.approx(direct["energy"])
    np.testing.assert_allclose(ethanol.get_forces(), direct["forces"])
    np.testing.assert_allclose(ethanol.get_potential_energies(), direct["energies"])
    with pytest.raises(PropertyNotImplementedError):
        ethanol.get_stress()


def test_stress_in_voigt_form(model, silicon):
    """ASE's Voigt order xx, yy, zz, yz, xz, xy; the distorted cell has no zero component."""
    silicon.calc = IncertaCalculator(model)
    stress = silicon.get_stress()
    full = predict(model, silicon)["stress"]
    assert np.abs(full).min() > 1e-6, "a vanishing component would let a swapped entry pass"
    np.testing.assert_allclose(full, full.T, atol=1e-12)
    expected = [full[0, 0], full[1, 1], full[2, 2], full[1, 2], full[0, 2], full[0, 1]]
    np.testing.assert_allclose(stress, expected, rtol=1e-10)
    np.testing.assert_allclose(silicon.get_stress(voigt=False), full, rtol=1e-10)


def test_unseen_species_is_an_error_not_a_prediction(model):
    atoms = molecule("CH3Cl")
    atoms.calc = IncertaCalculator(model)
    with pytest.raises(UnknownSpeciesError, match=r"Cl.*not in the model, which knows only H, C, O, Si"):
        atoms.get_potential_energy()


def test_overlapping_atoms_are_refused(model):
    atoms = Atoms("OH", positions=[[0, 0, 0], [0.05, 0, 0]])
    atoms.calc = IncertaCalculator(model)
    with pytest.raises(DataError, match="atoms 0 and 1 overlap"):
        atoms.get_potential_energy()


def test_atoms_overlapping_across_the_cell_boundary_are_refused(model):
    atoms = Atoms("OH", positions=[[0.02, 1, 1], [5.97, 1, 1]], cell=[6, 6, 6], pbc=True)
    atoms.calc = IncertaCalculator(model)
    with pytest.raises(DataError, match=r"atoms 0 and 1 overlap: 0\.050 Å apart"):
        atoms.get_potential_energy()


def test_an_overlap_limit_beyond_the_cutoff_is_refused(model):
    with pytest.raises(ValueError, match="min_distance must be in"):
        IncertaCalculator(model, min_distance=model.spec.cutoff)


def test_single_atom(model):
    atoms = Atoms("C", positions=[[0, 0, 0]])
    atoms.calc = IncertaCalculator(model)
    assert np.isfinite(atoms.get_potential_energy())
    assert np.all(atoms.get_forces() == 0)


def test_results_update_when_atoms_move(model, ethanol):
    ethanol.calc = IncertaCalculator(model)
    first = ethanol.get_potential_energy()
    ethanol.positions[0] += 0.1
    assert ethanol.get_potential_energy() != first


def test_periodic_structure_to_a_molecule_model_is_flagged(model, silicon, ethanol):
    """The spec records whether training saw periodic images; a molecule-only model warns
    (once) on a crystal, and stays silent on a molecule and in a large box without images."""
    molecular = type(model)(model.spec.model_copy(update={"trained_on_periodic": False})).double()
    molecular.load_state_dict(model.state_dict())
    calculator = IncertaCalculator(molecular)
    boxed = ethanol.copy()
    boxed.center(vacuum=6.0)
    boxed.pbc = True
    for atoms in (ethanol, boxed):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            calculator.get_potential_energy(atoms)
    with pytest.warns(UserWarning, match="trained on structures without periodic images"):
        calculator.get_potential_energy(silicon)
    trained_on_crystals = IncertaCalculator(type(model)(model.spec.model_copy(update={"trained_on_periodic": True})).double())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained_on_crystals.get_potential_energy(silicon)


def test_training_statistics_record_periodic_images(silicon, ethanol):
    from incerta.data.frame import Frame
    from incerta.data.graph import frame_to_graph
    from incerta.models.build import DataStatistics

    def statistics(structures):
        frames = [Frame.from_atoms(a).with_(energy=-1.0, forces=np.zeros((len(a), 3))) for a in structures]
        return DataStatistics.from_frames(frames, [frame_to_graph(f, 4.0) for f in frames])

    assert not statistics([ethanol]).periodic
    assert statistics([ethanol, silicon]).periodic


def test_a_new_total_charge_on_the_same_geometry_is_recomputed(ethanol):
    from conftest import make_model

    ethanol.calc = IncertaCalculator(make_model(l_max=1, electronic_embedding=True))
    ethanol.info.update(charge=0, spin=0)
    neutral = ethanol.get_potential_energy()
    ethanol.info.update(charge=1, spin=1)
    cation = ethanol.get_potential_energy()
    assert abs(cation - neutral) > 1e-4, "the cached neutral energy must not be returned for the cation"
    ethanol.info.update(charge=0, spin=0)
    assert ethanol.get_potential_energy() == pytest.approx(neutral)


def test_system_changes_agree_with_ase(silicon):
    """The calculator's change check reports what ASE's compare_atoms does, for each kind of change."""
    from ase.calculators.calculator import compare_atoms

    from incerta.calculators.ase import system_changes

    def edits():
        yield "nothing", lambda atoms: None
        yield "below the tolerance", lambda atoms: atoms.positions.__setitem__((0, 0), atoms.positions[0, 0] + 1e-17)
        yield "a position", lambda atoms: atoms.positions.__setitem__((1, 2), atoms.positions[1, 2] + 1e-9)
        yield "a NaN position", lambda atoms: atoms.positions.__setitem__((1, 2), np.nan)
        yield "an element", lambda atoms: atoms.numbers.__setitem__(0, 6)
        yield "the cell", lambda atoms: atoms.set_cell(atoms.cell.array * 1.001)
        yield "the boundary", lambda atoms: atoms.set_pbc([True, True, False])
        yield "magnetic moments added", lambda atoms: atoms.set_initial_magnetic_moments([1.0] * len(atoms))
        yield "an atom more", lambda atoms: atoms.append("Si")

    seen = set()
    for name, edit in edits():
        after = silicon.copy()
        edit(after)
        expected = compare_atoms(silicon, after)
        assert sorted(system_changes(silicon, after, 1e-15)) == sorted(expected), name
        seen.update(expected)
    assert seen == {"positions", "numbers", "cell", "pbc", "initial_magmoms"}
    assert system_changes(None, silicon, 1e-15) == compare_atoms(None, silicon)
    moved = silicon.copy()
    moved.positions += 0.1
    moved.set_pbc(False)
    assert system_changes(silicon, moved, 1e-15, {"positions"}) == compare_atoms(silicon, moved, 1e-15, {"positions"})
