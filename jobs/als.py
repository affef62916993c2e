"""Train a model on one protocol's train split and write top-K recommendations for every user.

    spark-submit jobs/als.py --lake ./lake --protocol stratified --rank 64 --max-iter 10
    reclake als --model popularity --protocol temporal --run-id pop-temporal

Models (``--model``):
  - ``als`` (default): Spark MLlib ALS with ``implicitPrefs=True``; the rating is gold's
    ``confidence``, so behaviour weights flow into the model (c = 1 + alpha * confidence).
    Writes ``models/als_user_factors`` and ``models/als_item_factors`` (run_id, idx, factors), the
    Spark ``ALSModel`` under ``models/als_model/<run_id>`` and a ``models/runs`` record.
  - ``popularity``: items ranked by the number of train users who have them; the baseline every
    model is judged against.

Both write ``gold/recommendations`` (run_id, model, protocol, user_idx, rank, item_idx, score):
the top ``recommend.k`` items for every user with train history, items the user has in train
excluded exactly (``common.topk``: every item is scored, seen items are masked before selection,
block by block, so heavy users are as correct as light ones). Re-running a run_id replaces its rows.

Cold start, explicitly: users without train rows have no factors and get no recommendations
(``reclake evaluate`` counts them as ``users_truth_no_recs``); items without train rows have no
factors and are never recommended. Both counts are logged and stored in the run record.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError, to_dict
from common.lake import Lake, quote
from common.log import get_logger, timed
from common.topk import top_k_dot, top_k_global_order

log = get_logger("als")

TRAIN, TEST = "train", "test"
SEEN = "seen"
_TOPK_SCHEMA = T.StructType(
    [
        T.StructField(S.USER_IDX, T.IntegerType(), False),
        T.StructField(S.RANK, T.IntegerType(), False),
        T.StructField(S.ITEM_IDX, T.IntegerType(), False),
        T.StructField(S.SCORE, T.DoubleType(), False),
    ]
)
RUNS_SCHEMA = T.StructType(
    [
        T.StructField(S.RUN_ID, T.StringType(), False),
        T.StructField(S.MODEL, T.StringType(), False),
        T.StructField(S.PROTOCOL, T.StringType(), False),
        T.StructField(S.DATASET, T.StringType()),
        T.StructField("params", T.MapType(T.StringType(), T.StringType())),
        T.StructField("counts", T.MapType(T.StringType(), T.LongType())),
        T.StructField("seconds", T.MapType(T.StringType(), T.DoubleType())),
        T.StructField("model_path", T.StringType()),
        T.StructField(S.CREATED_AT, T.TimestampType(), False),
    ]
)


def add_common_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every model stage."""
    p.add_argument("--protocol", dest="split.protocol", default=None,
                   help="which gold/splits protocol to train on (stratified | temporal | "
                        "leave_last_out)")
    p.add_argument("--run-id", dest="run.run_id", default=None,
                   help="run to write (re-running replaces its rows); generated when absent")
    p.add_argument("--model", dest="run.model", default=None, help="als (default) | popularity")
    p.add_argument("--k", dest="recommend.k", type=int, default=None,
                   help="recommendations per user (default 10)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_model_arguments(p)
    p.add_argument("--rank", dest="als.rank", type=int, default=None)
    p.add_argument("--max-iter", dest="als.max_iter", type=int, default=None)
    p.add_argument("--reg-param", dest="als.reg_param", type=float, default=None)
    p.add_argument("--alpha", dest="als.alpha", type=float, default=None)
    p.add_argument("--nonnegative", dest="als.nonnegative", action="store_const", const=True,
                   default=None)
    p.add_argument("--seed", dest="als.seed", type=int, default=None)
    p.add_argument("--user-blocks", dest="als.num_user_blocks", type=int, default=None)
    p.add_argument("--item-blocks", dest="als.num_item_blocks", type=int, default=None)


def new_run_id(model: str) -> str:
    return f"{model}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


# --- pure transforms ---------------------------------------------------------------------------


def train_split(splits: DataFrame, *, protocol: str) -> DataFrame:
    """``gold/splits`` -> the protocol's train rows ``user_idx, item_idx, confidence`` with
    confidence > 0 (implicit ALS reads r > 0 as a positive; r <= 0 would be no signal)."""
    S.require_columns(splits, S.PROTOCOL, S.SPLIT, S.USER_IDX, S.ITEM_IDX, S.CONFIDENCE,
                      where="gold/splits")
    return splits.where(
        (F.col(S.PROTOCOL) == protocol) & (F.col(S.SPLIT) == TRAIN) & (F.col(S.CONFIDENCE) > 0)
    ).select(
        F.col(S.USER_IDX).cast("int").alias(S.USER_IDX),
        F.col(S.ITEM_IDX).cast("int").alias(S.ITEM_IDX),
        F.col(S.CONFIDENCE).cast("double").alias(S.CONFIDENCE),
    )


def make_als(*, cfg: Config):
    """The configured (unfitted) MLlib ALS estimator."""
    from pyspark.ml.recommendation import ALS

    a = cfg.als
    return ALS(
        rank=a.rank, maxIter=a.max_iter, regParam=a.reg_param, alpha=a.alpha,
        implicitPrefs=True, nonnegative=a.nonnegative, seed=a.seed,
        numUserBlocks=a.num_user_blocks, numItemBlocks=a.num_item_blocks,
        checkpointInterval=a.checkpoint_interval, coldStartStrategy="drop",
        userCol=S.USER_IDX, itemCol=S.ITEM_IDX, ratingCol=S.CONFIDENCE,
    )


def factor_rows(factors: DataFrame, *, run_id: str) -> DataFrame:
    """ALSModel ``userFactors`` / ``itemFactors`` (id, features) -> ``run_id, idx, factors``."""
    return factors.select(
        F.lit(run_id).alias(S.RUN_ID),
        F.col("id").cast("int").alias(S.IDX),
        F.col("features").cast("array<float>").alias(S.FACTORS),
    )


def seen_items(train: DataFrame) -> DataFrame:
    """``user_idx, seen`` (array of the user's train item_idx)."""
    return train.groupBy(S.USER_IDX).agg(F.collect_list(S.ITEM_IDX).alias(SEEN))


def _topk_rows(users: np.ndarray, counts: np.ndarray, items: np.ndarray,
               scores: np.ndarray) -> pd.DataFrame:
    k = items.shape[1]
    mask = np.arange(k)[None, :] < counts[:, None]
    return pd.DataFrame({
        S.USER_IDX: np.repeat(users, counts).astype(np.int32),
        S.RANK: np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), items.shape)[mask],
        S.ITEM_IDX: items[mask].astype(np.int32),
        S.SCORE: scores[mask].astype(np.float64),
    })


def recommend_dot(
    users: DataFrame,
    item_ids: np.ndarray,
    item_factors: np.ndarray,
    *,
    k: int,
    user_batch: int,
    item_block: int,
) -> DataFrame:
    """Exact seen-excluding top-k by dot product for every row of ``users``.

    In: ``users`` with ``user_idx, features`` (array<float>) and optionally ``seen``
    (array<int>); ``item_ids`` ascending with their factor rows (broadcast to the workers).
    Out: ``user_idx, rank, item_idx, score``.
    """
    S.require_columns(users, S.USER_IDX, "features", where="recommend_dot")
    spark = users.sparkSession
    order = np.argsort(item_ids, kind="stable")
    bc = spark.sparkContext.broadcast(
        (np.ascontiguousarray(item_ids[order], dtype=np.int64),
         np.ascontiguousarray(item_factors[order], dtype=np.float32))
    )
    has_seen = SEEN in users.columns

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ids, fac = bc.value
        for pdf in batches:
            for start in range(0, len(pdf), user_batch):
                part = pdf.iloc[start:start + user_batch]
                u = np.stack(part["features"].to_numpy()).astype(np.float32, copy=False)
                seen = None
                if has_seen:
                    seen = [s if s is not None else () for s in part[SEEN].to_numpy()]
                counts, items, scores = top_k_dot(u, fac, ids, seen, k, item_block=item_block)
                yield _topk_rows(part[S.USER_IDX].to_numpy(), counts, items, scores)

    cols = [S.USER_IDX, "features"] + ([SEEN] if has_seen else [])
    return users.select(*cols).mapInPandas(score, _TOPK_SCHEMA)


def recommend_dot_blocked(
    spark: SparkSession,
    users: DataFrame,
    item_factors: DataFrame,
    *,
    k: int,
    user_batch: int,
    item_block: int,
    n_blocks: int,
) -> DataFrame:
    """The same top-k when the item factors are too large to broadcast at once: one pass over the
    users per item block (each block's factors broadcast in turn), then an exact merge of the
    per-block candidates (score desc, item asc). In/out as :func:`recommend_dot`; ``item_factors``
    has ``id, features``."""
    from pyspark.sql.window import Window

    bounds = item_factors.agg(F.min("id"), F.max("id")).first()
    lo, hi = int(bounds[0]), int(bounds[1])
    width = (hi - lo) // n_blocks + 1
    parts = []
    for b in range(n_blocks):
        block = item_factors.where(
            (F.col("id") >= lo + b * width) & (F.col("id") < lo + (b + 1) * width)
        ).toPandas()
        if block.empty:
            continue
        ids = block["id"].to_numpy(np.int64)
        fac = np.stack(block["features"].to_numpy()).astype(np.float32)
        parts.append(recommend_dot(users, ids, fac, k=k, user_batch=user_batch,
                                   item_block=item_block).drop(S.RANK))
    cand = parts[0]
    for p in parts[1:]:
        cand = cand.unionByName(p)
    w = Window.partitionBy(S.USER_IDX).orderBy(F.desc(S.SCORE), F.asc(S.ITEM_IDX))
    ranked = cand.withColumn(S.RANK, F.row_number().over(w)).where(F.col(S.RANK) <= k)
    return ranked.select(S.USER_IDX, F.col(S.RANK).cast("int"), S.ITEM_IDX, S.SCORE)


def item_popularity(train: DataFrame) -> DataFrame:
    """``item_idx, n_users, score`` with score = the share of train users who have the item."""
    n_users = F.lit(train.select(S.USER_IDX).distinct().count())
    return train.groupBy(S.ITEM_IDX).agg(F.countDistinct(S.USER_IDX).alias("n_users")).select(
        S.ITEM_IDX, "n_users", (F.col("n_users") / n_users).cast("double").alias(S.SCORE)
    )


def recommend_popularity(seen: DataFrame, popularity: pd.DataFrame, *, k: int) -> DataFrame:
    """Per user (``user_idx, seen``) the k most popular items not seen (ties: item asc).
    ``popularity``: pandas ``item_idx, score``. Out: ``user_idx, rank, item_idx, score``."""
    ranked = popularity.sort_values([S.SCORE, S.ITEM_IDX], ascending=[False, True])
    bc = seen.sparkSession.sparkContext.broadcast(
        (ranked[S.ITEM_IDX].to_numpy(np.int64), ranked[S.SCORE].to_numpy(np.float64))
    )

    def rec(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        items, scores = bc.value
        for pdf in batches:
            picks = top_k_global_order(items, list(pdf[SEEN].to_numpy()), k)
            counts = np.fromiter((len(p) for p in picks), dtype=np.int64, count=len(picks))
            pos = np.concatenate(picks) if len(picks) else np.zeros(0, dtype=np.int64)
            yield pd.DataFrame({
                S.USER_IDX: np.repeat(pdf[S.USER_IDX].to_numpy(), counts).astype(np.int32),
                S.RANK: np.concatenate([np.arange(1, c + 1) for c in counts]).astype(np.int32)
                if len(counts) else np.zeros(0, dtype=np.int32),
                S.ITEM_IDX: items[pos].astype(np.int32),
                S.SCORE: scores[pos],
            })

    return seen.select(S.USER_IDX, SEEN).mapInPandas(rec, _TOPK_SCHEMA)


def recommendation_rows(recs: DataFrame, *, run_id: str, model: str, protocol: str) -> DataFrame:
    """``user_idx, rank, item_idx, score`` -> ``gold/recommendations`` columns."""
    return recs.select(
        F.lit(run_id).alias(S.RUN_ID), F.lit(model).alias(S.MODEL),
        F.lit(protocol).alias(S.PROTOCOL), S.USER_IDX, S.RANK, S.ITEM_IDX, S.SCORE,
    )


# --- job ------------------------------------------------------------------------------------------


def _cold_counts(spark: SparkSession, lake: Lake, splits: DataFrame, train: DataFrame, *,
                 protocol: str) -> dict[str, int]:
    """Held-out (valid / test) rows whose user or item has no train row. The split stage counts
    them (``audit/batches``, batch ``split-<protocol>``) and drops or keeps them; its record is
    used when present, otherwise they are counted here."""
    if lake.exists(spark, L.AUDIT_BATCHES):
        rec = lake.read(spark, L.AUDIT_BATCHES).where(
            (F.col(S.BATCH_ID) == f"split-{protocol}") & (F.col(S.STAGE) == "split")
        ).select("details").collect()
        if rec:
            d = rec[0]["details"] or {}
            return {
                "heldout_rows_cold_user": sum(v for k, v in d.items() if k.startswith("cold_user")),
                "heldout_rows_cold_item": sum(v for k, v in d.items() if k.startswith("cold_item")),
                "heldout_rows_cold_dropped": d.get("dropped_cold", 0),
            }
    held = splits.where((F.col(S.PROTOCOL) == protocol) & (F.col(S.SPLIT) != TRAIN))
    users = train.select(S.USER_IDX).distinct()
    items = train.select(S.ITEM_IDX).distinct()
    return {
        "heldout_rows_cold_user": held.join(users, S.USER_IDX, "left_anti").count(),
        "heldout_rows_cold_item": held.join(items, S.ITEM_IDX, "left_anti").count(),
        "heldout_rows_cold_dropped": 0,
    }


def write_recommendations(lake: Lake, recs: DataFrame, *, run_id: str) -> int:
    lake.replace_rows(recs, L.GOLD_RECOMMENDATIONS, f"{S.RUN_ID} = {quote(run_id)}")
    return lake.last_metrics(recs.sparkSession, L.GOLD_RECOMMENDATIONS).get("numOutputRows", 0)


def fit_and_write_als(
    spark: SparkSession, lake: Lake, train: DataFrame, *, cfg: Config, run_id: str
) -> tuple[object, dict]:
    """Fit ALS, then write both factor tables and (``als.save_model``) the Spark model. The three
    writes are independent Spark jobs, run concurrently (each is small and mostly commit latency)."""
    from concurrent.futures import ThreadPoolExecutor

    if not spark.sparkContext.getCheckpointDir():
        spark.sparkContext.setCheckpointDir(f"{lake.root}/_checkpoints")
    secs: dict[str, float] = {}
    t = time.perf_counter()
    model = make_als(cfg=cfg).fit(train)
    secs["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    where = f"{S.RUN_ID} = {quote(run_id)}"
    writes = [
        lambda: lake.replace_rows(factor_rows(model.userFactors, run_id=run_id),
                                  L.MODELS_ALS_USER_FACTORS, where),
        lambda: lake.replace_rows(factor_rows(model.itemFactors, run_id=run_id),
                                  L.MODELS_ALS_ITEM_FACTORS, where),
    ]
    if cfg.als.save_model:
        writes.append(lambda: model.write().overwrite().save(
            f"{lake.path(L.MODELS_ALS_MODEL)}/{run_id}"))
    with ThreadPoolExecutor(len(writes)) as pool:
        for f in [pool.submit(w) for w in writes]:
            f.result()
    secs["write_factors_and_model"] = time.perf_counter() - t
    return model, secs


def recommend_als(spark: SparkSession, model, seen: DataFrame | None, *, cfg: Config) -> DataFrame:
    """Top-k for every user with factors (seen excluded when ``seen`` is given)."""
    rc = cfg.recommend
    users = model.userFactors.select(F.col("id").alias(S.USER_IDX), "features")
    if seen is not None:
        users = users.join(seen, S.USER_IDX, "left")
    item_bytes = model.rank * 4 * model.itemFactors.count()
    if item_bytes <= rc.broadcast_max_mb * 2**20:
        items = model.itemFactors.toPandas()
        ids = items["id"].to_numpy(np.int64)
        fac = (np.stack(items["features"].to_numpy()).astype(np.float32) if len(items)
               else np.zeros((0, model.rank), np.float32))
        return recommend_dot(users, ids, fac, k=rc.k, user_batch=rc.user_batch,
                             item_block=rc.item_block)
    n_blocks = int(np.ceil(item_bytes / (rc.broadcast_max_mb * 2**20)))
    log.info("item factors %.0f MiB > recommend.broadcast_max_mb: %d item blocks",
             item_bytes / 2**20, n_blocks)
    return recommend_dot_blocked(spark, users, model.itemFactors, k=rc.k,
                                 user_batch=rc.user_batch, item_block=rc.item_block,
                                 n_blocks=n_blocks)


def main(spark: SparkSession, cfg: Config) -> dict:
    lake = Lake(cfg.lake)
    protocol = cfg.split.protocol
    model_name = cfg.run.model
    run_id = cfg.run.run_id or new_run_id(model_name)
    print(f"run_id: {run_id}  (model={model_name}, protocol={protocol})")
    splits = lake.read(spark, L.GOLD_SPLITS)
    train = train_split(splits, protocol=protocol).cache()
    if train.limit(1).count() == 0:
        have = [r[0] for r in splits.select(S.PROTOCOL).distinct().collect()]
        raise ConfigError(
            f"gold/splits has no train rows for protocol '{protocol}' (protocols present: "
            f"{sorted(have)}); run `reclake split --protocol {protocol}` first"
        )
    counts = _cold_counts(spark, lake, splits, train, protocol=protocol)
    if counts["heldout_rows_cold_user"] or counts["heldout_rows_cold_item"]:
        log.info("cold start: %s (dropped by the split stage: %d rows); users without train "
                 "rows get no recommendations, items without train rows are never recommended",
                 counts, counts["heldout_rows_cold_dropped"])
    seen = seen_items(train) if cfg.recommend.exclude_seen else None
    secs: dict[str, float] = {}
    model_path = None
    params: dict[str, str] = {f"recommend.{k}": str(v) for k, v in to_dict(cfg.recommend).items()}
    if model_name == "als":
        params.update({f"als.{k}": str(v) for k, v in to_dict(cfg.als).items()})
        with timed(log, f"ALS fit rank={cfg.als.rank} iters={cfg.als.max_iter}"):
            model, fit_secs = fit_and_write_als(spark, lake, train, cfg=cfg, run_id=run_id)
        secs.update(fit_secs)
        if cfg.als.save_model:
            model_path = f"{lake.path(L.MODELS_ALS_MODEL)}/{run_id}"
        recs = recommend_als(spark, model, seen, cfg=cfg)
    else:
        pop = item_popularity(train).toPandas()
        users = seen if seen is not None else train.select(S.USER_IDX).distinct().withColumn(
            SEEN, F.array().cast("array<int>"))
        recs = recommend_popularity(users, pop, k=cfg.recommend.k)
    with timed(log, f"top-{cfg.recommend.k} for every user -> gold/recommendations") as info:
        t = time.perf_counter()
        rows = recommendation_rows(recs, run_id=run_id, model=model_name, protocol=protocol)
        info["rows"] = counts["recommendation_rows"] = write_recommendations(lake, rows,
                                                                             run_id=run_id)
        secs["recommend"] = time.perf_counter() - t
    counts["train_rows"] = train.count()  # cached by now: no extra read
    train.unpersist()
    record = {
        S.RUN_ID: run_id, S.MODEL: model_name, S.PROTOCOL: protocol,
        S.DATASET: cfg.run.dataset or cfg.ingest.source_format, "params": params,
        "counts": counts, "seconds": secs, "model_path": model_path,
        S.CREATED_AT: datetime.now(timezone.utc).replace(tzinfo=None),
    }
    lake.replace_rows(spark.createDataFrame([record], RUNS_SCHEMA), L.MODELS_RUNS,
                      f"{S.RUN_ID} = {quote(run_id)}")
    print(f"run {run_id}: {counts['recommendation_rows']:,} recommendations in "
          f"{sum(secs.values()):.1f}s -> {lake.path(L.GOLD_RECOMMENDATIONS)}")
    return record


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("als"))
