"""Explain an ALS run's recommendations by the users' past behaviours, written to ``influence/*``.

    spark-submit jobs/influence.py --lake ./lake --run-id als-20240101T000000-ab12
    reclake influence --run-id R [--top-n 5]

For every user and each of their recommendations in ``gold/recommendations`` (run R), the exact
contribution of every past train interaction to the score (``common/influence.py`` has the
maths, checked against Spark's ALS source), split into a base part and one part per behaviour
type, and the exact leave-one-out change of the score. Float64, inside ``mapInPandas`` over
users, users with the same history length stacked into batched solves; the item factors are broadcast (or, above
``influence.broadcast_max_mb``, joined to the rows that need them, without the leaves-top-K check).

The run is read with ``common.runs.read_run`` and every input at the version the run recorded
(``gold/splits`` it trained on; the factor tables and ``gold/recommendations`` it wrote), so a
later ``split`` or fit changes nothing here; its own ``als.*`` / ``recommend.*`` params (alpha,
reg, ``recommend.k``, ``recommend.exclude_seen``) drive the maths. Layers: :func:`explain_run`
(Spark, one run) -> :func:`explain_user_rows` (``mapInPandas``) -> :func:`explain_pandas` (a
pandas batch) -> ``common.influence.explain_users_batch`` (the kernel, a stack of users). Before
any write, recomputed user vectors must match the stored factors within
``influence.max_x_rel_err`` (else :class:`ExactnessError`: one line, exit 2, nothing written).

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
from dataclasses import dataclass

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
from common.runs import RunRecord, check_run_exists, read_run
from common.splits import model_train_history

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


def preflight(cfg: Config) -> None:
    """Before Spark starts: explain needs the id of a run that exists."""
    if cfg.influence.action == "ablation":
        return
    if not cfg.run.run_id:
        raise ConfigError("influence needs --run-id (an ALS run in models/runs)")
    check_run_exists(Lake(cfg.lake), cfg.run.run_id)


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


def explain_user_rows(users: DataFrame, items: I.ItemFactors, settings: I.ExplainSettings, *,
                      timer=None) -> DataFrame:
    """The kernel over :func:`user_inputs` rows, in ``mapInPandas``. Out: :func:`rec_schema`.

    With ``items.factors`` (broadcast) every recommendation gets the exact leaves-top-K checks;
    on the joined path (:meth:`~common.influence.ItemFactors.gram_only`, catalogues above
    ``influence.broadcast_max_mb``) the rows carry their items' factors and the leaves-top-K
    columns are null. ``timer``: an optional Spark accumulator that sums the kernel's seconds over
    all workers."""
    spark = users.sparkSession
    bc = spark.sparkContext.broadcast(items)
    schema = rec_schema(list(settings.behaviors))
    names = schema.fieldNames()

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        worker_items = bc.value  # its ItemIndex is built once per task, on first use
        for pdf in batches:
            if len(pdf):
                t0 = time.perf_counter()
                out = explain_pandas(pdf, worker_items, settings)
                frame = pd.DataFrame({c: out[c] for c in names})
                if timer is not None:
                    timer.add(time.perf_counter() - t0)
                yield frame

    # the kernel is CPU-bound Python: spread users over every core (AQE would coalesce the small
    # input into one partition otherwise)
    n_parts = max(2 * spark.sparkContext.defaultParallelism,
                  int(spark.conf.get("spark.sql.shuffle.partitions")))
    return users.repartition(n_parts, S.USER_IDX).mapInPandas(run, schema)


def explain_pandas(pdf: pd.DataFrame, items: I.ItemFactors,
                   settings: I.ExplainSettings) -> dict[str, np.ndarray]:
    """Kernel columns (:func:`rec_schema`) for a pandas batch of :func:`user_inputs` rows.

    Users with the same history length and number of recommendations are stacked
    (:class:`common.influence.UserStack`) and explained together
    (:func:`common.influence.explain_users_batch`), in sub-batches of about
    ``settings.memory_doubles`` float64 per working array; a heavy user's history is walked in
    ``settings.chunk`` columns, so its memory stays bounded by its own inputs."""
    n_h = pdf["hist_items"].map(len).to_numpy()
    n_r = pdf["rec_items"].map(len).to_numpy()
    kf = items.yty.shape[0]
    n_b = len(settings.behaviors)
    n_items = 0 if items.ids is None else int(items.ids.max()) + 1
    pieces = []
    for (n, r), idx in pd.Series(np.arange(len(pdf))).groupby([n_h, n_r]).groups.items():
        idx = np.asarray(idx)
        per_user = (min(n, settings.chunk) * (kf + 8 * r) + (n_b + 3) * kf * kf + n_items
                    + 60 * r * r)
        step = max(1, int(settings.memory_doubles // per_user))
        for s in range(0, len(idx), step):
            pieces.append(_stack_rows(pdf.iloc[idx[s:s + step]], n, r, items, settings))
    return {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}


def user_stack(sub: pd.DataFrame, n: int, n_r: int, n_b: int, kf: int) -> I.UserStack:
    """:func:`user_inputs` rows of users with ``n`` past items and ``n_r`` recs, as arrays."""
    u_n = len(sub)

    def stacked(col, dtype, *shape):
        return np.stack(sub[col].to_numpy()).astype(dtype).reshape(u_n, *shape)

    joined = "hist_factors" in sub.columns
    return I.UserStack(
        hist=stacked("hist_items", np.int64, n), ratings=stacked("hist_conf", np.float64, n),
        parts=stacked("hist_parts", np.float64, n, n_b), recs=stacked("rec_items", np.int64, n_r),
        hist_factors=stacked("hist_factors", np.float64, n, kf) if joined else None,
        rec_factors=stacked("rec_factors", np.float64, n_r, kf) if joined else None)


def _stack_rows(sub: pd.DataFrame, n: int, n_r: int, items: I.ItemFactors,
                settings: I.ExplainSettings) -> dict[str, np.ndarray]:
    """One stack of users through the kernel, laid out as :func:`rec_schema` rows: per (user,
    rec) the kept sources, then one residual row holding the rest of the history."""
    behaviors = settings.behaviors
    u_n, kf = len(sub), items.yty.shape[0]
    users = user_stack(sub, n, n_r, len(behaviors), kf)
    e = I.explain_users_batch(users, items, settings)
    n_keep = e.top_src.shape[2]
    reps = n_keep + 1
    n_rows = u_n * n_r * reps

    def rows(v, last):  # (U, R, N) + residual (scalar or (U, R)) -> flat (user, rec, source)
        v = np.asarray(v)
        tail = np.broadcast_to(np.asarray(last, dtype=v.dtype), v.shape[:2])[:, :, None]
        return np.concatenate([v, tail], axis=2).ravel()

    def per_rec(v):
        return np.repeat(np.asarray(v).ravel(), reps)

    ranks = np.stack(sub["rec_ranks"].to_numpy()).astype(np.int32).reshape(u_n, n_r)
    cols: dict[str, np.ndarray] = {}
    cols[S.USER_IDX] = np.repeat(sub[S.USER_IDX].to_numpy().astype(np.int32), n_r * reps)
    cols[REC_ITEM] = per_rec(users.recs).astype(np.int32)
    cols[REC_RANK] = per_rec(ranks).astype(np.int32)
    cols[S.SCORE] = per_rec(e.scores)
    cols["n_history"] = np.full(n_rows, n, dtype=np.int32)
    cols[SOURCE_RANK] = np.tile(np.arange(1, reps + 1), u_n * n_r).astype(np.int32)
    src = np.take_along_axis(users.hist[:, None, :].repeat(n_r, axis=1), e.top_src, axis=2)
    cols[SOURCE_ITEM] = rows(src, RESIDUAL).astype(np.int32)
    cols["n_sources"] = np.tile(np.r_[np.ones(n_keep), n - n_keep], u_n * n_r).astype(np.int32)
    c_all = rows(e.contrib, e.tot_contrib - e.contrib.sum(axis=2))
    cols[CONTRIBUTION] = c_all
    sc = cols[S.SCORE]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols[SHARE] = np.where(sc != 0, c_all / sc, np.nan)
    cols[PART_BASE] = rows(e.base, e.tot_base - e.base.sum(axis=2))
    rest_part = e.tot_parts - e.parts.sum(axis=2)  # (U, R, B)
    for b_i, b in enumerate(behaviors):
        cols[f"part_{b}"] = rows(e.parts[:, :, :, b_i], rest_part[:, :, b_i])
    cols[LOO_DELTA] = rows(e.loo_delta, np.nan)
    if e.loo_leaves is not None:
        lv_rows = np.concatenate([e.loo_leaves, np.zeros((u_n, n_r, 1), dtype=bool)],
                                 axis=2).astype(object)
        lv_rows[:, :, -1] = None  # the residual row has no single source to remove
        cols[LOO_LEAVES] = lv_rows.ravel()
    else:
        cols[LOO_LEAVES] = np.full(n_rows, None, dtype=object)
    for b_i, b in enumerate(behaviors):
        cols[f"type_delta_{b}"] = per_rec(e.type_delta[:, b_i])
        cols[f"type_leaves_{b}"] = (per_rec(e.type_leaves[:, b_i]) if e.type_leaves is not None
                                    else np.full(n_rows, None, dtype=object))
    cols["top1_share"] = per_rec(e.conc[:, :, 0])
    cols["top3_share"] = per_rec(e.conc[:, :, 1])
    cols["effective_sources"] = per_rec(e.conc[:, :, 2])
    cols["x_rel_err"] = np.repeat(x_rel_err(e.x, sub["stored_x"].to_numpy()), n_r * reps)
    return cols


def x_rel_err(x: np.ndarray, stored) -> np.ndarray:
    """(U,) ||x − stored|| / ||stored|| of the recomputed user vectors against the run's stored
    factors (NaN where the left join found none)."""
    has = np.array([v is not None for v in stored], dtype=bool)
    err = np.full(len(x), np.nan)
    if has.any():
        st = np.stack(stored[has]).astype(np.float64)
        err[has] = (np.linalg.norm(x[has] - st, axis=1)
                    / np.maximum(np.linalg.norm(st, axis=1), 1e-30))
    return err


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


class ExactnessError(ConfigError):
    """The recomputed user vectors do not reproduce the run's stored factors within
    ``influence.max_x_rel_err``: the attribution would not describe this model."""


@dataclass(frozen=True)
class RunExplanation:
    """:func:`explain_run`'s result: the kernel rows (:func:`rec_schema` plus ``run_id``), the
    run's record and the settings they were computed with."""

    rows: DataFrame
    record: RunRecord
    settings: I.ExplainSettings


def check_explainable(rec: RunRecord) -> None:
    """Only implicit ALS without NNLS decomposes linearly into per-interaction parts."""
    if rec.model != "als":
        raise ConfigError(f"run {rec.run_id!r} is a {rec.model} run; influence explains ALS runs")
    if rec.param("als.nonnegative"):
        raise ConfigError(f"run {rec.run_id!r} used nonnegative=True (NNLS): scores do not "
                          "decompose linearly; retrain without --nonnegative to explain it")
    if rec.param("als.explicit_behavior"):
        raise ConfigError(f"run {rec.run_id!r} is explicit ALS (rating prediction on "
                          f"{rec.param('als.explicit_behavior')}): the exact attribution is that "
                          "of implicit ALS; explain an implicit run (als.explicit_behavior null)")


def explain_run(spark: SparkSession, lake: Lake, *, cfg: Config, run_id: str,
                timer=None) -> RunExplanation:
    """The kernel rows of one ALS run (lazy: cache them before more than one action).

    Every input is read at the version the run recorded (``gold/splits`` it trained on, the
    factor tables and ``gold/recommendations`` it wrote), so re-running ``split`` or another fit
    afterwards changes nothing here; the run's own settings (``als.alpha``, ``als.reg_param``,
    ``recommend.k``, ``recommend.exclude_seen``) come from its record, the influence knobs from
    ``cfg``."""
    rec = read_run(spark, lake, run_id)
    check_explainable(rec)
    run_cfg = rec.config(cfg)
    splits = rec.read(spark, lake, L.GOLD_SPLITS)
    behaviors = [b for b in cfg.vocabulary if S.conf_col(b) in splits.columns]
    if not behaviors:
        raise ConfigError(f"{L.GOLD_SPLITS} has no conf_<b> columns; re-run `reclake split`")
    # the rows the run fitted on: train (+ valid for a refit), confidence as it was built for it
    history = model_train_history(splits, cfg=run_cfg)
    # a behaviour with no weight has no part anywhere: leave it out of the tables
    nonzero = history.agg(*[F.max(F.abs(S.conf_col(b))).alias(b) for b in behaviors]).first()
    behaviors = [b for b in behaviors if (nonzero[b] or 0) > 0]
    this_run = F.col(S.RUN_ID) == run_id
    recs = rec.read(spark, lake, L.GOLD_RECOMMENDATIONS).where(this_run)
    if recs.first() is None:
        raise ConfigError(f"run {run_id!r} has no rows in {L.GOLD_RECOMMENDATIONS}")
    items = rec.read(spark, lake, L.MODELS_ALS_ITEM_FACTORS).where(this_run)
    users = rec.read(spark, lake, L.MODELS_ALS_USER_FACTORS).where(this_run)
    settings = I.ExplainSettings.from_config(run_cfg, behaviors)
    n_items = items.count()
    rank = len(items.select(S.FACTORS).first()[0])
    if n_items * rank * 8 <= cfg.influence.broadcast_max_mb * 2**20:
        ipdf = items.select(S.IDX, S.FACTORS).toPandas()
        factors = I.ItemFactors.from_rows(ipdf[S.IDX].to_numpy(np.int64),
                                          np.stack(ipdf[S.FACTORS].to_numpy()))
        inputs = user_inputs(history, recs, users, behaviors)
    else:
        log.info("item factors (%d x %d) above influence.broadcast_max_mb: joined to the rows "
                 "that need them; leaves-top-K checks skipped (null)", n_items, rank)
        factors = I.ItemFactors.gram_only(distributed_gram(items, rank))
        inputs = user_inputs(history, recs, users, behaviors, item_factors=items)
    rows = explain_user_rows(inputs, factors, settings, timer=timer)
    return RunExplanation(rows=rows.withColumn(S.RUN_ID, F.lit(run_id)), record=rec,
                          settings=settings)


def exactness_stats(rows: DataFrame) -> dict:
    """Recommendations, users and the x_rel_err distribution (NaN: no stored factors) of the
    kernel rows."""
    per_rec = rows.where(F.col(SOURCE_RANK) == 1)
    err = F.when(~F.isnan("x_rel_err"), F.col("x_rel_err"))
    # two aggregations: with countDistinct, percentile_approx takes ~10x longer in one
    stats = per_rec.agg(
        F.count(F.lit(1)).alias("recs"), F.max(err).alias("max_err"),
        F.percentile_approx(err, 0.5).alias("median_err"),
        F.count(F.when(F.isnan("x_rel_err"), 1)).alias("recs_without_factors")).first().asDict()
    stats["users"] = per_rec.select(S.USER_IDX).distinct().count()
    return stats


def check_exactness(stats: dict, *, run_id: str, tolerance: float) -> None:
    """Raise :class:`ExactnessError` when any recomputed user vector is further than
    ``tolerance`` (relative) from the run's stored factors."""
    worst = stats["max_err"]
    if worst is not None and worst > tolerance:
        raise ExactnessError(
            f"run {run_id!r}: recomputed user vectors differ from the run's stored factors by up "
            f"to {worst:.2e} relative (median {stats['median_err']:.2e}), above "
            f"influence.max_x_rel_err = {tolerance:g}; the decomposition does not reproduce this "
            f"model (trained by something other than Spark's implicit ALS on gold/splits' "
            f"confidence, or its factors were changed), so no influence table was written")


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
    ex = explain_run(spark, lake, cfg=cfg, run_id=run_id, timer=timer)
    behaviors = list(ex.settings.behaviors)
    where = f"{S.RUN_ID} = {quote(run_id)}"
    with timed(log, f"influence of run {run_id}: per-user attribution") as info:
        rows = ex.rows.cache()
        stats = exactness_stats(rows)
        info.update(recommendations=stats["recs"], users=stats["users"],
                    kernel_cpu_s=round(timer.value, 1))
    log.info("recomputed user vectors vs Spark's stored factors: median rel. err %.2e, max %.2e",
             stats["median_err"] or float("nan"), stats["max_err"] or float("nan"))
    if stats["recs_without_factors"]:
        log.warning("%d recommendations of users without stored factors (not checked)",
                    stats["recs_without_factors"])
    try:  # before any write: a failed check leaves every influence table as it was
        check_exactness(stats, run_id=run_id, tolerance=cfg.influence.max_x_rel_err)
    except ExactnessError:
        rows.unpersist()
        raise
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


def _source_ids(spark: SparkSession, lake: Lake, table: str, idx_col: str, id_col: str,
                idxs) -> dict[int, str]:
    """The source's id of each internal index in ``idxs`` (empty when the lake has no index
    table, e.g. a gold/splits written directly). The index tables only ever grow (ingest gives
    new ids the next numbers), so the latest version names every index a run used."""
    idxs = sorted({int(i) for i in idxs if i is not None and i >= 0})
    if not idxs or not lake.exists(spark, table):
        return {}
    got = lake.read(spark, table).where(F.col(idx_col).isin(idxs)).select(idx_col, id_col)
    return {int(r[0]): str(r[1]) for r in got.collect()}


def format_summary(spark: SparkSession, lake: Lake, run_id: str, top: int = 5,
                   examples: int = 3) -> str:
    """Behaviour-type shares (all users), the top gateway items and a few example explanations
    (the rank-1 recommendation of the first users and the past items behind it), as text naming
    items and users by the source's ids (``silver/item_index``, ``silver/user_index``; internal
    indices only where the lake has no index)."""
    this_run = F.col(S.RUN_ID) == run_id
    bt = (lake.read(spark, L.INFLUENCE_BEHAVIOR_TYPE)
          .where(this_run & (F.col("segment") == "all"))
          .orderBy(F.desc("score_share")).collect())
    lines = [f"Behaviour-type influence, run {run_id} (share of recommendation score; fraction "
             "of recommendations that leave the top-K without that type):"]
    for r in bt:
        leave = ("" if r["removal_leaves_fraction"] is None
                 else f"{r['removal_leaves_fraction']:8.1%}")
        lines.append(f"  {r[S.BEHAVIOR]:<10} {r['score_share']:8.1%} {leave}")
    items = (lake.read(spark, L.INFLUENCE_ITEMS).where(this_run)
             .orderBy(F.desc("total_contribution")).limit(top).collect())
    ec = lake.read(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS).where(this_run & (F.col(REC_RANK) == 1))
    first_users = [r[0] for r in lake.read(spark, L.INFLUENCE_USERS).where(this_run)
                   .select(S.USER_IDX).orderBy(S.USER_IDX).limit(examples).collect()]
    ex = (ec.where(F.col(S.USER_IDX).isin(first_users)).orderBy(S.USER_IDX, SOURCE_RANK)
          .collect() if first_users else [])
    item_ids = _source_ids(spark, lake, L.SILVER_ITEM_INDEX, S.ITEM_IDX, S.ITEM_ID,
                           [r[S.ITEM_IDX] for r in items] + [r[REC_ITEM] for r in ex]
                           + [r[SOURCE_ITEM] for r in ex])
    user_ids = _source_ids(spark, lake, L.SILVER_USER_INDEX, S.USER_IDX, S.USER_ID, first_users)

    def item(i):
        return f"item {item_ids[i]}" if i in item_ids else f"item_idx {i}"

    def user(u):
        return f"user {user_ids[u]}" if u in user_ids else f"user_idx {u}"

    if items:
        lines.append(f"Top gateway items (Gini of influence {items[0]['influence_gini']:.3f}):")
        width = max(len(item(r[S.ITEM_IDX])) for r in items)
        for r in items:
            lines.append(f"  {item(r[S.ITEM_IDX]):<{width}}  drives {r['n_recs_supported']:>6} "
                         f"recs of {r['n_users']:>6} users, total contribution "
                         f"{r['total_contribution']:.3f}")
    if ex:
        behaviors = [c[len("part_"):] for c in ec.columns
                     if c.startswith("part_") and c != PART_BASE]
        lines.append("Example explanations (a user's first recommendation <- the past items "
                     "behind it, share of its score and the behaviour that weighs most):")
        by_user: dict[int, list] = {}
        for r in ex:
            by_user.setdefault(r[S.USER_IDX], []).append(r)
        for u, rs in by_user.items():
            parts = []
            for r in rs:
                share = "" if r[SHARE] is None else f" {r[SHARE]:.0%}"
                if r[SOURCE_ITEM] == RESIDUAL:
                    if r["n_sources"]:
                        parts.append(f"{r['n_sources']} other items{share}")
                    continue
                top_b = max(behaviors, key=lambda b: r[f"part_{b}"] or 0.0, default=None)
                tag = f" [{top_b}]" if top_b and (r[f"part_{top_b}"] or 0) > 0 else ""
                parts.append(f"{item(r[SOURCE_ITEM])}{share}{tag}")
            lines.append(f"  {user(u)}: {item(rs[0][REC_ITEM])} (score {rs[0][S.SCORE]:.3f}) <- "
                         + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("influence"))
