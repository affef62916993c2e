"""Plain-Python references of the content models' maths (``jobs/models/text.py``); tests only."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def text_profiles(rows: Sequence[tuple[int, int, float]],
                  vectors: Mapping[int, Sequence[float]]) -> dict[int, list[float]]:
    """user -> unit-length weighted mean of the vectors of the user's items (rows: user, item,
    weight); items without a vector are skipped, users with none left out."""
    sums: dict[int, list[float]] = {}
    for user, item, w in rows:
        if item not in vectors:
            continue
        v = vectors[item]
        acc = sums.setdefault(user, [0.0] * len(v))
        for j, x in enumerate(v):
            acc[j] += w * x
    out = {}
    for user, acc in sums.items():
        norm = math.sqrt(sum(x * x for x in acc))
        out[user] = [x / norm for x in acc] if norm > 0 else acc
    return out


def cosine_top_k(profile: Sequence[float], vectors: Mapping[int, Sequence[float]],
                 candidates: Sequence[int], seen: set[int], k: int) -> list[tuple[int, float]]:
    """[(item, cosine)] of the best ``k`` candidates not in ``seen``: score descending, item
    ascending."""
    def cos(v):
        nv = math.sqrt(sum(x * x for x in v))
        return sum(a * b for a, b in zip(profile, v, strict=True)) / nv if nv else 0.0

    pairs = [(i, cos(vectors[i])) for i in candidates if i not in seen and i in vectors]
    pairs.sort(key=lambda p: (-p[1], p[0]))
    return pairs[:k]
