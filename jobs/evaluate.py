"""Evaluate one run's top-K lists against the test split, written to ``metrics/evaluation``.

    spark-submit jobs/evaluate.py --lake ./lake --run-id als-20240101T000000-ab12 --k 5,10

Reads the run's record (``models/runs``: its model, protocol and the table versions it read and
wrote), the run's ``gold/recommendations`` rows and that protocol's ``gold/splits`` test rows as
truth (with ``--target purchase`` only test pairs with ``cnt_purchase > 0``) and its train rows as
the catalogue, each at the version the run recorded: re-running ``split`` or another model later
leaves this evaluation unchanged. Writes one row per (k, metric) — precision, recall, ndcg, map,
hit_rate, mrr, users_evaluated, users_truth_no_recs, users_recs_no_truth, coverage,
mean_popularity, novelty — and prints a table. Re-running a run and target replaces its rows.
Runs of the ``cold_items`` protocol also get the ranking metrics of cold items and of warm items
apart, as targets ``<target>/cold`` and ``<target>/warm`` (:func:`segment_metrics`). A run with
a task head (``ncf.task_target``: ``gold/predictions``) also gets AUC and log-loss of its
predicted probabilities on the test pairs, beside the AUC of item popularity (target
``task:<label>``, k 0; :func:`prediction_metrics_spark`); an explicit-rating model (ALS with
``als.explicit_behavior``) gets RMSE and MAE of its predicted ratings on the test pairs, beside
those of predicting the train mean (target ``rating:<behaviour>``, k 0;
:func:`rating_metrics_spark`).

The definitions are stated once, in ``common/metrics.py``; a test asserts they agree with the
plain-Python reference (``tests/reference/metrics.py``) to 1e-9 on random data with tied scores,
short lists and users without truth or without lists, and with Spark ML's RankingEvaluator where
the definitions coincide.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common import lake as L
from common import metrics as M
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger, timed
from common.runs import check_run_exists, read_run
from common.splits import train_parts

log = get_logger("evaluate")

ALL_TARGETS = "all"
COLD_ITEMS = "cold_items"
# cold_items runs also get rows for target "<target>/cold" and "<target>/warm"
SEGMENT_SEP, COLD_SEGMENT, WARM_SEGMENT = "/", "cold", "warm"

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
                   help="dataset label in metrics/evaluation (default: the run's)")


# --- transforms --------------------------------------------------------------------------------


def rank_by_score(recs: DataFrame) -> DataFrame:
    """In: ``user_idx, item_idx, score``. Out: the same plus ``rank`` (int, 1-based per user;
    score descending, ties broken by item_idx ascending)."""
    S.require_columns(recs, S.USER_IDX, S.ITEM_IDX, S.SCORE, where="rank_by_score")
    order = Window.partitionBy(S.USER_IDX).orderBy(F.desc(S.SCORE), F.asc(S.ITEM_IDX))
    return recs.withColumn(S.RANK, F.row_number().over(order).cast("int"))


def _num(value) -> float:
    return math.nan if value is None else float(value)


def ranking_metrics(
    recs: DataFrame, truth: DataFrame, *, ks: Sequence[int]
) -> dict[int, dict[str, float]]:
    """k -> {precision, recall, ndcg, map, hit_rate, mrr (means over evaluated users; NaN when
    there is none), users_evaluated, users_truth_no_recs, users_recs_no_truth}.

    In: recs ``user_idx, item_idx, rank``; truth ``user_idx, item_idx``. One per-user aggregation
    and one global aggregation for all ``ks`` together; only the result row reaches the driver."""
    per_user = M.user_hits(recs, truth, max_rank=max(ks))
    row = per_user.agg(*[a for k in ks for a in M.ranking_aggregates(k)]).first()
    names = M.RANKING_METRICS + M.USER_COUNTS
    return {k: {m: _num(row[f"{m}@{k}"]) for m in names} for k in ks}


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
    items = per_item.join(M.item_popularity(train), S.ITEM_IDX, "full")
    p = F.col(M.POPULARITY)
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
    (k, metric), value a float (counts too). Every table is read at the version the run recorded
    (``models/runs``), so later writes to the lake change nothing here. ``dataset``: the label
    (default the run's)."""
    ks = sorted(set(ks))
    rec = read_run(spark, lake, run_id)
    model, protocol = rec.model, rec.protocol
    dataset = dataset or rec.dataset
    recs = rec.read(spark, lake, L.GOLD_RECOMMENDATIONS).where(F.col(S.RUN_ID) == run_id)
    splits = rec.read(spark, lake, L.GOLD_SPLITS).where(F.col(S.PROTOCOL) == protocol)
    truth = splits.where(F.col(S.SPLIT) == S.TEST)
    if target != ALL_TARGETS:
        cnt = S.count_col(target)
        if cnt not in splits.columns:
            raise ConfigError(
                f"evaluate.target={target!r}: {L.GOLD_SPLITS} has no column {cnt!r}; re-run "
                f"split with '{target}' in the behaviour vocabulary, or use target 'all'"
            )
        truth = truth.where(F.col(cnt) > 0)
    # what the run trained on (a refit after a sweep folded valid into train)
    train = splits.where(F.col(S.SPLIT).isin(*train_parts(bool(rec.params.get("split.fold_valid")))))
    if S.RANK not in recs.columns:
        recs = rank_by_score(recs)
    top = recs.where(F.col(S.RANK) <= max(ks)).select(S.USER_IDX, S.ITEM_IDX, S.RANK).cache()
    try:
        ranking = ranking_metrics(top, truth, ks=ks)
        catalogue = catalogue_metrics(top, train, ks=ks)
        segments = (segment_metrics(top, truth, train, ks=ks) if protocol == COLD_ITEMS
                    else {})
    finally:
        top.unpersist()
    if ranking[ks[0]]["users_evaluated"] == 0:
        log.warning("run %s: no user has both test items (target %s) and recommendations; "
                    "the averages are NaN", run_id, target)
    created = datetime.now(timezone.utc).replace(tzinfo=None)
    per_target = {target: {k: {**ranking[k], **catalogue[k]} for k in ks}}
    per_target.update({f"{target}{SEGMENT_SEP}{seg}": m for seg, m in segments.items()})
    if L.GOLD_PREDICTIONS in rec.outputs:  # task head: AUC, log-loss; ratings: RMSE, MAE
        from jobs.models.als import RATING_TARGET_PREFIX, rated_pairs

        preds = rec.read(spark, lake, L.GOLD_PREDICTIONS).where(F.col(S.RUN_ID) == run_id)
        for (task,) in preds.select(S.TARGET).distinct().collect():
            if task.startswith(RATING_TARGET_PREFIX):
                behavior = task[len(RATING_TARGET_PREFIX):]
                per_target[task] = {0: rating_metrics_spark(
                    preds.where(F.col(S.TARGET) == task),
                    rated_pairs(splits, protocol=protocol, parts=(S.TEST,), behavior=behavior),
                    rated_pairs(splits, protocol=protocol, behavior=behavior, parts=train_parts(
                        bool(rec.params.get("split.fold_valid")))))}
                continue
            labels = task_labels(truth if target == ALL_TARGETS else splits.where(
                F.col(S.SPLIT) == S.TEST), rec.params)
            per_target[task] = {0: prediction_metrics_spark(
                preds.where(F.col(S.TARGET) == task), labels, train)}
    return [
        {S.RUN_ID: run_id, S.MODEL: model, S.DATASET: dataset, S.PROTOCOL: protocol,
         S.TARGET: tgt, S.K: k, S.METRIC: metric, S.VALUE: value, S.CREATED_AT: created}
        for tgt, by_k in per_target.items()
        for k in by_k
        for metric, value in by_k[k].items()
    ]


def task_labels(test: DataFrame, params: dict) -> DataFrame:
    """``user_idx, item_idx, label`` of test rows for the task a run's params define
    (``ncf.task_target`` / ``ncf.task_min_value``: amt >= threshold, else count > 0)."""
    b, m = params.get("ncf.task_target"), params.get("ncf.task_min_value")
    if b is None:
        raise ConfigError("the run wrote gold/predictions but records no ncf.task_target")
    col = F.coalesce(F.col(S.amount_col(b) if m is not None else S.count_col(b)), F.lit(0.0))
    label = (col >= F.lit(float(m))) if m is not None else (col > 0)
    return test.select(S.USER_IDX, S.ITEM_IDX, label.cast("double").alias("label"))


def segment_metrics(recs: DataFrame, truth: DataFrame, train: DataFrame, *,
                    ks: Sequence[int]) -> dict[str, dict[int, dict[str, float]]]:
    """Ranking metrics of cold items and of warm items apart (``cold_items`` protocol).

    In: recs ``user_idx, item_idx, rank``; truth and train ``user_idx, item_idx``. Out: segment
    (``cold`` | ``warm``) -> k -> :func:`ranking_metrics`.

    A cold item has no row in ``train``. ``cold``: truth = the user's test pairs with cold items,
    list = the run's recommended cold items in their order (ranks renumbered 1..); ``warm`` the
    same with warm items. A cold-start list (``recommend.candidates: cold``) is its own cold
    list; a hybrid list is judged on the cold slots and on the warm slots separately."""
    warm_items = train.select(S.ITEM_IDX).distinct().withColumn("_warm", F.lit(True))
    out = {}
    def part(df: DataFrame, is_warm: bool) -> DataFrame:
        joined = df.join(F.broadcast(warm_items), S.ITEM_IDX, "left")
        return joined.where(F.col("_warm").isNotNull() == F.lit(is_warm)).drop("_warm")

    for seg, is_warm in ((COLD_SEGMENT, False), (WARM_SEGMENT, True)):

        seg_recs = rank_by_score(part(recs, is_warm).select(
            S.USER_IDX, S.ITEM_IDX, (-F.col(S.RANK).cast("double")).alias(S.SCORE)))
        top = seg_recs.where(F.col(S.RANK) <= max(ks)).select(S.USER_IDX, S.ITEM_IDX, S.RANK)
        out[seg] = ranking_metrics(top, part(truth, is_warm).select(S.USER_IDX, S.ITEM_IDX), ks=ks)
    return out


def prediction_metrics_spark(preds: DataFrame, labels: DataFrame, train: DataFrame
                             ) -> dict[str, float]:
    """``common.ranking.PREDICTION_METRICS`` of a run's ``gold/predictions`` rows.

    In: preds ``user_idx, item_idx, prediction``; labels ``user_idx, item_idx, label`` (0/1, the
    test pairs); train ``user_idx, item_idx`` (popularity = the item's train users). AUC by Spark
    ML's exact ROC (``numBins=0``: no down-sampling; ties as ROC interpolation, i.e. one half),
    log-loss with probabilities clipped to [1e-7, 1 - 1e-7]."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    from common import ranking

    pop = train.groupBy(S.ITEM_IDX).agg(F.countDistinct(S.USER_IDX).cast("double").alias("_pop"))
    df = preds.join(labels, [S.USER_IDX, S.ITEM_IDX]).join(pop, S.ITEM_IDX, "left").select(
        F.col(S.PREDICTION).cast("double").alias(S.PREDICTION),
        F.col("label").cast("double").alias("label"), F.coalesce("_pop", F.lit(0.0)).alias("_pop"))
    eps = ranking.LOG_LOSS_EPS
    p = F.least(F.greatest(F.col(S.PREDICTION), F.lit(eps)), F.lit(1 - eps))
    y = F.col("label")
    agg = df.agg(F.count(F.lit(1)).alias("n"), F.avg(y).alias("rate"),
                 F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("ll"),
                 F.countDistinct(y).alias("classes")).first()
    out = {"pairs": float(agg["n"]), "positive_rate": _num(agg["rate"]),
           "log_loss": _num(agg["ll"]), "auc": math.nan, "auc_popularity": math.nan}
    if agg["classes"] == 2:
        ev = BinaryClassificationEvaluator(labelCol="label", metricName="areaUnderROC",
                                           numBins=0)
        out["auc"] = ev.setRawPredictionCol(S.PREDICTION).evaluate(df)
        out["auc_popularity"] = ev.setRawPredictionCol("_pop").evaluate(df)
    return out


def rating_metrics_spark(preds: DataFrame, test: DataFrame, train: DataFrame
                         ) -> dict[str, float]:
    """``common.ranking.RATING_METRICS`` of a run's rating predictions. In: preds ``user_idx,
    item_idx, prediction``; test and train ``user_idx, item_idx, rating`` (the true ratings;
    train's mean is the baseline's constant prediction). Test pairs without a prediction (user or
    item without train ratings) are left out and counted by ``pairs``' shortfall."""
    mean = train.agg(F.avg("rating")).first()[0]
    df = preds.join(test, [S.USER_IDX, S.ITEM_IDX])
    err = F.col(S.PREDICTION) - F.col("rating")
    base = F.lit(float(mean) if mean is not None else math.nan) - F.col("rating")
    agg = df.agg(F.count(F.lit(1)).alias("n"), F.avg(err * err).alias("se"),
                 F.avg(F.abs(err)).alias("ae"), F.avg(base * base).alias("bse"),
                 F.avg(F.abs(base)).alias("bae")).first()
    if not agg["n"]:
        from common import ranking

        return ranking.rating_metrics([], [], math.nan)  # NaN metrics, 0 pairs
    return {"rmse": math.sqrt(agg["se"]), "mae": float(agg["ae"]),
            "rmse_mean": math.sqrt(agg["bse"]), "mae_mean": float(agg["bae"]),
            "pairs": float(agg["n"])}


def format_prediction_rows(rows: Sequence[dict]) -> str:
    """One line per (run, task target) of behaviour-prediction rows (k 0); '' when none."""
    groups: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r[S.K] == 0:
            groups.setdefault((r[S.RUN_ID], r[S.TARGET]), {})[r[S.METRIC]] = r[S.VALUE]
    return "\n".join(
        f"{run} {target}: RMSE {m.get('rmse', math.nan):.4f}, MAE {m.get('mae', math.nan):.4f} "
        f"(the train mean: RMSE {m.get('rmse_mean', math.nan):.4f}, MAE "
        f"{m.get('mae_mean', math.nan):.4f}) on {int(m.get('pairs', 0)):,} held-out pairs"
        if "rmse" in m else
        f"{run} {target}: AUC {m.get('auc', math.nan):.4f} (item popularity "
        f"{m.get('auc_popularity', math.nan):.4f}), log-loss {m.get('log_loss', math.nan):.4f} "
        f"on {int(m.get('pairs', 0)):,} held-out pairs (positive rate "
        f"{m.get('positive_rate', math.nan):.3f})"
        for (run, target), m in groups.items())


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
    targets = sorted({target, *(r[S.TARGET] for r in rows)})
    where = f"{S.RUN_ID} = {quote(run_id)} AND {S.TARGET} IN ({', '.join(map(quote, targets))})"
    lake.replace_rows(df, L.METRICS_EVALUATION, where)


def preflight(cfg: Config) -> None:
    """Checks that need no Spark: a run id is given and (local lakes) recorded."""
    if cfg.run.run_id is None:
        raise ConfigError(
            "evaluate needs a run: pass --run-id (the run_id printed by `reclake fit`, also "
            f"in {L.MODELS_RUNS})"
        )
    check_run_exists(Lake(cfg.lake), cfg.run.run_id)


def main(spark: SparkSession, cfg: Config) -> list[dict]:
    preflight(cfg)
    run_id = cfg.run.run_id
    lake = Lake(cfg.lake)
    ev = cfg.evaluate
    dataset = cfg.run.dataset
    with timed(log, f"{L.METRICS_EVALUATION} run_id={run_id} target={ev.target} k={list(ev.k)}"):
        rows = evaluate_run(spark, lake, run_id=run_id, ks=ev.k, target=ev.target, dataset=dataset)
        write_evaluation(spark, lake, rows, run_id=run_id, target=ev.target)
    print(format_table([r for r in rows if r[S.K] > 0], ev.compare_published))
    task = format_prediction_rows(rows)
    if task:
        print(task)
    return rows


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("evaluate"))
