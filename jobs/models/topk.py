"""Exact seen-excluding top-K over Spark: the scoring every Spark model's ``recommend`` uses.

Every item is scored, seen items are masked before selection, block by block
(``common.topk``), so heavy users are as correct as light ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import schema as S
from common.topk import top_k_dot, top_k_global_order

SEEN = "seen"
TOPK_SCHEMA = T.StructType(
    [
        T.StructField(S.USER_IDX, T.IntegerType(), False),
        T.StructField(S.RANK, T.IntegerType(), False),
        T.StructField(S.ITEM_IDX, T.IntegerType(), False),
        T.StructField(S.SCORE, T.DoubleType(), False),
    ]
)


def seen_items(train: DataFrame) -> DataFrame:
    """``user_idx, seen`` (array of the user's train item_idx)."""
    return train.groupBy(S.USER_IDX).agg(F.collect_list(S.ITEM_IDX).alias(SEEN))


def users_with_nothing_seen(train: DataFrame) -> DataFrame:
    """``user_idx, seen`` with an empty ``seen`` for every train user (nothing excluded)."""
    return train.select(S.USER_IDX).distinct().withColumn(SEEN, F.array().cast("array<int>"))


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
    return users.select(*cols).mapInPandas(score, TOPK_SCHEMA)


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


def recommend_global_order(users: DataFrame, ranked: pd.DataFrame, *, k: int) -> DataFrame:
    """Per user (``user_idx, seen``) the first k items of one global order that the user has not
    seen. ``ranked``: pandas ``item_idx, score``, best first. Out: ``user_idx, rank, item_idx,
    score``."""
    bc = users.sparkSession.sparkContext.broadcast(
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

    return users.select(S.USER_IDX, SEEN).mapInPandas(rec, TOPK_SCHEMA)
