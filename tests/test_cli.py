"""The `reclake` CLI end to end: the demo pipeline in-process, spark-submit style entry, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from common import lake as L
from common.lake import Lake
from jobs import cli

pytestmark = pytest.mark.spark


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for stage in cli.STAGES:
        assert stage in out


@pytest.mark.slow
def test_demo_end_to_end(spark, tmp_path: Path, capsys):
    lake_dir = tmp_path / "lake"
    rc = cli.main(["--lake", str(lake_dir), "--set", "spark.shuffle_partitions=2",
                   "--set", "generate.users=300", "--set", "generate.items=200",
                   "demo", "--events", "6000", "--out", str(tmp_path / "gen")])
    assert rc == 0
    printed = capsys.readouterr().out
    lake = Lake(str(lake_dir))
    for table in L.ALL_TABLES:
        assert lake.exists(spark, table), table
        assert table in printed
    assert "deltalake" in printed
    audit = lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").first()
    assert audit.rows_in == audit.rows_clean_new + audit.rows_duplicate + audit.rows_quarantined
    assert audit.rows_quarantined > 0 and audit.rows_duplicate > 0  # the demo injects dirt
    splits = lake.read(spark, L.GOLD_SPLITS)
    assert {r[0] for r in splits.select("protocol").distinct().collect()} == {
        "stratified", "temporal", "leave_last_out"}
    # re-running split for one protocol replaces its rows rather than appending
    before = splits.where(F.col("protocol") == "temporal").count()
    assert cli.run_stage("split", ["--lake", str(lake_dir), "--protocol", "temporal"]) == 0
    after = lake.read(spark, L.GOLD_SPLITS).where(F.col("protocol") == "temporal").count()
    assert after == before
    # the demo trained ALS and popularity and evaluated both
    ev = lake.read(spark, L.METRICS_EVALUATION).where("metric = 'ndcg'").toPandas()
    assert sorted(ev["model"]) == ["als", "popularity"] and ev["value"].between(0, 1).all()
    assert "ndcg" in printed and "popularity" in printed
    als_run = ev[ev["model"] == "als"]["run_id"].iloc[0]
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col("run_id") == als_run)
    assert recs.count() == recs.select("user_idx").distinct().count() * 10
    # evaluate from the CLI with another k and the published comparison
    assert cli.main(["--lake", str(lake_dir), "evaluate", "--run-id", als_run, "--k", "5,10",
                     "--compare-published"]) == 0
    out = capsys.readouterr().out
    assert "LightGCN" in out and "0.442" in out
    ks = lake.read(spark, L.METRICS_EVALUATION).where(F.col("run_id") == als_run)
    assert sorted(r[0] for r in ks.select("k").distinct().collect()) == [5, 10]
    # gold is readable without Spark through delta-rs, as the demo says
    from deltalake import DeltaTable

    pdf = DeltaTable(lake.path(L.GOLD_INTERACTIONS)).to_pandas()
    assert len(pdf) == lake.read(spark, L.GOLD_INTERACTIONS).count() and "confidence" in pdf


def test_missing_input_is_a_clear_error(spark, tmp_path: Path):
    with pytest.raises(SystemExit, match="no input files"):
        cli.main(["--lake", str(tmp_path / "lake"), "ingest", "--source-format", "taobao",
                  "--path", str(tmp_path / "nope.csv")])


def test_reading_a_table_before_it_exists_names_the_stage(spark, tmp_path: Path, capsys):
    assert cli.main(["--lake", str(tmp_path / "lake"), "transform"]) == 2
    assert "silver/events" in capsys.readouterr().err
