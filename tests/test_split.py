"""Split protocols: exact per-user counts, no leakage, determinism, temporal cut, cold rows."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.interactions import build_interactions, read_indexed_events
from common.lake import Lake
from jobs import split as SP

pytestmark = pytest.mark.spark

T0 = datetime(2024, 1, 1)
INTER_DDL = "user_idx int, item_idx int, confidence double, last_ts timestamp"


def interactions(spark, sizes: dict[int, int]):
    rows = [
        (u, i, 1.0 + i, T0 + timedelta(hours=i))
        for u, n in sizes.items()
        for i in range(n)
    ]
    return spark.createDataFrame(rows, INTER_DDL)


def pairs(df, split):
    return {(r.user_idx, r.item_idx) for r in df.where(F.col(S.SPLIT) == split).collect()}


def test_stratified_exact_counts_no_leakage(spark, make_cfg):
    sizes = {0: 4, 1: 8, 2: 10, 3: 1, 4: 2, 5: 40}
    out = SP.split_stratified(interactions(spark, sizes), cfg=make_cfg()).cache()
    counts = Counter((r.user_idx, r.split) for r in out.collect())
    # n_train = round-half-up(0.75 n), kept in [1, n-1]; single-interaction users stay in train
    expected_train = {0: 3, 1: 6, 2: 8, 3: 1, 4: 1, 5: 30}
    for u, n in sizes.items():
        assert counts[(u, "train")] == expected_train[u], u
        assert counts[(u, "test")] == n - expected_train[u], u
    assert out.count() == sum(sizes.values())
    assert not pairs(out, "train") & pairs(out, "test")  # every test pair is absent from train


def test_stratified_is_seeded_and_reproducible(spark, make_cfg):
    df = interactions(spark, {0: 40, 1: 40})
    a = pairs(SP.split_stratified(df, cfg=make_cfg()), "test")
    b = pairs(SP.split_stratified(df.repartition(3), cfg=make_cfg()), "test")
    c = pairs(SP.split_stratified(df, cfg=make_cfg(**{"split.seed": 7})), "test")
    assert a == b  # independent of partitioning
    assert a != c


def test_stratified_valid_share(spark, make_cfg):
    out = SP.split_stratified(interactions(spark, {0: 20}),
                              cfg=make_cfg(**{"split.ratio": 0.6, "split.valid_ratio": 0.2}))
    assert Counter(r.split for r in out.collect()) == {"train": 12, "valid": 4, "test": 4}


def test_stratified_valid_from_train_keeps_the_test_part(spark, make_cfg):
    df = interactions(spark, {0: 20, 1: 7, 2: 2})
    plain = SP.split_stratified(df, cfg=make_cfg(**{"split.ratio": 0.75})).collect()
    inner = SP.split_stratified(df, cfg=make_cfg(**{"split.ratio": 0.75, "split.valid_ratio": 0.1,
                                                    "split.valid_from": "train"})).collect()
    test = lambda rows: {(r.user_idx, r.item_idx) for r in rows if r.split == "test"}  # noqa: E731
    assert test(inner) == test(plain)  # the same test pairs as without a valid part
    got = Counter((r.user_idx, r.split) for r in inner)
    assert (got[(0, "train")], got[(0, "valid")], got[(0, "test")]) == (13, 2, 5)
    assert (got[(1, "train")], got[(1, "valid")], got[(1, "test")]) == (4, 1, 2)
    assert (got[(2, "train")], got[(2, "valid")]) == (1, 0)  # one train row always stays
    plain_train = {(r.user_idx, r.item_idx) for r in plain if r.split == "train"}
    assert {(r.user_idx, r.item_idx) for r in inner if r.split != "test"} == plain_train


def test_leave_last_out(spark, make_cfg):
    out = SP.split_leave_last_out(interactions(spark, {0: 5, 1: 2}), cfg=make_cfg())
    got = {(r.user_idx, r.item_idx): r.split for r in out.collect()}
    assert got[(0, 4)] == "test" and got[(0, 3)] == "valid"
    assert [got[(0, i)] for i in range(3)] == ["train"] * 3
    assert got[(1, 0)] == got[(1, 1)] == "train"  # too few interactions to hold out


def test_temporal_no_leakage_of_later_events(spark, make_cfg):
    ddl = ("user_idx int, item_idx int, behavior string, value double, ts timestamp, "
           "event_date date, category_id string, event_id string")
    cut = T0 + timedelta(days=5)
    rows = [
        (0, 0, "view", None, T0, "c"),                        # train
        (0, 0, "purchase", 9.0, cut + timedelta(days=1), "c"),  # after cutoff: must not leak
        (0, 1, "view", None, cut + timedelta(hours=1), "c"),   # new pair after cutoff: test
        (1, 1, "view", None, T0 + timedelta(days=1), "c"),
        (1, 2, "cart", None, cut + timedelta(days=2), "c"),    # item 2 never in train: cold
    ]
    events = spark.createDataFrame(
        [(u, i, b, v, t, t.date(), c, f"e{k}") for k, (u, i, b, v, t, c) in enumerate(rows)], ddl)
    cfg = make_cfg(**{"confidence.f": "linear"})
    out = SP.mark_cold(SP.split_temporal(events, cfg=cfg, valid_cut=cut, test_cut=cut)).collect()
    got = {(r.user_idx, r.item_idx): r for r in out}
    assert got[(0, 0)].split == "train" and got[(0, 0)].confidence == 1.0  # the purchase is not in
    assert got[(0, 1)].split == "test" and not got[(0, 1)].cold_item
    assert got[(1, 2)].split == "test" and got[(1, 2)].cold_item
    assert len(out) == 4


def test_temporal_cutoff_from_fraction(spark, make_cfg):
    events = spark.createDataFrame(
        [(T0 + timedelta(days=d),) for d in range(10)], "ts timestamp")
    valid_cut, test_cut = SP.temporal_cutoffs(
        events, cfg=make_cfg(**{"split.test_fraction": 0.2, "split.valid_fraction": 0.1}))
    tick = timedelta(microseconds=1)
    assert test_cut == T0 + timedelta(days=7) + tick and valid_cut == T0 + timedelta(days=6) + tick
    after = events.where(F.col("ts") >= F.lit(test_cut)).count()
    assert after == 2  # exactly test_fraction of the events


def test_mark_cold_users_and_items(spark, make_cfg):
    df = spark.createDataFrame(
        [(0, 0, "train"), (0, 1, "test"), (1, 0, "test"), (0, 0, "valid")],
        "user_idx int, item_idx int, split string")
    got = {(r.user_idx, r.item_idx, r.split): (r.cold_user, r.cold_item)
           for r in SP.mark_cold(df).collect()}
    assert got == {(0, 0, "train"): (False, False), (0, 1, "test"): (False, True),
                   (1, 0, "test"): (True, False), (0, 0, "valid"): (False, False)}


def test_split_stage_writes_amounts_for_every_protocol(spark, make_cfg):
    cfg = make_cfg(**{"confidence.amount.purchase": "sum_value"})
    lake = Lake(cfg.lake)
    # 3 users x 4 items, one view a day; pair (0, 0) also has an early view and two purchases
    rows = [(f"u{u}", f"i{i}", "view", None, T0 + timedelta(days=1 + 4 * i + u), "b0")
            for u in range(3) for i in range(4)]
    rows += [("u0", "i0", "view", None, T0, "b0"), ("u0", "i0", "purchase", 6.0, T0, "b0"),
             ("u0", "i0", "purchase", 1.5, T0, "b0")]
    lake.write(spark.createDataFrame(rows, "user_id string, item_id string, behavior string, "
                                           "value double, ts timestamp, batch_id string"),
               L.SILVER_EVENTS)
    lake.write(spark.createDataFrame([(f"u{u}", u) for u in range(3)], "user_id string, user_idx int"),
               L.SILVER_USER_INDEX)
    lake.write(spark.createDataFrame([(f"i{i}", i) for i in range(4)], "item_id string, item_idx int"),
               L.SILVER_ITEM_INDEX)
    lake.write(build_interactions(read_indexed_events(spark, lake), cfg=cfg), L.GOLD_INTERACTIONS)
    for protocol in ("stratified", "temporal", "leave_last_out"):
        SP.main(spark, cfg.with_(**{"split.protocol": protocol}))
    splits = lake.read(spark, L.GOLD_SPLITS)
    vocab = cfg.vocabulary
    assert splits.columns == [*S.SPLIT_COLUMNS, *[S.count_col(b) for b in vocab],
                              *[S.conf_col(b) for b in vocab], *[S.amount_col(b) for b in vocab]]
    first = {r.protocol: r for r in splits.where("user_idx = 0 AND item_idx = 0").collect()}
    assert set(first) == {"stratified", "temporal", "leave_last_out"}
    for r in first.values():  # undecayed count of views, sum of purchase values, 0.0 when absent
        assert (r.amt_view, r.amt_purchase, r.amt_cart, r.amt_rating) == (2.0, 7.5, 0.0, 0.0)
    assert splits.where(F.col(S.amount_col(S.VIEW)).isNull()).count() == 0
