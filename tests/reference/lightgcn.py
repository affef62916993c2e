"""Dense NumPy LightGCN propagation: the reference of raytrain/models/lightgcn.py; tests only."""

from __future__ import annotations

import numpy as np


def dense_normalized_adjacency(pairs: list[tuple[int, int]], n_users: int,
                               n_items: int) -> np.ndarray:
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in set(pairs):
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    d = a.sum(axis=1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return inv[:, None] * a * inv[None, :]


def dense_propagate(ego: np.ndarray, a_hat: np.ndarray, layers: int) -> np.ndarray:
    e, total = ego, ego.copy()
    for _ in range(layers):
        e = a_hat @ e
        total += e
    return total / (layers + 1)
