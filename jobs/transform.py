"""Feature-engineer silver events into the gold tables.

    spark-submit jobs/transform.py --lake ./lake

Builds, from ``silver/events`` and the id indices:
  - ``gold/interactions``: per (user_idx, item_idx) event counts per behaviour (``cnt_<b>``), each
    behaviour's confidence part (``conf_<b>`` = w_b * f(amount_b)), ``confidence`` (their sum),
    mean ``rating``, ``first_ts``, ``last_ts``;
  - ``gold/user_features`` and ``gold/item_features``: activity per behaviour, distinct items /
    users, recency, funnel conversion (view -> cart -> purchase), popularity, category diversity;
  - ``gold/sequences``: per user the time-ordered item indices with behaviours and timestamps,
    the most recent ``sequences.max_len`` kept.
Gold is derived state: every run rebuilds it from silver (overwrite), so re-runs are idempotent.
"""

from __future__ import annotations

import argparse
import time

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common import lake as L
from common import schema as S
from common.config import Config
from common.interactions import (  # noqa: F401  (the transform tests call build_interactions)
    SECONDS_PER_DAY,
    build_interactions,
    read_indexed_events,
)
from common.lake import Lake
from common.log import get_logger, timed

log = get_logger("transform")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--half-life-days", dest="confidence.half_life_days", type=float, default=None,
                   help="time decay of behaviour counts (default: none)")
    p.add_argument("--max-seq-len", dest="sequences.max_len", type=int, default=None)


def _entropy(counts_col: str) -> Column:
    """Shannon entropy (nats) of an array of counts."""
    total = F.aggregate(F.col(counts_col), F.lit(0.0), lambda acc, x: acc + x)
    return F.aggregate(
        F.col(counts_col), F.lit(0.0),
        lambda acc, x: acc - F.when(x > 0, (x / total) * F.log(x / total)).otherwise(0.0),
    )


def _funnel(viewed: Column, carted: Column, purchased: Column) -> list[Column]:
    def ratio(a, b):
        return F.when(b > 0, a / b)

    return [
        ratio(carted, viewed).alias("view_to_cart"),
        ratio(purchased, carted).alias("cart_to_purchase"),
        ratio(purchased, viewed).alias("view_to_purchase"),
    ]


def _pair_rollup(interactions: DataFrame, key: str, cfg: Config) -> DataFrame:
    """Per ``key`` (user_idx or item_idx) totals over gold/interactions rows: counts per
    behaviour, distinct partners, first/last ts and the funnel's distinct-partner counts."""
    cnt = {b: F.col(S.count_col(b)) for b in cfg.vocabulary}
    return interactions.groupBy(key).agg(
        F.sum("n_events").alias("n_events"),
        *[F.sum(cnt[b]).alias(f"n_{b}") for b in cfg.vocabulary],
        F.count(F.lit(1)).alias("_partners"),
        F.min(S.FIRST_TS).alias(S.FIRST_TS),
        F.max(S.LAST_TS).alias(S.LAST_TS),
        F.count(F.when(cnt[S.VIEW] + cnt[S.CLICK] > 0, 1)).alias("_viewed"),
        F.count(F.when(cnt[S.CART] > 0, 1)).alias("_carted"),
        F.count(F.when(cnt[S.PURCHASE] > 0, 1)).alias("_bought"),
        F.sum(F.col(S.RATING) * cnt[S.RATING_B]).alias("_rating_sum"),
    )


def _recency(ref_ts) -> Column:
    return ((F.lit(ref_ts).cast("timestamp").cast("double") - F.col(S.LAST_TS).cast("double"))
            / SECONDS_PER_DAY).alias("recency_days")


def build_user_features(events: DataFrame, *, cfg: Config, ref_ts,
                        interactions: DataFrame | None = None) -> DataFrame:
    """Per ``user_idx``: ``n_events``, ``n_<b>`` per behaviour, ``distinct_items``,
    ``distinct_categories``, ``category_entropy`` (nats), ``first_ts``, ``last_ts``,
    ``recency_days`` (to ``ref_ts``), ``active_days``, funnel ``view_to_cart``,
    ``cart_to_purchase``, ``view_to_purchase`` (over distinct items: viewed = view or click).

    Counts come from gold/interactions (``interactions``; built from ``events`` when None), so
    only categories and active days need another pass over the events."""
    if interactions is None:
        interactions = build_interactions(events, cfg=cfg, ref_ts=ref_ts)
    per_user = _pair_rollup(interactions, S.USER_IDX, cfg)
    daily = events.groupBy(S.USER_IDX, S.CATEGORY_ID, S.EVENT_DATE).count()
    cats = (
        daily.where(F.col(S.CATEGORY_ID).isNotNull())
        .groupBy(S.USER_IDX, S.CATEGORY_ID).agg(F.sum("count").cast("double").alias("n"))
        .groupBy(S.USER_IDX).agg(
            F.count(F.lit(1)).alias("distinct_categories"),
            F.collect_list("n").alias("_cats"),
        )
        .select(S.USER_IDX, "distinct_categories", _entropy("_cats").alias("category_entropy"))
    )
    days = daily.groupBy(S.USER_IDX).agg(F.countDistinct(S.EVENT_DATE).alias("active_days"))
    return per_user.join(cats, S.USER_IDX, "left").join(days, S.USER_IDX, "left").select(
        S.USER_IDX, "n_events", *[f"n_{b}" for b in cfg.vocabulary],
        F.col("_partners").alias("distinct_items"),
        F.coalesce("distinct_categories", F.lit(0)).alias("distinct_categories"),
        F.coalesce("category_entropy", F.lit(0.0)).alias("category_entropy"),
        S.FIRST_TS, S.LAST_TS, _recency(ref_ts), "active_days",
        *_funnel(F.col("_viewed"), F.col("_carted"), F.col("_bought")),
    )


def build_item_features(events: DataFrame, *, cfg: Config, ref_ts, n_users: int,
                        interactions: DataFrame | None = None) -> DataFrame:
    """Per ``item_idx``: ``category_id`` (most frequent), ``n_events``, ``n_<b>``,
    ``distinct_users``, ``popularity`` (= distinct_users / all users), ``popularity_rank``
    (1 = most popular), ``mean_rating``, ``first_ts``, ``last_ts``, ``recency_days``, funnel
    ``view_to_cart``, ``cart_to_purchase``, ``view_to_purchase`` (over distinct users)."""
    if interactions is None:
        interactions = build_interactions(events, cfg=cfg, ref_ts=ref_ts)
    per_item = _pair_rollup(interactions, S.ITEM_IDX, cfg)
    category = (
        events.where(F.col(S.CATEGORY_ID).isNotNull())
        .groupBy(S.ITEM_IDX, S.CATEGORY_ID).count()
        .groupBy(S.ITEM_IDX)
        .agg(F.max_by(S.CATEGORY_ID, F.struct("count", S.CATEGORY_ID)).alias(S.CATEGORY_ID))
    )
    rank_w = Window.orderBy(F.desc("_partners"))
    return per_item.join(category, S.ITEM_IDX, "left").select(
        S.ITEM_IDX, S.CATEGORY_ID, "n_events", *[f"n_{b}" for b in cfg.vocabulary],
        F.col("_partners").alias("distinct_users"),
        (F.col("_partners") / F.lit(max(n_users, 1))).alias("popularity"),
        F.dense_rank().over(rank_w).alias("popularity_rank"),
        F.when(F.col(f"n_{S.RATING_B}") > 0, F.col("_rating_sum") / F.col(f"n_{S.RATING_B}"))
        .alias("mean_rating"),
        S.FIRST_TS, S.LAST_TS, _recency(ref_ts),
        *_funnel(F.col("_viewed"), F.col("_carted"), F.col("_bought")),
    )


def build_sequences(events: DataFrame, *, cfg: Config) -> DataFrame:
    """Per ``user_idx``: ``item_seq`` (array<int>), ``behavior_seq``, ``ts_seq``, oldest first,
    the last ``sequences.max_len`` events kept; ``length`` kept and ``n_events`` in total.

    Events are cut to the last max_len per user with a window before collecting, so a very heavy
    user never has to fit in one in-memory list."""
    max_len = cfg.sequences.max_len
    w = Window.partitionBy(S.USER_IDX).orderBy(F.desc(S.TS), F.desc(S.EVENT_ID))
    recent = events.select(
        S.USER_IDX, S.ITEM_IDX, S.BEHAVIOR, S.TS, S.EVENT_ID,
        F.row_number().over(w).alias("_rn"),
        F.count(F.lit(1)).over(Window.partitionBy(S.USER_IDX)).alias("n_events"),
    ).where(F.col("_rn") <= max_len)
    g = recent.groupBy(S.USER_IDX).agg(
        F.sort_array(F.collect_list(F.struct(S.TS, S.EVENT_ID, S.ITEM_IDX, S.BEHAVIOR))).alias("_s"),
        F.first("n_events").alias("n_events"),
    )
    return g.select(
        S.USER_IDX,
        F.col(f"_s.{S.ITEM_IDX}").alias("item_seq"),
        F.col(f"_s.{S.BEHAVIOR}").alias("behavior_seq"),
        F.col(f"_s.{S.TS}").alias("ts_seq"),
        F.size("_s").alias("length"),
        "n_events",
    )


def main(spark: SparkSession, cfg: Config) -> dict:
    lake = Lake(cfg.lake)
    t0 = time.perf_counter()
    events = read_indexed_events(spark, lake).select(
        S.USER_IDX, S.ITEM_IDX, S.BEHAVIOR, S.VALUE, S.TS, S.EVENT_DATE, S.CATEGORY_ID, S.EVENT_ID
    ).persist(StorageLevel.MEMORY_AND_DISK)
    stats = events.agg(F.max(S.TS).alias("ref"), F.count(F.lit(1)).alias("n")).first()
    ref_ts, n_events = stats["ref"], stats["n"]
    n_users = lake.read(spark, L.SILVER_USER_INDEX).count()
    log.info("silver/events: %s events, %s users, latest %s", f"{n_events:,}", f"{n_users:,}", ref_ts)
    counts = {}
    # features roll up the freshly written gold/interactions instead of re-scanning events
    def gold_interactions():
        return lake.read(spark, L.GOLD_INTERACTIONS)

    builds = [
        (L.GOLD_INTERACTIONS, lambda: build_interactions(events, cfg=cfg, ref_ts=ref_ts)),
        (L.GOLD_USER_FEATURES, lambda: build_user_features(
            events, cfg=cfg, ref_ts=ref_ts, interactions=gold_interactions())),
        (L.GOLD_ITEM_FEATURES, lambda: build_item_features(
            events, cfg=cfg, ref_ts=ref_ts, n_users=n_users, interactions=gold_interactions())),
        (L.GOLD_SEQUENCES, lambda: build_sequences(events, cfg=cfg)),
    ]
    for table, build in builds:
        with timed(log, table) as info:
            lake.write(build(), table, overwrite_schema=True)
            info["rows"] = counts[table] = lake.last_metrics(spark, table).get("numOutputRows", 0)
    events.unpersist()
    lake.record_audit(spark, {
        S.BATCH_ID: f"silver-v{lake.history_version(spark, L.SILVER_EVENTS)}",
        S.STAGE: "gold", "rows_in": n_events, "rows_out": counts[L.GOLD_INTERACTIONS],
        "details": counts, "seconds": time.perf_counter() - t0,
    })
    return counts


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("transform"))
