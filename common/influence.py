"""Exact attribution of implicit-ALS scores to a user's past interactions (float64 NumPy).

What Spark trains (``org.apache.spark.ml.recommendation.ALS``, ``computeFactors`` with
``implicitPrefs=true``, checked against Spark 4.x source): with item factors Y (all items of the
model), the user's train items J with ratings r_j > 0 (reclake's ``confidence``),

    A_u = YᵀY + Σ_{j∈J} α r_j y_j y_jᵀ + λ n_u I          (n_u = |J|: ALS-WR scaling)
    b_u = Σ_{j∈J} (1 + α r_j) y_j = Σ_j c_j p_j y_j        (p_j = 1 for r_j > 0)
    x_u = A_u⁻¹ b_u

Spark accumulates A and b in float64 and stores the factors as float32; within an iteration the
items are solved first and the users last, so x_u is exactly the solve above on the final item
factors (recomputing it from the stored float32 factors agrees to ~1e-6 relative). Ratings ≤ 0
would add α|r| y yᵀ to A with preference 0; reclake trains on confidence > 0 only. With
``nonnegative=True`` Spark solves an NNLS problem instead and this decomposition does not hold.

For a recommended item i, with W_u = A_u⁻¹ and s_ij = y_iᵀ W_u y_j (Hu, Koren & Volinsky 2008, §5):

    score_i = y_iᵀ x_u = Σ_j s_ij c_j                      (contribution of j: s_ij c_j)
    c_j = 1 + α Σ_b conf_jb                                (gold's per-behaviour parts)
    s_ij c_j = s_ij · 1  +  Σ_b s_ij α conf_jb             (base part + one part per behaviour)

Leave-one-out: removing j changes b by −c_j y_j and A by −α r_j y_j y_jᵀ − λ I (n_u drops by one).
With the eigendecomposition A_u = Q Λ Qᵀ, M = A_u − λI = Q (Λ − λ) Qᵀ is shared by every j, and
A'_j = M − α r_j y_j y_jᵀ is a rank-one downdate of it (Sherman–Morrison), so with
z_j = M⁻¹ y_j, d_j = y_jᵀ z_j, w = M⁻¹ b:

    x'_j = w − c_j z_j + γ_j z_j,   γ_j = α r_j (y_jᵀ w − c_j d_j) / (1 − α r_j d_j)
    score'_ij = y_iᵀ w + (γ_j − c_j) y_iᵀ z_j

One eigendecomposition per user, every (recommendation, past item) pair in a few matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class UserExplanation:
    """Arrays for one user with R recommendations and n past items (float64)."""

    x: np.ndarray  # (k,) recomputed user factors
    scores: np.ndarray  # (R,) recomputed scores of the recommended items
    contributions: np.ndarray  # (R, n) s_ij * c_j; rows sum to scores
    similarity: np.ndarray  # (R, n) s_ij
    confidence: np.ndarray  # (n,) c_j = 1 + alpha r_j
    loo_scores: np.ndarray  # (R, n) score of rec i with past item j removed
    # the counterfactual vectors themselves: x'_j = loo_w + loo_coef[j] * loo_z[:, j]
    loo_w: np.ndarray | None = None  # (k,)
    loo_z: np.ndarray | None = None  # (k, n)
    loo_coef: np.ndarray | None = None  # (n,)

    def loo_vectors(self, js: np.ndarray) -> np.ndarray:
        """(len(js), k) user vectors with past item j removed (Sherman–Morrison, exact)."""
        return self.loo_w[None, :] + (self.loo_coef[js][:, None] * self.loo_z[:, js].T)


def gram(item_factors: np.ndarray) -> np.ndarray:
    """YᵀY over all the model's items, float64 (computed once, shared by every user)."""
    y = np.asarray(item_factors, dtype=np.float64)
    return y.T @ y


def explain_user(
    yty: np.ndarray,
    hist_factors: np.ndarray,
    ratings: np.ndarray,
    rec_factors: np.ndarray,
    *,
    alpha: float,
    reg: float,
    loo: bool = True,
) -> UserExplanation:
    """Contributions and leave-one-out scores of one user's recommendations.

    Args:
        yty: (k, k) :func:`gram` of all item factors.
        hist_factors: (n, k) factors of the user's train items (n >= 1).
        ratings: (n,) their ratings r_j (reclake's confidence), > 0.
        rec_factors: (R, k) factors of the recommended items.
        alpha, reg: the run's ``als.alpha`` and ``als.reg_param``.
    """
    yh = np.asarray(hist_factors, dtype=np.float64)
    yr = np.asarray(rec_factors, dtype=np.float64)
    r = np.asarray(ratings, dtype=np.float64)
    n, k = yh.shape
    ar = alpha * r
    c = 1.0 + ar
    a = yty + (yh.T * ar) @ yh
    a[np.diag_indices(k)] += reg * n
    lam, q = np.linalg.eigh(a)
    b = yh.T @ c
    qyh = q.T @ yh.T  # (k, n)
    qyr = q.T @ yr.T  # (k, R)
    qb = q.T @ b
    x = q @ (qb / lam)
    sim = (qyr / lam[:, None]).T @ qyh  # y_i^T A^-1 y_j
    contrib = sim * c[None, :]
    scores = yr @ x
    if loo:
        mu = lam - reg  # eigenvalues of M = A - reg I
        mu = np.where(mu > 0, mu, np.finfo(np.float64).tiny)
        z_q = qyh / mu[:, None]  # Q^T M^-1 y_j
        d = (qyh * z_q).sum(axis=0)
        w_q = qb / mu
        yw = qyh.T @ w_q
        gamma = ar * (yw - c * d) / (1.0 - ar * d)
        loo_scores = (qyr.T @ w_q)[:, None] + (gamma - c)[None, :] * (qyr.T @ z_q)
        return UserExplanation(x=x, scores=scores, contributions=contrib, similarity=sim,
                               confidence=c, loo_scores=loo_scores, loo_w=q @ w_q,
                               loo_z=q @ z_q, loo_coef=gamma - c)
    return UserExplanation(x=x, scores=scores, contributions=contrib, similarity=sim,
                           confidence=c, loo_scores=np.full_like(contrib, np.nan))


def solve_user(yty: np.ndarray, hist_factors: np.ndarray, ratings: np.ndarray, *, alpha: float,
               reg: float) -> np.ndarray:
    """Reference: x_u by a direct solve (what Spark computes), for tests and LOO brute force."""
    yh = np.asarray(hist_factors, dtype=np.float64)
    r = np.asarray(ratings, dtype=np.float64)
    n, k = yh.shape
    if n == 0:
        return np.zeros(k)
    a = yty + (yh.T * (alpha * r)) @ yh + reg * n * np.eye(k)
    return np.linalg.solve(a, yh.T @ (1.0 + alpha * r))


def remove_parts_scores(
    yty: np.ndarray,
    hist_factors: np.ndarray,
    ratings: np.ndarray,
    parts: np.ndarray,
    *,
    alpha: float,
    reg: float,
) -> np.ndarray:
    """User factors with one behaviour type removed, per type: (B, k).

    ``parts`` (n, B): each past item's confidence parts (gold's ``conf_<b>``; they sum to the
    rating). Removing type b leaves r_j − parts_jb; an item left with nothing (≤ 1e-12 of its
    rating) leaves the history entirely, so n_u (and λ n_u) shrinks with it.
    """
    r = np.asarray(ratings, dtype=np.float64)
    out = np.empty((parts.shape[1], yty.shape[0]))
    for b in range(parts.shape[1]):
        rb = r - parts[:, b]
        keep = rb > 1e-12 * np.maximum(r, 1.0)
        out[b] = solve_user(yty, hist_factors[keep], rb[keep], alpha=alpha, reg=reg)
    return out


class TopKCheck:
    """Does a recommendation drop out of the user's top-k when the user vector changes? Exact.

    Built once per user from the original vector ``x``: the pool holds the ``pool`` best unseen
    items under ``x`` plus the recommendations themselves. An unseen item outside the pool had a
    score ≤ ``s_out`` and factor norm ≤ ``n_out``, so under ``x'`` its score is at most
    s_out + n_out · ||x' − x||; only when that bound cannot decide is every unseen item rescored
    (counted in ``full_scans``).
    """

    def __init__(self, x, item_factors, seen_idx, rec_idx, *, k: int, pool: int = 50):
        self.x = np.asarray(x, dtype=np.float64)
        self.k = k
        unseen = np.ones(item_factors.shape[0], dtype=bool)
        unseen[seen_idx] = False
        self._unseen_idx = np.flatnonzero(unseen)
        self._y = item_factors
        scores = item_factors[self._unseen_idx] @ self.x
        n_pool = min(len(self._unseen_idx), pool + k)
        top = np.argpartition(-scores, n_pool - 1)[:n_pool] if n_pool else np.zeros(0, int)
        pool_idx = np.union1d(self._unseen_idx[top], rec_idx)
        self.pool_factors = np.asarray(item_factors[pool_idx], dtype=np.float64)
        self.rec_pos = np.searchsorted(pool_idx, rec_idx)
        self._rec_unseen = np.searchsorted(self._unseen_idx, rec_idx)
        outside = np.ones(len(self._unseen_idx), dtype=bool)
        outside[np.searchsorted(self._unseen_idx, pool_idx[np.isin(pool_idx, self._unseen_idx)])] = False
        self.n_outside = int(outside.sum())
        if self.n_outside:
            self.s_out = float(scores[outside].max())
            self.n_out = float(np.linalg.norm(item_factors[self._unseen_idx[outside]], axis=1).max())
        else:
            self.s_out, self.n_out = -np.inf, 0.0
        self.full_scans = 0

    def leaves(self, new_x: np.ndarray) -> np.ndarray:
        """(m, k_f) counterfactual vectors -> (m, R): True where the rec leaves the top-k."""
        new_x = np.atleast_2d(new_x)
        new_pool = new_x @ self.pool_factors.T
        out = np.zeros((new_x.shape[0], len(self.rec_pos)), dtype=bool)
        for c in range(new_x.shape[0]):
            s = new_pool[c]
            bound = self.s_out + self.n_out * float(np.linalg.norm(new_x[c] - self.x))
            full = None
            for r, p in enumerate(self.rec_pos):
                above = int((s > s[p]).sum())
                if above >= self.k:
                    out[c, r] = True
                elif self.n_outside and bound > s[p]:
                    if full is None:
                        full = self._y[self._unseen_idx] @ new_x[c]
                        self.full_scans += 1
                    # compare within one product (the rec never beats itself by rounding)
                    out[c, r] = int((full > full[self._rec_unseen[r]]).sum()) >= self.k
        return out


def concentration(contrib_row: np.ndarray) -> tuple[float, float, float]:
    """(top-1 share, top-3 share, effective number of sources) of one recommendation's positive
    contributions; effective number = 1 / Σ p² with p the positive shares (1 = one behaviour
    drives it all)."""
    pos = np.sort(contrib_row[contrib_row > 0])[::-1]
    total = pos.sum()
    if total <= 0:
        return float("nan"), float("nan"), float("nan")
    p = pos / total
    return float(p[0]), float(p[:3].sum()), float(1.0 / (p**2).sum())


def explain_recommendations(
    yty: np.ndarray,
    hist_factors: np.ndarray,
    ratings: np.ndarray,
    parts: np.ndarray,
    rec_factors: np.ndarray,
    *,
    alpha: float,
    reg: float,
    top_n: int,
    check: TopKCheck | None = None,
) -> dict:
    """Everything the influence job writes for one user (R recs, n past items, B behaviours).

    Returns arrays: ``scores`` (R,), ``top_src`` (R, N') positions into the history of the N'
    = min(top_n, n) largest |contributions| per rec, ``contrib`` (R, n), ``parts`` (R, n, B)
    per-behaviour parts of every contribution (base part = ``base`` (R, n)), ``loo_delta``
    (R, n), ``loo_leaves`` (R, N') for the kept sources (None without ``check``),
    ``type_leaves`` (B, R) (None without ``check``), ``type_delta`` (B, R) score change with each
    behaviour type removed, ``conc`` (R, 3) concentration.
    """
    e = explain_user(yty, hist_factors, ratings, rec_factors, alpha=alpha, reg=reg)
    contrib = e.contributions
    base = e.similarity  # s_ij * 1
    part = e.similarity[:, :, None] * (alpha * parts)[None, :, :]  # s_ij * alpha * conf_jb
    n_keep = min(top_n, contrib.shape[1])
    top_src = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :n_keep]
    loo_delta = e.loo_scores - e.scores[:, None]
    x_types = remove_parts_scores(yty, hist_factors, ratings, parts, alpha=alpha, reg=reg)
    type_delta = x_types @ np.asarray(rec_factors, dtype=np.float64).T - e.scores[None, :]
    loo_leaves = type_leaves = None
    if check is not None:
        # counterfactual vectors for the kept sources only
        src = np.unique(top_src)
        x_loo = e.loo_vectors(src)
        leaves_by_src = check.leaves(x_loo)  # (len(src), R)
        where = np.searchsorted(src, top_src)  # (R, N')
        loo_leaves = leaves_by_src[where, np.arange(contrib.shape[0])[:, None]]
        type_leaves = check.leaves(x_types)
    conc = np.array([concentration(row) for row in contrib])
    return {
        "x": e.x, "scores": e.scores, "top_src": top_src, "contrib": contrib, "base": base,
        "parts": part, "loo_delta": loo_delta, "loo_leaves": loo_leaves,
        "type_leaves": type_leaves, "type_delta": type_delta, "conc": conc,
    }
