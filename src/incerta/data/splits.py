"""Seeded train / validation splits, recorded so a run can be reproduced and audited."""

from __future__ import annotations

import numpy as np


def split_indices(n: int, n_val: int, n_train: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle range(n) with ``seed``; return (train, validation) index arrays.

    ``n_train`` None takes every frame not used for validation.
    """
    if n_val < 1 or n_val >= n:
        raise ValueError(f"need 1 <= n_val < number of frames ({n}), got n_val={n_val}")
    order = np.random.default_rng(seed).permutation(n)
    validation = np.sort(order[:n_val])
    rest = order[n_val:]
    if n_train is not None:
        if n_train > len(rest):
            raise ValueError(f"n_train={n_train} but only {len(rest)} frames remain after {n_val} for validation")
        rest = rest[:n_train]
    return np.sort(rest), validation


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffled order of the training set for one epoch, a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted seeded choice of ``k`` of ``n`` indices (all of them when ``k`` is None)."""
    if k is None:
        return np.arange(n)
    if k > n:
        raise ValueError(f"asked for {k} frames but only {n} are available")
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])
