"""Ranking and catalogue metrics over Spark: the one definition evaluate, ablation and tuning use.

Binary relevance. User u has a ranked list L_u (ranks 1..n, best first; n may be below K, and
only ranks <= K count) and a truth set T_u (the test items). rel_i = 1 when the item at rank i is
in T_u. An item repeated in a list counts once, at its best rank.

- Precision@K = (sum_{i<=K} rel_i) / K            (denominator K, even for lists shorter than K)
- Recall@K    = (sum_{i<=K} rel_i) / |T_u|
- NDCG@K      = (sum_{i<=K} rel_i / log2(i+1)) / IDCG, IDCG = sum_{i=1}^{min(|T_u|,K)} 1/log2(i+1)
- MAP@K       = mean of AP@K, AP@K = (1 / min(|T_u|,K)) * sum_{i<=K} rel_i * P@i,
                P@i = (hits in the first i) / i
- HitRate@K   = 1 if any of the first K items is in T_u, else 0
- MRR@K       = 1 / (rank of the first hit) when that rank is <= K, else 0

Averages run over *evaluated users*: users with at least one truth item and at least one
recommendation. Users left out are counted: ``users_truth_no_recs`` (truth items but no list, e.g.
no train history) and ``users_recs_no_truth`` (a list but no test items). With no evaluated user
the averages are NaN. Per-user values (:func:`user_metrics`, what bootstraps and ablation need)
are defined for every user with truth; a user without a list scores 0.

Catalogue metrics, over every top-K row of every user with a list:

- coverage@K        = |distinct items in anyone's top K, within the catalogue| / |catalogue|, the
                      catalogue being the distinct items of the train split
- mean_popularity@K = mean over top-K rows of pop(item), pop(i) = (distinct train users who have
                      i) / (distinct train users) (:func:`item_popularity`, also the popularity
                      model's score); an item absent from train has pop 0
- novelty@K         = mean over top-K rows of -log2(pop(item)); rows whose item has pop 0 (absent
                      from train) are skipped, as -log2(0) is infinite

When a list comes as scores rather than ranks, ranks follow score descending, ties broken by
item index ascending.

How these relate to ``pyspark.ml.evaluation.RankingEvaluator`` (tests cross-check the three that
coincide): precisionAtK, recallAtK and ndcgAtK are defined as here (precision divides by K, recall
by |T_u|, binary-relevance NDCG with IDCG over min(|T_u|, K)), but RankingEvaluator averages over
every row it is given, so a user with truth and an empty list counts 0 there and is left out
here; its meanAveragePrecisionAtK divides AP by K, not min(|T_u|, K).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from common import schema as S

RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
USER_COUNTS: tuple[str, ...] = ("users_evaluated", "users_truth_no_recs", "users_recs_no_truth")
CATALOGUE_METRICS: tuple[str, ...] = ("coverage", "mean_popularity", "novelty")

N_TRUTH, FIRST_RANK, HIT_RANKS, POPULARITY = "n_truth", "first_rank", "hit_ranks", "popularity"


def item_popularity(train: DataFrame) -> DataFrame:
    """In: train ``user_idx, item_idx``. Out: ``item_idx, popularity`` (distinct train users with
    the item / distinct train users), one row per catalogue item."""
    S.require_columns(train, S.USER_IDX, S.ITEM_IDX, where="train")
    n_users = train.agg(F.countDistinct(S.USER_IDX)).first()[0]
    return train.groupBy(S.ITEM_IDX).agg(
        (F.countDistinct(S.USER_IDX) / F.lit(max(n_users, 1))).cast("double").alias(POPULARITY)
    )


def user_hits(recs: DataFrame, truth: DataFrame, *, max_rank: int) -> DataFrame:
    """One row per user found in either input.

    In: recs ``user_idx, item_idx, rank``; truth ``user_idx, item_idx``.
    Out: ``user_idx``; ``n_truth`` (distinct truth items); ``first_rank`` (best rank <= max_rank,
    null without one); ``hit_ranks`` (ascending ranks <= max_rank whose item is in the truth).

    Rec and truth rows meet in one group by (user, item) rather than a join, so duplicates
    collapse (an item repeated in a list counts once, at its best rank) and users present on one
    side only keep a row."""
    S.require_columns(recs, S.USER_IDX, S.ITEM_IDX, S.RANK, where="recommendations")
    S.require_columns(truth, S.USER_IDX, S.ITEM_IDX, where="truth")
    in_truth = "_in_truth"
    rank = F.col(S.RANK).cast("int").alias(S.RANK)
    r = recs.where(F.col(S.RANK) <= max_rank).select(
        S.USER_IDX, S.ITEM_IDX, rank, F.lit(False).alias(in_truth)
    )
    t = truth.select(
        S.USER_IDX, S.ITEM_IDX, F.lit(None).cast("int").alias(S.RANK), F.lit(True).alias(in_truth)
    )
    # partitioned by user once, both groupings below run without another shuffle
    pairs = r.unionByName(t).repartition(S.USER_IDX).groupBy(S.USER_IDX, S.ITEM_IDX).agg(
        F.min(S.RANK).alias(S.RANK), F.max(in_truth).alias(in_truth)
    )
    return pairs.groupBy(S.USER_IDX).agg(
        F.count(F.when(F.col(in_truth), 1)).alias(N_TRUTH),
        F.min(S.RANK).alias(FIRST_RANK),
        # collect_list skips the nulls of non-hits and of truth-only items
        F.sort_array(F.collect_list(F.when(F.col(in_truth), F.col(S.RANK)))).alias(HIT_RANKS),
    )


def _sum(arr: Column, term) -> Column:
    return F.aggregate(arr, F.lit(0.0), lambda acc, x: acc + term(x))


def per_user_columns(k: int) -> dict[str, Column]:
    """Metric name -> its per-user value at ``k`` as a Column over :func:`user_hits` rows (the
    definitions above; 0 for a user with truth and no list, undefined without truth)."""
    n_truth = F.col(N_TRUTH)
    hits = F.filter(HIT_RANKS, lambda r: r <= k)  # ascending, as the reference sums them
    n_hits = F.size(hits)
    ideal = F.least(n_truth, F.lit(k)).cast("int")
    idcg = _sum(F.sequence(F.lit(1), ideal), lambda i: 1 / F.log2(i + 1))
    return {
        "precision": n_hits / F.lit(k),
        "recall": n_hits / n_truth,
        "ndcg": _sum(hits, lambda r: 1 / F.log2(r + 1)) / idcg,
        # the j-th hit (1-based) at rank r contributes P@r = j / r
        "map": _sum(F.transform(hits, lambda r, j: (j + 1) / r), lambda x: x) / ideal,
        "hit_rate": (n_hits > 0).cast("double"),
        "mrr": F.coalesce(1 / F.array_min(hits), F.lit(0.0)),
    }


def ranking_aggregates(k: int) -> list[Column]:
    """Aggregates over :func:`user_hits` rows, named ``<metric>@<k>``: the means over evaluated
    users and the three user counts."""
    n_truth = F.col(N_TRUTH)
    has_recs = F.coalesce(F.col(FIRST_RANK) <= k, F.lit(False))
    evaluated = (n_truth > 0) & has_recs
    # the values sit inside when(evaluated, ...): they divide by n_truth, which is 0 elsewhere
    aggs = [F.avg(F.when(evaluated, v)).alias(f"{m}@{k}") for m, v in per_user_columns(k).items()]
    return aggs + [
        F.count(F.when(evaluated, 1)).alias(f"users_evaluated@{k}"),
        F.count(F.when((n_truth > 0) & ~has_recs, 1)).alias(f"users_truth_no_recs@{k}"),
        F.count(F.when((n_truth == 0) & has_recs, 1)).alias(f"users_recs_no_truth@{k}"),
    ]


def user_metrics(recs: DataFrame, truth: DataFrame, *, k: int,
                 metrics: Sequence[str] = ("ndcg",)) -> DataFrame:
    """``user_idx, <metric>...`` (double) for every user with truth items: the per-user values
    behind the means (0 for users without a hit or without recommendations)."""
    cols = per_user_columns(k)
    unknown = sorted(set(metrics) - set(cols))
    if unknown:
        raise ValueError(f"unknown per-user metrics {unknown}; known: {sorted(cols)}")
    return user_hits(recs, truth, max_rank=k).where(F.col(N_TRUTH) > 0).select(
        S.USER_IDX, *[cols[m].cast("double").alias(m) for m in metrics])
