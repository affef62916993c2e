"""The plain-Python reference metrics (tests/reference/metrics.py) against answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from tests.reference import metrics as M

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)


def test_rank_by_score_breaks_ties_by_item():
    scores = {0: [(5, 0.5), (3, 0.9), (1, 0.5), (2, 0.9), (4, 0.1)], 1: [(7, 1.0)], 2: []}
    assert M.rank_by_score(scores) == {0: [2, 3, 1, 5, 4], 1: [7], 2: []}


def test_two_users_known_answer():
    # user 0: truth {1,2,3}, list [1,9,2]: hits at ranks 1 and 3
    # user 1: truth {5}, list [7,5]: hit at rank 2
    # user 2: truth but no list; user 3: a list but no truth; user 4: an empty truth set
    recs = {0: [1, 9, 2], 1: [7, 5], 2: [], 3: [4], 4: [6]}
    truth = {0: {1, 2, 3}, 1: {5}, 2: {8}, 4: set()}
    got = M.ranking_metrics(recs, truth, k=3)
    u0 = {
        "precision": 2 / 3,
        "recall": 2 / 3,
        "ndcg": (1 / L2 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4),
        "map": (1 / 3) * (1 / 1 + 2 / 3),
        "hit_rate": 1.0,
        "mrr": 1.0,
    }
    u1 = {
        "precision": 1 / 3,
        "recall": 1.0,
        "ndcg": (1 / L3) / (1 / L2),
        "map": 1 / 2,  # min(|T|, K) = 1; the hit at rank 2 has P@2 = 1/2
        "hit_rate": 1.0,
        "mrr": 1 / 2,
    }
    for m in M.RANKING_METRICS:
        assert got[m] == pytest.approx((u0[m] + u1[m]) / 2, abs=1e-12), m
    assert got["users_evaluated"] == 2
    assert got["users_truth_no_recs"] == 1  # user 2
    assert got["users_recs_no_truth"] == 2  # users 3 and 4


def test_short_list_keeps_k_as_precision_denominator():
    got = M.ranking_metrics({0: [2]}, {0: {1, 2}}, k=5)
    assert got["precision"] == pytest.approx(1 / 5)
    assert got["recall"] == pytest.approx(1 / 2)
    assert got["ndcg"] == pytest.approx(1 / (1 / L2 + 1 / L3))
    assert got["map"] == pytest.approx(1 / 2)  # AP divides by min(|T|, K) = 2
    assert got["mrr"] == 1.0


def test_only_the_first_k_ranks_count():
    got = M.ranking_metrics({0: [9, 1]}, {0: {1}}, k=1)
    assert {m: got[m] for m in M.RANKING_METRICS} == dict.fromkeys(M.RANKING_METRICS, 0.0)
    assert got["users_evaluated"] == 1
    at2 = M.ranking_metrics({0: [9, 1]}, {0: {1}}, k=2)
    assert at2["mrr"] == 0.5 and at2["hit_rate"] == 1.0 and at2["recall"] == 1.0


def test_repeated_item_counts_once():
    got = M.ranking_metrics({0: [1, 1, 2]}, {0: {1, 2}}, k=3)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_no_evaluated_user_gives_nan_and_counts():
    got = M.ranking_metrics({0: [1]}, {1: {1}}, k=10)
    assert all(math.isnan(got[m]) for m in M.RANKING_METRICS)
    assert (got["users_evaluated"], got["users_truth_no_recs"], got["users_recs_no_truth"]) == (
        0, 1, 1)


def test_catalogue_metrics_known_answer():
    # 3 train users; popularity: item 1 -> 1/3, item 2 -> 3/3, item 3 -> 1/3
    train = {0: {1, 2}, 1: {2, 3}, 2: {2}, 3: set()}
    recs = {0: [3, 9], 1: [1, 2]}  # item 9 is not in the catalogue
    at1 = M.catalogue_metrics(recs, train, k=1)
    assert at1["coverage"] == pytest.approx(2 / 3)
    assert at1["mean_popularity"] == pytest.approx(1 / 3)
    assert at1["novelty"] == pytest.approx(math.log2(3))
    at2 = M.catalogue_metrics(recs, train, k=2)
    assert at2["coverage"] == pytest.approx(1.0)  # 9 is not counted
    assert at2["mean_popularity"] == pytest.approx((1 / 3 + 0 + 1 / 3 + 1) / 4)
    assert at2["novelty"] == pytest.approx((math.log2(3) * 2 + 0) / 3)  # 9 skipped
