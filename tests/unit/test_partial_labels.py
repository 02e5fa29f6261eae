"""Labels some structures lack (stress of molecules, reference charges, dipoles) are kept for the
ones that have them: in batches, in losses, in error sums and in the on-disk store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from incerta.data.frame import Frame
from incerta.data.graph import collate, frame_to_graph
from incerta.data.store import GraphStore, store_frames, write_store
from incerta.models.errors import ErrorAccumulator
from incerta.train.losses import LossWeights, energy_forces_loss


def labelled(atoms, stress: bool, charges: bool, seed: int) -> Frame:
    rng = np.random.default_rng(seed)
    n = len(atoms)
    return Frame.from_atoms(atoms).with_(
        energy=float(rng.normal()), forces=rng.normal(size=(n, 3)),
        stress=0.01 * (lambda s: s + s.T)(rng.normal(size=(3, 3))) if stress else None,
        atomic_charges=(lambda q: q - q.mean())(rng.normal(size=n)) if charges else None,
        dipole=rng.normal(size=3) if charges else None,
    )


@pytest.fixture
def frames() -> list[Frame]:
    silicon = bulk("Si", "diamond", a=5.43)
    return [labelled(silicon, True, False, 0), labelled(molecule("H2O"), False, True, 1),
            labelled(silicon.repeat((1, 1, 2)), True, True, 2)]


def test_a_batch_keeps_the_labels_its_structures_have(frames):
    batch = collate([frame_to_graph(f, 3.0) for f in frames])
    assert batch.stress.shape == (3, 3, 3) and batch.atomic_charges.shape == (2 + 3 + 4,)
    np.testing.assert_array_equal(batch.stress[0].numpy(), frames[0].stress)
    assert torch.isnan(batch.stress[1]).all() and torch.isfinite(batch.stress[2]).all()
    assert torch.isnan(batch.atomic_charges[:2]).all() and torch.isfinite(batch.atomic_charges[2:]).all()
    assert torch.isnan(batch.dipole[0]).all() and torch.isfinite(batch.dipole[1:]).all()


def test_the_loss_and_the_errors_use_exactly_the_known_labels(frames):
    batch = collate([frame_to_graph(f, 3.0) for f in frames])
    outputs = {"energy": batch.energy + 0.1, "forces": batch.forces + 0.2, "stress": torch.zeros(3, 3, 3),
               "charges": torch.zeros(batch.positions.shape[0]), "dipole": torch.zeros(3, 3)}
    weights = LossWeights(energy=0.0, forces=0.0, stress=1.0, charges=1.0, dipole=1.0)
    _, parts = energy_forces_loss(outputs, batch, weights)
    known_stress = np.stack([frames[0].stress, frames[2].stress])
    assert parts["stress"] == pytest.approx(np.mean(known_stress**2))
    assert parts["charges"] == pytest.approx(np.mean(np.concatenate([frames[1].atomic_charges, frames[2].atomic_charges])**2))
    assert parts["dipole"] == pytest.approx(np.mean(np.stack([frames[1].dipole, frames[2].dipole])**2))
    errors = ErrorAccumulator()
    errors.update(outputs, batch)
    assert errors.n_stress_components == 18
    assert errors.result()["stress_rmse_meV_per_A3"] == pytest.approx(1e3 * np.sqrt(np.mean(known_stress**2)))


def test_the_store_keeps_stress_charges_and_dipoles(frames, tmp_path):
    write_store(tmp_path / "data.h5", frames, cutoff=3.0)
    back = store_frames(GraphStore(tmp_path / "data.h5"))
    for original, stored in zip(frames, back):
        for name in ("stress", "atomic_charges", "dipole"):
            expected, found = getattr(original, name), getattr(stored, name)
            assert (found is None) == (expected is None), name
            if expected is not None:
                np.testing.assert_array_equal(found, expected)
