"""Ranking and catalogue metrics in NumPy: the Ray path's evaluation, same definitions as Spark.

The definitions are stated once, in :mod:`common.metrics` (binary relevance; averages over
evaluated users: users with truth and at least one recommendation; the three user counts;
coverage, mean popularity and novelty against the train split). This module computes the same
numbers from arrays, for the Ray Train jobs (validation NDCG every epoch, the final evaluation of a
deep-model run) where no Spark session exists. Tests check it against the Python reference in
``tests/reference/metrics.py`` and against ``reclake evaluate`` on the same recommendations.

Inputs are CSR-like: ``users`` (n,), and per user a best-first list of items (``items`` (n, k)
with -1 padding, as :func:`common.topk.top_k_dot` returns) and a truth set (``truth_indptr``,
``truth_indices`` over user positions 0..n_users-1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common.metrics import CATALOGUE_METRICS, RANKING_METRICS, USER_COUNTS

__all__ = ["CATALOGUE_METRICS", "RANKING_METRICS", "USER_COUNTS", "catalogue_metrics",
           "hit_matrix", "per_user_metrics", "ranking_metrics"]


def _dedupe_rows(items: np.ndarray) -> np.ndarray:
    """``items`` with a repeat of an item within a row replaced by -1 (counted once, at its best
    rank, as the Spark definition does)."""
    out = items.copy()
    for j in range(1, items.shape[1]):
        dup = (items[:, :j] == items[:, j:j + 1]).any(axis=1) & (items[:, j] >= 0)
        out[dup, j] = -1
    return out


def hit_matrix(users: np.ndarray, items: np.ndarray, truth_indptr: np.ndarray,
               truth_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hits (n, k) bool: the item at that rank is in the user's truth; n_truth (n,)).

    ``users`` index the truth CSR; ``items`` (n, k) best first, -1 = no item."""
    items = _dedupe_rows(np.asarray(items, dtype=np.int64))
    users = np.asarray(users, dtype=np.int64)
    n, k = items.shape
    starts, stops = truth_indptr[users], truth_indptr[users + 1]
    n_truth = (stops - starts).astype(np.int64)
    hits = np.zeros((n, k), dtype=bool)
    if n and k and n_truth.sum():
        # (user, item) keys of the truth rows of these users, sorted; each rec cell looked up
        base = int(max(items.max(initial=0), truth_indices.max(initial=0))) + 2
        rows = np.repeat(np.arange(n), n_truth)
        offs = np.arange(int(n_truth.sum())) - np.repeat(np.cumsum(n_truth) - n_truth, n_truth)
        keys = np.sort(rows * base + truth_indices[np.repeat(starts, n_truth) + offs])
        cell = np.arange(n)[:, None] * base + items
        pos = np.clip(np.searchsorted(keys, cell), 0, len(keys) - 1)
        hits = (keys[pos] == cell) & (items >= 0)
    return hits, n_truth


def per_user_metrics(hits: np.ndarray, n_truth: np.ndarray, has_recs: np.ndarray,
                     k: int) -> dict[str, np.ndarray]:
    """Metric name -> per-user value at ``k`` (users with truth; 0 without a hit or a list).

    ``hits`` (n, >=k) from :func:`hit_matrix`; ``has_recs`` (n,) whether the user has a list."""
    h = hits[:, :k].astype(np.float64)
    if h.shape[1] < k:
        h = np.pad(h, ((0, 0), (0, k - h.shape[1])))
    h = h * has_recs[:, None]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    disc = 1.0 / np.log2(ranks + 1)
    n_hits = h.sum(axis=1)
    ideal = np.minimum(n_truth, k)
    idcg = np.concatenate([[0.0], np.cumsum(disc)])[ideal]
    with np.errstate(divide="ignore", invalid="ignore"):
        cum_hits = np.cumsum(h, axis=1)
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, 0)
        return {
            "precision": n_hits / k,
            "recall": n_hits / n_truth,
            "ndcg": (h * disc).sum(axis=1) / idcg,
            "map": (h * cum_hits / ranks).sum(axis=1) / ideal,
            "hit_rate": (n_hits > 0).astype(np.float64),
            "mrr": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0),
        }


def ranking_metrics(users: np.ndarray, counts: np.ndarray, items: np.ndarray,
                    truth_indptr: np.ndarray, truth_indices: np.ndarray,
                    ks: Sequence[int]) -> dict[int, dict[str, float]]:
    """k -> {precision, recall, ndcg, map, hit_rate, mrr, users_evaluated, users_truth_no_recs,
    users_recs_no_truth}, as ``jobs.evaluate.ranking_metrics`` computes them in Spark.

    ``users`` (n,) the users that got lists (``counts`` (n,) valid entries each, ``items`` (n, K)
    best first); every user with truth in the CSR (``truth_indptr`` over all user indices) counts
    in ``users_truth_no_recs`` when absent from ``users`` or with an empty list."""
    users = np.asarray(users, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    n_all = len(truth_indptr) - 1
    truth_sizes = np.diff(truth_indptr)
    hits, n_truth = hit_matrix(users, items, truth_indptr, truth_indices)
    has_recs = counts > 0
    listed = np.zeros(n_all, dtype=bool)
    listed[users[has_recs]] = True
    out = {}
    for k in ks:
        evaluated = has_recs & (n_truth > 0)
        values = per_user_metrics(hits, n_truth, has_recs, k)
        row = {m: float(values[m][evaluated].mean()) if evaluated.any() else math.nan
               for m in RANKING_METRICS}
        row["users_evaluated"] = float(evaluated.sum())
        row["users_truth_no_recs"] = float(((truth_sizes > 0) & ~listed).sum())
        row["users_recs_no_truth"] = float((has_recs & (n_truth == 0)).sum())
        out[k] = row
    return out


def catalogue_metrics(items: np.ndarray, counts: np.ndarray, train_indptr: np.ndarray,
                      train_indices: np.ndarray, ks: Sequence[int]) -> dict[int, dict[str, float]]:
    """k -> {coverage, mean_popularity, novelty} of every user's top-k rows against the train
    split (CSR user -> train items; popularity = distinct train users with the item / distinct
    train users), as ``jobs.evaluate.catalogue_metrics`` computes them in Spark."""
    items = np.asarray(items, dtype=np.int64)
    train_users = int((np.diff(train_indptr) > 0).sum())
    # distinct users per item: the CSR rows are sets (deduplicated per user first)
    pairs = np.unique(np.stack([np.repeat(np.arange(len(train_indptr) - 1),
                                          np.diff(train_indptr)), train_indices]), axis=1)
    n_cat = int(max(items.max(initial=-1), pairs[1].max(initial=-1))) + 1
    users_per_item = np.bincount(pairs[1], minlength=n_cat).astype(np.float64)
    pop = users_per_item / max(train_users, 1)
    in_cat = users_per_item > 0
    out = {}
    for k in ks:
        valid = (np.arange(items.shape[1])[None, :] < np.minimum(counts, k)[:, None]) & (items >= 0)
        rows = items[valid]
        known = in_cat[rows]
        out[k] = {
            "coverage": (float(np.unique(rows[known]).size / in_cat.sum()) if in_cat.any()
                         else math.nan),
            "mean_popularity": float(pop[rows].mean()) if rows.size else math.nan,
            "novelty": float((-np.log2(pop[rows[known]])).mean()) if known.any() else math.nan,
        }
    return out


# --- behaviour prediction (a model's task head) ----------------------------------------------------

#: metrics of a probability prediction of a behaviour on held-out pairs (``metrics/evaluation``
#: rows with target ``task:<label>``, k 0)
PREDICTION_METRICS: tuple[str, ...] = ("auc", "log_loss", "auc_popularity", "pairs",
                                       "positive_rate")
LOG_LOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] (float32's resolution near 1)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U with average ranks). NaN without both
    classes."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average 1-based ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    p = np.clip(np.asarray(probs, dtype=np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def prediction_metrics(labels: np.ndarray, probs: np.ndarray,
                       popularity: np.ndarray) -> dict[str, float]:
    """:data:`PREDICTION_METRICS` of ``probs`` against 0/1 ``labels``; ``auc_popularity`` is the
    AUC of the items' train popularity on the same pairs (the baseline)."""
    return {"auc": auc(labels, probs), "log_loss": log_loss(labels, probs),
            "auc_popularity": auc(labels, popularity), "pairs": float(len(labels)),
            "positive_rate": float(np.mean(labels)) if len(labels) else math.nan}


# --- rating prediction (explicit models) -----------------------------------------------------------

#: metrics of a rating prediction on held-out pairs (target ``rating:<behaviour>``, k 0):
#: ``*_mean`` are those of predicting every pair with the train ratings' mean (the baseline)
RATING_METRICS: tuple[str, ...] = ("rmse", "mae", "rmse_mean", "mae_mean", "pairs")


def rating_metrics(ratings: np.ndarray, predicted: np.ndarray,
                   train_mean: float) -> dict[str, float]:
    """:data:`RATING_METRICS` of ``predicted`` against the true ``ratings`` (NaN without
    pairs)."""
    y = np.asarray(ratings, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if len(y) == 0:
        return {m: (0.0 if m == "pairs" else math.nan) for m in RATING_METRICS}
    return {"rmse": float(np.sqrt(np.mean((p - y) ** 2))), "mae": float(np.mean(np.abs(p - y))),
            "rmse_mean": float(np.sqrt(np.mean((train_mean - y) ** 2))),
            "mae_mean": float(np.mean(np.abs(train_mean - y))), "pairs": float(len(y))}
