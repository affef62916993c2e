"""Behaviour-prediction metrics: AUC and log-loss in NumPy (``common.ranking``) and in Spark
(``jobs.evaluate``) against the counting reference, ties included; the NeuMF task head learns a
planted label."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common import ranking
from common.config import load_config
from raytrain.models import build
from tests.reference import metrics as RM


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_log_loss_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 1)  # ties on purpose
    assert ranking.auc(y, s) == pytest.approx(RM.pairwise_auc(y.tolist(), s.tolist()), abs=1e-12)
    p = rng.random(300)
    p[:3] = [0.0, 1.0, 1.0]  # clipped
    assert ranking.log_loss(y, p) == pytest.approx(RM.log_loss(y.tolist(), p.tolist()), rel=1e-12)
    assert math.isnan(ranking.auc(np.zeros(5, bool), np.arange(5.0)))
    assert ranking.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_spark_prediction_metrics_equal_numpy(spark):
    from jobs.evaluate import prediction_metrics_spark

    rng = np.random.default_rng(4)
    n = 400
    users, items = rng.integers(0, 50, n), rng.integers(0, 30, n)
    keys = sorted(set(zip(users.tolist(), items.tolist(), strict=True)))
    y = (rng.random(len(keys)) < 0.4).astype(float)
    p = np.round(rng.random(len(keys)), 2)
    preds = spark.createDataFrame([(u, i, float(q)) for (u, i), q in zip(keys, p, strict=True)],
                                  "user_idx int, item_idx int, prediction double")
    labels = spark.createDataFrame([(u, i, float(t)) for (u, i), t in zip(keys, y, strict=True)],
                                   "user_idx int, item_idx int, label double")
    train_rows = [(int(u), int(i)) for u, i in zip(rng.integers(0, 50, 600),
                                                   rng.integers(0, 30, 600), strict=True)]
    train = spark.createDataFrame(sorted(set(train_rows)), "user_idx int, item_idx int")
    got = prediction_metrics_spark(preds, labels, train)
    pop = np.bincount([i for _, i in sorted(set(train_rows))], minlength=30)
    want = ranking.prediction_metrics(y, p, pop[[i for _, i in keys]].astype(float))
    assert set(got) == set(ranking.PREDICTION_METRICS)
    for m, v in want.items():
        assert got[m] == pytest.approx(v, rel=1e-9, abs=1e-12), m


def test_ncf_task_head_learns_a_planted_label():
    torch.manual_seed(0)
    cfg = load_config(values={"ncf.dim_gmf": 8, "ncf.dim_mlp": 8, "ncf.layers": [16, 8],
                              "ncf.task_target": "purchase", "ncf.task_weight": 1.0})
    net = build("ncf", n_users=20, n_items=30, cfg=cfg)
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        u = torch.from_numpy(rng.integers(0, 20, 64))
        i = torch.from_numpy(rng.integers(0, 30, 64))
        batch = {"user_idx": u, "item_idx": i,
                 "neg_items": torch.from_numpy(rng.integers(0, 30, (64, 2))),
                 "task_label": ((i % 3 == 0) ^ (u % 2 == 0)).float()}  # needs user and item
        opt.zero_grad()
        net(batch).backward()
        opt.step()
    uu, ii = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
    with torch.no_grad():
        prob = torch.sigmoid(net.task_logits(torch.from_numpy(uu.ravel()),
                                             torch.from_numpy(ii.ravel()))).numpy()
    label = ((ii.ravel() % 3 == 0) ^ (uu.ravel() % 2 == 0))
    assert ranking.auc(label, prob) > 0.95
    without = build("ncf", n_users=20, n_items=30, cfg=load_config())
    assert without.task is None
    with pytest.raises(ValueError, match="no task head"):
        without.task_logits(torch.tensor([0]), torch.tensor([0]))
