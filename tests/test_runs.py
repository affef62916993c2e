"""Run records (typed params, pinned table versions) and reads at a pinned Delta version."""

from __future__ import annotations

import pytest

from common import lake as L
from common.config import ConfigError, load_config
from common.lake import Lake, VersionNotReadable
from common.runs import RunRecord, check_run_exists, read_run, write_run


def _record(run_id="r1", **kw) -> RunRecord:
    base = dict(run_id=run_id, model="als", protocol="stratified", dataset="t",
                params={"als.rank": 4, "als.alpha": 2.5, "als.nonnegative": False,
                        "evaluate.k": [5, 10], "recommend.exclude_seen": False},
                inputs={L.GOLD_SPLITS: 3}, outputs={L.GOLD_RECOMMENDATIONS: 7},
                artefacts={"spark_model": "/x"}, counts={"train_rows": 10},
                seconds={"fit": 1.5})
    base.update(kw)
    return RunRecord(**base)


def test_record_round_trips_with_types_and_applies_to_a_config(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_run(spark, lake, _record())
    write_run(spark, lake, _record(params={"als.rank": 8}))  # replaces, never duplicates
    write_run(spark, lake, _record("r2"))
    assert lake.read(spark, L.MODELS_RUNS).count() == 2
    got = read_run(spark, lake, "r2")
    assert got.params["als.rank"] == 4 and isinstance(got.params["als.rank"], int)
    assert got.params["als.alpha"] == 2.5 and got.params["als.nonnegative"] is False
    assert got.inputs == {L.GOLD_SPLITS: 3} and got.version(L.GOLD_RECOMMENDATIONS) == 7
    assert got.counts == {"train_rows": 10} and got.artefacts == {"spark_model": "/x"}
    assert read_run(spark, lake, "r1").params == {"als.rank": 8}
    cfg = got.config(load_config(values={"als.rank": 99, "split.protocol": "temporal"}))
    assert (cfg.als.rank, cfg.als.alpha, cfg.recommend.exclude_seen) == (4, 2.5, False)
    assert cfg.split.protocol == "stratified" and cfg.evaluate.k == (5, 10)
    with pytest.raises(ConfigError, match="no run 'nope'.*r1, r2"):
        read_run(spark, lake, "nope")
    with pytest.raises(ConfigError, match="recorded no version of 'gold/interactions'"):
        got.version(L.GOLD_INTERACTIONS)
    # the same existence check without Spark
    check_run_exists(lake, "r1")
    with pytest.raises(ConfigError, match="no run 'nope'"):
        check_run_exists(lake, "nope")
    with pytest.raises(FileNotFoundError, match="train a model first"):
        check_run_exists(Lake(str(tmp_path / "empty")), "r1")


def test_read_at_a_pinned_version_and_a_clear_error_when_it_is_gone(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    df1 = spark.createDataFrame([(1,), (2,)], "x int")
    lake.write(df1, L.GOLD_SPLITS)
    v0 = lake.version(spark, L.GOLD_SPLITS)
    lake.write(spark.createDataFrame([(3,)], "x int"), L.GOLD_SPLITS)
    assert sorted(r.x for r in lake.read(spark, L.GOLD_SPLITS, version=v0).collect()) == [1, 2]
    assert [r.x for r in lake.read(spark, L.GOLD_SPLITS).collect()] == [3]
    with pytest.raises(VersionNotReadable, match="gold/splits version 9 .*run 'r'"):
        lake.read(spark, L.GOLD_SPLITS, version=9, why="run 'r'")
    spark.sql("SET spark.databricks.delta.retentionDurationCheck.enabled = false")
    try:
        spark.sql(f"VACUUM delta.`{lake.path(L.GOLD_SPLITS)}` RETAIN 0 HOURS")
    finally:
        spark.sql("SET spark.databricks.delta.retentionDurationCheck.enabled = true")
    with pytest.raises(VersionNotReadable, match="version 0 .*VACUUM removed them"):
        lake.read(spark, L.GOLD_SPLITS, version=v0)
    assert [r.x for r in lake.read(spark, L.GOLD_SPLITS).collect()] == [3]
