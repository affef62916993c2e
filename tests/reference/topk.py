"""Brute-force top-K (full sort of every row), the reference of ``common/topk.py``; tests only."""

from __future__ import annotations

import numpy as np


def reference_top_k(
    user_factors: np.ndarray, item_factors: np.ndarray, item_ids: np.ndarray,
    seen: list[np.ndarray], k: int,
) -> list[list[tuple[int, float]]]:
    """[(item, score), ...] per user: every item scored, ``seen[u]`` left out, sorted by score
    descending then item id ascending, the first ``k`` kept."""
    out = []
    scores = user_factors @ item_factors.T
    for u in range(user_factors.shape[0]):
        excl = set(int(x) for x in seen[u])
        pairs = [(int(i), float(s)) for i, s in zip(item_ids, scores[u], strict=False)
                 if int(i) not in excl]
        pairs.sort(key=lambda p: (-p[1], p[0]))
        out.append(pairs[:k])
    return out
