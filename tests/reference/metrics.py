"""Ranking metrics in plain Python: the reference that ``common/metrics.py`` (Spark) must match.

The definitions are stated once, in ``common/metrics.py``; this module computes the same numbers
user by user with sets and loops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from common.metrics import CATALOGUE_METRICS, RANKING_METRICS, USER_COUNTS  # noqa: F401


def rank_by_score(scores: Mapping[int, Sequence[tuple[int, float]]]) -> dict[int, list[int]]:
    """Per user, (item, score) pairs -> items best first (score desc, item asc on ties)."""
    return {
        u: [i for i, _ in sorted(pairs, key=lambda p: (-p[1], p[0]))] for u, pairs in scores.items()
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _hit_ranks(items: Sequence[int], truth: set[int], k: int) -> list[int]:
    """Ranks (1-based, ascending) of the first-K items in ``truth``, each item counted once."""
    seen: set[int] = set()
    out = []
    for rank, item in enumerate(items[:k], start=1):
        if item not in seen and item in truth:
            out.append(rank)
        seen.add(item)
    return out


def ranking_metrics(
    recs: Mapping[int, Sequence[int]], truth: Mapping[int, set[int]], k: int
) -> dict[str, float]:
    """Averages of precision, recall, ndcg, map, hit_rate, mrr at ``k`` over evaluated users, and
    the user counts ``users_evaluated``, ``users_truth_no_recs``, ``users_recs_no_truth``.

    ``recs``: user -> items best first; ``truth``: user -> relevant items. Empty lists and sets
    count as absent."""
    has_recs = {u for u, items in recs.items() if items}
    has_truth = {u for u, items in truth.items() if items}
    per_metric: dict[str, list[float]] = {m: [] for m in RANKING_METRICS}
    for u in sorted(has_recs & has_truth):
        t = set(truth[u])
        hits = _hit_ranks(recs[u], t, k)
        ideal = min(len(t), k)
        idcg = sum(1 / math.log2(i + 1) for i in range(1, ideal + 1))
        per_metric["precision"].append(len(hits) / k)
        per_metric["recall"].append(len(hits) / len(t))
        per_metric["ndcg"].append(sum(1 / math.log2(r + 1) for r in hits) / idcg)
        # the j-th hit (1-based) at rank r contributes P@r = j / r
        per_metric["map"].append(sum(j / r for j, r in enumerate(hits, start=1)) / ideal)
        per_metric["hit_rate"].append(1.0 if hits else 0.0)
        per_metric["mrr"].append(1 / hits[0] if hits else 0.0)
    out = {m: _mean(v) for m, v in per_metric.items()}
    out["users_evaluated"] = float(len(has_recs & has_truth))
    out["users_truth_no_recs"] = float(len(has_truth - has_recs))
    out["users_recs_no_truth"] = float(len(has_recs - has_truth))
    return out


def catalogue_metrics(
    recs: Mapping[int, Sequence[int]], train: Mapping[int, set[int]], k: int
) -> dict[str, float]:
    """``coverage``, ``mean_popularity`` and ``novelty`` of the top-``k`` lists against the train
    split (``train``: user -> items the user has in train)."""
    users = [u for u, items in train.items() if items]
    counts: dict[int, int] = {}
    for u in users:
        for i in set(train[u]):
            counts[i] = counts.get(i, 0) + 1
    pop = {i: c / len(users) for i, c in counts.items()}
    rows = [i for items in recs.values() for i in items[:k]]
    covered = {i for i in rows if i in pop}
    return {
        "coverage": len(covered) / len(pop) if pop else math.nan,
        "mean_popularity": _mean([pop.get(i, 0.0) for i in rows]),
        "novelty": _mean([-math.log2(pop[i]) for i in rows if i in pop]),
    }


def pairwise_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """AUC by counting: over every (positive, negative) pair, 1 when the positive scores higher,
    1/2 on a tie."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def log_loss(labels: Sequence[int], probs: Sequence[float], eps: float = 1e-7) -> float:
    out = []
    for y, p in zip(labels, probs, strict=True):
        p = min(max(p, eps), 1 - eps)
        out.append(-(math.log(p) if y else math.log(1 - p)))
    return sum(out) / len(out)


def rmse_mae(ratings: Sequence[float], predicted: Sequence[float]) -> tuple[float, float]:
    """Root mean squared and mean absolute error, one pair at a time."""
    errs = [p - y for y, p in zip(ratings, predicted, strict=True)]
    return math.sqrt(sum(e * e for e in errs) / len(errs)), sum(abs(e) for e in errs) / len(errs)
