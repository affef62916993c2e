"""Per-user NumPy references of the influence kernels (``common/influence.py``), for tests only.

The maths is in ``common/influence.py``'s module docstring. Here every user is explained on its
own, by the plainest route: one eigendecomposition of A_u for the contributions and the
leave-one-out scores (:func:`explain_user`), direct solves for the behaviour-type removals
(:func:`solve_user`, :func:`remove_parts_scores`), and a per-vector loop for the leaves-top-K
question (:class:`TopKCheck`). :func:`explain_recommendations` gathers them into the numbers the
batched kernel (:func:`common.influence.explain_users_batch`) produces for a stack of users.
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
        yty: (k, k) :func:`common.influence.gram` of all item factors.
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
    """x_u by a direct solve (what Spark computes): the brute force for LOO and type removal."""
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
) -> dict:
    """The influence numbers of one user (R recs, n past items, B behaviours): the per-user
    reference of :func:`common.influence.explain_users_batch` (the leaves-top-K answers:
    :class:`TopKCheck`).

    Returns arrays: ``scores`` (R,), ``top_src`` (R, N') positions into the history of the N'
    = min(top_n, n) largest |contributions| per rec, ``contrib`` (R, n), ``parts`` (R, n, B)
    per-behaviour parts of every contribution (base part = ``base`` (R, n)), ``loo_delta``
    (R, n), ``type_delta`` (B, R) score change with each behaviour type removed, ``conc`` (R, 3)
    concentration.
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
    conc = np.array([concentration(row) for row in contrib])
    return {
        "x": e.x, "scores": e.scores, "top_src": top_src, "contrib": contrib, "base": base,
        "parts": part, "loo_delta": loo_delta, "type_delta": type_delta, "conc": conc,
    }
