"""One contract suite over every registered model: fit, recommend (top-K, seen excluded),
save/load, the run record, evaluate; and the registry itself."""

from __future__ import annotations

from datetime import datetime

import pytest

from common import lake as L
from common import models
from common import schema as S
from common.config import ConfigError, load_config
from common.lake import Lake
from common.models import TrainContext
from common.runs import read_run

pytestmark = pytest.mark.spark
# the Ray models join this suite from raytrain/; text and hybrid need vectors
# (tests/test_text_models.py)
SPARK_MODELS = ["als", "popularity", "random"]


def test_registry_lists_names_and_refuses_unknown():
    assert {"als", "popularity"} <= set(models.names())
    assert models.get("als").name == "als" and models.get("popularity").name == "popularity"
    with pytest.raises(ConfigError, match="unknown model 'nope'; registered models: .*als"):
        models.get("nope")
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        load_config(values={"run.model": "nope"})
    with pytest.raises(ValueError, match="already registered"):
        models.register("als", "somewhere:Else")


def _splits(spark, lake: Lake):
    """Two communities of 10 users; each user has all but two items of its half in train and
    one of the two in test."""
    rows = []
    for u in range(20):
        own = [i for i in range(20) if i % 2 == u % 2]
        held = own[u % 10], own[(u + 1) % 10]
        rows += [("stratified", S.TRAIN, u, i, 1.0 + i % 3, datetime(2024, 1, 1))
                 for i in own if i not in held]
        rows.append(("stratified", S.TEST, u, held[0], 1.0, datetime(2024, 1, 1)))
    df = spark.createDataFrame(rows, "protocol string, split string, user_idx int, "
                                     "item_idx int, confidence double, ts timestamp")
    lake.write(df, L.GOLD_SPLITS, partition_by=[S.PROTOCOL])
    return {(u, i) for p, s, u, i, c, t in rows if s == S.TRAIN}


@pytest.mark.parametrize("name", sorted(SPARK_MODELS))
def test_model_contract(spark, make_cfg, name):
    from jobs import evaluate, fit

    cfg = make_cfg(run__model=name, run__run_id=f"c-{name}", recommend__k=4, als__rank=4,
                   als__max_iter=6, als__num_user_blocks=2, als__num_item_blocks=2)
    lake = Lake(cfg.lake)
    train = _splits(spark, lake)
    record = fit.main(spark, cfg)
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where(f"run_id = 'c-{name}'").toPandas()
    # top-K for every train user, ranks 1..K by score, seen items never
    assert len(recs) == 20 * 4 and set(recs[S.MODEL]) == {name}
    assert not any((u, i) in train for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX],
                                                   strict=True))
    for _, g in recs.groupby(S.USER_IDX):
        g = g.sort_values(S.RANK)
        assert list(g[S.RANK]) == [1, 2, 3, 4] and g[S.SCORE].is_monotonic_decreasing
    # the run record: typed params of the model's sections, pinned inputs
    stored = read_run(spark, lake, f"c-{name}")
    assert stored.model == name and stored.params == record.params
    assert stored.params["recommend.k"] == 4
    # ... plus what shaped the train rows (common.splits.train_params)
    assert all(k.split(".")[0] in (*models.get(name).sections, "recommend", "split")
               for k in stored.params)
    assert stored.params["split.fold_valid"] is False
    assert stored.inputs[L.GOLD_SPLITS] == lake.version(spark, L.GOLD_SPLITS)
    # load gives back a model that recommends the same lists
    loaded = models.get(name).load(spark, lake, stored, cfg)
    ctx = TrainContext(spark=spark, lake=lake, cfg=cfg, run_id="reload")
    from jobs.models.topk import seen_items

    seen = seen_items(spark.createDataFrame(sorted(train), "user_idx int, item_idx int"))
    again = loaded.recommend(ctx, seen, k=4).toPandas()
    key = [S.USER_IDX, S.RANK]
    assert (again.sort_values(key)[[S.USER_IDX, S.ITEM_IDX]].to_numpy().tolist()
            == recs.sort_values(key)[[S.USER_IDX, S.ITEM_IDX]].to_numpy().tolist())
    # and evaluate finds the run by id
    rows = evaluate.evaluate_run(spark, lake, run_id=f"c-{name}", ks=[4], target="all",
                                 dataset=None)
    ndcg = next(r[S.VALUE] for r in rows if r[S.METRIC] == "ndcg")
    assert 0 <= ndcg <= 1


def test_exclude_seen_off_lets_train_items_back(spark, make_cfg):
    from jobs import fit

    cfg = make_cfg(run__model="popularity", run__run_id="p-all", recommend__k=3,
                   recommend__exclude_seen=False)
    lake = Lake(cfg.lake)
    train = _splits(spark, lake)
    fit.main(spark, cfg)
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).toPandas()
    assert any((u, i) in train for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=True))
    assert read_run(spark, lake, "p-all").params["recommend.exclude_seen"] is False
