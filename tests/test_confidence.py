"""Confidence rebuilt from stored amounts (tuning): equal to the build, known answers, errors."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from common import schema as S
from common.config import ConfigError
from common.interactions import build_interactions, rebuild_confidence
from tests.test_transform import T0, events_df, one

pytestmark = pytest.mark.spark

VOCAB = S.CANONICAL_BEHAVIORS
CONF_COLS = [S.USER_IDX, S.ITEM_IDX, *[S.conf_col(b) for b in VOCAB], S.CONFIDENCE]


def mixed_events(spark):
    """Several events per pair, every behaviour, values on purchase and rating."""
    h = lambda n: T0 - timedelta(hours=n)  # noqa: E731
    return events_df(
        spark,
        [
            (0, 0, "view", None, h(0), "c"),
            (0, 0, "view", None, h(30), "c"),
            (0, 0, "view", None, h(60), "c"),
            (0, 0, "purchase", 20.0, h(5), "c"),
            (0, 0, "purchase", 5.0, h(50), "c"),
            (0, 0, "rating", 4.0, h(1), "c"),
            (0, 0, "rating", 5.0, h(2), "c"),
            (0, 1, "click", None, h(3), "c"),
            (0, 1, "cart", 7.0, h(4), "c"),
            (0, 1, "fav", None, h(100), "c"),
            (1, 0, "rating", 2.0, h(7), "c"),
            (1, 2, "view", None, h(9), "c"),
        ],
    )


def as_split_rows(interactions):
    """gold/splits-like rows: ts is the pair's last_ts, no n_events / rating / first_ts."""
    return interactions.select(
        F.lit("stratified").alias(S.PROTOCOL),
        F.lit(S.TRAIN).alias(S.SPLIT),
        S.USER_IDX,
        S.ITEM_IDX,
        S.CONFIDENCE,
        F.col(S.LAST_TS).alias(S.TS),
        *[S.count_col(b) for b in VOCAB],
        *[S.conf_col(b) for b in VOCAB],
        *[S.amount_col(b) for b in VOCAB],
    )


def test_amounts_are_undecayed_and_zero_when_absent(spark, make_cfg):
    cfg = make_cfg(**{"confidence.half_life_days": 1.0, "confidence.amount.purchase": "sum_value"})
    r = one(build_interactions(mixed_events(spark), cfg=cfg), user_idx=0, item_idx=0)
    amounts = {b: getattr(r, S.amount_col(b)) for b in VOCAB}
    # count, sum of values, mean of values: none of them decayed
    assert amounts == {
        "view": 3.0,
        "click": 0.0,
        "cart": 0.0,
        "fav": 0.0,
        "purchase": 25.0,
        "rating": 4.5,
    }
    assert all(isinstance(v, float) for v in amounts.values())


@pytest.mark.parametrize(
    "trial",
    [
        {"confidence.f": "linear"},
        {"confidence.f": "sqrt", "confidence.weights.view": 0.25, "confidence.weights.fav": 0.0},
        {"confidence.f": "binary", "confidence.weights.purchase": 3.5},
        {"confidence.weights.cart": 11.0, "confidence.weights.rating": 0.5},  # log1p
    ],
)
def test_rebuild_without_half_life_reproduces_the_build_exactly(spark, make_cfg, trial):
    amount = {"confidence.amount.purchase": "sum_value"}
    stored = as_split_rows(build_interactions(mixed_events(spark), cfg=make_cfg(**amount)))
    cfg = make_cfg(**amount, **trial)
    expected = build_interactions(mixed_events(spark), cfg=cfg).select(*CONF_COLS)
    got = rebuild_confidence(stored, cfg=cfg)
    assert got.columns == stored.columns  # conf_<b> / confidence replaced in place
    assertDataFrameEqual(got.select(*CONF_COLS), expected, rtol=0.0, atol=0.0)
    # gold/interactions rows (last_ts, extra columns) rebuild the same way
    inter = build_interactions(mixed_events(spark), cfg=make_cfg(**amount))
    assertDataFrameEqual(
        rebuild_confidence(inter, cfg=cfg).select(*CONF_COLS), expected, rtol=0.0, atol=0.0
    )


def test_rebuild_known_answers_with_other_weights(spark, make_cfg):
    stored = build_interactions(
        events_df(
            spark,
            [
                (0, 0, "view", None, T0, "c"),
                (0, 0, "view", None, T0, "c"),
                (0, 0, "view", None, T0, "c"),
                (0, 0, "purchase", 9.0, T0, "c"),
                (0, 1, "view", None, T0, "c"),
                (1, 0, "rating", 4.0, T0, "c"),
                (1, 0, "rating", 5.0, T0, "c"),
            ],
        ),
        cfg=make_cfg(),
    )
    # view weight 0 drops the view part; linear f: purchase 8 * 1, rating 2 * mean 4.5
    linear = rebuild_confidence(
        stored,
        cfg=make_cfg(
            **{
                "confidence.f": "linear",
                "confidence.weights.view": 0.0,
                "confidence.weights.rating": 2.0,
            }
        ),
    )
    got = {
        (r.user_idx, r.item_idx): (r.conf_view, r.conf_purchase, r.conf_rating, r.confidence)
        for r in linear.collect()
    }
    assert got == {
        (0, 0): (0.0, 8.0, 0.0, 8.0),
        (0, 1): (0.0, 0.0, 0.0, 0.0),
        (1, 0): (0.0, 0.0, 9.0, 9.0),
    }
    # binary f: every present behaviour counts its weight once
    binary = rebuild_confidence(
        stored, cfg=make_cfg(**{"confidence.f": "binary", "confidence.weights.view": 0.5})
    )
    got = {(r.user_idx, r.item_idx): r.confidence for r in binary.collect()}
    assert got == {(0, 0): 0.5 + 8.0, (0, 1): 0.5, (1, 0): 1.0}


def test_rebuild_with_half_life_one_event_per_pair_equals_the_build(spark, make_cfg):
    ev = events_df(
        spark,
        [
            (0, 0, "view", None, T0, "c"),
            (0, 1, "purchase", 12.0, T0 - timedelta(days=1), "c"),
            (0, 2, "cart", None, T0 - timedelta(days=3), "c"),
            (1, 0, "rating", 3.0, T0 - timedelta(days=4), "c"),  # mean_value: never decayed
            (1, 1, "fav", None, T0 - timedelta(days=10), "c"),
        ],
    )
    amount = {"confidence.amount.purchase": "sum_value"}
    cfg = make_cfg(**amount, **{"confidence.half_life_days": 2.0, "confidence.weights.cart": 6.0})
    expected = build_interactions(ev, cfg=cfg).select(*CONF_COLS)  # ref_ts: latest event, T0
    stored = as_split_rows(build_interactions(ev, cfg=make_cfg(**amount)))  # undecayed build
    got = rebuild_confidence(stored, cfg=cfg)  # ref_ts: latest ts of the rows, T0
    assertDataFrameEqual(got.select(*CONF_COLS), expected, rtol=1e-12, atol=0.0)
    r = one(got, user_idx=0, item_idx=1)
    assert r.confidence == pytest.approx(8.0 * math.log1p(12.0 * 0.5**0.5), rel=1e-12)
    assert one(got, user_idx=1, item_idx=0).confidence == pytest.approx(math.log1p(3.0))
    # an explicit ref_ts one half-life later halves every decayed amount
    later = rebuild_confidence(stored, cfg=cfg, ref_ts=T0 + timedelta(days=2))
    assert one(later, user_idx=0, item_idx=0).confidence == pytest.approx(math.log1p(0.5))


def test_rebuild_decays_a_pair_by_its_last_event(spark, make_cfg):
    # two views 0 and 2 days old, half-life 2: the build sums 1 + 0.5, the rebuild takes
    # 2 events at the last event's age (the documented approximation)
    ev = events_df(
        spark, [(0, 0, "view", None, T0, "c"), (0, 0, "view", None, T0 - timedelta(days=2), "c")]
    )
    cfg = make_cfg(**{"confidence.half_life_days": 2.0})
    built = build_interactions(ev, cfg=cfg)
    assert one(built).confidence == pytest.approx(math.log1p(1.5), rel=1e-12)
    assert one(rebuild_confidence(built, cfg=cfg)).confidence == pytest.approx(
        math.log1p(2.0), rel=1e-12
    )


def test_rebuild_missing_amount_column(spark, make_cfg):
    stored = as_split_rows(build_interactions(mixed_events(spark), cfg=make_cfg()))
    old = stored.drop(S.amount_col(S.VIEW))  # a table written before amounts were stored
    with pytest.raises(ConfigError, match=r"amt_view.*reclake transform.*reclake split"):
        rebuild_confidence(old, cfg=make_cfg())
    # a behaviour of weight 0 needs no amount: its part is 0
    got = rebuild_confidence(old, cfg=make_cfg(**{"confidence.weights.view": 0.0})).collect()
    assert {r.conf_view for r in got} == {0.0}
    assert all(
        r.confidence == pytest.approx(sum(getattr(r, S.conf_col(b)) for b in VOCAB)) for r in got
    )
