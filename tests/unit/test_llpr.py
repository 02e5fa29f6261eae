"""Last-layer prediction rigidity: the low-rank propagation against the exact one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import emt_ethanol_frames, make_model
from incerta.data.graph import collate
from incerta.models.predict import graphs_for
from incerta.uq.base import FitSettings
from incerta.uq.llpr import LLPRUncertainty


@pytest.fixture(scope="module")
def fitted_exact():
    model = make_model()  # readout_hidden = 8
    graphs = graphs_for(model, emt_ethanol_frames(14, 0.1))
    exact = LLPRUncertainty(model, rank=None)
    exact.fit(graphs[:8], graphs[8:], FitSettings(progress=False))
    return exact, graphs


def low_rank_copy(exact: LLPRUncertainty, rank: int) -> LLPRUncertainty:
    method = LLPRUncertainty(exact.potential, rank=rank)
    method._set_inverse(exact.inverse)
    return method


def test_full_rank_projection_is_exact(fitted_exact):
    exact, graphs = fitted_exact
    batch = collate(graphs[8:])
    full = low_rank_copy(exact, rank=8)  # readout_hidden = 8
    np.testing.assert_allclose(full(batch).atom_score.detach(), exact(batch).atom_score.detach(), rtol=1e-8)


def test_low_rank_variance_grows_to_the_exact_one(fitted_exact):
    """Each added posterior direction adds non-negative variance, up to the exact value at full rank."""
    exact, graphs = fitted_exact
    batch = collate(graphs[8:])
    reference = exact(batch).atom_score.detach().pow(2)
    deficits = []
    for rank in (1, 2, 4, 6, 8):
        variance = low_rank_copy(exact, rank)(batch).atom_score.detach().pow(2)
        assert torch.all(variance <= reference * (1 + 1e-9))
        deficits.append(float((reference - variance).sum()))
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(deficits)) and deficits[-1] < 1e-9 * deficits[0]


def test_saved_exact_methods_rebuild_exact(fitted_exact):
    exact, _ = fitted_exact
    options = {k: v for k, v in exact.options().items() if k != "rank"}  # as saved before ranks existed
    rebuilt = LLPRUncertainty.rebuild(exact.potential, options)
    assert rebuilt.rank is None
    rebuilt.load_state_dict(exact.state_dict())
