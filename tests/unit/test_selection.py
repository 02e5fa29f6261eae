"""Which candidates active learning labels."""

from __future__ import annotations

import numpy as np

from incerta.active.samplers import candidate_group
from incerta.active.selection import farthest_point_order, group_shares, select


def test_threshold_and_ranking():
    scores = np.array([0.1, 0.5, 0.3, 0.05, 0.4])
    features = np.arange(5.0)[:, None]
    assert select(scores, features, batch_size=2, threshold=0.2, diversity="none") == [1, 4]
    assert select(scores, features, batch_size=10, threshold=0.35, diversity="none") == [1, 4]
    assert select(scores, features, batch_size=3, threshold=1.0) == []


def test_per_candidate_thresholds():
    scores = np.array([0.3, 0.3, 0.3])
    assert select(scores, np.zeros((3, 1)), 3, threshold=np.array([0.1, 0.5, 0.2]), diversity="none") == [0, 2]


def test_flagged_candidates_come_first():
    scores = np.array([0.2, np.inf, 0.9, np.inf])
    assert select(scores, np.zeros((4, 2)), batch_size=3)[:2] == [1, 3]
    assert select(scores, np.arange(8.0).reshape(4, 2), batch_size=2) == [1, 3], "no room left after them"


def test_diversity_avoids_near_duplicates():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.eye(3) * 10, 4, axis=0) + rng.normal(scale=0.01, size=(12, 3))
    scores = np.linspace(1.0, 0.5, 12)  # the first cluster is the most uncertain
    greedy = select(scores, clusters, batch_size=3, diversity="none")
    diverse = select(scores, clusters, batch_size=3, diversity="fps")
    cluster_of = lambda picks: {int(i) // 4 for i in picks}
    assert cluster_of(greedy) == {0}
    assert cluster_of(diverse) == {0, 1, 2}
    assert diverse[0] == 0, "starts from the most uncertain"


def test_farthest_point_order_stops_at_duplicates():
    assert farthest_point_order(np.zeros((4, 2)), first=0) == [0]


def test_batches_are_shared_among_exploration_runs():
    """A hot run whose every frame is more uncertain than the cool run's takes the whole batch
    unless it is balanced; balanced, each run gets its share, its own most uncertain first."""
    keys = [f"md-2-{run}-{n}" for run, n in [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (1, 6)]]
    scores = np.array([0.3, 0.5, 0.4, 0.9, 1.0, 0.8, 0.95])
    features = np.arange(7.0)[:, None]
    groups = [candidate_group(key) for key in keys]
    assert groups[:3] == ["md-2-0"] * 3 and candidate_group("pool-17") == "pool"
    assert sorted(select(scores, features, 4, 0.2, "none")) == [3, 4, 5, 6]
    assert sorted(select(scores, features, 4, 0.2, "none", groups=groups)) == [1, 2, 4, 6]
    assert sorted(select(scores, features, 4, 0.45, "none", groups=groups)) == [1, 3, 4, 6], "a short run gives its room away"
    assert select(scores, features, 1, 0.2, "fps", groups=groups) == [4], "fewer labels than runs: the most uncertain run's"


def test_group_shares_go_round_from_the_most_uncertain_group():
    scores = {"cool": np.array([0.2, 0.3]), "hot": np.array([0.9, 0.8, 0.7]), "warm": np.array([0.5] * 5)}
    assert group_shares(scores, 4) == {"hot": 2, "warm": 1, "cool": 1}
    assert group_shares(scores, 9) == {"hot": 3, "warm": 4, "cool": 2}
    assert sum(group_shares(scores, 50).values()) == 10
