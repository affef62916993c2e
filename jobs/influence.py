"""Explain an ALS run's recommendations by the users' past behaviours, written to ``influence/*``.

    spark-submit jobs/influence.py --lake ./lake --run-id als-20240101T000000-ab12
    reclake influence --run-id R [--top-n 5]

For every user and each of their recommendations in ``gold/recommendations`` (run R), the exact
contribution of every past train interaction to the score (``common/influence.py`` has the
maths, checked against Spark's ALS source), split into a base part and one part per behaviour
type, and the exact leave-one-out change of the score. Float64, inside ``mapInPandas`` over
users, users with the same history length stacked into batched solves; the item factors are broadcast (or, above
``influence.broadcast_max_mb``, joined to the rows that need them, without the leaves-top-K check).

Tables (run_id on every row; re-running a run replaces its rows):
  - ``influence/event_contributions``: per recommendation the ``top_n`` past items with the
    largest |contribution| and one residual row (source_item_idx = -1) holding the rest.
  - ``influence/behavior_type``: share of recommendation score owed to each behaviour type
    (and the base preference), globally and per user segment, and the fraction of
    recommendations that leave the user's top-K when that type is removed from the history.
  - ``influence/items``: per past item, how many recommendations it drives and how much.
  - ``influence/users``: how concentrated each user's recommendations are on few behaviours.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import influence as I
from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger, timed

log = get_logger("influence")

REC_ITEM, REC_RANK, SOURCE_ITEM, SOURCE_RANK = (
    "rec_item_idx", "rec_rank", "source_item_idx", "source_rank")
CONTRIBUTION, SHARE, PART_BASE, LOO_DELTA, LOO_LEAVES = (
    "contribution", "share", "part_base", "loo_delta", "loo_leaves_top_k")
RESIDUAL = -1
BASE = "base"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("influence.action", nargs="?", choices=("explain", "ablation"), default=None,
                   metavar="ACTION", help="explain (default): attribute a run's recommendations; ablation: "
                        "behaviour-type Shapley values by retraining")
    p.add_argument("--run-id", dest="run.run_id", default=None, help="the ALS run to explain")
    p.add_argument("--top-n", dest="influence.top_n", type=int, default=None,
                   help="past items kept per recommendation (default 5, plus a residual row)")
    p.add_argument("--protocol", dest="split.protocol", default=None,
                   help="ablation: the split to retrain on (temporal recommended)")


def rec_schema(behaviors: list[str]) -> T.StructType:
    """Kernel output: one row per (recommendation, kept source) plus a residual row."""
    return T.StructType([
        T.StructField(S.USER_IDX, T.IntegerType(), False),
        T.StructField(REC_ITEM, T.IntegerType(), False),
        T.StructField(REC_RANK, T.IntegerType(), False),
        T.StructField(S.SCORE, T.DoubleType(), False),
        T.StructField("n_history", T.IntegerType(), False),
        T.StructField(SOURCE_RANK, T.IntegerType(), False),
        T.StructField(SOURCE_ITEM, T.IntegerType(), False),
        T.StructField("n_sources", T.IntegerType(), False),
        T.StructField(CONTRIBUTION, T.DoubleType(), False),
        T.StructField(SHARE, T.DoubleType()),
        T.StructField(PART_BASE, T.DoubleType(), False),
        *[T.StructField(f"part_{b}", T.DoubleType(), False) for b in behaviors],
        T.StructField(LOO_DELTA, T.DoubleType()),
        T.StructField(LOO_LEAVES, T.BooleanType()),
        # per recommendation, repeated on its rows (the aggregates read source_rank == 1)
        *[T.StructField(f"type_delta_{b}", T.DoubleType(), False) for b in behaviors],
        *[T.StructField(f"type_leaves_{b}", T.BooleanType()) for b in behaviors],
        T.StructField("top1_share", T.DoubleType()),
        T.StructField("top3_share", T.DoubleType()),
        T.StructField("effective_sources", T.DoubleType()),
        T.StructField("x_rel_err", T.DoubleType()),
    ])


def user_inputs(history: DataFrame, recs: DataFrame, user_factors: DataFrame,
                behaviors: list[str], item_factors: DataFrame | None = None) -> DataFrame:
    """One row per user with recommendations: ``hist_items, hist_conf, hist_parts`` (arrays,
    parts as one flat array of n*B), ``rec_items, rec_ranks``, ``stored_x``; with
    ``item_factors`` (``idx, factors``: the joined path) also ``hist_factors`` and
    ``rec_factors`` (flat arrays of n*k and R*k)."""
    parts = F.array(*[F.col(S.conf_col(b)).cast("double") for b in behaviors])
    hist_fields = [F.col(S.ITEM_IDX).alias("i"), F.col(S.CONFIDENCE).alias("c"), parts.alias("p")]
    rec_fields = [F.col(S.RANK).alias("r"), F.col(S.ITEM_IDX).alias("i")]
    if item_factors is not None:
        f = item_factors.select(F.col(S.IDX).alias(S.ITEM_IDX), F.col(S.FACTORS).alias("_f"))
        history = history.join(f, S.ITEM_IDX)
        recs = recs.join(f, S.ITEM_IDX)
        hist_fields.append(F.col("_f").alias("f"))
        rec_fields.append(F.col("_f").alias("f"))
    h = history.groupBy(S.USER_IDX).agg(F.collect_list(F.struct(*hist_fields)).alias("_h"))
    hist_cols = [F.col("_h.i").alias("hist_items"), F.col("_h.c").alias("hist_conf"),
                 F.flatten(F.col("_h.p")).alias("hist_parts")]
    r = recs.groupBy(S.USER_IDX).agg(F.sort_array(F.collect_list(F.struct(*rec_fields)))
                                     .alias("_r"))
    rec_cols = [F.col("_r.i").alias("rec_items"), F.col("_r.r").alias("rec_ranks")]
    if item_factors is not None:
        hist_cols.append(F.flatten(F.col("_h.f")).alias("hist_factors"))
        rec_cols.append(F.flatten(F.col("_r.f")).alias("rec_factors"))
    h = h.select(S.USER_IDX, *hist_cols)
    r = r.select(S.USER_IDX, *rec_cols)
    uf = user_factors.select(F.col(S.IDX).alias(S.USER_IDX), F.col(S.FACTORS).alias("stored_x"))
    return r.join(h, S.USER_IDX, "inner").join(uf, S.USER_IDX, "left")


def explain_users(
    users: DataFrame,
    item_ids: np.ndarray | None,
    item_factors: np.ndarray | None,
    *,
    behaviors: list[str],
    alpha: float,
    reg: float,
    top_n: int,
    pool: int,
    k: int,
    yty: np.ndarray | None = None,
    chunk: int = 4096,
    timer=None,
) -> DataFrame:
    """Run the batched kernel over :func:`user_inputs` rows. Out: :func:`rec_schema`.

    With ``item_ids`` / ``item_factors`` the factors are broadcast and every recommendation gets
    the exact leaves-top-K checks. With ``None`` (the joined path, for catalogues above
    ``influence.broadcast_max_mb``) the rows carry their items' factors, ``yty`` must be given,
    and the leaves-top-K columns are null (they need every item's score). ``timer``: an optional
    Spark accumulator that sums the kernel's seconds over all workers."""
    if item_factors is not None:
        n_items = int(item_ids.max()) + 1 if len(item_ids) else 0
        dense = np.zeros((n_items, item_factors.shape[1]), dtype=np.float64)
        dense[item_ids] = item_factors
        known = np.zeros(n_items, dtype=bool)
        known[item_ids] = True
        yty = I.gram(dense)
    else:
        dense = known = None
    bc = users.sparkSession.sparkContext.broadcast((dense, known, yty))
    schema = rec_schema(behaviors)
    opts = dict(n_b=len(behaviors), alpha=alpha, reg=reg, top_n=top_n, pool=pool, k=k,
                behaviors=behaviors, chunk=chunk)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        y, known_items, yty = bc.value
        # the check scores only items the model has (unknown ids would look like zero vectors)
        index = I.ItemIndex(y, np.flatnonzero(~known_items)) if y is not None else None
        names = schema.fieldNames()
        for pdf in batches:
            if len(pdf):
                t0 = time.perf_counter()
                out = explain_batch(pdf, index, yty, **opts)
                frame = pd.DataFrame({c: out[c] for c in names})
                if timer is not None:
                    timer.add(time.perf_counter() - t0)
                yield frame

    # the kernel is CPU-bound Python: spread users over every core (AQE would coalesce the small
    # input into one partition otherwise)
    sc = users.sparkSession.sparkContext
    n_parts = max(2 * sc.defaultParallelism,
                  int(users.sparkSession.conf.get("spark.sql.shuffle.partitions")))
    return users.repartition(n_parts, S.USER_IDX).mapInPandas(run, schema)


def explain_batch(pdf: pd.DataFrame, index: I.ItemIndex | None, yty, *, n_b, alpha, reg, top_n,
                  pool, k, behaviors, chunk, memory_doubles: int = 4_000_000) -> dict:
    """Kernel columns (:func:`rec_schema`) for a pandas batch of :func:`user_inputs` rows.

    Users with the same history length and number of recommendations are stacked and explained
    together (:func:`common.influence.explain_group`), in sub-batches of about
    ``memory_doubles`` float64 per working array; a heavy user's history is walked in ``chunk``
    columns, so its memory stays bounded by its own inputs."""
    n_h = pdf["hist_items"].map(len).to_numpy()
    n_r = pdf["rec_items"].map(len).to_numpy()
    kf = yty.shape[0]
    n_items = 0 if index is None else index.y.shape[0]
    pieces = []
    for (n, r), idx in pd.Series(np.arange(len(pdf))).groupby([n_h, n_r]).groups.items():
        idx = np.asarray(idx)
        per_user = min(n, chunk) * (kf + 8 * r) + (n_b + 3) * kf * kf + n_items + 60 * r * r
        step = max(1, int(memory_doubles // per_user))
        for s in range(0, len(idx), step):
            pieces.append(_explain_stack(pdf.iloc[idx[s:s + step]], n, r, index, yty, n_b,
                                         alpha, reg, top_n, pool, k, behaviors, chunk))
    return {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}


def _explain_stack(sub, n, n_r, index, yty, n_b, alpha, reg, top_n, pool, k, behaviors, chunk):
    u_n = len(sub)
    y = None if index is None else index.y
    kf = yty.shape[0]
    hist = np.stack(sub["hist_items"].to_numpy()).astype(np.int64).reshape(u_n, n)
    ratings = np.stack(sub["hist_conf"].to_numpy()).astype(np.float64).reshape(u_n, n)
    parts = np.stack(sub["hist_parts"].to_numpy()).astype(np.float64).reshape(u_n, n, n_b)
    recs = np.stack(sub["rec_items"].to_numpy()).astype(np.int64).reshape(u_n, n_r)
    ranks = np.stack(sub["rec_ranks"].to_numpy()).astype(np.int32).reshape(u_n, n_r)
    if y is not None:
        def gather(sl):
            return y[hist[:, sl]]
        yr = y[recs]
    else:  # joined path: the rows carry their items' factors
        hf = np.stack(sub["hist_factors"].to_numpy()).astype(np.float64).reshape(u_n, n, kf)

        def gather(sl):
            return hf[:, sl]
        yr = np.stack(sub["rec_factors"].to_numpy()).astype(np.float64).reshape(u_n, n_r, kf)
    res = I.explain_group(yty, gather, ratings, parts, yr, alpha=alpha, reg=reg, top_n=top_n,
                          chunk=chunk)
    top = res["top_src"]  # (U, R, N)
    n_keep = top.shape[2]
    reps = n_keep + 1
    if y is not None:
        # a leave-one-out vector depends on the source only: one candidate per distinct source,
        # answering for the recommendations it is a top source of; a type removal for all
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
        coef = res["loo_coef"].reshape(u_n, -1)[uu, rep]
        z = res["loo_z"].reshape(u_n, n_r * n_keep, kf)[uu, rep]
        cand = res["loo_w"][:, None, :] + coef[..., None] * z  # (U, slots, k)
        rec_of_pair = np.repeat(np.arange(n_r), n_keep)[None, :]
        need = np.zeros((u_n, n_slots + n_b, n_r), dtype=bool)
        need[uu, slot, rec_of_pair] = True
        need[:, n_slots:] = True
        both = np.concatenate([cand, res["type_x"]], axis=1)
        lv, _ = I.leaves_top_k(res["x"], both, recs, hist, index, k=k, pool=pool, need=need)
        loo_leaves = lv[uu, slot, rec_of_pair].reshape(u_n, n_r, n_keep)
        type_leaves = lv[:, n_slots:]  # (U, B, R)
    else:
        loo_leaves = type_leaves = None
    scores = res["scores"]

    def rows(v, last):  # (U, R, N) + residual (scalar or (U, R)) -> flat (user, rec, source)
        v = np.asarray(v)
        tail = np.broadcast_to(np.asarray(last, dtype=v.dtype), v.shape[:2])[:, :, None]
        return np.concatenate([v, tail], axis=2).ravel()

    def per_rec(v):
        return np.repeat(np.asarray(v).ravel(), reps)

    user_ids = sub[S.USER_IDX].to_numpy().astype(np.int32)
    cols: dict[str, np.ndarray] = {}
    cols[S.USER_IDX] = np.repeat(user_ids, n_r * reps)
    cols[REC_ITEM] = per_rec(recs).astype(np.int32)
    cols[REC_RANK] = per_rec(ranks).astype(np.int32)
    cols[S.SCORE] = per_rec(scores)
    cols["n_history"] = np.full(u_n * n_r * reps, n, dtype=np.int32)
    cols[SOURCE_RANK] = np.tile(np.arange(1, reps + 1), u_n * n_r).astype(np.int32)
    src = np.take_along_axis(hist[:, None, :].repeat(n_r, axis=1), top, axis=2)
    cols[SOURCE_ITEM] = rows(src, RESIDUAL).astype(np.int32)
    cols["n_sources"] = np.tile(np.r_[np.ones(n_keep), n - n_keep], u_n * n_r).astype(np.int32)
    contrib = res["contrib"]
    c_all = rows(contrib, res["tot_contrib"] - contrib.sum(axis=2))
    cols[CONTRIBUTION] = c_all
    sc = cols[S.SCORE]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols[SHARE] = np.where(sc != 0, c_all / sc, np.nan)
    base = res["base"]
    cols[PART_BASE] = rows(base, res["tot_base"] - base.sum(axis=2))
    part = res["parts"]  # (U, R, N, B)
    rest_part = res["tot_parts"] - part.sum(axis=2)  # (U, R, B)
    for b_i, b in enumerate(behaviors):
        cols[f"part_{b}"] = rows(part[:, :, :, b_i], rest_part[:, :, b_i])
    cols[LOO_DELTA] = rows(res["loo_delta"], np.nan)
    if loo_leaves is not None:
        lv_rows = np.concatenate([loo_leaves, np.zeros((u_n, n_r, 1), dtype=bool)],
                                 axis=2).astype(object)
        lv_rows[:, :, -1] = None  # the residual row has no single source to remove
        cols[LOO_LEAVES] = lv_rows.ravel()
    else:
        cols[LOO_LEAVES] = np.full(u_n * n_r * reps, None, dtype=object)
    for b_i, b in enumerate(behaviors):
        cols[f"type_delta_{b}"] = per_rec(res["type_delta"][:, b_i])
        cols[f"type_leaves_{b}"] = (per_rec(type_leaves[:, b_i]) if type_leaves is not None
                                    else np.full(u_n * n_r * reps, None, dtype=object))
    conc = res["conc"]
    cols["top1_share"] = per_rec(conc[:, :, 0])
    cols["top3_share"] = per_rec(conc[:, :, 1])
    cols["effective_sources"] = per_rec(conc[:, :, 2])
    stored = sub["stored_x"].to_numpy()
    has = np.array([v is not None for v in stored], dtype=bool)  # left join: may be missing
    err = np.full(u_n, np.nan)
    if has.any():
        st = np.stack(stored[has]).astype(np.float64)
        err[has] = (np.linalg.norm(res["x"][has] - st, axis=1)
                    / np.maximum(np.linalg.norm(st, axis=1), 1e-30))
    cols["x_rel_err"] = np.repeat(err, n_r * reps)
    return cols


def distributed_gram(item_factors: DataFrame, rank: int) -> np.ndarray:
    """YᵀY (float64) summed from per-partition partial products: no item matrix on the driver."""
    def partial(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        g = np.zeros((rank, rank))
        for pdf in batches:
            if len(pdf):
                y = np.stack(pdf[S.FACTORS].to_numpy()).astype(np.float64)
                g += y.T @ y
        yield pd.DataFrame({"g": [g.ravel()]})

    parts = item_factors.select(S.FACTORS).mapInPandas(partial, "g array<double>").collect()
    return np.sum([np.asarray(p["g"]) for p in parts], axis=0).reshape(rank, rank)


# --- aggregates ---------------------------------------------------------------------------------


def segment_col(edges: tuple[int, ...]):
    """Label of a user's history-length bucket, e.g. edges (5, 20) -> 1-4, 5-19, 20+."""
    n = F.col("n_history")
    bounds = [1, *edges]
    expr = F.lit(f"{bounds[-1]}+")
    for lo, hi in reversed(list(zip(bounds[:-1], bounds[1:], strict=True))):
        expr = F.when(n < hi, F.lit(f"{lo}-{hi - 1}")).otherwise(expr)
    return expr


def behavior_type_table(rows: DataFrame, *, behaviors: list[str], edges) -> DataFrame:
    """``segment, behavior, score_share, removal_leaves_fraction, mean_removal_delta, n_recs,
    n_users`` (segment 'all' plus one per history bucket; behaviour 'base' = the part every
    interaction earns by existing, c = 1 + ...).

    One aggregation per history bucket over the kernel rows; a user sits in one bucket (its
    history length), so the 'all' row is the buckets' sums (a handful of rows, on the driver)."""
    parts = [BASE, *behaviors]
    part_cols = {BASE: PART_BASE, **{b: f"part_{b}" for b in behaviors}}
    first = F.col(SOURCE_RANK) == 1  # one row per recommendation carries its per-rec columns
    aggs = [F.sum(part_cols[p]).alias(f"s_{p}") for p in parts]
    aggs += [F.count(F.when(first, 1)).alias("n_recs"),
             F.countDistinct(S.USER_IDX).alias("n_users"),
             F.sum(F.when(first, F.col(S.SCORE))).alias("s_score")]
    for b in behaviors:
        leaves = F.when(first, F.col(f"type_leaves_{b}").cast("double"))
        aggs += [F.sum(leaves).alias(f"l_{b}"), F.count(leaves).alias(f"ln_{b}"),
                 F.sum(F.when(first, F.col(f"type_delta_{b}"))).alias(f"d_{b}")]
    seg = (rows.groupBy(segment_col(edges).alias("segment")).agg(*aggs).toPandas()
           .set_index("segment"))
    seg.loc["all"] = seg.sum(axis=0, min_count=1)  # nulls (no leaves checks) stay null
    out = []
    for name, r in seg.iterrows():
        for p in parts:
            base = p == BASE
            leaves_n = 0 if base else r[f"ln_{p}"]
            out.append((name, p, _ratio(r[f"s_{p}"], r["s_score"]),
                        None if base or not leaves_n else _ratio(r[f"l_{p}"], leaves_n),
                        None if base else _ratio(r[f"d_{p}"], r["n_recs"]),
                        int(r["n_recs"]), int(r["n_users"])))
    schema = (f"segment string, {S.BEHAVIOR} string, score_share double, "
              "removal_leaves_fraction double, mean_removal_delta double, n_recs long, "
              "n_users long")
    return rows.sparkSession.createDataFrame(out, schema)


def _ratio(num, den) -> float | None:
    if num is None or den is None or pd.isna(num) or pd.isna(den) or den == 0:
        return None
    return float(num) / float(den)


def items_table(rows: DataFrame) -> DataFrame:
    """Per past item (kept source rows): recommendations driven (positive contribution), users,
    total / mean contribution and share, recommendations that leave the top-K without it, and
    the run's Gini of total positive contribution over items (``influence_gini``).

    The per-item aggregate is checkpointed (one pass over the rows): the Gini reads it, and so
    does the write."""
    src = rows.where(F.col(SOURCE_ITEM) != RESIDUAL)
    agg = src.groupBy(F.col(SOURCE_ITEM).alias(S.ITEM_IDX)).agg(
        F.sum(F.when(F.col(CONTRIBUTION) > 0, 1).otherwise(0)).alias("n_recs_supported"),
        F.countDistinct(S.USER_IDX).alias("n_users"),
        F.sum(CONTRIBUTION).alias("total_contribution"),
        F.avg(CONTRIBUTION).alias("mean_contribution"),
        F.sum(SHARE).alias("total_share"),
        F.sum(F.col(LOO_LEAVES).cast("int")).alias("n_recs_lost_without"),
    ).localCheckpoint()
    pos = agg.select(F.greatest(F.col("total_contribution"), F.lit(0.0)).alias("v")).toPandas()
    gini = gini_coefficient(pos["v"].to_numpy())
    return agg.withColumn("influence_gini", F.lit(gini))


def gini_coefficient(values: np.ndarray) -> float:
    """Gini of non-negative values (0: equal, -> 1: concentrated on one)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) == 0 or v.sum() <= 0:
        return float("nan")
    n = len(v)
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * v.sum()))


def users_table(rows: DataFrame, *, behaviors: list[str]) -> DataFrame:
    """Per user: history length, recommendations, mean top-1 / top-3 source share, mean
    effective number of sources, distinct driving items, and the behaviour type with the largest
    share of the user's recommendation score. One aggregation by user."""
    first = F.col(SOURCE_RANK) == 1

    def per_rec(c):
        return F.when(first, F.col(c))

    sums = rows.groupBy(S.USER_IDX).agg(
        F.first("n_history").alias("n_history"), F.count(per_rec(REC_ITEM)).alias("n_recs"),
        F.avg(per_rec("top1_share")).alias("mean_top1_share"),
        F.avg(per_rec("top3_share")).alias("mean_top3_share"),
        F.avg(per_rec("effective_sources")).alias("mean_effective_sources"),
        F.countDistinct(F.when(F.col(SOURCE_ITEM) != RESIDUAL, F.col(SOURCE_ITEM)))
        .alias("n_driving_items"),
        *[F.sum(f"part_{b}").alias(f"_s_{b}") for b in behaviors])
    best = F.lit(None).cast("string")
    best_v = F.lit(0.0)
    for b in behaviors:  # argmax over the behaviour columns
        best = F.when(F.col(f"_s_{b}") > best_v, F.lit(b)).otherwise(best)
        best_v = F.greatest(best_v, F.col(f"_s_{b}"))
    return sums.select(S.USER_IDX, "n_history", "n_recs", "mean_top1_share", "mean_top3_share",
                       "mean_effective_sources", "n_driving_items",
                       best.alias("dominant_behavior"))


# --- job ---------------------------------------------------------------------------------------


def _run_record(spark, lake: Lake, run_id: str) -> dict:
    if not lake.exists(spark, L.MODELS_RUNS):
        raise FileNotFoundError(f"{L.MODELS_RUNS} does not exist: run `reclake als` first")
    rows = lake.read(spark, L.MODELS_RUNS).where(F.col(S.RUN_ID) == run_id).collect()
    if not rows:
        have = [r[0] for r in lake.read(spark, L.MODELS_RUNS).select(S.RUN_ID).limit(10).collect()]
        raise ConfigError(f"no run '{run_id}' in {L.MODELS_RUNS} (runs: {have})")
    rec = rows[0].asDict()
    if rec[S.MODEL] != "als":
        raise ConfigError(f"run '{run_id}' is a {rec[S.MODEL]} run; influence explains ALS runs")
    if rec["params"].get("als.nonnegative") == "True":
        raise ConfigError(f"run '{run_id}' used nonnegative=True (NNLS): scores do not decompose "
                          "linearly; retrain without --nonnegative to explain it")
    return rec


def explain_run(spark: SparkSession, lake: Lake, *, cfg: Config, run_id: str, timer=None):
    """The kernel rows of one run (cached) and the behaviours it splits by."""
    rec = _run_record(spark, lake, run_id)
    params = rec["params"]
    alpha, reg = float(params["als.alpha"]), float(params["als.reg_param"])
    protocol = rec[S.PROTOCOL]
    splits = lake.read(spark, L.GOLD_SPLITS)
    behaviors = [b for b in cfg.vocabulary if S.conf_col(b) in splits.columns]
    if not behaviors:
        raise ConfigError(f"{L.GOLD_SPLITS} has no conf_<b> columns; re-run `reclake split`")
    history = splits.where((F.col(S.PROTOCOL) == protocol) & (F.col("split") == "train")
                           & (F.col(S.CONFIDENCE) > 0))
    # a behaviour with no weight has no part anywhere: leave it out of the tables
    nonzero = history.agg(*[F.max(F.abs(S.conf_col(b))).alias(b) for b in behaviors]).first()
    behaviors = [b for b in behaviors if (nonzero[b] or 0) > 0]
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col(S.RUN_ID) == run_id)
    k = recs.agg(F.max(S.RANK)).first()[0]
    if k is None:
        raise ConfigError(f"run '{run_id}' has no rows in {L.GOLD_RECOMMENDATIONS}")
    items = lake.read(spark, L.MODELS_ALS_ITEM_FACTORS).where(F.col(S.RUN_ID) == run_id)
    users = lake.read(spark, L.MODELS_ALS_USER_FACTORS).where(F.col(S.RUN_ID) == run_id)
    n_items = items.count()
    rank = len(items.select(S.FACTORS).first()[0])
    fit = n_items * rank * 8 <= cfg.influence.broadcast_max_mb * 2**20
    common = dict(behaviors=behaviors, alpha=alpha, reg=reg, top_n=cfg.influence.top_n,
                  pool=cfg.influence.pool, k=int(k), timer=timer)
    if fit:
        ipdf = items.select(S.IDX, S.FACTORS).toPandas()
        ids = ipdf[S.IDX].to_numpy(np.int64)
        fac = np.stack(ipdf[S.FACTORS].to_numpy()).astype(np.float64)
        inputs = user_inputs(history, recs, users, behaviors)
        rows = explain_users(inputs, ids, fac, **common)
    else:
        log.info("item factors (%d x %d) above influence.broadcast_max_mb: joined to the rows "
                 "that need them; leaves-top-K checks skipped (null)", n_items, rank)
        inputs = user_inputs(history, recs, users, behaviors, item_factors=items)
        rows = explain_users(inputs, None, None, yty=distributed_gram(items, rank), **common)
    return rows.withColumn(S.RUN_ID, F.lit(run_id)), behaviors


def main(spark: SparkSession, cfg: Config) -> dict:
    if cfg.influence.action == "ablation":
        from jobs import ablation

        return ablation.main(spark, cfg)
    run_id = cfg.run.run_id
    if not run_id:
        raise ConfigError("influence needs --run-id (an ALS run in models/runs)")
    lake = Lake(cfg.lake)
    t0 = time.perf_counter()
    timer = spark.sparkContext.accumulator(0.0)
    rows, behaviors = explain_run(spark, lake, cfg=cfg, run_id=run_id, timer=timer)
    where = f"{S.RUN_ID} = {quote(run_id)}"
    with timed(log, f"influence of run {run_id}: per-user attribution") as info:
        rows = rows.cache()
        per_rec = rows.where(F.col(SOURCE_RANK) == 1)
        # two aggregations: with countDistinct, percentile_approx takes ~10x longer in one
        stats = per_rec.agg(
            F.count(F.lit(1)).alias("recs"), F.max("x_rel_err").alias("max_err"),
            F.percentile_approx("x_rel_err", 0.5).alias("median_err")).first().asDict()
        stats["users"] = per_rec.select(S.USER_IDX).distinct().count()
        info.update(recommendations=stats["recs"], users=stats["users"],
                    kernel_cpu_s=round(timer.value, 1))
    log.info("recomputed user vectors vs Spark's stored factors: median rel. err %.2e, max %.2e",
             stats["median_err"] or float("nan"), stats["max_err"] or float("nan"))
    contrib_cols = [S.RUN_ID, S.USER_IDX, REC_ITEM, REC_RANK, S.SCORE, SOURCE_RANK, SOURCE_ITEM,
                    "n_sources", CONTRIBUTION, SHARE, PART_BASE,
                    *[f"part_{b}" for b in behaviors], LOO_DELTA, LOO_LEAVES]
    with timed(log, "influence tables"):
        lake.replace_rows(rows.select(*contrib_cols), L.INFLUENCE_EVENT_CONTRIBUTIONS, where,
                          merge_schema=True)
        bt = behavior_type_table(rows, behaviors=behaviors, edges=cfg.influence.segment_edges)
        lake.replace_rows(bt.withColumn(S.RUN_ID, F.lit(run_id)), L.INFLUENCE_BEHAVIOR_TYPE,
                          where)
        lake.replace_rows(items_table(rows).withColumn(S.RUN_ID, F.lit(run_id)),
                          L.INFLUENCE_ITEMS, where)
        lake.replace_rows(users_table(rows, behaviors=behaviors).withColumn(
            S.RUN_ID, F.lit(run_id)), L.INFLUENCE_USERS, where)
    rows.unpersist()
    summary = {"run_id": run_id, "recommendations": stats["recs"], "users": stats["users"],
               "x_rel_err_max": stats["max_err"], "kernel_seconds": timer.value,
               "seconds": time.perf_counter() - t0}
    print(format_summary(spark, lake, run_id))
    return summary


def format_summary(spark: SparkSession, lake: Lake, run_id: str, top: int = 5) -> str:
    """Behaviour-type shares (all users) and the top gateway items, as text."""
    bt = (lake.read(spark, L.INFLUENCE_BEHAVIOR_TYPE)
          .where((F.col(S.RUN_ID) == run_id) & (F.col("segment") == "all"))
          .orderBy(F.desc("score_share")).collect())
    lines = [f"Behaviour-type influence, run {run_id} (share of recommendation score; fraction "
             "of recommendations that leave the top-K without that type):"]
    for r in bt:
        leave = ("" if r["removal_leaves_fraction"] is None
                 else f"{r['removal_leaves_fraction']:8.1%}")
        lines.append(f"  {r[S.BEHAVIOR]:<10} {r['score_share']:8.1%} {leave}")
    items = (lake.read(spark, L.INFLUENCE_ITEMS).where(F.col(S.RUN_ID) == run_id)
             .orderBy(F.desc("total_contribution")).limit(top).collect())
    if items:
        lines.append(f"Top gateway items (Gini of influence {items[0]['influence_gini']:.3f}):")
        for r in items:
            lines.append(f"  item_idx {r[S.ITEM_IDX]:>8}  drives {r['n_recs_supported']:>6} recs "
                         f"of {r['n_users']:>6} users, total contribution "
                         f"{r['total_contribution']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("influence"))
