"""Exact seen-excluding top-K in NumPy: the kernel behind every model's ``gold/recommendations``.

Spark's ``recommendForAllUsers`` cannot exclude the items a user already has, and over-fetching
(top K + m, then filtering) is wrong for any user with more than m seen items. Here every user is
scored against *all* items, block by block, with the seen items masked out before selection, so
the result is exact whatever the user's history.

Order: score descending, ties broken by item index ascending (deterministic across block sizes
and partitionings). Items a user has seen never appear; a user who has seen all but n < K items
gets n rows.

Memory per call is ``len(users) * item_block`` float32 scores plus the running top-K, independent
of the catalogue size.
"""

from __future__ import annotations

import numpy as np

NEG_INF = np.float32(-np.inf)


def _order(scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per-row permutation sorting by score desc, item asc (rows of small width)."""
    by_item = np.argsort(items, axis=1, kind="stable")
    s = np.take_along_axis(scores, by_item, axis=1)
    by_score = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(by_item, by_score, axis=1)


def _block_top_k(scores: np.ndarray, item_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of ``scores`` (b, m) under (score desc, item asc).

    ``item_ids`` (m,) must be ascending. -inf marks excluded cells. Returns (b, k') scores and
    item ids, k' = min(k, m), not yet sorted; excluded picks keep score -inf.
    """
    b, m = scores.shape
    if m <= k:
        return scores, np.broadcast_to(item_ids, (b, m)).copy()
    # the k largest land in the last k columns (no negated copy of the block)
    part = np.argpartition(scores, m - k, axis=1)[:, m - k:]
    top = np.take_along_axis(scores, part, axis=1)
    # argpartition picks arbitrarily among cells tied with the k-th score; rows where the tie
    # straddles the boundary are redone exactly (rare for real-valued scores)
    kth = top.min(axis=1)
    n_ge = (scores >= kth[:, None]).sum(axis=1)
    for r in np.flatnonzero((n_ge > k) & np.isfinite(kth)):
        row = scores[r]
        above = np.flatnonzero(row > kth[r])
        tied = np.flatnonzero(row == kth[r])[: k - above.size]  # ascending item order
        part[r] = np.concatenate([above, tied])
    top = np.take_along_axis(scores, part, axis=1)
    return top, item_ids[part]


def top_k_dot(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    item_ids: np.ndarray,
    seen: list[np.ndarray] | None,
    k: int,
    *,
    item_block: int = 32768,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k items by dot product for each user, seen items excluded.

    Args:
        user_factors: (b, r) float32.
        item_factors: (n, r) float32, rows in ascending ``item_ids`` order.
        item_ids: (n,) int, ascending.
        seen: per user, the item ids to exclude (any order; ids absent from ``item_ids`` ignored).
        k: list length.
        item_block: items scored at once (memory bound).

    Returns:
        (counts (b,), items (b, k), scores (b, k)): row u holds ``counts[u]`` valid entries,
        best first; the rest are item -1, score -inf.
    """
    return _top_k_blocks(
        lambda start, stop: user_factors @ item_factors[start:stop].T,
        user_factors.shape[0], item_ids, seen, k, item_block=item_block)


def top_k_scores(
    scores: np.ndarray,
    item_ids: np.ndarray,
    seen: list[np.ndarray] | None,
    k: int,
    *,
    item_block: int = 32768,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`top_k_dot` for models that are not a dot product (NeuMF's MLP, a sequence model):
    ``scores`` (b, n) float32 over the whole catalogue, column j = ``item_ids[j]`` (ascending).
    Same exclusion, order and output; ``scores`` is not modified."""
    return _top_k_blocks(lambda start, stop: np.array(scores[:, start:stop], dtype=np.float32),
                         scores.shape[0], item_ids, seen, k, item_block=item_block)


def _top_k_blocks(score_block, b: int, item_ids: np.ndarray, seen, k: int, *,
                  item_block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shared loop: ``score_block(start, stop)`` gives the (b, stop-start) float32 scores of
    those catalogue columns (a fresh array: seen cells are overwritten with -inf)."""
    n = item_ids.shape[0]
    best_s = np.full((b, 0), NEG_INF, dtype=np.float32)
    best_i = np.zeros((b, 0), dtype=np.int64)
    if seen is not None and b:
        lens = np.fromiter((len(s) for s in seen), dtype=np.int64, count=b)
        seen_rows = np.repeat(np.arange(b), lens)
        seen_items = (np.concatenate([np.asarray(s, dtype=np.int64) for s in seen])
                      if lens.sum() else np.zeros(0, dtype=np.int64))
        # position of each seen id in item_ids (-1 when the model has no such item)
        pos = np.searchsorted(item_ids, seen_items)
        pos_ok = pos < n
        pos_ok[pos_ok] = item_ids[pos[pos_ok]] == seen_items[pos_ok]
        seen_rows, seen_pos = seen_rows[pos_ok], pos[pos_ok]
    else:
        seen_rows = seen_pos = np.zeros(0, dtype=np.int64)
    for start in range(0, n, item_block):
        stop = min(n, start + item_block)
        scores = score_block(start, stop)
        in_block = (seen_pos >= start) & (seen_pos < stop)
        scores[seen_rows[in_block], seen_pos[in_block] - start] = NEG_INF
        s, i = _block_top_k(scores, item_ids[start:stop], k)
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i], axis=1)
        if best_s.shape[1] > k:
            order = _order(best_s, best_i)[:, :k]
            best_s = np.take_along_axis(best_s, order, axis=1)
            best_i = np.take_along_axis(best_i, order, axis=1)
    order = _order(best_s, best_i)
    best_s = np.take_along_axis(best_s, order, axis=1)
    best_i = np.take_along_axis(best_i, order, axis=1)
    valid = np.isfinite(best_s)
    counts = valid.sum(axis=1)
    best_i = np.where(valid, best_i, -1)
    if best_s.shape[1] < k:  # catalogue smaller than k
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=NEG_INF)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return counts, best_i, best_s


def top_k_global_order(
    ranked_items: np.ndarray, seen: list[np.ndarray], k: int
) -> list[np.ndarray]:
    """Top-k for models whose order is the same for every user (popularity): per user the first
    k items of ``ranked_items`` not in the user's seen set. Exact for any history length.

    Returns per user the positions into ``ranked_items`` (length min(k, n - |seen ∩ ranked|)).
    """
    n = ranked_items.shape[0]
    position = np.full(int(ranked_items.max()) + 1 if n else 0, -1, dtype=np.int64)
    position[ranked_items] = np.arange(n)
    out = []
    for s in seen:
        s = np.asarray(s, dtype=np.int64)
        s = s[(s >= 0) & (s < position.shape[0])]
        p = position[s]
        p = p[p >= 0]
        # the first k unseen positions lie within the first k + |seen| positions
        cand = np.arange(min(n, k + p.size))
        out.append(cand[~np.isin(cand, p)][:k])
    return out

