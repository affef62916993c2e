"""jobs/demo.py: the demo tells the truth about the models.

On the default demo data (default generate settings, the demo's dirty rate), with the demo's ALS
settings and the stratified protocol the demo evaluates on, ALS beats the popularity baseline on
test NDCG@10 by a clear margin. The stages run as ``jobs.demo.main`` runs them.
"""

from __future__ import annotations

import time

import pytest

from common import schema as S
from common.config import AlsConfig, GenerateConfig, load_config
from jobs import demo, split

K = 10
MARGIN = 1.3  # ALS NDCG@10 >= MARGIN x popularity NDCG@10


def test_demo_config_applies_its_choices_only_where_defaults_remain():
    cfg = demo.demo_config(load_config(values={"generate.out": "/tmp/x"}))
    assert cfg.generate.dirty_rate == demo.DEMO_DIRTY_RATE
    assert {k: getattr(cfg.als, k.split(".")[1]) for k in demo.DEMO_ALS} == demo.DEMO_ALS
    assert cfg.ingest.path == "/tmp/x/csv" and cfg.generate.formats == ("csv",)
    assert cfg.run.dataset == demo.DEMO_DATASET

    rank = AlsConfig.rank + 1
    mine = demo.demo_config(load_config(values={"als.rank": rank, "generate.dirty_rate": 0.05}))
    assert mine.als.rank == rank and mine.generate.dirty_rate == 0.05
    assert GenerateConfig.dirty_rate == 0.0  # the rule above reads "0 or unset"


@pytest.mark.slow
def test_als_beats_popularity_on_the_default_demo_data(spark, make_cfg, tmp_path):
    cfg = demo.demo_config(make_cfg(**{"generate.out": str(tmp_path / "data")}))
    assert cfg.generate.events == GenerateConfig.events  # the default demo data
    t0 = time.perf_counter()
    demo.build_lake(spark, cfg)
    split.main(spark, cfg.with_(**{"split.protocol": "stratified"}))
    runs = demo.fit_models(spark, cfg, stamp="test")
    rows = demo.evaluate_runs(spark, cfg, runs)

    ndcg = {r[S.MODEL]: r[S.VALUE] for r in rows if r[S.METRIC] == "ndcg" and r[S.K] == K}
    users = {r[S.MODEL]: r[S.VALUE] for r in rows if r[S.METRIC] == "users_evaluated"}
    print(f"\nALS ndcg@{K} {ndcg['als']:.4f}, popularity {ndcg['popularity']:.4f}, "
          f"ratio {ndcg['als'] / ndcg['popularity']:.2f} ({time.perf_counter() - t0:.0f}s)")
    assert [r.als.rank for r in runs] == [demo.DEMO_ALS["als.rank"]] * 2
    assert users["als"] == users["popularity"] > 1000  # both judged on the same test users
    assert ndcg["popularity"] > 0.05  # the baseline is a real one: Zipf popularity is there
    assert ndcg["als"] >= MARGIN * ndcg["popularity"]
