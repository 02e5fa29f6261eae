"""Which candidates active learning labels."""

from __future__ import annotations

import numpy as np

from incerta.active.selection import farthest_point_order, select


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
