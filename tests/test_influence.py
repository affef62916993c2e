"""Influence maths against brute force and benfred/implicit, and the Spark job end to end."""

from __future__ import annotations

import numpy as np
import pytest

from common import influence as I
from tests.reference import influence as ref

ALPHA, REG = 0.8, 0.15


def _user(rng, n_items=60, k=6, n_hist=12, n_b=3):
    y = rng.standard_normal((n_items, k))
    hist = rng.choice(n_items, n_hist, replace=False)
    parts = rng.random((n_hist, n_b)) * (rng.random((n_hist, n_b)) < 0.6)
    parts[:, 0] += 0.05  # every item has at least one behaviour
    return y, hist, parts, parts.sum(axis=1)


@pytest.mark.parametrize("n_hist", [1, 2, 7, 30])
def test_contributions_sum_to_the_score_and_loo_equals_a_resolve(n_hist):
    rng = np.random.default_rng(n_hist)
    y, hist, parts, r = _user(rng, n_hist=n_hist)
    yty = I.gram(y)
    recs = np.setdiff1d(np.arange(60), hist)[:5]
    e = ref.explain_user(yty, y[hist], r, y[recs], alpha=ALPHA, reg=REG)
    x = ref.solve_user(yty, y[hist], r, alpha=ALPHA, reg=REG)
    np.testing.assert_allclose(e.x, x, rtol=1e-12, atol=1e-14)
    scores = y[recs] @ x
    np.testing.assert_allclose(e.contributions.sum(axis=1), scores, rtol=1e-9)
    for j in range(n_hist):
        keep = np.arange(n_hist) != j
        xj = ref.solve_user(yty, y[hist][keep], r[keep], alpha=ALPHA, reg=REG)
        np.testing.assert_allclose(e.loo_scores[:, j], y[recs] @ xj, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(e.loo_vectors(np.array([j]))[0], xj, rtol=1e-8, atol=1e-10)


def test_behaviour_parts_sum_to_contribution_and_type_removal_resolves():
    rng = np.random.default_rng(7)
    y, hist, parts, r = _user(rng)
    yty = I.gram(y)
    recs = np.setdiff1d(np.arange(60), hist)[:4]
    out = ref.explain_recommendations(yty, y[hist], r, parts, y[recs], alpha=ALPHA, reg=REG,
                                    top_n=3)
    np.testing.assert_allclose(out["base"] + out["parts"].sum(axis=2), out["contrib"],
                               rtol=1e-12, atol=1e-14)
    for b in range(parts.shape[1]):
        rb = r - parts[:, b]
        keep = rb > 1e-12
        xb = ref.solve_user(yty, y[hist][keep], rb[keep], alpha=ALPHA, reg=REG)
        np.testing.assert_allclose(out["type_delta"][b], y[recs] @ xb - out["scores"],
                                   rtol=1e-9, atol=1e-12)
    # top sources are the largest |contributions|
    for i in range(len(recs)):
        assert set(out["top_src"][i]) == set(np.argsort(-np.abs(out["contrib"][i]))[:3])


@pytest.mark.parametrize(("n_hist", "chunk"), [(1, 4096), (2, 1), (7, 3), (30, 4096), (30, 7)])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_stacked_kernel_equals_the_per_user_reference(n_hist, chunk, exclude_seen):
    """explain_users_batch (many users at once, history in chunks) gives the per-user numbers,
    and its leaves answers are a full rescoring of the counterfactual vectors."""
    rng = np.random.default_rng(100 + n_hist)
    n_items, k, n_b, n_r, top_n = 60, 6, 3, 4, 5
    y = rng.standard_normal((n_items, k))
    yty = I.gram(y)
    users = [_user(rng, n_items=n_items, k=k, n_hist=n_hist, n_b=n_b) for _ in range(5)]
    hist = np.stack([np.asarray(u[1]) for u in users])
    parts = np.stack([u[2] for u in users])
    r = parts.sum(axis=2)
    parts[0, :, 1] = r[0] - parts[0, :, 0] - parts[0, :, 2]  # user 0: type removal empties items
    recs = np.stack([np.setdiff1d(np.arange(n_items), h)[:n_r] for h in hist])
    settings = I.ExplainSettings(alpha=ALPHA, reg=REG, k=n_r, behaviors=("a", "b", "c"),
                                 exclude_seen=exclude_seen, top_n=top_n, pool=7, chunk=chunk)
    out = I.explain_users_batch(I.UserStack(hist=hist, ratings=r, parts=parts, recs=recs),
                                I.ItemFactors.from_rows(np.arange(n_items), y), settings)
    n_keep = min(top_n, n_hist)
    x_loo = out.loo_vectors()
    for u in range(len(users)):
        want = ref.explain_recommendations(yty, y[hist[u]], r[u], parts[u], y[recs[u]],
                                           alpha=ALPHA, reg=REG, top_n=top_n)
        np.testing.assert_allclose(out.x[u], want["x"], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(out.scores[u], want["scores"], rtol=1e-10, atol=1e-13)
        np.testing.assert_array_equal(out.top_src[u], want["top_src"])
        rr = np.arange(n_r)[:, None]
        src = want["top_src"]
        for key in ("contrib", "base", "loo_delta"):
            np.testing.assert_allclose(getattr(out, key)[u], want[key][rr, src], rtol=1e-8,
                                       atol=1e-11)
        np.testing.assert_allclose(out.parts[u], want["parts"][rr, src], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.tot_contrib[u], want["contrib"].sum(axis=1),
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.tot_contrib[u], out.scores[u], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.tot_parts[u], want["parts"].sum(axis=1), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(out.type_delta[u], want["type_delta"], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(out.conc[u], want["conc"], rtol=1e-9, atol=1e-12)
        # candidates of the top-K: every item, less the user's own when the run excluded them
        cands = np.setdiff1d(np.arange(n_items), hist[u]) if exclude_seen else np.arange(n_items)

        def leaves(xv, i, cands=cands):
            s = y @ xv
            return int((s[cands] > s[i]).sum()) >= n_r

        for b in range(n_b):
            assert list(out.type_leaves[u, b]) == [leaves(out.type_x[u, b], i) for i in recs[u]]
        # the counterfactual vectors are brute-force re-solves without each kept source
        for i in range(n_r):
            for s_i in range(n_keep):
                j = src[i, s_i]
                keep = np.arange(n_hist) != j
                xj = ref.solve_user(yty, y[hist[u]][keep], r[u][keep], alpha=ALPHA, reg=REG)
                np.testing.assert_allclose(x_loo[u, i, s_i], xj, rtol=1e-8, atol=1e-10)
                assert out.loo_leaves[u, i, s_i] == leaves(xj, recs[u, i])


@pytest.mark.parametrize("seed", range(40))
def test_stacked_leaves_check_matches_a_full_rescoring(seed):
    rng = np.random.default_rng(1000 + seed)
    n_items, f, u_n = int(rng.integers(12, 90)), 3, 4
    k = int(rng.integers(1, 6))
    n_seen = int(rng.integers(0, n_items - k - 2))
    y = rng.standard_normal((n_items, f))
    unknown = rng.choice(n_items, int(rng.integers(0, 3)), replace=False)
    y[unknown] = 0.0
    x = rng.standard_normal((u_n, f))
    seen = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), unknown), n_seen,
                                replace=False) for _ in range(u_n)])
    if rng.random() < 0.3:  # ties: duplicated items
        y[1] = y[0]
    recs = []
    for u in range(u_n):
        unseen = np.setdiff1d(np.arange(n_items), np.r_[seen[u], unknown])
        recs.append(unseen[np.argsort(-(y[unseen] @ x[u]), kind="stable")[:k]])
    recs = np.stack(recs)
    cand = x[:, None, :] + rng.standard_normal((u_n, 5, f)) * rng.random((u_n, 5, 1))
    need = rng.random((5, k)) < 0.7
    got, _ = I.leaves_top_k(x, cand, recs, seen, I.ItemIndex(y, unknown), k=k,
                            pool=int(rng.integers(0, 10)), need=need,
                            memory_doubles=int(rng.choice([1, 50, 4_000_000])))
    for u in range(u_n):
        unseen = np.setdiff1d(np.arange(n_items), np.r_[seen[u], unknown])
        for c in range(5):
            s = y @ cand[u, c]
            expected = [int((s[unseen] > s[i]).sum()) >= k for i in recs[u]]
            assert list(got[u, c]) == list(np.asarray(expected) & need[c])


@pytest.mark.parametrize("seed", range(60))
def test_top_k_check_matches_a_full_rescoring(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 6))
    n = int(rng.integers(k + 2, 80))
    y = rng.standard_normal((n, 3))
    x = rng.standard_normal(3)
    seen = rng.choice(n, int(rng.integers(0, n - k)), replace=False)
    unseen = np.setdiff1d(np.arange(n), seen)
    recs = unseen[np.argsort(-(y[unseen] @ x))[:k]]
    check = ref.TopKCheck(x, y, seen, recs, k=k, pool=int(rng.integers(0, 10)))
    new_x = x + rng.standard_normal((4, 3)) * rng.random()
    got = check.leaves(new_x)
    for c in range(4):
        s = y @ new_x[c]
        expected = [int((s[unseen] > s[i]).sum()) >= k for i in recs]
        assert list(got[c]) == expected


def test_contributions_equal_implicit_explain():
    implicit_als = pytest.importorskip("implicit.cpu.als")
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(3)
    y, hist, parts, r = _user(rng, n_items=40, k=5, n_hist=9)
    yty = I.gram(y)
    recs = np.setdiff1d(np.arange(40), hist)[:3]
    e = ref.explain_user(yty, y[hist], r, y[recs], alpha=ALPHA, reg=REG)
    # implicit's convention: user_items hold c_j (its alpha = 1), regularization is plain λ; Spark's
    # c_j = 1 + alpha r_j and λ·n_u (ALS-WR) map onto it exactly
    model = implicit_als.AlternatingLeastSquares(factors=5, regularization=REG * len(hist),
                                                 alpha=1.0)
    model.item_factors = y.astype(np.float64)
    model.user_factors = np.zeros((1, 5))
    c = 1.0 + ALPHA * r
    user_items = csr_matrix((c, (np.zeros(len(hist), dtype=int), hist)), shape=(1, 40))
    for row, item in enumerate(recs):
        total, top, _ = model.explain(0, user_items, int(item), N=len(hist))
        assert total == pytest.approx(e.scores[row], rel=1e-9)
        ours = {int(hist[j]): e.contributions[row, j] for j in range(len(hist))}
        for item_j, contrib in top:
            assert contrib == pytest.approx(ours[int(item_j)], rel=1e-9, abs=1e-12)


def test_gini_known_answers():
    from jobs.influence import gini_coefficient

    assert gini_coefficient(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert gini_coefficient(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)
    assert np.isnan(gini_coefficient(np.zeros(3)))


# --- the Spark job ---------------------------------------------------------------------------------


def _lake_with_als_run(spark, make_cfg, run_id="inf-als", **overrides):
    """gold/splits (30 users, 25 items, view and purchase parts), silver/{user,item}_index with
    ids unlike the indices, and one ALS run fitted on it (``reclake fit``)."""
    from datetime import datetime

    from common import lake as L
    from common import schema as S
    from common.lake import Lake
    from jobs import fit

    settings = dict(als__rank=4, als__max_iter=10, als__reg_param=0.1, als__alpha=0.5,
                    als__num_user_blocks=2, als__num_item_blocks=2, als__save_model=False,
                    recommend__k=4, run__model="als", run__run_id=run_id, influence__top_n=2,
                    influence__pool=3)
    cfg = make_cfg(**{**settings, **overrides})
    rng = np.random.default_rng(5)
    rows = []
    for u in range(30):
        items = rng.choice(25, int(rng.integers(2, 12)), replace=False)
        for n, i in enumerate(items):
            view = float(np.log1p(rng.integers(1, 4)))
            buy = float(8 * np.log1p(1)) if rng.random() < 0.3 else 0.0
            split = "test" if n == 0 else "train"
            rows.append(("stratified", split, u, int(i), view + buy, datetime(2024, 1, 1),
                         view, buy))
    lake = Lake(cfg.lake)
    lake.write(_splits_frame(spark, rows), L.GOLD_SPLITS, partition_by=[S.PROTOCOL])
    lake.write(spark.createDataFrame([(f"sku-{i:03d}", i) for i in range(25)],
                                     S.INDEX_SCHEMA[S.ITEM_IDX]), L.SILVER_ITEM_INDEX)
    lake.write(spark.createDataFrame([(f"cust-{u:03d}", u) for u in range(30)],
                                     S.INDEX_SCHEMA[S.USER_IDX]), L.SILVER_USER_INDEX)
    fit.main(spark, cfg)
    return cfg, lake, rows


def _splits_frame(spark, rows):
    from common import schema as S

    return spark.createDataFrame(
        rows, f"{S.PROTOCOL} string, {S.SPLIT} string, {S.USER_IDX} int, {S.ITEM_IDX} int, "
              f"{S.CONFIDENCE} double, {S.TS} timestamp, conf_view double, conf_purchase double")


def _brute_force_checks(ec, rows, y, *, k, exclude_seen, alpha=0.5, reg=0.1):
    """Every kept source's loo_delta and loo_leaves_top_k against a re-solve without it and a
    full rescoring (candidates: every item the model has, less the user's train items when
    ``exclude_seen``). Returns (rows checked, rows that leave)."""
    yty = I.gram(y)
    known = np.flatnonzero(np.linalg.norm(y, axis=1) > 0)
    train = [(u, i, c) for _, s, u, i, c, *_ in rows if s == "train"]
    checked = leaves = 0
    for r in ec[ec["source_item_idx"] >= 0].itertuples():
        hist = [(i, c) for u, i, c in train if u == r.user_idx and i != r.source_item_idx]
        x = ref.solve_user(yty, y[[i for i, _ in hist]], np.array([c for _, c in hist]),
                           alpha=alpha, reg=reg)
        assert r.loo_delta == pytest.approx(y[r.rec_item_idx] @ x - r.score, rel=1e-8, abs=1e-10)
        seen = {i for u, i, _ in train if u == r.user_idx} if exclude_seen else set()
        cands = [i for i in known if i not in seen]
        s_new = y @ x
        expected = sum(s_new[i] > s_new[r.rec_item_idx] for i in cands) >= k
        assert bool(r.loo_leaves_top_k) == expected
        leaves += expected
        checked += 1
    return checked, leaves


def _item_factors(spark, lake, n_items=25):
    from common import lake as L
    from common import schema as S

    itf = lake.read(spark, L.MODELS_ALS_ITEM_FACTORS).toPandas()
    y = np.zeros((n_items, len(itf[S.FACTORS].iloc[0])))
    y[itf[S.IDX].to_numpy()] = np.stack(itf[S.FACTORS].to_numpy())
    return y


@pytest.mark.spark
def test_influence_job_is_exact_against_spark_factors_and_brute_force(spark, make_cfg, capsys):
    from common import lake as L
    from common import schema as S
    from jobs import influence

    cfg, lake, rows = _lake_with_als_run(spark, make_cfg)
    summary = influence.main(spark, cfg)
    assert summary["x_rel_err_max"] <= 1e-4  # recomputed x_u vs Spark's stored user factors
    out = capsys.readouterr().out
    assert "Behaviour-type influence" in out
    # people read the source's ids, not internal indices
    gateway = out.split("Top gateway items")[1].split("Example explanations")[0]
    examples = out.split("Example explanations")[1]
    assert gateway.count("item sku-") == 5 and "item_idx" not in out
    assert examples.count("user cust-") == 3 and "<- item sku-" in examples
    ec = lake.read(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS).toPandas()
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).toPandas()
    n_hist = {}
    for _, s, u, *_ in rows:
        n_hist[u] = n_hist.get(u, 0) + (s == "train")
    # top_n = 2 sources (fewer when the history is shorter) + 1 residual per recommendation
    assert len(ec) == sum(min(2, n_hist[u]) + 1 for u in recs[S.USER_IDX])
    # contributions (residual included) sum to the score; the score is Spark's (float32) score
    per_rec = ec.groupby([S.USER_IDX, "rec_item_idx"]).agg(
        total=("contribution", "sum"), score=("score", "first"))
    np.testing.assert_allclose(per_rec["total"], per_rec["score"], rtol=1e-9)
    stored = recs.set_index([S.USER_IDX, S.ITEM_IDX])[S.SCORE]
    got = per_rec["score"].rename_axis([S.USER_IDX, S.ITEM_IDX])
    np.testing.assert_allclose(got.sort_index(), stored.sort_index(), rtol=1e-4, atol=1e-5)
    # behaviour parts sum to the contribution
    np.testing.assert_allclose(ec["part_base"] + ec["part_view"] + ec["part_purchase"],
                               ec["contribution"], rtol=1e-9, atol=1e-12)
    # leave-one-out deltas equal a brute-force re-solve on the stored item factors, and a rec
    # leaves the top-K exactly when K unseen items now score above it
    checked, leaves = _brute_force_checks(ec, rows, _item_factors(spark, lake),
                                          k=int(recs[S.RANK].max()), exclude_seen=True)
    assert checked > 50 and 0 < leaves < checked  # both answers occur
    # behaviour-type shares over all users sum to one
    bt = lake.read(spark, L.INFLUENCE_BEHAVIOR_TYPE).where("segment = 'all'").toPandas()
    assert set(bt[S.BEHAVIOR]) == {"base", "view", "purchase"}
    assert bt["score_share"].sum() == pytest.approx(1.0, rel=1e-9)
    # the joined path (item factors too large to broadcast) gives the same numbers, no checks
    small = cfg.with_(**{"influence.broadcast_max_mb": 1e-6})
    joined = influence.explain_run(spark, lake, cfg=small, run_id="inf-als").rows
    jp = joined.select(S.USER_IDX, "rec_item_idx", "source_rank", "contribution", "loo_delta",
                       "loo_leaves_top_k").toPandas()
    both = ec.merge(jp, on=[S.USER_IDX, "rec_item_idx", "source_rank"], suffixes=("", "_j"))
    assert len(both) == len(ec) and both["loo_leaves_top_k_j"].isna().all()
    np.testing.assert_allclose(both["contribution_j"], both["contribution"], rtol=1e-9, atol=1e-12)
    # re-running the run replaces its rows
    influence.main(spark, cfg)
    assert lake.read(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS).count() == len(ec)
    assert lake.read(spark, L.INFLUENCE_USERS).count() == recs[S.USER_IDX].nunique()


@pytest.mark.spark
def test_influence_reads_the_versions_the_run_recorded_and_checks_exactness(
        spark, make_cfg, capsys):
    import os

    from pyspark.testing import assertDataFrameEqual

    from common import lake as L
    from common import schema as S
    from common.lake import VersionNotReadable
    from jobs import cli, influence

    cfg, lake, rows = _lake_with_als_run(spark, make_cfg, run_id="pinned")
    # the exactness guard: above the tolerance the job fails before writing anything
    with pytest.raises(influence.ExactnessError, match="influence.max_x_rel_err = 0"):
        influence.main(spark, cfg.with_(**{"influence.max_x_rel_err": 0.0}))
    assert not lake.exists(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS)
    capsys.readouterr()
    assert cli.main(["--lake", cfg.lake, "--set", "influence.max_x_rel_err=0", "--set",
                     "influence.top_n=2", "influence", "--run-id", "pinned"]) == 2
    # the stage's own report is one line (earlier lines, if any, are logging's complaints about
    # handlers bound to a previous test's captured stderr)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("reclake influence: error: run 'pinned': recomputed user vectors")
    assert "no influence table was written" in last
    assert not lake.exists(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS)
    influence.main(spark, cfg)
    first = lake.read(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS)
    first = spark.createDataFrame(first.toPandas(), first.schema)
    # a new split after training (other users' test rows, every row's weight changed) does not
    # change the run's influence: the job reads gold/splits as the run saw it
    pinned = lake.read(spark, L.GOLD_SPLITS).inputFiles()
    resplit = [(p, "train" if s == "test" else s, u, i, 2 * c, ts, 2 * v, 2 * b)
               for p, s, u, i, c, ts, v, b in rows]
    lake.write(_splits_frame(spark, resplit), L.GOLD_SPLITS, partition_by=[S.PROTOCOL])
    influence.main(spark, cfg)
    assertDataFrameEqual(lake.read(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS), first,
                         checkRowOrder=False, rtol=0, atol=0)
    # the pinned version gone (VACUUM removed its files): a clear error naming it
    for f in pinned:
        os.remove(f.removeprefix("file:"))
    with pytest.raises(VersionNotReadable, match="gold/splits version 0 .*recorded by run"):
        influence.main(spark, cfg)


@pytest.mark.spark
def test_influence_honours_the_runs_own_recommend_settings(spark, make_cfg):
    """A run trained with exclude_seen=false and k=4, explained under a config that says
    exclude_seen=true and k=2: the leaves check uses the run's settings (seen items are
    candidates, K=4)."""
    from common import lake as L
    from common import schema as S
    from jobs import influence

    cfg, lake, rows = _lake_with_als_run(spark, make_cfg, run_id="with-seen",
                                         recommend__exclude_seen=False)
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).toPandas()
    train = {(u, i) for _, s, u, i, *_ in rows if s == "train"}
    assert any((u, i) in train for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=True))
    now = cfg.with_(**{"recommend.exclude_seen": True, "recommend.k": 2})
    ex = influence.explain_run(spark, lake, cfg=now, run_id="with-seen")
    assert (ex.settings.k, ex.settings.exclude_seen) == (4, False)
    influence.main(spark, now)
    ec = lake.read(spark, L.INFLUENCE_EVENT_CONTRIBUTIONS).toPandas()
    checked, leaves = _brute_force_checks(ec, rows, _item_factors(spark, lake), k=4,
                                          exclude_seen=False)
    assert checked > 50 and 0 < leaves < checked


def _kernel_rows(rng, behaviors, leaves=True):
    """Random kernel output (jobs.influence.rec_schema): users with 1..60 past items, 1..3 recs,
    min(2, n) kept sources and a residual row each."""
    import pandas as pd

    out = []
    for u in range(40):
        n = int(rng.integers(1, 60))
        for rank in range(1, int(rng.integers(1, 4)) + 1):
            rec = int(rng.integers(100, 120))
            per_rec = {"score": float(rng.normal()), "top1_share": float(rng.random()),
                       "top3_share": float(rng.random()), "effective_sources": float(rng.random() * 5),
                       "x_rel_err": 1e-8}
            for b in behaviors:
                per_rec[f"type_delta_{b}"] = float(rng.normal())
                per_rec[f"type_leaves_{b}"] = bool(rng.random() < 0.3) if leaves else None
            keep = min(2, n)
            srcs = rng.choice(30, keep, replace=False)
            for sr in range(1, keep + 2):
                resid = sr == keep + 1
                parts = rng.normal(size=len(behaviors) + 1)
                out.append({"user_idx": u, "rec_item_idx": rec, "rec_rank": rank, "n_history": n,
                            "source_rank": sr, "source_item_idx": -1 if resid else int(srcs[sr - 1]),
                            "n_sources": n - keep if resid else 1,
                            "contribution": float(parts.sum()), "share": float(rng.normal()),
                            "part_base": float(parts[0]),
                            **{f"part_{b}": float(parts[i + 1]) for i, b in enumerate(behaviors)},
                            "loo_delta": None if resid else float(rng.normal()),
                            "loo_leaves_top_k": None if resid or not leaves else bool(rng.random() < 0.4),
                            **per_rec})
    return pd.DataFrame(out)


@pytest.mark.spark
@pytest.mark.parametrize("leaves", [True, False])
def test_aggregate_tables_equal_a_pandas_reference(spark, leaves):
    from jobs import influence

    behaviors = ["view", "purchase"]
    pdf = _kernel_rows(np.random.default_rng(3), behaviors, leaves)
    schema = influence.rec_schema(behaviors)
    rows = spark.createDataFrame(pdf[schema.fieldNames()], schema)
    edges = (5, 20)
    seg = np.select([pdf["n_history"] < 5, pdf["n_history"] < 20], ["1-4", "5-19"], "20+")
    first = pdf[pdf["source_rank"] == 1]
    bt = influence.behavior_type_table(rows, behaviors=behaviors, edges=edges).toPandas()
    assert len(bt) == 4 * 3
    for name in ["all", "1-4", "5-19", "20+"]:
        m = np.ones(len(pdf), bool) if name == "all" else seg == name
        f = first[m[pdf["source_rank"].to_numpy() == 1]]
        for p in ["base", *behaviors]:
            got = bt[(bt["segment"] == name) & (bt["behavior"] == p)].iloc[0]
            assert got["score_share"] == pytest.approx(pdf.loc[m, f"part_{p}"].sum() / f["score"].sum())
            assert got["n_recs"] == len(f) and got["n_users"] == f["user_idx"].nunique()
            if p == "base" or not leaves:
                assert np.isnan(got["removal_leaves_fraction"])
            else:
                assert got["removal_leaves_fraction"] == pytest.approx(f[f"type_leaves_{p}"].mean())
            if p != "base":
                assert got["mean_removal_delta"] == pytest.approx(f[f"type_delta_{p}"].mean())
    src = pdf[pdf["source_item_idx"] >= 0]
    items = influence.items_table(rows).toPandas().set_index("item_idx").sort_index()
    ref = src.groupby("source_item_idx").agg(
        n_recs_supported=("contribution", lambda c: int((c > 0).sum())),
        n_users=("user_idx", "nunique"), total_contribution=("contribution", "sum"),
        mean_contribution=("contribution", "mean"), total_share=("share", "sum"))
    assert list(items.index) == list(ref.index)
    for c in ref.columns:
        np.testing.assert_allclose(items[c].to_numpy(float), ref[c].to_numpy(float), rtol=1e-12)
    lost = src.groupby("source_item_idx")["loo_leaves_top_k"].agg(
        lambda v: v.astype(float).sum(min_count=1))
    np.testing.assert_array_equal(items["n_recs_lost_without"].to_numpy(float), lost.to_numpy(float))
    gini = influence.gini_coefficient(np.maximum(ref["total_contribution"].to_numpy(), 0))
    assert items["influence_gini"].iloc[0] == pytest.approx(gini)
    users = influence.users_table(rows, behaviors=behaviors).toPandas().set_index("user_idx")
    users = users.sort_index()
    g = first.groupby("user_idx")
    np.testing.assert_array_equal(users["n_recs"], g.size())
    np.testing.assert_array_equal(users["n_history"], g["n_history"].first())
    for c in ["top1_share", "top3_share", "effective_sources"]:
        np.testing.assert_allclose(users[f"mean_{c}"], g[c].mean(), rtol=1e-12)
    np.testing.assert_array_equal(users["n_driving_items"], src.groupby("user_idx")["source_item_idx"].nunique())
    sums = pdf.groupby("user_idx")[[f"part_{b}" for b in behaviors]].sum()
    best = [behaviors[int(np.argmax(r))] if r.max() > 0 else None for r in sums.to_numpy()]
    assert list(users["dominant_behavior"]) == best


def test_shapley_values_known_answers_and_efficiency():
    from jobs.ablation import all_subsets, shapley_values

    players = ["view", "cart", "fav"]
    # additive game: each player's value is its own worth
    worth = {"view": 0.1, "cart": 0.05, "fav": -0.02}
    v = {frozenset(s): 0.3 + sum(worth[p] for p in s) for s in all_subsets(players)}
    assert shapley_values(v, players) == pytest.approx(worth)
    # a random game: values sum to v(all) - v(empty), and symmetric players share equally
    rng = np.random.default_rng(0)
    v = {frozenset(s): float(rng.random()) for s in all_subsets(players)}
    phi = shapley_values(v, players)
    assert sum(phi.values()) == pytest.approx(v[frozenset(players)] - v[frozenset()])
    # only together: view and cart are worth 1 together, nothing alone
    v = {frozenset(s): float({"view", "cart"} <= set(s)) for s in all_subsets(players)}
    assert shapley_values(v, players) == pytest.approx({"view": 0.5, "cart": 0.5, "fav": 0.0})


@pytest.mark.spark
@pytest.mark.slow
def test_ablation_writes_shapley_values_that_sum_to_the_gain(spark, make_cfg):
    from datetime import datetime

    from common import lake as L
    from common import schema as S
    from common.lake import Lake
    from jobs import ablation

    cfg = make_cfg(split__protocol="temporal", als__rank=3, als__max_iter=5,
                   als__num_user_blocks=1, als__num_item_blocks=1, recommend__k=5,
                   influence__ablation_seeds=[1, 2, 3], influence__bootstrap=50,
                   run__run_id="abl")
    rng = np.random.default_rng(2)
    rows = []
    for u in range(40):
        for i in rng.choice(30, 8, replace=False):
            view = float(rng.random() < 0.8)
            cart = float(rng.random() < 0.3) * 4
            buy = float(rng.random() < 0.3) * 8
            split = "test" if rng.random() < 0.2 else "train"
            if split == "test":
                buy = max(buy, 8.0 * (rng.random() < 0.5))
            conf = view + cart + buy
            if conf:
                rows.append(("temporal", split, u, int(i), conf, datetime(2024, 1, 1), view, cart,
                             buy, int(buy > 0)))
    df = spark.createDataFrame(
        rows, f"{S.PROTOCOL} string, {S.SPLIT} string, {S.USER_IDX} int, {S.ITEM_IDX} int, "
              f"{S.CONFIDENCE} double, {S.TS} timestamp, conf_view double, conf_cart double, "
              f"conf_purchase double, cnt_purchase int")
    lake = Lake(cfg.lake)
    lake.write(df, L.GOLD_SPLITS, partition_by=[S.PROTOCOL])
    out = ablation.main(spark, cfg)
    assert set(out["shapley"]) == {"view", "cart"}
    assert sum(out["shapley"].values()) == pytest.approx(out["v_all"] - out["v_empty"], abs=1e-12)
    table = lake.read(spark, L.INFLUENCE_BEHAVIOR_SHAPLEY).toPandas()
    shap = table[table["kind"] == "shapley"]
    assert len(shap) == 2 and (shap["ci_low"] <= shap["ci_high"]).all()
    assert len(table[table["kind"] == "subset"]) == 4
    ablation.main(spark, cfg)  # re-run replaces
    assert lake.read(spark, L.INFLUENCE_BEHAVIOR_SHAPLEY).count() == 6
