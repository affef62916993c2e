"""Influence maths against brute force and benfred/implicit, and the Spark job end to end."""

from __future__ import annotations

import numpy as np
import pytest

from common import influence as I

ALPHA, REG = 0.8, 0.15


def _user(rng, n_items=60, k=6, n_hist=12, n_b=3):
    y = rng.standard_normal((n_items, k))
    hist = rng.choice(n_items, n_hist, replace=False)
    parts = rng.random((n_hist, n_b)) * (rng.random((n_hist, n_b)) < 0.6)
    parts[:, 0] += 0.05  # every item has at least one behaviour
    return y, hist, parts, parts.sum(axis=1)


@pytest.mark.parametrize("n_hist", [1, 2, 7, 30])
def test_contributions_sum_to_the_score_and_loo_equals_a_resolve(n_hist):
    rng = np.random.default_rng(n_hist)
    y, hist, parts, r = _user(rng, n_hist=n_hist)
    yty = I.gram(y)
    recs = np.setdiff1d(np.arange(60), hist)[:5]
    e = I.explain_user(yty, y[hist], r, y[recs], alpha=ALPHA, reg=REG)
    x = I.solve_user(yty, y[hist], r, alpha=ALPHA, reg=REG)
    np.testing.assert_allclose(e.x, x, rtol=1e-12, atol=1e-14)
    scores = y[recs] @ x
    np.testing.assert_allclose(e.contributions.sum(axis=1), scores, rtol=1e-9)
    for j in range(n_hist):
        keep = np.arange(n_hist) != j
        xj = I.solve_user(yty, y[hist][keep], r[keep], alpha=ALPHA, reg=REG)
        np.testing.assert_allclose(e.loo_scores[:, j], y[recs] @ xj, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(e.loo_vectors(np.array([j]))[0], xj, rtol=1e-8, atol=1e-10)


def test_behaviour_parts_sum_to_contribution_and_type_removal_resolves():
    rng = np.random.default_rng(7)
    y, hist, parts, r = _user(rng)
    yty = I.gram(y)
    recs = np.setdiff1d(np.arange(60), hist)[:4]
    out = I.explain_recommendations(yty, y[hist], r, parts, y[recs], alpha=ALPHA, reg=REG,
                                    top_n=3)
    np.testing.assert_allclose(out["base"] + out["parts"].sum(axis=2), out["contrib"],
                               rtol=1e-12, atol=1e-14)
    for b in range(parts.shape[1]):
        rb = r - parts[:, b]
        keep = rb > 1e-12
        xb = I.solve_user(yty, y[hist][keep], rb[keep], alpha=ALPHA, reg=REG)
        np.testing.assert_allclose(out["type_delta"][b], y[recs] @ xb - out["scores"],
                                   rtol=1e-9, atol=1e-12)
    # top sources are the largest |contributions|
    for i in range(len(recs)):
        assert set(out["top_src"][i]) == set(np.argsort(-np.abs(out["contrib"][i]))[:3])


@pytest.mark.parametrize("seed", range(60))
def test_top_k_check_matches_a_full_rescoring(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 6))
    n = int(rng.integers(k + 2, 80))
    y = rng.standard_normal((n, 3))
    x = rng.standard_normal(3)
    seen = rng.choice(n, int(rng.integers(0, n - k)), replace=False)
    unseen = np.setdiff1d(np.arange(n), seen)
    recs = unseen[np.argsort(-(y[unseen] @ x))[:k]]
    check = I.TopKCheck(x, y, seen, recs, k=k, pool=int(rng.integers(0, 10)))
    new_x = x + rng.standard_normal((4, 3)) * rng.random()
    got = check.leaves(new_x)
    for c in range(4):
        s = y @ new_x[c]
        expected = [int((s[unseen] > s[i]).sum()) >= k for i in recs]
        assert list(got[c]) == expected


def test_contributions_equal_implicit_explain():
    implicit_als = pytest.importorskip("implicit.cpu.als")
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(3)
    y, hist, parts, r = _user(rng, n_items=40, k=5, n_hist=9)
    yty = I.gram(y)
    recs = np.setdiff1d(np.arange(40), hist)[:3]
    e = I.explain_user(yty, y[hist], r, y[recs], alpha=ALPHA, reg=REG)
    # implicit's convention: user_items hold c_j (its alpha = 1), regularization is plain λ; Spark's
    # c_j = 1 + alpha r_j and λ·n_u (ALS-WR) map onto it exactly
    model = implicit_als.AlternatingLeastSquares(factors=5, regularization=REG * len(hist),
                                                 alpha=1.0)
    model.item_factors = y.astype(np.float64)
    model.user_factors = np.zeros((1, 5))
    c = 1.0 + ALPHA * r
    user_items = csr_matrix((c, (np.zeros(len(hist), dtype=int), hist)), shape=(1, 40))
    for row, item in enumerate(recs):
        total, top, _ = model.explain(0, user_items, int(item), N=len(hist))
        assert total == pytest.approx(e.scores[row], rel=1e-9)
        ours = {int(hist[j]): e.contributions[row, j] for j in range(len(hist))}
        for item_j, contrib in top:
            assert contrib == pytest.approx(ours[int(item_j)], rel=1e-9, abs=1e-12)


def test_gini_known_answers():
    from jobs.influence import gini_coefficient

    assert gini_coefficient(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert gini_coefficient(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)
    assert np.isnan(gini_coefficient(np.zeros(3)))
