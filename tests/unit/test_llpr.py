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
from incerta.uq.metrics import spearman


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


def kept_variance(jacobian: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Force variance per atom, sum_a |J_ia P|^2 (N,), that the directions P (H, k) keep."""
    return (jacobian @ projection).pow(2).sum((1, 2))


def test_variance_directions_keep_the_most_validation_force_variance(fitted_exact):
    """variance_factor's k directions keep, over the validation atoms, more force variance than the
    posterior's k widest or any other k (random orthonormal ones), all of it at k = H."""
    exact, graphs = fitted_exact
    jacobian = exact._features(collate(graphs[8:])).jacobian
    factor = exact.posterior_factor()
    generator = torch.Generator().manual_seed(0)
    for rank in (2, 4):
        kept = kept_variance(jacobian, exact.variance_factor(jacobian, rank)).sum()
        assert kept > kept_variance(jacobian, exact.posterior_factor(rank)).sum() * (1 + 1e-6)
        for _ in range(20):
            directions, _ = torch.linalg.qr(torch.randn(8, rank, dtype=torch.float64, generator=generator))
            assert kept >= kept_variance(jacobian, factor @ directions).sum() * (1 - 1e-9)
    full = kept_variance(jacobian, exact.variance_factor(jacobian, 8))
    torch.testing.assert_close(full, exact(collate(graphs[8:])).atom_score.detach().pow(2))


def test_fit_keeps_the_directions_that_rank_validation_atoms_like_the_exact_propagation(fitted_exact):
    """Of the widest and the most-variance directions, a rank-k fit keeps those whose scores rank the
    validation atoms closer to the exact propagation (the two differ at some rank here, so the
    choice is exercised), and reports both correlations."""
    exact, graphs = fitted_exact
    jacobian = exact._features(collate(graphs[8:])).jacobian
    reference = kept_variance(jacobian, exact.posterior_factor()).numpy()
    differ = False
    for rank in (1, 2, 4):
        fitted = LLPRUncertainty(exact.potential, rank=rank)
        info = fitted.fit(graphs[:8], graphs[8:], FitSettings(progress=False))
        torch.testing.assert_close(fitted.inverse, exact.inverse)
        candidates = {"widest": exact.posterior_factor(rank), "validation variance": exact.variance_factor(jacobian, rank)}
        ranking = {name: spearman(kept_variance(jacobian, p).numpy(), reference) for name, p in candidates.items()}
        assert info["validation_spearman_vs_exact_by_directions"] == pytest.approx(ranking)
        assert info["validation_spearman_vs_exact"] == pytest.approx(max(ranking.values()))
        torch.testing.assert_close(fitted.projection, candidates[max(ranking, key=ranking.get)])
        differ |= abs(ranking["widest"] - ranking["validation variance"]) > 1e-3
    assert differ
