"""Which candidates to label: above a threshold, most uncertain first, diverse in latent space."""

from __future__ import annotations

from collections.abc import Sequence

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
    groups: Sequence[str] | None = None,
) -> list[int]:
    """Indices to label: candidates with ``scores`` > ``threshold`` (per candidate, or one value),
    at most ``batch_size``; with ``diversity='fps'`` the batch is picked by farthest-point
    sampling in ``features`` space among the ``pool_factor * batch_size`` most uncertain,
    starting from the most uncertain, so one batch holds no near-duplicates. Candidates with
    an infinite score (flagged: e.g. an element the model never saw) come first. With
    ``groups`` (one name per candidate, e.g. the exploration run it came from) the rest of
    the batch is shared out evenly among the groups with candidates above the threshold
    (:func:`group_shares`), each share picked as above within its group."""
    scores = np.asarray(scores, dtype=float)
    flagged = np.flatnonzero(np.isinf(scores))[:batch_size].tolist()
    above = np.flatnonzero(np.isfinite(scores) & (scores > threshold))
    names = np.asarray(groups if groups is not None else [""] * len(scores))[above]
    shares = group_shares({name: scores[above[names == name]] for name in dict.fromkeys(names)}, batch_size - len(flagged))
    return flagged + [index for name, share in shares.items() if share
                      for index in _most_uncertain(scores, features, above[names == name], share, diversity, pool_factor)]


def group_shares(scores: dict[str, np.ndarray], room: int) -> dict[str, int]:
    """How many of ``room`` labels each group gets: one at a time in turn, the group with the
    most uncertain candidate first, none beyond a group's number of candidates."""
    order = sorted(scores, key=lambda name: -np.max(scores[name]))
    turns = [name for turn in range(max(map(len, scores.values()), default=0)) for name in order
             if turn < len(scores[name])]
    return {name: turns[:max(room, 0)].count(name) for name in order}


def _most_uncertain(scores: np.ndarray, features: np.ndarray, candidates: np.ndarray, room: int, diversity: str,
                    pool_factor: int) -> list[int]:
    """``room`` of the ``candidates`` (indices): the most uncertain, diverse with ``fps``."""
    ranked = candidates[np.argsort(-scores[candidates])]
    if diversity == "none" or len(ranked) <= room:
        return ranked[:room].tolist()
    shortlist = ranked[: pool_factor * room]
    order = farthest_point_order(np.asarray(features)[shortlist], first=0)
    return shortlist[order[:room]].tolist()
