"""Real datasets from RECLAKE_DATA_DIR (never copied into the repo); skipped when it is unset."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.lake import Lake
from jobs import ingest, split, transform

pytestmark = [pytest.mark.realdata, pytest.mark.spark, pytest.mark.slow]


def _ingest(spark, cfg, fmt, path):
    c = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, source_format=fmt,
                                                            path=str(path)))
    return ingest.main(spark, c)


def test_movielens_100k_counts_and_stratified_split(spark, make_cfg, data_dir):
    path = data_dir / "movielens-100k" / "u.data"
    cfg = make_cfg()
    audit = _ingest(spark, cfg, "movielens-100k", path)
    assert (audit["rows_in"], audit["rows_clean_new"], audit["rows_quarantined"]) == (100_000,) * 2 + (0,)
    assert audit["details"]["new_users"] == 943 and audit["details"]["new_items"] == 1682
    lake = Lake(cfg.lake)
    silver = lake.read(spark, L.SILVER_EVENTS)
    assert silver.where(F.col(S.BEHAVIOR) == "rating").count() == 100_000
    hist = {int(r[0]): r[1] for r in silver.groupBy(S.VALUE).count().collect()}
    assert hist == {1: 6110, 2: 11370, 3: 27145, 4: 34174, 5: 21201}  # SOURCE.md
    transform.main(spark, cfg)
    assert lake.read(spark, L.GOLD_INTERACTIONS).count() == 100_000
    split.main(spark, cfg)  # stratified, seed 42, 75/25
    s = lake.read(spark, L.GOLD_SPLITS).where(F.col(S.PROTOCOL) == "stratified")
    ref = pd.read_csv(path, sep="\t", header=None, names=["u", "i", "r", "t"])
    n_u = ref.groupby("u").size()
    exp_train = int(sum(min(max(math.floor(0.75 * n + 0.5), 1), n - 1) for n in n_u))
    got = {r[S.SPLIT]: r["count"] for r in s.groupBy(S.SPLIT).count().collect()}
    assert got["train"] == exp_train
    # every test pair is unseen in train; cold test items (absent from train) were dropped
    train = s.where("split = 'train'").select(S.USER_IDX, S.ITEM_IDX)
    test = s.where("split = 'test'").select(S.USER_IDX, S.ITEM_IDX)
    assert test.intersect(train).count() == 0
    assert test.join(train.select(S.ITEM_IDX).distinct(), S.ITEM_IDX, "left_anti").count() == 0
    assert got["train"] + got["test"] <= 100_000


def test_taobao_sample_counts(spark, make_cfg, data_dir):
    cfg = make_cfg()
    audit = _ingest(spark, cfg, "taobao",
                    data_dir / "taobao-userbehavior-sample" / "UserBehavior.csv")
    assert audit["rows_in"] == audit["rows_clean_new"] == 84_474
    assert audit["details"]["new_users"] == 815 and audit["details"]["new_items"] == 55_367
    silver = Lake(cfg.lake).read(spark, L.SILVER_EVENTS)
    counts = {r[0]: r[1] for r in silver.groupBy(S.BEHAVIOR).count().collect()}
    assert counts == {"view": 75_871, "cart": 4_497, "fav": 2_356, "purchase": 1_750}
    assert silver.select(S.CATEGORY_ID).distinct().count() == 2_914
    # 35 rows carry timestamps before the official window; kept (inside ingest.ts_min)
    assert silver.where(F.col(S.TS) < F.lit("2017-11-24 16:00:00").cast("timestamp")).count() == 35
