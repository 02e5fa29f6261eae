"""What an oracle keeps from a calculator, and what it refuses."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from incerta.data.frame import Frame
from incerta.data.oracles import ASEOracle, EMTOracle, OracleFailure, TBLiteOracle


class ChargedCalculator(Calculator):
    """Energy, forces and atomic charges; ``broken`` makes the last charge NaN."""

    implemented_properties = ("energy", "forces", "charges")

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        charges = np.linspace(-0.4, 0.4, len(self.atoms))
        if self.broken:
            charges[-1] = np.nan
        self.results = {"energy": -1.5, "forces": np.zeros((len(self.atoms), 3)), "charges": charges}


def test_atomic_charges_kept_when_offered():
    frame = Frame.from_atoms(molecule("H2O"), source="water.xyz frame 0")
    labelled = ASEOracle(f"{__name__}.ChargedCalculator").label(frame)
    np.testing.assert_allclose(labelled.atomic_charges, [-0.4, 0.0, 0.4])
    assert labelled.energy == -1.5 and labelled.dipole is None  # not offered, not invented


def test_non_finite_charges_fail_the_label_naming_field_and_frame():
    frame = Frame.from_atoms(molecule("H2O"), source="water.xyz frame 0")
    with pytest.raises(OracleFailure, match=r"non-finite atomic_charges for water.xyz frame 0"):
        ASEOracle(f"{__name__}.ChargedCalculator", {"broken": True}).label(frame)


def test_stress_kept_for_periodic_frames_only():
    copper = bulk("Cu", "fcc", a=3.7, cubic=True)  # compressed: a clear stress
    copper.rattle(0.02, seed=0)
    labelled = EMTOracle().label(Frame.from_atoms(copper))
    reference = copper.copy()
    reference.calc = EMT()
    np.testing.assert_allclose(labelled.stress, reference.get_stress(voigt=False), rtol=1e-12)
    assert np.abs(labelled.stress).max() > 1e-3
    cluster = Frame.from_atoms(molecule("H2O"))
    assert EMTOracle().label(cluster).stress is None, "a molecule has no stress"


def test_tblite_labels_periodic_cells_with_a_consistent_stress():
    """GFN1-xTB on an 8-atom silicon cell (tblite's periodic, Gamma-point-only path): the
    stress it returns is the strain derivative of its energy (isotropic strain, finite differences)."""
    silicon = bulk("Si", "diamond", a=5.43, cubic=True)
    silicon.rattle(0.05, seed=1)
    oracle = TBLiteOracle(method="GFN1-xTB")
    labelled = oracle.label(Frame.from_atoms(silicon))
    assert labelled.stress is not None and np.allclose(labelled.stress, labelled.stress.T, atol=1e-10)
    volume, h = silicon.get_volume(), 1e-4
    energies = []
    for sign in (1, -1):
        strained = silicon.copy()
        strained.set_cell(silicon.cell.array * (1 + sign * h), scale_atoms=True)
        energies.append(oracle.label(Frame.from_atoms(strained)).energy)
    pressure_derivative = (energies[0] - energies[1]) / (2 * h) / volume  # = trace(stress)
    assert np.trace(labelled.stress) == pytest.approx(pressure_derivative, rel=1e-4)
