"""Explicit-rating prediction: RMSE / MAE in NumPy and Spark against the plain-Python reference,
and explicit ALS (``als.explicit_behavior``) on planted low-rank ratings, through fit, the lake
and evaluate."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest

from common import lake as L
from common import ranking
from common import schema as S
from common.config import ConfigError
from common.lake import Lake
from tests.reference import metrics as RM


def test_rating_metrics_known_answer_and_reference():
    got = ranking.rating_metrics([1.0, 3.0, 5.0], [2.0, 3.0, 3.0], train_mean=3.0)
    assert got == pytest.approx({"rmse": math.sqrt(5 / 3), "mae": 1.0,
                                 "rmse_mean": math.sqrt(8 / 3), "mae_mean": 4 / 3, "pairs": 3.0})
    rng = np.random.default_rng(0)
    y, p = rng.integers(1, 6, 200).astype(float), rng.random(200) * 4 + 1
    rmse, mae = RM.rmse_mae(y.tolist(), p.tolist())
    got = ranking.rating_metrics(y, p, train_mean=3.2)
    assert got["rmse"] == pytest.approx(rmse, rel=1e-12) and got["mae"] == pytest.approx(mae)
    assert math.isnan(ranking.rating_metrics([], [], 3.0)["rmse"])


def test_spark_rating_metrics_equal_numpy_and_skip_pairs_without_a_prediction(spark):
    from jobs.evaluate import rating_metrics_spark

    rng = np.random.default_rng(3)
    keys = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 40, 300),
                                                     rng.integers(0, 25, 300), strict=True)})
    y = rng.integers(1, 6, len(keys)).astype(float)
    p = rng.random(len(keys)) * 4 + 1
    predicted = len(keys) - 7  # the last 7 test pairs have no prediction (cold)
    schema = "user_idx int, item_idx int, {} double"
    preds = spark.createDataFrame([(u, i, float(q)) for (u, i), q in
                                   zip(keys[:predicted], p, strict=False)],
                                  schema.format("prediction"))
    test = spark.createDataFrame([(u, i, float(t)) for (u, i), t in zip(keys, y, strict=True)],
                                 schema.format("rating"))
    train = spark.createDataFrame([(0, 0, 2.0), (1, 1, 4.0), (2, 2, 4.5)], schema.format("rating"))
    got = rating_metrics_spark(preds, test, train)
    want = ranking.rating_metrics(y[:predicted], p[:predicted], train_mean=3.5)
    assert set(got) == set(ranking.RATING_METRICS)
    for m, v in want.items():
        assert got[m] == pytest.approx(v, rel=1e-9), m


def _planted_ratings(n_users=60, n_items=40, rank=2, seed=0):
    """Ratings 1..5 from a rank-2 taste model; 70 % of the pairs observed: 80 / 20 train / test."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, rank)), rng.normal(size=(n_items, rank))
    full = np.clip(3 + 0.9 * (u @ v.T), 1, 5)
    rows = []
    for a in range(n_users):
        for b in range(n_items):
            if rng.random() < 0.7:
                rows.append(("test" if rng.random() < 0.2 else "train", a, b, float(full[a, b])))
    return rows


def _write_rated_splits(spark, lake: Lake, rows, protocol="stratified"):
    """rows: (split, user_idx, item_idx, rating); confidence 1 (a rating is an interaction)."""
    df = spark.createDataFrame(
        [(protocol, s, u, i, 1.0, datetime(2024, 1, 1), 1, r) for s, u, i, r in rows],
        f"{S.PROTOCOL} string, {S.SPLIT} string, {S.USER_IDX} int, {S.ITEM_IDX} int, "
        f"{S.CONFIDENCE} double, {S.TS} timestamp, {S.count_col('rating')} int, "
        f"{S.amount_col('rating')} double")
    lake.write(df, L.GOLD_SPLITS, partition_by=[S.PROTOCOL])


def test_explicit_als_recovers_planted_ratings_and_evaluate_scores_them(spark, make_cfg):
    from jobs import evaluate, fit
    from jobs.influence import check_explainable

    cfg = make_cfg(run__run_id="als-explicit", als__explicit_behavior="rating", als__rank=3,
                   als__max_iter=15, als__reg_param=0.01, als__num_user_blocks=2,
                   als__num_item_blocks=2)
    lake = Lake(cfg.lake)
    rows = _planted_ratings()
    _write_rated_splits(spark, lake, rows)
    record = fit.main(spark, cfg)
    assert L.GOLD_PREDICTIONS in record.outputs
    preds = lake.read(spark, L.GOLD_PREDICTIONS).where("run_id = 'als-explicit'").toPandas()
    test = {(u, i): r for s, u, i, r in rows if s == "test"}
    train = [r for s, _, _, r in rows if s == "train"]
    assert set(preds[S.TARGET]) == {"rating:rating"}
    assert len(preds) == record.counts["prediction_rows"] == len(test)  # every user, item warm
    assert preds[S.PREDICTION].between(min(train), max(train)).all()  # clipped to train range
    truth = np.array([test[(u, i)] for u, i in zip(preds[S.USER_IDX], preds[S.ITEM_IDX],
                                                       strict=True)])
    rows_out = evaluate.main(spark, cfg)
    got = {r[S.METRIC]: r[S.VALUE] for r in rows_out if r[S.TARGET] == "rating:rating"}
    want = ranking.rating_metrics(truth, preds[S.PREDICTION].to_numpy(), float(np.mean(train)))
    for m, v in want.items():
        assert got[m] == pytest.approx(v, rel=1e-9), m
    # the planted structure (rank 2 + an offset: rank 3) is learnt: far better than the mean
    assert got["rmse"] < 0.5 * got["rmse_mean"], got
    stored = lake.read(spark, L.METRICS_EVALUATION).where(
        "run_id = 'als-explicit' AND target = 'rating:rating' AND metric = 'rmse'").collect()
    assert len(stored) == 1 and stored[0][S.K] == 0
    # its top-K still comes out (by predicted rating), and influence says it cannot explain it
    assert record.counts["recommendation_rows"] == 60 * 10
    from common.runs import read_run

    with pytest.raises(ConfigError, match="explicit ALS"):
        check_explainable(read_run(spark, lake, "als-explicit"))


def test_explicit_als_on_a_behaviour_the_split_lacks_is_a_clear_error(spark, make_cfg):
    from jobs import fit

    cfg = make_cfg(run__run_id="als-no-ratings", als__explicit_behavior="purchase")
    lake = Lake(cfg.lake)
    _write_rated_splits(spark, lake, _planted_ratings(n_users=5, n_items=5))
    with pytest.raises(ConfigError, match="cnt_purchase|purchase"):
        fit.main(spark, cfg)
    with pytest.raises(ConfigError, match="als.explicit_behavior"):
        make_cfg(als__explicit_behavior="thumbs")
