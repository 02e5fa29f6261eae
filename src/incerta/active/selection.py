"""Which candidates to label: above a threshold, most uncertain first, diverse in latent space."""

from __future__ import annotations

import numpy as np


def farthest_point_order(features: np.ndarray, first: int) -> list[int]:
    """Greedy farthest-point ordering of rows of ``features`` starting from ``first``."""
    chosen = [first]
    distance = np.linalg.norm(features - features[first], axis=1)
    for _ in range(len(features) - 1):
        nxt = int(np.argmax(distance))
        if distance[nxt] <= 0:
            break
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(features - features[nxt], axis=1))
    return chosen


def select(
    scores: np.ndarray,
    features: np.ndarray,
    batch_size: int,
    threshold: float | np.ndarray = 0.0,
    diversity: str = "fps",
    pool_factor: int = 4,
) -> list[int]:
    """Indices to label: candidates with ``scores`` > ``threshold`` (per candidate, or one value),
    at most ``batch_size``; with ``diversity='fps'`` the batch is picked by farthest-point
    sampling in ``features`` space among the ``pool_factor * batch_size`` most uncertain,
    starting from the most uncertain, so one batch holds no near-duplicates. Candidates with
    an infinite score (flagged: e.g. an element the model never saw) come first."""
    scores = np.asarray(scores, dtype=float)
    flagged = np.flatnonzero(np.isinf(scores))[:batch_size].tolist()
    room = batch_size - len(flagged)
    above = np.flatnonzero(np.isfinite(scores) & (scores > threshold))
    ranked = above[np.argsort(-scores[above])]
    if room <= 0:
        return flagged
    if diversity == "none" or len(ranked) <= room:
        return flagged + ranked[:room].tolist()
    shortlist = ranked[: pool_factor * room]
    order = farthest_point_order(np.asarray(features)[shortlist], first=0)
    return flagged + shortlist[order[:room]].tolist()
