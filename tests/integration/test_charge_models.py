"""On the shared SpookyNet Ag3+/Ag3- slice, a charge-aware model separates the states; a local one cannot."""

from __future__ import annotations

import numpy as np
import pytest

from incerta.config import RunConfig
from incerta.data.generate import generate
from incerta.data.io import read_frames
from incerta.models.predict import error_metrics, graphs_for
from incerta.train.checkpoint import load_potential
from incerta.train.run import train_run


@pytest.fixture(scope="module")
def ag3(shared_data, tmp_path_factory):
    path = shared_data / "spookynet_ag3_carbene" / "ag3_2200.db"
    if not path.is_file():
        pytest.skip("Ag3 data absent")
    frames = read_frames(path)
    training = frames[::7]  # same slice as the config below
    assert {f.charge for f in training} == {1.0, -1.0}
    return path, frames[3::22]


def train(path, tmp_path, electronic: bool) -> dict:
    config = RunConfig.model_validate({
        "seed": 0,
        "data": {"train": {"path": str(path), "select": "::7"}, "n_val": 30},
        "model": {"l_max": 1, "num_channels": 16, "num_layers": 2, "cutoff": 6.0, "radial_hidden": [32],
                  "readout_hidden": 16, "electronic_embedding": electronic},
        "training": {"epochs": 12, "lr": 0.01, "scheduler_patience": 5, "progress": False, "energy_weight": 0.5,
                     "forces_weight": 0.5},
    })
    run = tmp_path / ("charged" if electronic else "local")
    train_run(config, run)
    return run


def test_charge_aware_model_separates_ag3_cation_and_anion(ag3, tmp_path):
    path, held_out = ag3
    charges = {f.charge for f in held_out}
    assert charges == {1.0, -1.0}
    errors = {}
    for electronic in (False, True):
        model = load_potential(train(path, tmp_path, electronic))
        errors[electronic] = error_metrics(model, graphs_for(model, held_out))["energy_per_atom_rmse_meV"]
    assert errors[False] > 1000, f"a local model cannot tell Ag3+ from Ag3- ({errors[False]:.0f} meV/atom)"
    assert errors[True] < 0.1 * errors[False], errors


@pytest.mark.parametrize("system, charges, atoms", [("ag3", [1.0, -1.0], [3]), ("c10h2", [0.0, 1.0], [12, 13]),
                                                    ("nacl", [0.0, 1.0], [16, 17])])
def test_generator_labels_each_charge_state(system, charges, atoms):
    """`incerta data generate`: GFN2-xTB MD frames, each labelled in every listed charge state."""
    frames = generate(system, frames=2, temperature_K=300.0, interval=2, equilibration=10)
    assert sorted({f.charge for f in frames}) == sorted(charges)
    assert sorted({len(f.numbers) for f in frames}) == atoms
    assert all(np.isfinite(f.energy) and np.isfinite(f.forces).all() for f in frames)
    for frame in frames:  # xTB's atomic charges come with every label, summing to the state's charge
        assert frame.atomic_charges.shape == (len(frame.numbers),)
        assert abs(frame.atomic_charges.sum() - frame.charge) < 1e-6, frame.source
    if system == "ag3":  # the same geometry in both states, with different energies
        cation, anion = frames[0], frames[1]
        np.testing.assert_allclose(cation.positions, anion.positions)
        assert abs(cation.energy - anion.energy) > 1.0
    if system == "nacl":
        sodium = next(f for f in frames if len(f.numbers) == 17)
        assert sodium.charge == 1.0 and int(np.sum(sodium.numbers == 11)) == 9
