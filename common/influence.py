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

One eigendecomposition per user gives every (recommendation, past item) pair in a few matrix
products (the per-user reference, ``tests/reference/influence.py``). What the job runs:

  - :func:`explain_users_batch`: the same numbers for a :class:`UserStack` (users with the same
    history length, stacked), one LU solve of A and one inverse of M per user, batched, the
    history walked in chunks, and the leaves-top-K answers (:func:`leaves_top_k`, exact) of every
    counterfactual vector; settings in :class:`ExplainSettings`, item factors in
    :class:`ItemFactors`, the result a :class:`BatchExplanation`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from common.config import Config


def gram(item_factors: np.ndarray) -> np.ndarray:
    """YᵀY over all the model's items, float64 (computed once, shared by every user)."""
    y = np.asarray(item_factors, dtype=np.float64)
    return y.T @ y


# --- the kernel's inputs and result ------------------------------------------------------------


@dataclass(frozen=True)
class ExplainSettings:
    """The run's settings the maths depends on, and the job's knobs.

    ``alpha``, ``reg``: the run's ``als.alpha`` and ``als.reg_param``. ``k``: the run's
    ``recommend.k`` (a recommendation leaves the top-K when k other candidates score above it).
    ``exclude_seen``: the run's ``recommend.exclude_seen`` (false: the user's own train items are
    candidates too). ``behaviors``: the behaviour types the confidence is split into (gold's
    ``conf_<b>``). ``top_n``: past items kept per recommendation; ``pool``: items pre-scored per
    user for the leaves check; ``chunk``: history columns walked at once; ``memory_doubles``:
    about how many float64 one working array may hold."""

    alpha: float
    reg: float
    k: int
    behaviors: tuple[str, ...]
    exclude_seen: bool = True
    top_n: int = 5
    pool: int = 200
    chunk: int = 4096
    memory_doubles: int = 4_000_000

    @classmethod
    def from_config(cls, run_cfg: Config, behaviors) -> ExplainSettings:
        """From the run's config (``RunRecord.config(cfg)``: its own als / recommend params,
        the current influence section)."""
        return cls(alpha=float(run_cfg.als.alpha), reg=float(run_cfg.als.reg_param),
                   k=int(run_cfg.recommend.k), behaviors=tuple(behaviors),
                   exclude_seen=bool(run_cfg.recommend.exclude_seen),
                   top_n=int(run_cfg.influence.top_n), pool=int(run_cfg.influence.pool))


@dataclass(frozen=True, eq=False)
class ItemFactors:
    """The run's item factors: ``ids`` (m,) item_idx and ``factors`` (m, k) float64, and their
    Gram ``yty`` (k, k). On the joined path (catalogues too large to broadcast) only ``yty`` is
    known (``ids`` and ``factors`` None): the users' rows carry their items' factors and there
    is no leaves-top-K check (it needs every item's score)."""

    ids: np.ndarray | None
    factors: np.ndarray | None
    yty: np.ndarray

    @classmethod
    def from_rows(cls, ids, factors) -> ItemFactors:
        ids = np.asarray(ids, dtype=np.int64)
        factors = np.asarray(factors, dtype=np.float64)
        return cls(ids=ids, factors=factors, yty=gram(factors))

    @classmethod
    def gram_only(cls, yty) -> ItemFactors:
        return cls(ids=None, factors=None, yty=np.asarray(yty, dtype=np.float64))

    @cached_property
    def index(self) -> ItemIndex | None:
        """Dense by id with the leaves check's norm order; built where it is first used (on the
        worker, after the broadcast), None on the joined path."""
        if self.factors is None:
            return None
        n_items = int(self.ids.max()) + 1 if len(self.ids) else 0
        dense = np.zeros((n_items, self.factors.shape[1]), dtype=np.float64)
        dense[self.ids] = self.factors
        known = np.zeros(n_items, dtype=bool)
        known[self.ids] = True
        # the check scores only items the model has (unknown ids would look like zero vectors)
        return ItemIndex(dense, np.flatnonzero(~known))


@dataclass(frozen=True)
class UserStack:
    """U users with the same history length n and the same number of recommendations R.

    ``hist`` (U, n) item_idx of the train history, ``ratings`` (U, n) their r_j > 0 (gold's
    ``confidence``), ``parts`` (U, n, B) its per-behaviour parts (``conf_<b>``, summing to r_j),
    ``recs`` (U, R) recommended item_idx. On the joined path ``hist_factors`` (U, n, k) and
    ``rec_factors`` (U, R, k) carry the items' factors."""

    hist: np.ndarray
    ratings: np.ndarray
    parts: np.ndarray
    recs: np.ndarray
    hist_factors: np.ndarray | None = None
    rec_factors: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class BatchExplanation:
    """:func:`explain_users_batch`'s numbers for a stack of U users, R recs, N = min(top_n, n)
    kept sources, B behaviours, k factors (float64).

    The counterfactual vector of kept source (r, s) is ``loo_w + loo_coef * loo_z`` (zero for
    n = 1); ``loo_leaves`` / ``type_leaves`` are None when there is no leaves check (joined
    path)."""

    x: np.ndarray  # (U, k) recomputed user vectors
    scores: np.ndarray  # (U, R)
    top_src: np.ndarray  # (U, R, N) history positions by descending |contribution|, ties: lower first
    contrib: np.ndarray  # (U, R, N) s_ij c_j of the kept sources
    base: np.ndarray  # (U, R, N) s_ij (the part every interaction earns by existing)
    parts: np.ndarray  # (U, R, N, B) s_ij alpha conf_jb
    loo_delta: np.ndarray  # (U, R, N) score change without the source
    tot_contrib: np.ndarray  # (U, R) over the whole history (= scores)
    tot_base: np.ndarray  # (U, R)
    tot_parts: np.ndarray  # (U, R, B)
    conc: np.ndarray  # (U, R, 3) top-1 share, top-3 share, effective number of sources
    type_x: np.ndarray  # (U, B, k) user vectors with each behaviour type removed
    type_delta: np.ndarray  # (U, B, R)
    loo_w: np.ndarray  # (U, k)
    loo_coef: np.ndarray  # (U, R, N)
    loo_z: np.ndarray  # (U, R, N, k)
    loo_leaves: np.ndarray | None = None  # (U, R, N) bool: rec leaves the top-K without the source
    type_leaves: np.ndarray | None = None  # (U, B, R) bool: ... without the behaviour type

    def loo_vectors(self) -> np.ndarray:
        """(U, R, N, k) user vectors with each kept source removed (Sherman–Morrison, exact)."""
        return self.loo_w[:, None, None, :] + self.loo_coef[..., None] * self.loo_z


# --- batched kernel: many users at once --------------------------------------------------------


def explain_users_batch(users: UserStack, items: ItemFactors,
                        settings: ExplainSettings) -> BatchExplanation:
    """The influence numbers of a stack of users: contributions, behaviour parts, leave-one-out
    and type-removal deltas, concentration, and (when ``items`` has the factors) the exact
    leaves-top-K answers of every kept source's and every type's counterfactual vector.

    The per-user Python cost is gone, and the history is walked in ``settings.chunk`` columns, so
    a very heavy user needs O(chunk·(k + R)) memory, not O(n·R·B). Per user it equals the
    per-user reference (``tests/reference/influence.py``)."""
    index = items.index
    if users.hist_factors is not None:  # joined path: the rows carry their items' factors
        hf = np.asarray(users.hist_factors, dtype=np.float64)

        def gather(sl):
            return hf[:, sl]
        yr = users.rec_factors
    else:
        if index is None:
            raise ValueError("explain_users_batch: no item factors and no per-user factors")
        y, hist = index.y, users.hist

        def gather(sl):
            return y[hist[:, sl]]
        yr = y[users.recs]
    e = _attribute(items.yty, gather, users.ratings, users.parts, yr, alpha=settings.alpha,
                   reg=settings.reg, top_n=settings.top_n, chunk=settings.chunk)
    if index is None:
        return e
    return _with_leaves(e, users, index, settings)


def _attribute(
    yty: np.ndarray,
    gather,
    ratings: np.ndarray,
    parts: np.ndarray,
    rec_factors: np.ndarray,
    *,
    alpha: float,
    reg: float,
    top_n: int,
    chunk: int = 4096,
) -> BatchExplanation:
    """The arithmetic of :func:`explain_users_batch` (no leaves check).

    ``gather(sl) -> (U, m, k)`` float64 factors of history columns ``sl`` (a slice); ``ratings``
    (U, n) r_j > 0; ``parts`` (U, n, B); ``rec_factors`` (U, R, k)."""
    r = np.asarray(ratings, dtype=np.float64)
    parts = np.asarray(parts, dtype=np.float64)
    yr = np.asarray(rec_factors, dtype=np.float64)
    u_n, n = r.shape
    n_r, k = yr.shape[1:]
    n_b = parts.shape[2]
    ar = alpha * r
    c = 1.0 + ar
    # per behaviour type removed: r - part; an item left with nothing leaves the history
    r_t = r[:, None, :] - np.moveaxis(parts, 2, 1)  # (U, B, n)
    keep_t = r_t > 1e-12 * np.maximum(r, 1.0)[:, None, :]
    ar_t = np.where(keep_t, alpha * r_t, 0.0)
    c_t = np.where(keep_t, 1.0 + alpha * r_t, 0.0)
    n_t = keep_t.sum(axis=2)  # (U, B)
    eye = np.eye(k)
    a = np.broadcast_to(yty, (u_n, k, k)).copy()
    b = np.zeros((u_n, k))
    a_t = np.broadcast_to(yty, (u_n, n_b, k, k)).copy()
    b_t = np.zeros((u_n, n_b, k))
    steps = [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    for sl in steps:
        y = gather(sl)  # (U, m, k)
        yt = y.transpose(0, 2, 1)
        a += (yt * ar[:, None, sl]) @ y
        b += np.einsum("umk,um->uk", y, c[:, sl])
        a_t += (yt[:, None] * ar_t[:, :, None, sl]) @ y[:, None]
        b_t += np.einsum("umk,ubm->ubk", y, c_t[:, :, sl])
    a += (reg * n) * eye
    a_t += (reg * n_t)[:, :, None, None] * eye
    sol = np.linalg.solve(a, np.concatenate([b[:, :, None], yr.transpose(0, 2, 1)], axis=2))
    x, ai_yr = sol[:, :, 0], sol[:, :, 1:]  # A^-1 b, A^-1 y_i
    scores = np.einsum("urk,uk->ur", yr, x)
    type_x = np.zeros((u_n, n_b, k))
    has = n_t > 0  # a user with only that behaviour has no history left: x = 0
    if has.any():
        type_x[has] = np.linalg.solve(a_t[has], b_t[has][:, :, None])[:, :, 0]
    type_delta = np.einsum("urk,ubk->ubr", yr, type_x) - scores[:, None, :]
    loo = n >= 2  # n = 1: removing the only item leaves an empty history, x' = 0
    if loo:
        m_inv = np.linalg.inv(a - reg * eye)  # M = A - λI, positive definite for n >= 2
        w = np.einsum("ukl,ul->uk", m_inv, b)
        mi_yr = m_inv @ yr.transpose(0, 2, 1)  # (U, k, R)
        yr_w = np.einsum("urk,uk->ur", yr, w)
    else:
        w = np.zeros((u_n, k))
    n_keep = min(top_n, n)
    tot_c = np.zeros((u_n, n_r))
    tot_base = np.zeros((u_n, n_r))
    tot_parts = np.zeros((u_n, n_r, n_b))
    pos_sum = np.zeros((u_n, n_r))
    pos_sq = np.zeros((u_n, n_r))
    pos_top = np.zeros((u_n, n_r, 0))
    keep = None  # running top-N: dict of (U, R, N') arrays
    for sl in steps:
        y = gather(sl)
        yt = y.transpose(0, 2, 1)
        sim = ai_yr.transpose(0, 2, 1) @ yt  # (U, R, m): y_i^T A^-1 y_j
        contrib = sim * c[:, None, sl]
        tot_c += contrib.sum(axis=2)
        tot_base += sim.sum(axis=2)
        tot_parts += sim @ (alpha * parts[:, sl, :])
        pos = np.maximum(contrib, 0.0)
        pos_sum += pos.sum(axis=2)
        pos_sq += (pos * pos).sum(axis=2)
        pos_top = -np.sort(-np.concatenate([pos_top, pos], axis=2), axis=2)[:, :, :3]
        if loo:
            ym = y @ m_inv  # (U, m, k): (M^-1 y_j)^T
            d = (ym * y).sum(axis=2)
            yw = np.einsum("umk,uk->um", y, w)
            ar_c, c_c = ar[:, sl], c[:, sl]
            coef = ar_c * (yw - c_c * d) / (1.0 - ar_c * d) - c_c  # gamma_j - c_j
            t = mi_yr.transpose(0, 2, 1) @ yt  # (U, R, m): y_i^T M^-1 y_j
            loo_s = yr_w[:, :, None] + coef[:, None, :] * t
        else:
            coef = np.zeros((u_n, sl.stop - sl.start))
            loo_s = np.zeros_like(sim)
        cand = {"j": np.broadcast_to(np.arange(sl.start, sl.stop), sim.shape),
                "contrib": contrib, "base": sim, "loo": loo_s,
                "coef": np.broadcast_to(coef[:, None, :], sim.shape)}
        if keep is not None:  # earlier positions first, so a stable sort keeps ties in order
            cand = {key: np.concatenate([keep[key], v], axis=2) for key, v in cand.items()}
        order = np.argsort(-np.abs(cand["contrib"]), axis=2, kind="stable")[:, :, :n_keep]
        keep = {key: np.take_along_axis(v, order, axis=2) for key, v in cand.items()}
    top_src = keep["j"]
    uu = np.arange(u_n)[:, None, None]
    parts_top = keep["base"][..., None] * alpha * parts[uu, top_src]  # (U, R, N, B)
    loo_z = (gather_rows(gather, top_src, chunk) @ m_inv[:, None] if loo
             else np.zeros((u_n, n_r, n_keep, k)))
    with np.errstate(divide="ignore", invalid="ignore"):
        conc = np.stack([pos_top[:, :, 0] / pos_sum, pos_top[:, :, :3].sum(axis=2) / pos_sum,
                         pos_sum**2 / pos_sq], axis=2)
    conc[pos_sum <= 0] = np.nan
    return BatchExplanation(
        x=x, scores=scores, top_src=top_src, contrib=keep["contrib"], base=keep["base"],
        parts=parts_top, loo_delta=keep["loo"] - scores[:, :, None], tot_contrib=tot_c,
        tot_base=tot_base, tot_parts=tot_parts, conc=conc, type_x=type_x, type_delta=type_delta,
        loo_w=w, loo_coef=keep["coef"], loo_z=loo_z)


def _with_leaves(e: BatchExplanation, users: UserStack, index: ItemIndex,
                 settings: ExplainSettings) -> BatchExplanation:
    """``e`` with the leaves-top-K answers of its counterfactual vectors.

    A leave-one-out vector depends on the source only: one candidate per distinct kept source,
    answering for the recommendations it is a top source of; a type removal for all of them.
    With ``exclude_seen`` false the user's own train items are candidates too."""
    top = e.top_src  # (U, R, N)
    u_n, n_r, n_keep = top.shape
    kf = e.x.shape[1]
    n_b = e.type_x.shape[1]
    flat = top.reshape(u_n, n_r * n_keep)
    order = np.argsort(flat, axis=1, kind="stable")
    sf = np.take_along_axis(flat, order, axis=1)
    first = np.ones_like(sf, dtype=bool)
    first[:, 1:] = sf[:, 1:] != sf[:, :-1]
    slot_sorted = np.cumsum(first, axis=1) - 1
    n_slots = int(slot_sorted.max()) + 1
    slot = np.empty_like(slot_sorted)
    np.put_along_axis(slot, order, slot_sorted, axis=1)  # slot of each (rec, source) pair
    uu = np.arange(u_n)[:, None]
    rep = np.zeros((u_n, n_slots), dtype=np.int64)  # a flat (rec, source) pair per slot
    rep[np.broadcast_to(uu, sf.shape)[first], slot_sorted[first]] = order[first]
    coef = e.loo_coef.reshape(u_n, -1)[uu, rep]
    z = e.loo_z.reshape(u_n, n_r * n_keep, kf)[uu, rep]
    cand = e.loo_w[:, None, :] + coef[..., None] * z  # (U, slots, k)
    rec_of_pair = np.repeat(np.arange(n_r), n_keep)[None, :]
    need = np.zeros((u_n, n_slots + n_b, n_r), dtype=bool)
    need[uu, slot, rec_of_pair] = True
    need[:, n_slots:] = True
    both = np.concatenate([cand, e.type_x], axis=1)
    seen = (users.hist if settings.exclude_seen
            else np.zeros((u_n, 0), dtype=np.int64))
    lv, _ = leaves_top_k(e.x, both, users.recs, seen, index, k=settings.k, pool=settings.pool,
                         need=need, memory_doubles=settings.memory_doubles)
    return dataclasses.replace(e, loo_leaves=lv[uu, slot, rec_of_pair].reshape(u_n, n_r, n_keep),
                               type_leaves=lv[:, n_slots:])


def gather_rows(gather, pos: np.ndarray, chunk: int) -> np.ndarray:
    """Factors at history positions ``pos`` (U, ...) through a column-slice ``gather``: (U, ..., k).
    Gathers only the span the positions cover, ``chunk`` columns at a time."""
    flat = pos.reshape(pos.shape[0], -1)
    out = None
    lo, hi = int(flat.min()), int(flat.max()) + 1
    for s in range(lo, hi, chunk):
        sl = slice(s, min(s + chunk, hi))
        y = gather(sl)
        if out is None:
            out = np.zeros((*flat.shape, y.shape[2]))
        inside = (flat >= sl.start) & (flat < sl.stop)
        if inside.any():
            uu, pp = np.nonzero(inside)
            out[uu, pp] = y[uu, flat[uu, pp] - sl.start]
    return out.reshape(*pos.shape, -1)


class ItemIndex:
    """Item factors (dense by id) with the norm order the leaves check scans in."""

    def __init__(self, item_factors: np.ndarray, unknown: np.ndarray | None = None):
        self.y = np.asarray(item_factors, dtype=np.float64)
        n_items = self.y.shape[0]
        self.unknown = (np.asarray(unknown, dtype=np.int64) if unknown is not None
                        else np.zeros(0, dtype=np.int64))
        norm = np.linalg.norm(self.y, axis=1)
        known = np.ones(n_items, dtype=bool)
        known[self.unknown] = False
        ids = np.flatnonzero(known)
        self.order = ids[np.argsort(-norm[ids], kind="stable")]  # known items, largest norm first
        self.sorted_norm = norm[self.order]
        self.sorted_y = np.ascontiguousarray(self.y[self.order])
        self.neg_y32 = -self.y.astype(np.float32)  # for the float32 pool scores
        self.position = np.full(n_items, n_items + 1, dtype=np.int64)  # unknown: never scanned
        self.position[self.order] = np.arange(len(self.order))
        self.norm_max = float(self.sorted_norm[0]) if len(ids) else 0.0


def leaves_top_k(
    x: np.ndarray,
    cand: np.ndarray,
    recs: np.ndarray,
    seen: np.ndarray,
    items: ItemIndex,
    *,
    k: int,
    pool: int = 50,
    need: np.ndarray | None = None,
    memory_doubles: int = 4_000_000,
) -> tuple[np.ndarray, int]:
    """Stacked :class:`TopKCheck`: for U users, does each recommendation leave the top-k under
    each counterfactual vector? Exact.

    Args:
        x: (U, f) original user vectors; cand: (U, C, f) counterfactual vectors.
        recs: (U, R) recommended item ids; seen: (U, n) train item ids (excluded from ranking,
        as are ``items.unknown``). need: (C, R) or (U, C, R) which answers are wanted (default
        all; the rest come back False).

    Returns ((U, C, R) bool, number of items scored in exact scans). The ``pool`` best
    non-recommended unseen items under ``x`` are rescored with the recommendations. Any other
    item j scored at most s_out (the next best) under ``x``, so at most s_out + ||y_j||·||x' − x||
    under x': only items with ||y_j|| above (s'_i − s_out) / ||x' − x|| can overtake rec i, and
    when the pool cannot decide, exactly those (a prefix of the items by norm) are scored, once
    per counterfactual vector for all of its undecided recs.
    """
    y = items.y
    u_n, n_c = cand.shape[:2]
    n_r = recs.shape[1]
    n_items = y.shape[0]
    need = (np.ones((u_n, n_c, n_r), dtype=bool) if need is None
            else np.broadcast_to(need, (u_n, n_c, n_r)))
    uu = np.arange(u_n)[:, None]
    # the pool is chosen on float32 scores (half the cost of the one product over the whole
    # catalogue); it may be any set of items, as long as s_out bounds every other item's exact
    # score: |float32 score - exact| <= (k + 3) 2^-24 ||y_j|| ||x|| (rounding of both inputs and
    # a k-term dot product), doubled for margin
    neg = np.asarray(x, dtype=np.float32) @ items.neg_y32.T  # (U, n_items): -score
    neg[uu, seen] = np.inf
    neg[uu, recs] = np.inf
    if len(items.unknown):
        neg[:, items.unknown] = np.inf
    p = min(pool, n_items)
    if n_items > p:
        part = np.argpartition(neg, p, axis=1)
        pool_idx = part[:, :p]
        err = 2.0 * (x.shape[1] + 3) * 2.0**-24 * items.norm_max * np.linalg.norm(x, axis=1)
        s_out = -neg[np.arange(u_n), part[:, p]].astype(np.float64) + err
    else:
        pool_idx = np.broadcast_to(np.arange(n_items), (u_n, n_items))
        s_out = np.full(u_n, -np.inf)
    pool_ok = np.isfinite(neg[uu, pool_idx])
    # recommendations first, then the pool, scored in one product so ties compare exactly
    idx = np.concatenate([recs, pool_idx], axis=1)
    valid = np.concatenate([np.ones((u_n, n_r), dtype=bool), pool_ok], axis=1)
    new = cand @ y[idx].transpose(0, 2, 1)
    rec_s = new[:, :, :n_r]
    qu, qc, qr = np.nonzero(need)
    q_s = rec_s[qu, qc, qr]
    above = np.zeros((u_n, n_c, n_r), dtype=np.int64)
    above[qu, qc, qr] = ((new[qu, qc] > q_s[:, None]) & valid[qu]).sum(axis=1)
    out = np.zeros((u_n, n_c, n_r), dtype=bool)
    out[qu, qc, qr] = above[qu, qc, qr] >= k
    dist = np.linalg.norm(cand - x[:, None, :], axis=2)  # (U, C)
    bound = s_out[qu] + items.norm_max * dist[qu, qc]
    und = ~out[qu, qc, qr] & (bound > q_s) & np.isfinite(s_out[qu])
    if not und.any():
        return out, 0
    # exact scans of the norm prefix that could overtake each undecided (user, vector, rec)
    pu, pc, pr = qu[und], qc[und], qr[und]
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = (rec_s[pu, pc, pr] - s_out[pu]) / dist[pu, pc]
    nu = np.where(np.isfinite(nu), nu - 1e-9 * (np.abs(nu) + 1.0), -np.inf)
    length = np.searchsorted(-items.sorted_norm, -nu, side="right")  # items with norm >= nu
    # one row of prefix scores per (user, vector), as long as its longest undecided rec needs:
    # the recs of one vector share it (an item past a rec's own prefix cannot overtake it, so
    # counting over the longer row changes nothing)
    pairs, p_of = np.unique(pu * n_c + pc, return_inverse=True)
    p_len = np.zeros(len(pairs), dtype=np.int64)
    np.maximum.at(p_len, p_of, length)
    # items of the user that the count must leave out (seen, recommended, pool)
    excl = np.concatenate([seen, idx], axis=1)
    excl_pos = np.where(np.concatenate([np.ones(seen.shape, dtype=bool), valid], axis=1),
                        items.position[excl], n_items + 1)  # unknown: past every prefix
    # slabs of pairs whose prefix lengths are within 2x (one matrix product each), cut to about
    # memory_doubles scores
    order = np.argsort(p_len, kind="stable")
    ls = p_len[order]
    bucket = np.floor(np.log2(ls + 64.0)).astype(np.int64)
    cuts = np.r_[0, np.flatnonzero(bucket[1:] != bucket[:-1]) + 1, len(order)]
    # the answers in the pairs' order, so a slab of pairs owns a contiguous run of them
    pair_rank = np.empty_like(order)
    pair_rank[order] = np.arange(len(order))
    ans_rank = pair_rank[p_of]
    ans_order = np.argsort(ans_rank, kind="stable")
    ans_rank = ans_rank[ans_order]
    scanned = 0
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        l_max = int(ls[hi - 1])
        if l_max == 0:
            continue
        step = max(1, memory_doubles // l_max)
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            first, last = np.searchsorted(ans_rank, [a, b])
            ans = ans_order[first:last]
            scanned += _scan_prefix(pairs[order[a:b]], n_c, ans_rank[first:last] - a, l_max,
                                    pu[ans], pr[ans], cand, recs, rec_s, above, out, excl_pos,
                                    items, k)
    return out, scanned


def _scan_prefix(pair_keys, n_c, row, l_max, su, sr, cand, recs, rec_s, above, out, excl_pos,
                 items, k) -> int:
    """Exact answers for undecided (user ``su``, vector, rec ``sr``), each of the (user, vector)
    pair ``pair_keys[row]``: each pair's norm prefix is scored once, its excluded items masked,
    and its ``k`` best kept; a rec with ``above`` better items in the pool leaves when the
    (k − above)-th best of the prefix beats it."""
    p_u, p_c = pair_keys // n_c, pair_keys % n_c
    scores = cand[p_u, p_c] @ items.sorted_y[:l_max].T  # (P, L)
    sc = p_c[row]
    # the rec's own score from the same product when it is in the prefix (exact ties)
    rpos = items.position[recs[su, sr]]
    thr = np.where(rpos < l_max, scores[row, np.minimum(rpos, l_max - 1)], rec_s[su, sc, sr])
    # leave out the user's seen, recommended and pool items found in the prefix
    ep = excl_pos[p_u]  # (P, E)
    er, ee = np.nonzero(ep < l_max)
    scores[er, ep[er, ee]] = -np.inf
    kk = min(k, l_max)
    best = -np.partition(-scores, kk - 1, axis=1)[:, :kk] if kk < l_max else scores
    best = -np.sort(-best, axis=1)  # (P, <= k) descending
    need = k - above[su, sc, sr]  # >= 1: the pool alone did not decide
    ok = need <= best.shape[1]
    out[su, sc, sr] = ok & (best[row, np.minimum(need, best.shape[1]) - 1] > thr)
    return len(pair_keys) * l_max
