"""ALS / popularity job: exact seen-excluding top-K, known answers, lake outputs and re-runs."""

from __future__ import annotations

import numpy as np
import pytest

from common import lake as L
from common import schema as S
from common.lake import Lake
from common.topk import top_k_dot, top_k_global_order
from tests.reference.topk import reference_top_k

# --- the NumPy kernel (no Spark) ---------------------------------------------------------------


def _as_pairs(counts, items, scores):
    return [
        [(int(i), float(s)) for i, s in zip(items[u][: counts[u]], scores[u][: counts[u]], strict=False)]
        for u in range(len(counts))
    ]


@pytest.mark.parametrize("seed", range(40))
def test_top_k_dot_equals_full_sort_with_ties_blocks_and_heavy_users(seed):
    rng = np.random.default_rng(seed)
    b, n, r, k = rng.integers(1, 30), rng.integers(1, 50), rng.integers(1, 4), rng.integers(1, 12)
    # small integer factors: many exactly tied scores, also across block boundaries
    u = rng.integers(-2, 3, (b, r)).astype(np.float32)
    y = rng.integers(-2, 3, (n, r)).astype(np.float32)
    ids = np.sort(rng.choice(500, n, replace=False))
    # seen lists from empty to the whole catalogue, plus ids the model does not know
    seen = [rng.choice(np.concatenate([ids, [900, 901]]), rng.integers(0, n + 3), replace=False)
            for _ in range(b)]
    got = top_k_dot(u, y, ids, seen, k, item_block=int(rng.integers(1, 15)))
    assert _as_pairs(*got) == reference_top_k(u, y, ids, seen, k)
    counts, items, scores = got
    assert items.shape == (b, k) and np.all(items[np.arange(k)[None, :] >= counts[:, None]] == -1)


def test_top_k_dot_heavy_user_whose_seen_items_are_all_the_best():
    # over-fetching K + m fails here: the user has seen the 50 best items
    rng = np.random.default_rng(1)
    y = rng.standard_normal((200, 8)).astype(np.float32)
    u = rng.standard_normal((1, 8)).astype(np.float32)
    ids = np.arange(200)
    order = np.argsort(-(u @ y.T)[0])
    counts, items, _ = top_k_dot(u, y, ids, [order[:50]], 10, item_block=64)
    assert counts[0] == 10
    assert list(items[0]) == list(order[50:60])


def test_top_k_global_order_skips_seen_exactly():
    ranked = np.array([7, 3, 9, 1, 4, 0])
    got = top_k_global_order(ranked, [np.array([]), np.array([3, 9, 42]), ranked, [7, 1]], 3)
    assert [list(ranked[p]) for p in got] == [[7, 3, 9], [7, 1, 4], [], [3, 9, 4]]


# --- Spark ---------------------------------------------------------------------------------------


def _write_splits(spark, lake: Lake, rows, protocol="stratified"):
    """rows: (split, user_idx, item_idx, confidence)."""
    from datetime import datetime

    df = spark.createDataFrame(
        [(protocol, s, u, i, float(c), datetime(2024, 1, 1)) for s, u, i, c in rows],
        f"{S.PROTOCOL} string, {S.SPLIT} string, {S.USER_IDX} int, {S.ITEM_IDX} int, "
        f"{S.CONFIDENCE} double, {S.TS} timestamp",
    )
    lake.write(df, L.GOLD_SPLITS, partition_by=[S.PROTOCOL])


def _checkerboard(n_users=20, n_items=20):
    """Two communities; each user liked every item of its own half except one withheld item."""
    rows = []
    withheld = {}
    for u in range(n_users):
        half = u % 2
        own = [i for i in range(n_items) if i % 2 == half]
        w = own[u % len(own)]
        withheld[u] = w
        rows += [("train", u, i, 1.0 + (i % 3)) for i in own if i != w]
        rows.append(("test", u, w, 1.0))
    return rows, withheld


@pytest.fixture
def checker_lake(spark, make_cfg):
    def build(**values):
        cfg = make_cfg(als__rank=4, als__max_iter=8, als__reg_param=0.05, als__alpha=2.0,
                       als__num_user_blocks=2, als__num_item_blocks=2, recommend__k=3,
                       **values)
        lake = Lake(cfg.lake)
        rows, withheld = _checkerboard()
        _write_splits(spark, lake, rows)
        return cfg, lake, rows, withheld

    return build


def test_als_checkerboard_withheld_item_comes_first_and_seen_never(spark, checker_lake):
    from jobs import als

    cfg, lake, rows, withheld = checker_lake(run__run_id="als-cb")
    record = als.main(spark, cfg)
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where("run_id = 'als-cb'").toPandas()
    assert set(recs[S.MODEL]) == {"als"} and set(recs[S.PROTOCOL]) == {"stratified"}
    assert len(recs) == 20 * 3 and set(recs[S.RANK]) == {1, 2, 3}
    first = recs[recs[S.RANK] == 1].set_index(S.USER_IDX)[S.ITEM_IDX].to_dict()
    assert first == withheld
    train = {(u, i) for s, u, i, _ in rows if s == "train"}
    assert not any((u, i) in train for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=False))
    # scores are the stored factors' dot products, ranks follow them
    uf = lake.read(spark, L.MODELS_ALS_USER_FACTORS).toPandas().set_index(S.IDX)[S.FACTORS]
    itf = lake.read(spark, L.MODELS_ALS_ITEM_FACTORS).toPandas().set_index(S.IDX)[S.FACTORS]
    assert len(uf) == 20 and len(itf) == 20
    dots = [float(np.dot(uf[u], itf[i])) for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=False)]
    np.testing.assert_allclose(recs[S.SCORE], dots, rtol=1e-5, atol=1e-6)
    assert (recs.sort_values([S.USER_IDX, S.RANK]).groupby(S.USER_IDX)[S.SCORE]
            .apply(lambda s: s.is_monotonic_decreasing).all())
    # run record and a loadable Spark model
    assert record.counts["train_rows"] == len(train)
    assert lake.read(spark, L.MODELS_RUNS).where("run_id = 'als-cb'").count() == 1
    from common.runs import read_run

    stored = read_run(spark, lake, "als-cb")
    assert stored == record.__class__(**{**record.__dict__, "created_at": stored.created_at})
    assert stored.params["als.rank"] == 4 and stored.params["recommend.exclude_seen"] is True
    assert stored.inputs == {L.GOLD_SPLITS: lake.version(spark, L.GOLD_SPLITS)}
    assert set(stored.outputs) == {L.GOLD_RECOMMENDATIONS, L.MODELS_ALS_USER_FACTORS,
                                   L.MODELS_ALS_ITEM_FACTORS}
    from pyspark.ml.recommendation import ALSModel

    model = ALSModel.load(stored.artefacts["spark_model"])
    assert model.rank == 4 and model.userFactors.count() == 20


def test_als_rerun_replaces_rows_and_other_runs_stay(spark, checker_lake):
    from jobs import als

    cfg, lake, _, _ = checker_lake(run__run_id="r1", als__save_model=False)
    als.main(spark, cfg)
    als.main(spark, cfg.with_(**{"run.run_id": "r2"}))
    als.main(spark, cfg)  # r1 again
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS)
    counts = {r[0]: r[1] for r in recs.groupBy(S.RUN_ID).count().collect()}
    assert counts == {"r1": 60, "r2": 60}
    for t in (L.MODELS_ALS_USER_FACTORS, L.MODELS_ALS_ITEM_FACTORS):
        assert lake.read(spark, t).where("run_id = 'r1'").count() == 20
    assert lake.read(spark, L.MODELS_RUNS).where("run_id = 'r1'").count() == 1


def test_popularity_known_answer(spark, make_cfg):
    from jobs import als

    cfg = make_cfg(run__model="popularity", run__run_id="pop", recommend__k=2)
    lake = Lake(cfg.lake)
    # item 5: 3 users, item 6: 2 users, items 7 and 8: 1 user each (tie -> 7 first)
    rows = [("train", 0, 5, 1), ("train", 1, 5, 1), ("train", 2, 5, 1), ("train", 0, 6, 1),
            ("train", 1, 6, 1), ("train", 2, 7, 1), ("train", 1, 8, 1), ("test", 0, 7, 1),
            ("test", 9, 5, 1)]  # user 9: held out without train history (cold)
    _write_splits(spark, lake, rows)
    record = als.main(spark, cfg)
    assert record.counts["heldout_rows_cold_user"] == 1
    got = lake.read(spark, L.GOLD_RECOMMENDATIONS).orderBy(S.USER_IDX, S.RANK).toPandas()
    as_lists = got.groupby(S.USER_IDX)[S.ITEM_IDX].apply(list).to_dict()
    assert as_lists == {0: [7, 8], 1: [7], 2: [6, 8]}
    assert got[got[S.ITEM_IDX] == 6][S.SCORE].tolist() == [pytest.approx(2 / 3)]
    assert set(got[S.MODEL]) == {"popularity"}


def test_recommend_dot_matches_reference_and_blocked_path(spark):
    from jobs.models import topk as als

    rng = np.random.default_rng(3)
    n_users, n_items, r, k = 40, 70, 3, 5
    uf = rng.integers(-2, 3, (n_users, r)).astype(np.float32)  # ties
    yf = rng.integers(-2, 3, (n_items, r)).astype(np.float32)
    seen = [rng.choice(n_items, rng.integers(0, 68), replace=False) for _ in range(n_users)]
    users = spark.createDataFrame(
        [(u, uf[u].tolist(), seen[u].tolist()) for u in range(n_users)],
        f"{S.USER_IDX} int, features array<float>, seen array<int>",
    )
    ids = np.arange(n_items)
    expected = reference_top_k(uf, yf, ids, seen, k)

    def lists(df):
        pdf = df.orderBy(S.USER_IDX, S.RANK).toPandas()
        out = [[] for _ in range(n_users)]
        for u, i, s in zip(pdf[S.USER_IDX], pdf[S.ITEM_IDX], pdf[S.SCORE], strict=False):
            out[u].append((int(i), float(s)))
        return out

    assert lists(als.recommend_dot(users, ids[::-1].copy(), yf[::-1].copy(), k=k, user_batch=7,
                                   item_block=9)) == expected
    items = spark.createDataFrame([(int(i), yf[i].tolist()) for i in ids],
                                  "id int, features array<float>")
    blocked = als.recommend_dot_blocked(spark, users, items, k=k, user_batch=16, item_block=8,
                                        n_blocks=4)
    assert lists(blocked) == expected


def test_train_stage_hands_a_spark_model_to_fit(spark, checker_lake):
    """`reclake train --model popularity` is `reclake fit --model popularity` (one run path)."""
    from jobs import cli

    cfg, lake, _, _ = checker_lake()
    assert cli.main(["--lake", cfg.lake, "--set", "als.num_user_blocks=2", "train", "--model",
                     "popularity", "--protocol", "stratified", "--run-id", "pop-via-train",
                     "--k", "3"]) == 0
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where("run_id = 'pop-via-train'")
    assert recs.count() == 20 * 3 and {r[0] for r in recs.select(S.MODEL).distinct().collect()} \
        == {"popularity"}


def test_missing_protocol_is_a_clear_error(spark, checker_lake):
    from common.config import ConfigError
    from jobs import als

    cfg, _, _, _ = checker_lake(split__protocol="temporal")
    with pytest.raises(ConfigError, match="no train rows for protocol 'temporal'"):
        als.main(spark, cfg)
