"""Gold transforms: known answers on tiny inline data and a pandas reference on random data."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from common import schema as S
from jobs import transform as T

pytestmark = pytest.mark.spark

EV_DDL = ("user_idx int, item_idx int, behavior string, value double, ts timestamp, "
          "event_date date, category_id string, event_id string")
T0 = datetime(2024, 1, 10, 12, 0, 0)


def events_df(spark, rows):
    full = []
    for k, (u, i, b, v, ts, cat) in enumerate(rows):
        full.append((u, i, b, v, ts, ts.date(), cat, f"e{k:04d}"))
    return spark.createDataFrame(full, EV_DDL)


def one(df, **where):
    cond = F.lit(True)
    for k, v in where.items():
        cond = cond & (F.col(k) == v)
    (row,) = df.where(cond).collect()
    return row


def test_interactions_known_answer_linear(spark, make_cfg):
    ev = events_df(spark, [
        (0, 0, "view", None, T0, "c"), (0, 0, "view", None, T0, "c"),
        (0, 0, "purchase", 20.0, T0 + timedelta(hours=1), "c"),
        (0, 0, "rating", 4.0, T0 + timedelta(hours=2), "c"),
        (0, 0, "rating", 5.0, T0 + timedelta(hours=3), "c"),
        (1, 0, "cart", 20.0, T0, "c"),
    ])
    cfg = make_cfg(**{"confidence.f": "linear"})
    out = T.build_interactions(ev, cfg=cfg)
    r = one(out, user_idx=0, item_idx=0)
    assert (r.cnt_view, r.cnt_purchase, r.cnt_rating, r.cnt_cart, r.n_events) == (2, 1, 2, 0, 5)
    assert r.conf_view == 2.0 and r.conf_purchase == 8.0
    assert r.conf_rating == 4.5  # rating amount is the mean value
    assert r.confidence == 2.0 + 8.0 + 4.5 and r.rating == 4.5
    assert r.first_ts == T0 and r.last_ts == T0 + timedelta(hours=3)
    assert one(out, user_idx=1).confidence == 4.0


def test_interactions_log1p_and_half_life_decay(spark, make_cfg):
    ev = events_df(spark, [
        (0, 0, "view", None, T0, "c"),
        (0, 0, "view", None, T0 - timedelta(days=2), "c"),
        (0, 1, "fav", None, T0 - timedelta(days=1), "c"),
    ])
    cfg = make_cfg(**{"confidence.half_life_days": 2.0})
    out = T.build_interactions(ev, cfg=cfg, ref_ts=T0)
    # views: 1 (age 0) + 0.5 (age = one half-life) -> amount 1.5, f = log1p, weight 1
    assert one(out, item_idx=0).confidence == pytest.approx(math.log1p(1.5), rel=1e-12)
    assert one(out, item_idx=1).confidence == pytest.approx(3.0 * math.log1p(0.5 ** 0.5), rel=1e-12)


def test_interactions_match_pandas_reference(spark, make_cfg):
    rng = np.random.default_rng(3)
    n = 400
    behaviors = np.array(S.CANONICAL_BEHAVIORS)
    b = behaviors[rng.integers(0, 6, n)]
    vals = np.where(b == "rating", rng.integers(1, 6, n).astype(float), np.nan)
    rows = [
        (int(u), int(i), str(bb), None if np.isnan(v) else float(v),
         T0 - timedelta(hours=int(h)), "c")
        for u, i, bb, v, h in zip(rng.integers(0, 8, n), rng.integers(0, 6, n), b, vals,
                                  rng.integers(0, 200, n), strict=True)
    ]
    cfg = make_cfg(**{"confidence.half_life_days": 3.0, "confidence.f": "sqrt"})
    got = T.build_interactions(events_df(spark, rows), cfg=cfg, ref_ts=T0).toPandas()
    # reference
    df = pd.DataFrame(rows, columns=["u", "i", "b", "v", "ts", "cat"])
    df["d"] = 0.5 ** (((T0 - df.ts).dt.total_seconds() / 86400) / 3.0)
    w = cfg.confidence.weights
    ref = {}
    for (u, i), g in df.groupby(["u", "i"]):
        total = 0.0
        for beh in S.CANONICAL_BEHAVIORS:
            gb = g[g.b == beh]
            if gb.empty:
                continue
            amount = gb.v.mean() if beh == "rating" else gb.d.sum()
            total += w[beh] * math.sqrt(amount)
        ref[(u, i)] = total
    assert len(got) == len(ref)
    for r in got.itertuples():
        assert r.confidence == pytest.approx(ref[(r.user_idx, r.item_idx)], rel=1e-9)
        parts = sum(getattr(r, S.conf_col(b_)) for b_ in S.CANONICAL_BEHAVIORS)
        assert parts == pytest.approx(r.confidence, rel=1e-12)


def test_user_and_item_features(spark, make_cfg):
    ev = events_df(spark, [
        (0, 0, "view", None, T0, "c1"), (0, 1, "view", None, T0, "c1"),
        (0, 0, "cart", 5.0, T0 + timedelta(days=1), "c2"),
        (0, 0, "purchase", 5.0, T0 + timedelta(days=1), "c2"),
        (1, 0, "click", None, T0 - timedelta(days=3), "c2"),
    ])
    cfg = make_cfg()
    ref = T0 + timedelta(days=2)
    u = T.build_user_features(ev, cfg=cfg, ref_ts=ref)
    r = one(u, user_idx=0)
    assert (r.n_events, r.n_view, r.n_cart, r.n_purchase) == (4, 2, 1, 1)
    assert (r.distinct_items, r.distinct_categories, r.active_days) == (2, 2, 2)
    assert (r.view_to_cart, r.cart_to_purchase, r.view_to_purchase) == (0.5, 1.0, 0.5)
    assert r.category_entropy == pytest.approx(math.log(2))
    assert r.recency_days == pytest.approx(1.0)
    r1 = one(u, user_idx=1)
    assert r1.view_to_cart == 0.0 and r1.cart_to_purchase is None and r1.recency_days == 5.0
    items = T.build_item_features(ev, cfg=cfg, ref_ts=ref, n_users=4)
    i0 = one(items, item_idx=0)
    assert (i0.distinct_users, i0.popularity, i0.popularity_rank) == (2, 0.5, 1)
    assert i0.view_to_cart == 0.5 and i0.cart_to_purchase == 1.0
    assert one(items, item_idx=1).popularity_rank == 2


def test_sequences_keep_latest_in_time_order(spark, make_cfg):
    ev = events_df(spark, [
        (0, 5, "view", None, T0 + timedelta(minutes=3), "c"),
        (0, 6, "cart", None, T0 + timedelta(minutes=1), "c"),
        (0, 7, "view", None, T0 + timedelta(minutes=2), "c"),
        (0, 8, "view", None, T0, "c"),
        (1, 9, "fav", None, T0, "c"),
    ])
    out = T.build_sequences(ev, cfg=make_cfg(**{"sequences.max_len": 3}))
    r = one(out, user_idx=0)
    assert r.item_seq == [6, 7, 5] and r.behavior_seq == ["cart", "view", "view"]
    assert r.ts_seq == sorted(r.ts_seq) and (r.length, r.n_events) == (3, 4)
    assert one(out, user_idx=1).item_seq == [9]
