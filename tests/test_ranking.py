"""The NumPy metrics of the Ray path (common/ranking.py) against the Python reference, and the
score-matrix top-K against the dot-product one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common import ranking
from common.topk import top_k_dot, top_k_scores
from tests.reference import metrics as ref


def _csr(sets: dict[int, set[int]], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    for u in range(n_users):
        indptr[u + 1] = indptr[u] + len(sets.get(u, ()))
    indices = np.array([i for u in range(n_users) for i in sorted(sets.get(u, ()))],
                       dtype=np.int64)
    return indptr, indices


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ranking_and_catalogue_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, k_max = 40, 30, 8
    truth = {u: set(rng.choice(n_items, rng.integers(0, 5), replace=False).tolist())
             for u in range(n_users) if rng.random() < 0.8}
    train = {u: set(rng.choice(n_items - 5, rng.integers(1, 6), replace=False).tolist())
             for u in range(n_users)}
    listed = [u for u in range(n_users) if rng.random() < 0.85]
    recs: dict[int, list[int]] = {}
    items = np.full((len(listed), k_max), -1, dtype=np.int64)
    counts = np.zeros(len(listed), dtype=np.int64)
    for r, u in enumerate(listed):
        n = int(rng.integers(0, k_max + 1))
        lst = rng.choice(n_items, n, replace=False).tolist()
        if n >= 3 and seed % 2:  # a repeated item counts once, at its best rank
            lst[2] = lst[0]
        recs[u] = lst
        items[r, :n], counts[r] = lst, n
    t_ptr, t_idx = _csr(truth, n_users)
    tr_ptr, tr_idx = _csr(train, n_users)
    ks = (1, 5, 10)
    got = ranking.ranking_metrics(np.array(listed), counts, items, t_ptr, t_idx, ks)
    cat = ranking.catalogue_metrics(items, counts, tr_ptr, tr_idx, ks)
    for k in ks:
        want = ref.ranking_metrics(recs, truth, k)
        assert set(got[k]) == set(want)
        for m, v in want.items():
            assert _close(got[k][m], v), (k, m, got[k][m], v)
        want_cat = ref.catalogue_metrics(recs, train, k)
        for m, v in want_cat.items():
            assert _close(cat[k][m], v), (k, m, cat[k][m], v)


def test_no_evaluated_user_gives_nan_and_counts():
    t_ptr, t_idx = _csr({0: {1}}, 2)
    got = ranking.ranking_metrics(np.array([1]), np.array([1]), np.array([[3]]), t_ptr, t_idx,
                                  (10,))[10]
    assert math.isnan(got["ndcg"]) and got["users_evaluated"] == 0
    assert got["users_truth_no_recs"] == 1 and got["users_recs_no_truth"] == 1


@pytest.mark.parametrize("block", [3, 7, 64])
def test_top_k_scores_matches_full_sort(block):
    """Any score matrix (not a dot product), ties and heavy seen sets included."""
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(9, 25)).astype(np.float32)
    scores[:, 7] = scores[:, 3]  # ties: broken by item id ascending
    ids = np.arange(25)
    seen = [rng.choice(25, rng.integers(0, 24), replace=False) for _ in range(9)]
    before = scores.copy()
    counts, items, top = top_k_scores(scores, ids, seen, 6, item_block=block)
    np.testing.assert_array_equal(scores, before)  # the caller's scores are not modified
    for r in range(9):
        excl = set(seen[r].tolist())
        want = sorted(((float(scores[r, i]), i) for i in ids if i not in excl),
                      key=lambda p: (-p[0], p[1]))[:6]
        assert counts[r] == len(want)
        assert items[r, :counts[r]].tolist() == [i for _, i in want]
        np.testing.assert_array_equal(top[r, :counts[r]], [s for s, _ in want])


def test_top_k_scores_equals_top_k_dot_on_dot_products():
    rng = np.random.default_rng(6)
    u = rng.normal(size=(9, 4)).astype(np.float32)
    v = rng.normal(size=(25, 4)).astype(np.float32)
    seen = [rng.choice(25, 5, replace=False) for _ in range(9)]
    a = top_k_dot(u, v, np.arange(25), seen, 6)
    b = top_k_scores(u @ v.T, np.arange(25), seen, 6)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[2], b[2], rtol=1e-6)
