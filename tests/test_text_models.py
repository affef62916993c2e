"""Content models (``jobs/models/text.py``) and the ``cold_items`` protocol: exact text top-K
against the NumPy / plain-Python reference, the random floor, the hybrid mixing rule, no
leakage of held-out items, and cold / warm evaluation against the reference metrics."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.config import load_config
from common.lake import Lake
from jobs import evaluate as EV
from jobs import split as SP
from jobs.fit import fit_run
from jobs.models import text as TX
from tests.reference import metrics as RM
from tests.reference import text as RT

T0 = datetime(2024, 1, 1)
N_USERS, N_ITEMS, DIM = 12, 30, 8
COLD = {3, 7, 11, 19, 25, 28}  # items with test rows only (the cold_items protocol's held-out)


def test_weighted_profiles_match_the_reference():
    rng = np.random.default_rng(0)
    ids = np.array([1, 4, 5, 9, 12], np.int64)
    vec = rng.normal(size=(5, 6)).astype(np.float32)
    users = rng.integers(0, 7, 60)
    items = rng.choice(np.array([1, 2, 4, 5, 9, 12, 30]), 60)  # 2 and 30 have no vector
    w = rng.uniform(0.1, 3.0, 60)
    got_u, got_n, got_p = TX.weighted_profiles(users, items, w, ids, vec)
    ref = RT.text_profiles(list(zip(users.tolist(), items.tolist(), w.tolist(), strict=True)),
                           {int(i): v.tolist() for i, v in zip(ids, vec, strict=True)})
    assert got_u.tolist() == sorted(ref)
    for u, n, p in zip(got_u, got_n, got_p, strict=True):
        np.testing.assert_allclose(p, ref[int(u)], rtol=1e-5, atol=1e-6)
        assert n == sum(1 for a, b in zip(users, items, strict=True) if a == u and b in ids)


def test_ridge_map_solves_the_normal_equations():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3))
    w = TX.ridge_map(x, y, 0.5)
    # the gradient of ||xW - y||^2 + lam ||W||^2 vanishes at the solution
    np.testing.assert_allclose(x.T @ (x @ w - y) + 0.5 * w, 0, atol=1e-9)
    np.testing.assert_allclose(TX.ridge_map(x, y, 0.0), np.linalg.lstsq(x, y, rcond=None)[0],
                               atol=1e-9)


def test_hybrid_slots_and_merge():
    assert TX.hybrid_slots(10, 2) == [4, 7]
    assert TX.hybrid_slots(10, 1) == [6]
    assert TX.hybrid_slots(5, 5) == [1, 2, 3, 4, 5]
    warm, cold = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [90, 91]
    assert TX.merge_hybrid(warm, cold, 10, 2) == [10, 11, 12, 90, 13, 14, 91, 15, 16, 17]
    # one cold item only: it takes the single-slot rank; short warm lists are filled by cold
    assert TX.merge_hybrid(warm, [90], 10, 2) == [10, 11, 12, 13, 14, 90, 15, 16, 17, 18]
    assert TX.merge_hybrid([10, 11], [90, 91, 92], 5, 1) == [10, 11, 90, 91, 92]
    assert TX.merge_hybrid(warm, cold, 10, 0) == warm


@pytest.fixture(scope="module")
def text_lake(spark, tmp_path_factory):
    """A lake with item index, text vectors, a category catalogue and a cold_items-shaped split:
    12 users, 30 items (6 of them cold: test rows only), random 8-dim vectors."""
    root = tmp_path_factory.mktemp("text") / "lake"
    lake = Lake(str(root))
    rng = np.random.default_rng(3)
    vec = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    lake.write(spark.createDataFrame([(f"i{i}", i) for i in range(N_ITEMS)],
                                     S.INDEX_SCHEMA[S.ITEM_IDX]), L.SILVER_ITEM_INDEX)
    emb = [(f"i{i}", i, "m1", "sha", "h", [float(x) for x in vec[i]], T0)
           for i in range(N_ITEMS) if i != 28]  # item 28 has no vector
    lake.write(spark.createDataFrame(emb, S.TEXT_EMBEDDINGS_SCHEMA), L.MODELS_TEXT_EMBEDDINGS)
    cats = [(f"i{i}", i, f"t{i}", f"t{i}", [f"g{i % 3}", f"h{i % 5}"], None, None, "test", "b", T0)
            for i in range(N_ITEMS)]
    lake.write(spark.createDataFrame(cats, S.ITEMS_SCHEMA), L.SILVER_ITEMS)
    rows = []
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, 12, replace=False)
        for j, i in enumerate(items):
            part = S.TEST if (int(i) in COLD or j >= 9) else S.TRAIN
            rows.append(("cold_items", part, u, int(i), float(rng.uniform(0.5, 4)),
                         T0 + timedelta(hours=j)))
    splits = spark.createDataFrame(
        rows, "protocol string, split string, user_idx int, item_idx int, confidence double, "
              "ts timestamp")
    lake.write(splits, L.GOLD_SPLITS)
    return {"root": str(root), "lake": lake, "vec": vec, "rows": rows}


def _cfg(text_lake, **values):
    return load_config(values={"lake": text_lake["root"], "split.protocol": "cold_items",
                               "spark.shuffle_partitions": 2, **values})


def _recs(spark, lake, run_id):
    out: dict[int, list[tuple[int, float]]] = {}
    for r in lake.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col(S.RUN_ID) == run_id).orderBy(
            S.USER_IDX, S.RANK).collect():
        out.setdefault(r.user_idx, []).append((r.item_idx, r.score))
    return out


def _train(text_lake):
    return [(u, i, c) for _, part, u, i, c, _ in text_lake["rows"] if part == S.TRAIN]


@pytest.mark.parametrize("candidates", ["all", "cold"])
def test_text_model_exact_top_k_against_the_reference(spark, text_lake, candidates):
    cfg = _cfg(text_lake, **{"run.model": "text", "run.run_id": f"text-{candidates}",
                             "recommend.k": 5, "recommend.candidates": candidates})
    rec = fit_run(spark, cfg)
    lake = text_lake["lake"]
    # profiles average unit item vectors (MiniLM's are unit already)
    vectors = {i: (v / np.linalg.norm(v)).tolist() for i, v in enumerate(text_lake["vec"])
               if i != 28}
    train = _train(text_lake)
    profiles = RT.text_profiles(train, vectors)
    every = sorted({i for _, _, _, i, _, _ in text_lake["rows"]})
    warm = {i for _, i, _ in train}
    cands = every if candidates == "all" else [i for i in every if i not in warm]
    got = _recs(spark, lake, rec.run_id)
    assert set(got) == set(profiles)
    for u, prof in profiles.items():
        seen = {i for uu, i, _ in train if uu == u}
        want = RT.cosine_top_k(prof, vectors, cands, seen, 5)
        assert [i for i, _ in got[u]] == [i for i, _ in want], u
        np.testing.assert_allclose([s for _, s in got[u]], [s for _, s in want], rtol=1e-4)
        assert 28 not in [i for i, _ in got[u]]  # no vector: never recommended
    stored = lake.read(spark, L.MODELS_USER_TEXT_PROFILES).where(
        F.col(S.RUN_ID) == rec.run_id).collect()
    assert len(stored) == len(profiles)
    for r in stored:
        np.testing.assert_allclose(r.vector, profiles[r.user_idx], rtol=1e-4, atol=1e-6)
    assert rec.params["recommend.candidates"] == candidates
    assert L.MODELS_TEXT_EMBEDDINGS in rec.inputs and L.MODELS_USER_TEXT_PROFILES in rec.outputs


def test_category_features_are_multi_hot(spark, text_lake):
    cfg = _cfg(text_lake, **{"run.model": "text", "run.run_id": "genre", "recommend.k": 4,
                             "text.features": "category"})
    fit_run(spark, cfg)
    # a film's multi-hot of its two categories, unit length
    cats = {i: [2 ** -0.5 if c in (f"g{i % 3}", f"h{i % 5}") else 0.0
                for c in sorted({f"g{j}" for j in range(3)} | {f"h{j}" for j in range(5)})]
            for i in range(N_ITEMS)}
    train = _train(text_lake)
    every = sorted({i for _, _, _, i, _, _ in text_lake["rows"]})
    got = _recs(spark, text_lake["lake"], "genre")
    for u, prof in RT.text_profiles(train, cats).items():
        seen = {i for uu, i, _ in train if uu == u}
        want = RT.cosine_top_k(prof, cats, every, seen, 4)
        np.testing.assert_allclose([s for _, s in got[u]], [s for _, s in want], rtol=1e-4)
        # ties are broken by item_idx: with few categories the order is fully determined
        assert [i for i, _ in got[u]] == [i for i, _ in want], u


def test_random_model_is_seeded_and_stays_in_its_candidates(spark, text_lake):
    lake = text_lake["lake"]
    for run_id, seed in (("rnd-a", 42), ("rnd-c", 5)):
        fit_run(spark, _cfg(text_lake, **{"run.model": "random", "run.run_id": run_id,
                                          "recommend.candidates": "cold", "recommend.k": 4,
                                          "split.seed": seed}))
    a, c = (_recs(spark, lake, r) for r in ("rnd-a", "rnd-c"))
    assert a != c
    warm = {i for _, i, _ in _train(text_lake)}
    cold = sorted({i for _, _, _, i, _, _ in text_lake["rows"]} - warm)
    for u, got in a.items():  # the documented draw: one generator per (seed, user)
        scores = np.random.default_rng([42, u]).random(len(cold)).astype(np.float32)
        want = sorted(zip(cold, scores.tolist(), strict=True), key=lambda p: (-p[1], p[0]))[:4]
        assert [i for i, _ in got] == [i for i, _ in want]
    assert {i for v in a.values() for i, _ in v} <= set(cold)


def test_hybrid_slots_and_cold_warm_evaluation(spark, text_lake):
    lake = text_lake["lake"]
    fit_run(spark, _cfg(text_lake, **{"run.model": "hybrid", "run.run_id": "hyb",
                                      "recommend.k": 10, "hybrid.warm_model": "popularity",
                                      "hybrid.cold_share": 0.2}))
    got = _recs(spark, lake, "hyb")
    warm = {i for _, i, _ in _train(text_lake)}
    for u, items in got.items():
        ranks = [r for r, (i, _) in enumerate(items, start=1) if i not in warm]
        assert ranks == [4, 7], (u, items)  # hybrid_slots(10, 2)
        assert [s for _, s in items] == pytest.approx([1 - r / 10 for r in range(10)])
    rows = EV.evaluate_run(spark, lake, run_id="hyb", ks=[10], target="all", dataset=None)
    by = {(r[S.TARGET], r[S.METRIC]): r[S.VALUE] for r in rows}
    assert {t for t, _ in by} == {"all", "all/cold", "all/warm"}
    recs = {u: [i for i, _ in v] for u, v in got.items()}
    test = [(u, i) for _, part, u, i, _, _ in text_lake["rows"] if part == S.TEST]
    for seg, keep in (("cold", lambda i: i not in warm), ("warm", lambda i: i in warm)):
        truth: dict[int, set[int]] = {}
        for u, i in test:
            if keep(i):
                truth.setdefault(u, set()).add(i)
        ref = RM.ranking_metrics({u: [i for i in v if keep(i)] for u, v in recs.items()},
                                 truth, 10)
        for m in ("ndcg", "precision", "recall", "hit_rate", "users_evaluated"):
            assert by[(f"all/{seg}", m)] == pytest.approx(ref[m], abs=1e-9), (seg, m)


def test_cold_items_split_holds_items_out_whole(spark, make_cfg):
    rng = np.random.default_rng(1)
    rows = [(int(u), int(i), 1.0, T0 + timedelta(hours=int(h)))
            for u in range(40) for h, i in enumerate(rng.choice(60, 15, replace=False))]
    inter = spark.createDataFrame(rows, "user_idx int, item_idx int, confidence double, "
                                        "last_ts timestamp")
    cfg = make_cfg(**{"split.protocol": "cold_items", "split.cold_item_fraction": 0.25})
    out = SP.split_cold_items(inter, cfg=cfg).collect()
    cold = {r.item_idx for r in SP.cold_item_set(inter, cfg=cfg).collect()}
    n_items = len({i for _, i, _, _ in rows})
    assert len(cold) == round(0.25 * n_items)
    assert len(out) == len(rows)
    for r in out:  # every row of a cold item is test; no cold item in train or valid
        if r.item_idx in cold:
            assert r.split == S.TEST
    train_items = {r.item_idx for r in out if r.split == S.TRAIN}
    assert not train_items & cold
    assert {r.item_idx for r in out if r.split == S.TEST} & cold == cold
    # warm rows follow the stratified protocol exactly
    warm = inter.where(~F.col(S.ITEM_IDX).isin(*cold))
    strat = {(r.user_idx, r.item_idx, r.split) for r in SP.split_stratified(warm, cfg=cfg).collect()}
    assert {(r.user_idx, r.item_idx, r.split) for r in out if r.item_idx not in cold} == strat
    # seeded: another seed holds out other items, the same seed the same ones
    again = {r.item_idx for r in SP.cold_item_set(inter.repartition(3), cfg=cfg).collect()}
    other = {r.item_idx for r in SP.cold_item_set(
        inter, cfg=cfg.with_(**{"split.seed": 9})).collect()}
    assert again == cold and other != cold
