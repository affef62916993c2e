"""Spark metrics (common/metrics.py) against the reference (tests/reference/metrics.py) and Spark
ML's RankingEvaluator, and the evaluate stage end to end at the table versions a run pinned."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
from pyspark.testing import assertDataFrameEqual

from common import lake as L
from common import schema as S
from common.config import ConfigError, load_config
from common.lake import Lake
from common.runs import RunRecord, write_run
from jobs import evaluate as E
from tests.reference import metrics as M

pytestmark = pytest.mark.spark

KS = (1, 5, 10)
N_ITEMS, N_TRAIN_ITEMS = 40, 35  # items 35..39 never appear in train


def random_case(seed: int):
    """Scores from five values (ties everywhere); users of every kind the metrics must handle."""
    rng = np.random.default_rng(seed)
    scores, truth, train = {}, {}, {}
    for u in range(60):
        n_recs = {0: 0, 1: 3}.get(u % 6, 15)  # no list / a list shorter than K=5, 10 / longer
        if n_recs:
            items = rng.choice(N_ITEMS, size=n_recs, replace=False)
            values = rng.choice([0.1, 0.2, 0.3, 0.4, 0.5], size=n_recs)
            scores[u] = [(int(i), float(s)) for i, s in zip(items, values, strict=True)]
        if u % 5 != 2:  # every fifth user has no test items
            n = int(rng.integers(1, 9))
            truth[u] = {int(i) for i in rng.choice(N_ITEMS, size=n, replace=False)}
        if u % 7 != 3:
            n = int(rng.integers(1, 12))
            train[u] = {int(i) for i in rng.choice(N_TRAIN_ITEMS, size=n, replace=False)}
    return scores, truth, train


def pairs_df(spark, sets: dict[int, set[int]], extra=()):
    rows = [(u, i) for u, items in sets.items() for i in sorted(items)] + list(extra)
    return spark.createDataFrame(rows, "user_idx int, item_idx int")


def assert_close(got: dict[str, float], want: dict[str, float], what: str) -> None:
    assert set(got) == set(want), what
    for m, v in want.items():
        if math.isnan(v):
            assert math.isnan(got[m]), f"{what} {m}"
        else:
            assert got[m] == pytest.approx(v, rel=0, abs=1e-9), f"{what} {m}: {got[m]} != {v}"


def test_spark_matches_reference_on_random_data(spark):
    scores, truth, train = random_case(seed=7)
    score_df = spark.createDataFrame(
        [(u, i, s) for u, pairs in scores.items() for i, s in pairs],
        "user_idx int, item_idx int, score double",
    )
    ranked = E.rank_by_score(score_df).cache()
    ref_lists = M.rank_by_score(scores)
    got_lists: dict[int, list[tuple[int, int]]] = {}
    for r in ranked.collect():
        got_lists.setdefault(r.user_idx, []).append((r.rank, r.item_idx))
    assert {u: [i for _, i in sorted(v)] for u, v in got_lists.items()} == ref_lists

    # a repeated truth row must not count twice (the reference takes sets)
    first = next(iter(truth))
    truth_df = pairs_df(spark, truth, extra=[(first, next(iter(truth[first])))])
    ranking = E.ranking_metrics(ranked, truth_df, ks=KS)
    catalogue = E.catalogue_metrics(ranked, pairs_df(spark, train), ks=KS)
    for k in KS:
        want = M.ranking_metrics(ref_lists, truth, k)
        assert want["users_evaluated"] > 0 and want["users_truth_no_recs"] > 0
        assert want["users_recs_no_truth"] > 0
        assert_close(ranking[k], want, f"ranking k={k}")
        assert_close(catalogue[k], M.catalogue_metrics(ref_lists, train, k), f"catalogue k={k}")
    ranked.unpersist()


def test_spark_matches_ranking_evaluator_where_the_definitions_coincide(spark):
    """precision@K, recall@K and NDCG@K against pyspark.ml.evaluation.RankingEvaluator, on tied
    scores, short and empty lists and empty truths. RankingEvaluator averages over every row it
    gets (a user with truth and an empty list counts 0 there; common/metrics.py leaves such users
    out and counts them), so the rows it gets are the users with both: the same population."""
    from pyspark.ml.evaluation import RankingEvaluator

    scores, truth, _ = random_case(seed=11)
    lists = M.rank_by_score(scores)
    ranked = E.rank_by_score(spark.createDataFrame(
        [(u, i, s) for u, pairs in scores.items() for i, s in pairs],
        "user_idx int, item_idx int, score double")).cache()
    ours = E.ranking_metrics(ranked, pairs_df(spark, truth), ks=KS)
    both = sorted(u for u in lists if lists[u] and truth.get(u))
    assert 0 < len(both) < len(set(lists) | set(truth))  # the case has users of every kind
    pred = spark.createDataFrame(
        [([float(i) for i in lists[u]], [float(i) for i in sorted(truth[u])]) for u in both],
        "prediction array<double>, label array<double>")
    everyone = spark.createDataFrame(
        [([float(i) for i in lists.get(u, [])], [float(i) for i in sorted(truth[u])])
         for u in sorted(truth)], "prediction array<double>, label array<double>")
    for k in KS:
        for ours_name, theirs in (("precision", "precisionAtK"), ("recall", "recallAtK"),
                                  ("ndcg", "ndcgAtK")):
            ev = RankingEvaluator(metricName=theirs, k=k)
            assert ours[k][ours_name] == pytest.approx(ev.evaluate(pred), abs=1e-9), (k, theirs)
            # the documented difference: users with truth but no list pull theirs down
            assert ev.evaluate(everyone) < ours[k][ours_name]
    ranked.unpersist()


def test_no_evaluated_user_gives_nan(spark):
    recs = spark.createDataFrame([(0, 1, 1)], "user_idx int, item_idx int, rank int")
    got = E.ranking_metrics(recs, pairs_df(spark, {1: {1}}), ks=[10])[10]
    assert_close(got, M.ranking_metrics({0: [1]}, {1: {1}}, 10), "no evaluated user")
    assert got["users_truth_no_recs"] == 1 and got["users_recs_no_truth"] == 1


# --- the stage on a tiny lake ------------------------------------------------------------------

T0 = datetime(2024, 1, 1)
SPLITS_DDL = ("protocol string, split string, user_idx int, item_idx int, confidence double, "
              "ts timestamp, cnt_view long, cnt_purchase long")
TRAIN_PAIRS = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 3), (3, 4)]
# (user, item, views, purchases); user 4 has test items but no recommendations
TEST_ROWS = [(0, 2, 1, 0), (0, 3, 0, 1), (1, 0, 2, 1), (1, 4, 1, 0), (2, 5, 1, 0), (4, 1, 0, 1)]
RUN_LISTS = {"r1": {0: [2, 3, 4], 1: [0, 3, 4], 2: [1, 4, 5], 3: [0, 1]}, "r0": {0: [5]}}


@pytest.fixture(scope="module")
def tiny_lake(spark, tmp_path_factory) -> str:
    """gold/splits (protocol stratified) and gold/recommendations (runs r0, r1); no metrics yet."""
    root = str(tmp_path_factory.mktemp("evaluate") / "lake")
    lake = Lake(root)
    splits = [("stratified", "train", u, i, 1.0, T0, 1, 0) for u, i in TRAIN_PAIRS] + [
        ("stratified", "test", u, i, 1.0, T0, v, p) for u, i, v, p in TEST_ROWS
    ]
    lake.write(spark.createDataFrame(splits, SPLITS_DDL), L.GOLD_SPLITS, partition_by=[S.PROTOCOL])
    recs = [
        (run, "als", "stratified", u, rank, i, 1.0 / rank)
        for run, lists in RUN_LISTS.items()
        for u, items in lists.items()
        for rank, i in enumerate(items, start=1)
    ]
    lake.write(spark.createDataFrame(recs, S.RECOMMENDATIONS_SCHEMA), L.GOLD_RECOMMENDATIONS)
    pinned = {L.GOLD_SPLITS: lake.version(spark, L.GOLD_SPLITS)}
    written = {L.GOLD_RECOMMENDATIONS: lake.version(spark, L.GOLD_RECOMMENDATIONS)}
    for run in RUN_LISTS:
        write_run(spark, lake, RunRecord(run_id=run, model="als", protocol="stratified",
                                         dataset="tiny", inputs=pinned, outputs=written))
    # the lake moves on after training: a re-split and another run's recommendations. The runs
    # above pinned the versions before, so their evaluation must not see any of this.
    lake.replace_rows(spark.createDataFrame([("stratified", "test", 3, 0, 1.0, T0, 1, 1)],
                                            SPLITS_DDL), L.GOLD_SPLITS, "protocol = 'stratified'")
    lake.replace_rows(spark.createDataFrame([("r1", "als", "stratified", 3, 1, 9, 1.0)],
                                            S.RECOMMENDATIONS_SCHEMA),
                      L.GOLD_RECOMMENDATIONS, "run_id = 'r1'")
    return root


def stage_cfg(lake_root: str, **values):
    """Like conftest's make_cfg, on the module's lake."""
    dotted = {k.replace("__", "."): v for k, v in values.items()}
    return load_config(values={"lake": lake_root, **dotted})


def expected_rows(target: str, ks) -> list[tuple]:
    truth: dict[int, set[int]] = {}
    for u, i, _views, purchases in TEST_ROWS:
        if target == "all" or purchases > 0:
            truth.setdefault(u, set()).add(i)
    train: dict[int, set[int]] = {}
    for u, i in TRAIN_PAIRS:
        train.setdefault(u, set()).add(i)
    recs = RUN_LISTS["r1"]
    return [
        ("r1", "als", "tiny", "stratified", target, k, m, v)
        for k in ks
        for metrics in (M.ranking_metrics(recs, truth, k), M.catalogue_metrics(recs, train, k))
        for m, v in metrics.items()
    ]


def test_main_writes_reference_values_and_replaces_on_rerun(spark, tiny_lake, capsys):
    cfg = stage_cfg(tiny_lake, run__run_id="r1", run__dataset="tiny", evaluate__k="1,3")
    rows = E.main(spark, cfg)
    assert "r1" in capsys.readouterr().out
    E.main(spark, cfg)  # a re-run replaces its rows, never duplicates them
    # a purchase target keeps only test pairs with cnt_purchase > 0 and leaves 'all' rows alone
    E.main(spark, stage_cfg(tiny_lake, run__run_id="r1", run__dataset="tiny", evaluate__k="1,3",
                            evaluate__target="purchase"))
    expected = expected_rows("all", (1, 3))
    purchase = expected_rows("purchase", (1, 3))
    assert len(rows) == len(expected) == 2 * len(M.RANKING_METRICS + M.USER_COUNTS
                                                  + M.CATALOGUE_METRICS)
    table = Lake(tiny_lake).read(spark, L.METRICS_EVALUATION).drop(S.CREATED_AT)
    assertDataFrameEqual(
        table, spark.createDataFrame(expected + purchase, table.schema), rtol=0, atol=1e-9
    )
    # the purchase truth differs from 'all': users 0 and 1 keep one purchased test item each
    at3 = {r[6]: r[7] for r in purchase if r[5] == 3}
    assert (at3["users_evaluated"], at3["users_truth_no_recs"], at3["recall"]) == (2, 1, 1.0)


def test_main_errors_name_the_problem(spark, tiny_lake):
    with pytest.raises(ConfigError, match=r"no run 'nope'.*runs: r0, r1"):
        E.main(spark, stage_cfg(tiny_lake, run__run_id="nope"))
    with pytest.raises(ConfigError, match="--run-id"):
        E.main(spark, stage_cfg(tiny_lake))
    with pytest.raises(ConfigError, match="cnt_fav"):  # gold/splits without that behaviour
        E.main(spark, stage_cfg(tiny_lake, run__run_id="r1", evaluate__target="fav"))


def test_format_table_several_runs_and_published():
    rows = [
        {S.RUN_ID: run, S.MODEL: model, S.DATASET: "ml-100k", S.PROTOCOL: "stratified",
         S.TARGET: "all", S.K: 10, S.METRIC: m, S.VALUE: v}
        for run, model in (("als-1", "als"), ("pop-1", "popularity"))
        for m, v in (("ndcg", 0.25), ("precision", 0.2), ("users_evaluated", 943.0))
    ]
    lines = E.format_table(rows, compare_published=True).splitlines()
    assert lines[0].split()[:3] == ["source", "run_id", "model"]
    body = lines[2:]
    assert [line.split()[0] for line in body] == ["reclake"] * 2 + ["published"] * 5
    assert body[0].split()[1:3] == ["als-1", "als"] and "0.2500" in body[0] and "943" in body[0]
    bpr = next(line for line in body if " BPR " in line)
    assert all(v in bpr for v in ("0.442", "0.388", "0.213", "0.133"))
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule share the widths
    assert "published" not in E.format_table(rows)
