"""Split interactions into train / valid / test for one protocol, written to ``gold/splits``.

    spark-submit jobs/split.py --lake ./lake --protocol stratified --seed 42

Protocols (``split.protocol``):
  - ``stratified``: per user, a seeded random ``split.ratio`` share of the user's interactions to
    train (n_train = round-half-up(ratio * n), kept within [1, n-1]), the rest to test. A
    ``split.valid_ratio`` share of all goes to valid, taken from the test share
    (``split.valid_from: test``) or from the train share (``train``: the test part stays exactly
    the plain ratio split). The MS Recommenders protocol; seed 42 by default. The order is a hash of (seed, user, item), so it does not depend on partitioning.
  - ``temporal``: one global time cutoff (``split.cutoff`` or the quantile leaving
    ``split.test_fraction`` of events after it). Train is aggregated from events *before* the
    cutoff only (later events never leak into train confidence); test holds the pairs first seen
    after it.
  - ``leave_last_out``: per user, the most recent interaction to test, the one before to valid.
  - ``cold_items``: a seeded ``split.cold_item_fraction`` of the catalogue is held out whole:
    every interaction with those items goes to test (they never appear in train or valid), the
    other items' interactions are split like ``stratified``. The cold-start protocol: only a
    model that knows items by content (``--model text``, ``hybrid``) can recommend the cold
    items; ``reclake evaluate`` reports cold-item and warm-item metrics separately.
Users with fewer than ``split.min_user_interactions`` interactions stay in train. Test / valid
rows whose user or item never appears in train are counted and, with ``split.cold: drop``
(default), dropped (``cold_items`` keeps its cold items' rows and drops only cold users).
Re-running a protocol replaces its rows.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common import lake as L
from common import schema as S
from common.config import Config
from common.interactions import build_interactions, read_indexed_events
from common.lake import Lake, quote
from common.log import get_logger, timed

log = get_logger("split")
TRAIN, VALID, TEST = S.TRAIN, S.VALID, S.TEST


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", dest="split.protocol", default=None,
                   help="stratified | temporal | leave_last_out | cold_items")
    p.add_argument("--seed", dest="split.seed", type=int, default=None)
    p.add_argument("--ratio", dest="split.ratio", type=float, default=None)
    p.add_argument("--valid-ratio", dest="split.valid_ratio", type=float, default=None,
                   help="stratified: share of each user's interactions to valid")
    p.add_argument("--valid-from", dest="split.valid_from", choices=("test", "train"), default=None,
                   help="stratified: take valid from the test share (default) or the train share")
    p.add_argument("--cutoff", dest="split.cutoff", default=None, help="temporal: UTC timestamp")
    p.add_argument("--test-fraction", dest="split.test_fraction", type=float, default=None)
    p.add_argument("--cold-item-fraction", dest="split.cold_item_fraction", type=float,
                   default=None, help="cold_items: share of the catalogue held out whole")


def _round_half_up(x):
    return F.floor(x + F.lit(0.5))


def split_stratified(interactions: DataFrame, *, cfg: Config) -> DataFrame:
    """In: ``user_idx, item_idx, confidence, last_ts``. Out: + ``split``."""
    sc = cfg.split
    w = Window.partitionBy(S.USER_IDX)
    order = Window.partitionBy(S.USER_IDX).orderBy(
        F.xxhash64(F.lit(sc.seed), S.USER_IDX, S.ITEM_IDX), S.ITEM_IDX
    )
    df = interactions.withColumn("_n", F.count(F.lit(1)).over(w)).withColumn(
        "_r", F.row_number().over(order)
    )
    eligible = F.col("_n") >= max(2, sc.min_user_interactions)
    n_train = F.least(F.greatest(_round_half_up(F.col("_n") * sc.ratio), F.lit(1)), F.col("_n") - 1)
    n_valid = _round_half_up(F.col("_n") * sc.valid_ratio)
    if sc.valid_ratio <= 0:
        n_valid = F.lit(0)
    elif sc.valid_from == "train":  # the last of the train ranks; at least one train row stays
        n_valid = F.least(n_valid, n_train - 1)
        n_train = n_train - n_valid
    else:  # the first of the test ranks; at least one test row stays
        n_valid = F.least(n_valid, F.col("_n") - n_train - 1)
    split = (
        F.when(~eligible | (F.col("_r") <= n_train), TRAIN)
        .when(F.col("_r") <= n_train + n_valid, VALID)
        .otherwise(TEST)
    )
    return df.withColumn(S.SPLIT, split).drop("_n", "_r")


def split_leave_last_out(interactions: DataFrame, *, cfg: Config) -> DataFrame:
    """Per user, latest ``last_ts`` to test, the next to valid (ties broken by item_idx)."""
    min_n = max(3, cfg.split.min_user_interactions)
    w = Window.partitionBy(S.USER_IDX)
    order = Window.partitionBy(S.USER_IDX).orderBy(F.desc(S.LAST_TS), F.desc(S.ITEM_IDX))
    df = interactions.withColumn("_n", F.count(F.lit(1)).over(w)).withColumn(
        "_r", F.row_number().over(order)
    )
    split = (
        F.when(F.col("_n") < min_n, TRAIN)
        .when(F.col("_r") == 1, TEST)
        .when(F.col("_r") == 2, VALID)
        .otherwise(TRAIN)
    )
    return df.withColumn(S.SPLIT, split).drop("_n", "_r")


def cold_item_set(interactions: DataFrame, *, cfg: Config) -> DataFrame:
    """``item_idx`` of the items ``cold_items`` holds out: the first
    round(``split.cold_item_fraction`` * n_items) items in the order of a seeded hash of the
    item (so the choice depends on the seed and the item only, not on partitioning)."""
    sc = cfg.split
    items = interactions.select(S.ITEM_IDX).distinct()
    n = items.count()
    n_cold = int(math.floor(sc.cold_item_fraction * n + 0.5))
    order = Window.orderBy(F.xxhash64(F.lit(sc.seed), F.lit("cold_items"), S.ITEM_IDX), S.ITEM_IDX)
    return items.withColumn("_r", F.row_number().over(order)).where(
        F.col("_r") <= n_cold).select(S.ITEM_IDX)


def split_cold_items(interactions: DataFrame, *, cfg: Config) -> DataFrame:
    """In: ``user_idx, item_idx, confidence, last_ts``. Out: + ``split``: every row of a cold
    item (:func:`cold_item_set`) to test; the rest by :func:`split_stratified`."""
    cold = F.broadcast(cold_item_set(interactions, cfg=cfg).withColumn("_cold", F.lit(True)))
    df = interactions.join(cold, S.ITEM_IDX, "left")
    warm = split_stratified(df.where(F.col("_cold").isNull()).drop("_cold"), cfg=cfg)
    held = df.where(F.col("_cold")).drop("_cold").withColumn(S.SPLIT, F.lit(TEST))
    return warm.unionByName(held)


def temporal_cutoffs(events: DataFrame, *, cfg: Config) -> tuple[datetime, datetime]:
    """(valid cutoff, test cutoff): events at or after the test cutoff are test."""
    sc = cfg.split
    secs = events.select(F.col(S.TS).cast("double").alias("s"))
    if sc.cutoff:
        test_cut = datetime.fromisoformat(sc.cutoff.replace("Z", "+00:00"))
        if test_cut.tzinfo is None:
            test_cut = test_cut.replace(tzinfo=timezone.utc)
        (valid_q,) = (
            secs.approxQuantile("s", [max(0.0, 1 - sc.test_fraction - sc.valid_fraction)], 0.0)
            if sc.valid_fraction > 0 else [test_cut.timestamp()]
        )
        valid_cut = datetime.fromtimestamp(min(valid_q, test_cut.timestamp()), timezone.utc)
    else:
        qs = secs.approxQuantile(
            # rounded: 1 - 0.2 - 0.1 is 0.7000000000000001, which moves the rank up by one
            "s", [round(1 - sc.test_fraction - sc.valid_fraction, 9), round(1 - sc.test_fraction, 9)],
            0.0,
        )
        # events strictly after the quantile are the held-out share: cut 1 microsecond past it
        valid_cut, test_cut = (datetime.fromtimestamp(q + 1e-6, timezone.utc) for q in qs)
    return valid_cut.replace(tzinfo=None), test_cut.replace(tzinfo=None)


def split_temporal(events: DataFrame, *, cfg: Config, valid_cut, test_cut) -> DataFrame:
    """Aggregate each time window separately; valid / test keep only pairs not seen before."""
    ts = F.col(S.TS)
    train = build_interactions(events.where(ts < F.lit(valid_cut)), cfg=cfg)
    valid = build_interactions(events.where((ts >= F.lit(valid_cut)) & (ts < F.lit(test_cut))),
                               cfg=cfg)
    test = build_interactions(events.where(ts >= F.lit(test_cut)), cfg=cfg)
    keys = [S.USER_IDX, S.ITEM_IDX]
    valid = valid.join(train.select(*keys), keys, "left_anti")
    test = test.join(train.select(*keys), keys, "left_anti").join(valid.select(*keys), keys, "left_anti")
    return (
        train.withColumn(S.SPLIT, F.lit(TRAIN))
        .unionByName(valid.withColumn(S.SPLIT, F.lit(VALID)))
        .unionByName(test.withColumn(S.SPLIT, F.lit(TEST)))
    )


def mark_cold(split_df: DataFrame) -> DataFrame:
    """Add ``cold_user`` / ``cold_item``: a valid/test row whose user / item has no train row."""
    train = split_df.where(F.col(S.SPLIT) == TRAIN)
    users = train.select(S.USER_IDX).distinct().withColumn("_wu", F.lit(True))
    items = train.select(S.ITEM_IDX).distinct().withColumn("_wi", F.lit(True))
    df = split_df.join(users, S.USER_IDX, "left").join(items, S.ITEM_IDX, "left")
    not_train = F.col(S.SPLIT) != TRAIN
    return df.withColumn("cold_user", not_train & F.col("_wu").isNull()).withColumn(
        "cold_item", not_train & F.col("_wi").isNull()
    ).drop("_wu", "_wi")


def build_splits(
    spark: SparkSession, lake: Lake, *, cfg: Config
) -> tuple[DataFrame, dict, DataFrame]:
    """``gold/splits`` rows of one protocol (columns ``schema.SPLIT_COLUMNS`` plus ``cnt_<b>``,
    ``conf_<b>`` and ``amt_<b>`` of every behaviour), counts per split
    and cold kind, and the cached intermediate to unpersist once the rows are written."""
    protocol = cfg.split.protocol
    info: dict = {}
    if protocol == "temporal":
        events = read_indexed_events(spark, lake)
        valid_cut, test_cut = temporal_cutoffs(events, cfg=cfg)
        log.info("temporal cutoffs: valid from %s, test from %s", valid_cut, test_cut)
        df = split_temporal(events, cfg=cfg, valid_cut=valid_cut, test_cut=test_cut)
    else:
        inter = lake.read(spark, L.GOLD_INTERACTIONS)
        splitter = {"stratified": split_stratified, "leave_last_out": split_leave_last_out,
                    "cold_items": split_cold_items}[protocol]
        df = splitter(inter, cfg=cfg)
    marked = mark_cold(df).cache()
    counts = marked.groupBy(S.SPLIT, "cold_user", "cold_item").count().collect()
    for r in counts:
        info[f"rows_{r[S.SPLIT]}"] = info.get(f"rows_{r[S.SPLIT]}", 0) + r["count"]
        if r["cold_user"]:
            info[f"cold_user_{r[S.SPLIT]}"] = info.get(f"cold_user_{r[S.SPLIT]}", 0) + r["count"]
        if r["cold_item"]:
            info[f"cold_item_{r[S.SPLIT]}"] = info.get(f"cold_item_{r[S.SPLIT]}", 0) + r["count"]
        dropped = r["cold_user"] or (r["cold_item"] and protocol != "cold_items")
        if cfg.split.cold == "drop" and dropped:
            info["dropped_cold"] = info.get("dropped_cold", 0) + r["count"]
    df = marked
    if cfg.split.cold == "drop":
        # cold_items keeps its held-out items' rows: they are the protocol's point
        keep_cold_items = protocol == "cold_items"
        df = df.where(~F.col("cold_user") & (F.lit(keep_cold_items) | ~F.col("cold_item")))
    out = df.select(
        F.lit(protocol).alias(S.PROTOCOL), S.SPLIT, S.USER_IDX, S.ITEM_IDX, S.CONFIDENCE,
        F.col(S.LAST_TS).alias(S.TS),
        *[S.count_col(b) for b in cfg.vocabulary], *[S.conf_col(b) for b in cfg.vocabulary],
        *[S.amount_col(b) for b in cfg.vocabulary],
    )
    return out, info, marked


def main(spark: SparkSession, cfg: Config) -> dict:
    lake = Lake(cfg.lake)
    protocol = cfg.split.protocol
    t0 = time.perf_counter()
    with timed(log, f"gold/splits protocol={protocol}") as info:
        out, counts, cached = build_splits(spark, lake, cfg=cfg)
        lake.replace_rows(out, L.GOLD_SPLITS, f"{S.PROTOCOL} = {quote(protocol)}",
                          partition_by=[S.PROTOCOL], merge_schema=True)
        cached.unpersist()
        info.update(counts)
    cold = {k: v for k, v in counts.items() if k.startswith("cold_")}
    if cold:
        log.info("cold rows (user or item absent from train): %s -> %s", cold,
                 "dropped" if cfg.split.cold == "drop" else "kept")
    lake.record_audit(spark, {
        S.BATCH_ID: f"split-{protocol}", S.STAGE: "split",
        "rows_in": sum(v for k, v in counts.items() if k.startswith("rows_")),
        "rows_out": lake.last_metrics(spark, L.GOLD_SPLITS).get("numOutputRows", 0),
        "details": counts, "seconds": time.perf_counter() - t0,
    })
    return counts


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("split"))
