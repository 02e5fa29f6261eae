"""D3(BJ) dispersion through tad-dftd3: an R^-6 tail beyond the cutoff, with exact forces."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from pydantic import ValidationError

from conftest import make_model
from incerta.config import ModelConfig
from incerta.testing import assert_e3_equivariant, assert_forces_are_gradients, predict


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


def test_dispersion_refuses_periodic_cells_and_unknown_functionals():
    with pytest.raises(ValueError, match="molecules only"):
        predict(make_model(dispersion="pbe", species=(14,)), bulk("Si", "diamond", a=5.43))
    with pytest.raises(ValidationError, match="no D3"):
        ModelConfig.model_validate({"dispersion": "not-a-functional"})
