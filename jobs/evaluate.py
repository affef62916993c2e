"""Evaluate one run's top-K lists against the test split, written to ``metrics/evaluation``.

    spark-submit jobs/evaluate.py --lake ./lake --run-id als-20240101T000000-ab12 --k 5,10

Reads the ``gold/recommendations`` rows of ``--run-id`` (the run's model and protocol come from
them), that protocol's ``gold/splits`` test rows as truth (with ``--target purchase`` only test
pairs with ``cnt_purchase > 0``) and its train rows as the catalogue. Writes one row per
(k, metric) — precision, recall, ndcg, map, hit_rate, mrr, users_evaluated, users_truth_no_recs,
users_recs_no_truth, coverage, mean_popularity, novelty — and prints a table. Re-running a run and
target replaces its rows.

The definitions are those of the reference, ``common/metrics.py``; a test asserts the two agree
to 1e-9 on random data with tied scores, short lists and users without truth or without lists.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common import lake as L
from common import metrics as M
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger, timed
from jobs.split import TEST, TRAIN

log = get_logger("evaluate")

N_TRUTH, FIRST_RANK, HIT_RANKS, POPULARITY = "n_truth", "first_rank", "hit_ranks", "popularity"
ALL_TARGETS = "all"

# MS Recommenders' published MovieLens-100K figures at k=10 (microsoft/recommenders,
# examples/06_benchmarks, benchmark table for ML-100K: per-user stratified 75/25 split, seed 42,
# seen items removed). Their MAP divides AP by |T_u| rather than min(|T_u|, K), so it reads lower
# than ours for users with more than K test items; nDCG, precision and recall are defined as here.
PUBLISHED_ML100K: tuple[dict, ...] = (
    {"model": "BPR", "ndcg": 0.442, "precision": 0.388, "recall": 0.213, "map": 0.133},
    {"model": "LightGCN", "ndcg": 0.420, "precision": 0.380, "recall": 0.144, "map": 0.089},
    {"model": "NCF", "ndcg": 0.396, "precision": 0.347, "recall": 0.181, "map": 0.108},
    {"model": "SAR", "ndcg": 0.383, "precision": 0.331, "recall": 0.176, "map": 0.111},
    {"model": "ALS (explicit)", "ndcg": 0.044, "precision": 0.049, "recall": 0.018, "map": 0.005},
)

# (metric, header) shown by format_table
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("ndcg", "ndcg"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("map", "map"),
    ("hit_rate", "hit_rate"),
    ("mrr", "mrr"),
    ("coverage", "coverage"),
    ("mean_popularity", "mean_pop"),
    ("users_evaluated", "users"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", dest="run.run_id", default=None,
                   help="run whose gold/recommendations to evaluate (required)")
    p.add_argument("--k", dest="evaluate.k", default=None, help="list lengths, e.g. 5,10")
    p.add_argument("--target", dest="evaluate.target", default=None,
                   help="all | a behaviour (e.g. purchase): only test pairs with that behaviour")
    p.add_argument("--compare-published", dest="evaluate.compare_published",
                   action="store_const", const=True, default=None,
                   help="print MS Recommenders' published MovieLens-100K figures beside")
    p.add_argument("--dataset", dest="run.dataset", default=None,
                   help="dataset label in metrics/evaluation (default ingest.source_format)")


# --- transforms --------------------------------------------------------------------------------


def rank_by_score(recs: DataFrame) -> DataFrame:
    """In: ``user_idx, item_idx, score``. Out: the same plus ``rank`` (int, 1-based per user;
    score descending, ties broken by item_idx ascending)."""
    S.require_columns(recs, S.USER_IDX, S.ITEM_IDX, S.SCORE, where="rank_by_score")
    order = Window.partitionBy(S.USER_IDX).orderBy(F.desc(S.SCORE), F.asc(S.ITEM_IDX))
    return recs.withColumn(S.RANK, F.row_number().over(order).cast("int"))


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


def _ranking_aggs(k: int) -> list[Column]:
    """Aggregates over ``user_hits`` rows, named ``<metric>@<k>``."""
    n_truth = F.col(N_TRUTH)
    has_recs = F.coalesce(F.col(FIRST_RANK) <= k, F.lit(False))
    evaluated = (n_truth > 0) & has_recs
    hits = F.filter(HIT_RANKS, lambda r: r <= k)  # ascending, as the reference sums them
    n_hits = F.size(hits)
    ideal = F.least(n_truth, F.lit(k)).cast("int")
    idcg = _sum(F.sequence(F.lit(1), ideal), lambda i: 1 / F.log2(i + 1))
    per_user = {
        "precision": n_hits / F.lit(k),
        "recall": n_hits / n_truth,
        "ndcg": _sum(hits, lambda r: 1 / F.log2(r + 1)) / idcg,
        # the j-th hit (1-based) at rank r contributes P@r = j / r
        "map": _sum(F.transform(hits, lambda r, j: (j + 1) / r), lambda x: x) / ideal,
        "hit_rate": (n_hits > 0).cast("double"),
        "mrr": F.coalesce(1 / F.array_min(hits), F.lit(0.0)),
    }
    # the values sit inside when(evaluated, ...): they divide by n_truth, which is 0 elsewhere
    aggs = [F.avg(F.when(evaluated, v)).alias(f"{m}@{k}") for m, v in per_user.items()]
    return aggs + [
        F.count(F.when(evaluated, 1)).alias(f"users_evaluated@{k}"),
        F.count(F.when((n_truth > 0) & ~has_recs, 1)).alias(f"users_truth_no_recs@{k}"),
        F.count(F.when((n_truth == 0) & has_recs, 1)).alias(f"users_recs_no_truth@{k}"),
    ]


def user_ndcg(recs: DataFrame, truth: DataFrame, *, k: int) -> DataFrame:
    """``user_idx, ndcg`` for every user with truth items (0 for users without a hit or without
    recommendations), the per-user values behind ``ndcg@k``: what bootstraps over users need."""
    hits = F.filter(HIT_RANKS, lambda r: r <= k)
    ideal = F.least(F.col(N_TRUTH), F.lit(k)).cast("int")
    idcg = _sum(F.sequence(F.lit(1), ideal), lambda i: 1 / F.log2(i + 1))
    ndcg = _sum(hits, lambda r: 1 / F.log2(r + 1)) / idcg
    return user_hits(recs, truth, max_rank=k).where(F.col(N_TRUTH) > 0).select(
        S.USER_IDX, ndcg.cast("double").alias("ndcg"))


def _num(value) -> float:
    return math.nan if value is None else float(value)


def ranking_metrics(
    recs: DataFrame, truth: DataFrame, *, ks: Sequence[int]
) -> dict[int, dict[str, float]]:
    """k -> {precision, recall, ndcg, map, hit_rate, mrr (means over evaluated users; NaN when
    there is none), users_evaluated, users_truth_no_recs, users_recs_no_truth}.

    In: recs ``user_idx, item_idx, rank``; truth ``user_idx, item_idx``. One per-user aggregation
    and one global aggregation for all ``ks`` together; only the result row reaches the driver."""
    per_user = user_hits(recs, truth, max_rank=max(ks))
    row = per_user.agg(*[a for k in ks for a in _ranking_aggs(k)]).first()
    names = M.RANKING_METRICS + M.USER_COUNTS
    return {k: {m: _num(row[f"{m}@{k}"]) for m in names} for k in ks}


def item_popularity(train: DataFrame) -> DataFrame:
    """In: train ``user_idx, item_idx``. Out: ``item_idx, popularity`` (distinct train users with
    the item / distinct train users), one row per catalogue item."""
    S.require_columns(train, S.USER_IDX, S.ITEM_IDX, where="train")
    n_users = train.agg(F.countDistinct(S.USER_IDX)).first()[0]
    return train.groupBy(S.ITEM_IDX).agg(
        (F.countDistinct(S.USER_IDX) / F.lit(max(n_users, 1))).alias(POPULARITY)
    )


def _ratio(num, den) -> float:
    return num / den if den else math.nan


def catalogue_metrics(
    recs: DataFrame, train: DataFrame, *, ks: Sequence[int]
) -> dict[int, dict[str, float]]:
    """k -> {coverage, mean_popularity, novelty} of all users' top-k rows (NaN without rows).

    In: recs ``user_idx, item_idx, rank``; train ``user_idx, item_idx``. The rows are first
    counted per item, so the join with the popularity and the global sums run over items."""
    S.require_columns(recs, S.ITEM_IDX, S.RANK, where="recommendations")
    rank = F.col(S.RANK)
    per_item = recs.where(rank <= max(ks)).groupBy(S.ITEM_IDX).agg(
        *[F.count(F.when(rank <= k, 1)).alias(f"rows@{k}") for k in ks]
    )
    items = per_item.join(item_popularity(train), S.ITEM_IDX, "full")
    p = F.col(POPULARITY)
    sums = [F.count(p).alias("n_items")]
    for k in ks:
        n = F.col(f"rows@{k}")  # null for catalogue items nobody got
        sums += [
            F.count(F.when((n > 0) & p.isNotNull(), 1)).alias(f"covered@{k}"),
            F.sum(n).alias(f"rows@{k}"),
            F.sum(n * F.coalesce(p, F.lit(0.0))).alias(f"pop@{k}"),
            # items absent from train have a null popularity: skipped, as -log2(0) is infinite
            F.sum(F.when(p.isNotNull(), n)).alias(f"known_rows@{k}"),
            F.sum(n * -F.log2(p)).alias(f"novelty@{k}"),
        ]
    row = items.agg(*sums).first()
    return {
        k: {
            "coverage": _ratio(row[f"covered@{k}"], row["n_items"]),
            "mean_popularity": _ratio(row[f"pop@{k}"], row[f"rows@{k}"]),
            "novelty": _ratio(row[f"novelty@{k}"], row[f"known_rows@{k}"]),
        }
        for k in ks
    }


# --- the run -------------------------------------------------------------------------------------


def _run_recommendations(
    spark: SparkSession, lake: Lake, run_id: str
) -> tuple[DataFrame, str, str]:
    """The run's ``gold/recommendations`` rows, its model and its protocol."""
    table = lake.read(spark, L.GOLD_RECOMMENDATIONS)
    recs = table.where(F.col(S.RUN_ID) == run_id)
    keys = recs.select(S.MODEL, S.PROTOCOL).distinct().collect()
    if not keys:
        runs = sorted(r[0] for r in table.select(S.RUN_ID).distinct().collect())
        shown = ", ".join(runs[:10]) + (f" (and {len(runs) - 10} more)" if len(runs) > 10 else "")
        raise ConfigError(
            f"no rows for run_id {run_id!r} in {L.GOLD_RECOMMENDATIONS}; "
            f"available run_ids: {shown or 'none'}"
        )
    if len(keys) > 1:
        raise ConfigError(
            f"run_id {run_id!r} has rows for several (model, protocol): "
            f"{sorted(tuple(k) for k in keys)}"
        )
    return recs, keys[0][S.MODEL], keys[0][S.PROTOCOL]


def evaluate_run(
    spark: SparkSession,
    lake: Lake,
    *,
    run_id: str,
    ks: Sequence[int],
    target: str,
    dataset: str | None,
) -> list[dict]:
    """``metrics/evaluation`` rows (``schema.EVALUATION_SCHEMA`` fields) of one run: one per
    (k, metric), value a float (counts too)."""
    ks = sorted(set(ks))
    recs, model, protocol = _run_recommendations(spark, lake, run_id)
    splits = lake.read(spark, L.GOLD_SPLITS).where(F.col(S.PROTOCOL) == protocol)
    truth = splits.where(F.col(S.SPLIT) == TEST)
    if target != ALL_TARGETS:
        cnt = S.count_col(target)
        if cnt not in splits.columns:
            raise ConfigError(
                f"evaluate.target={target!r}: {L.GOLD_SPLITS} has no column {cnt!r}; re-run "
                f"split with '{target}' in the behaviour vocabulary, or use target 'all'"
            )
        truth = truth.where(F.col(cnt) > 0)
    train = splits.where(F.col(S.SPLIT) == TRAIN)
    if S.RANK not in recs.columns:
        recs = rank_by_score(recs)
    top = recs.where(F.col(S.RANK) <= max(ks)).select(S.USER_IDX, S.ITEM_IDX, S.RANK).cache()
    try:
        ranking = ranking_metrics(top, truth, ks=ks)
        catalogue = catalogue_metrics(top, train, ks=ks)
    finally:
        top.unpersist()
    if ranking[ks[0]]["users_evaluated"] == 0:
        log.warning("run %s: no user has both test items (target %s) and recommendations; "
                    "the averages are NaN", run_id, target)
    created = datetime.now(timezone.utc).replace(tzinfo=None)
    return [
        {S.RUN_ID: run_id, S.MODEL: model, S.DATASET: dataset, S.PROTOCOL: protocol,
         S.TARGET: target, S.K: k, S.METRIC: metric, S.VALUE: value, S.CREATED_AT: created}
        for k in ks
        for metric, value in {**ranking[k], **catalogue[k]}.items()
    ]


def _fmt(metric: str, value, decimals: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if metric.startswith("users_"):
        return f"{int(value):,}"
    return f"{value:.{decimals}f}"


def format_table(rows: Sequence[dict], compare_published: bool = False) -> str:
    """Fixed-width table, one line per (run, target, k) of ``metrics/evaluation`` rows (several
    runs allowed), with MS Recommenders' published ML-100K figures appended on request."""
    groups: dict[tuple, dict[str, float]] = {}
    for r in rows:
        key = (r[S.RUN_ID], r[S.MODEL], r[S.DATASET] or "", r[S.PROTOCOL], r[S.TARGET], r[S.K])
        groups.setdefault(key, {})[r[S.METRIC]] = r[S.VALUE]
    head = ["source", "run_id", "model", "dataset", "protocol", "target", "k"]
    n_text = len(head) - 1  # k and the metrics are right-aligned
    head += [h for _, h in TABLE_METRICS]
    lines = [
        ["reclake", *map(str, key), *[_fmt(m, values.get(m)) for m, _ in TABLE_METRICS]]
        for key, values in groups.items()
    ]
    if compare_published:
        lines += [
            ["published", "ms-recommenders", p["model"], "movielens-100k", "stratified", "all",
             "10", *[_fmt(m, p.get(m), decimals=3) for m, _ in TABLE_METRICS]]
            for p in PUBLISHED_ML100K
        ]
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head))]

    def render(cells: list[str]) -> str:
        padded = (
            c.ljust(w) if i < n_text else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(head), rule, *map(render, lines)])


def write_evaluation(spark: SparkSession, lake: Lake, rows: Sequence[dict], *, run_id: str,
                     target: str) -> None:
    """Write one run's rows to ``metrics/evaluation``, replacing that run and target's rows."""
    df = spark.createDataFrame(
        [tuple(r[f.name] for f in S.EVALUATION_SCHEMA.fields) for r in rows],
        S.EVALUATION_SCHEMA,
    )
    where = f"{S.RUN_ID} = {quote(run_id)} AND {S.TARGET} = {quote(target)}"
    lake.replace_rows(df, L.METRICS_EVALUATION, where)


def main(spark: SparkSession, cfg: Config) -> list[dict]:
    run_id = cfg.run.run_id
    if run_id is None:
        raise ConfigError(
            "evaluate needs a run: pass --run-id (the run_id printed by the model stage, also "
            f"in {L.GOLD_RECOMMENDATIONS})"
        )
    lake = Lake(cfg.lake)
    ev = cfg.evaluate
    dataset = cfg.run.dataset or cfg.ingest.source_format
    with timed(log, f"{L.METRICS_EVALUATION} run_id={run_id} target={ev.target} k={list(ev.k)}"):
        rows = evaluate_run(spark, lake, run_id=run_id, ks=ev.k, target=ev.target, dataset=dataset)
        write_evaluation(spark, lake, rows, run_id=run_id, target=ev.target)
    print(format_table(rows, ev.compare_published))
    return rows


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("evaluate"))
