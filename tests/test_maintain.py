"""`reclake maintain`: OPTIMIZE with Z-order, VACUUM, the health summary; the data never change."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import lake as L
from common.config import ConfigError
from common.lake import Lake
from jobs import ingest, maintain, transform

HEADER = "user_id,item_id,behavior,value,ts,session_id,category_id"


def _snapshot(spark, lake: Lake, table: str) -> list:
    df = lake.read(spark, table)
    cols = sorted(c for c in df.columns)
    return sorted(tuple(str(r[c]) for c in cols) for r in df.collect())


def _parquet_files(lake: Lake, table: str) -> int:
    return sum(1 for _ in Path(lake.path(table)).rglob("*.parquet"))


@pytest.fixture
def small_lake(spark, make_cfg, tmp_path):
    cfg = make_cfg()
    for b in range(3):  # three batches: three appends to silver, three index merges
        path = tmp_path / f"b{b}.csv"
        path.write_text(HEADER + "\n" + "\n".join(
            f"u{(b * 7 + i) % 11},i{i % 5},view,,2024-01-0{1 + b}T10:{i:02d}:00Z,s{b},c1"
            for i in range(12)) + "\n")
        ingest.main(spark, cfg.with_(**{"ingest.source_format": "generic",
                                        "ingest.path": str(path)}))
    transform.main(spark, cfg)
    return cfg


def test_zorder_columns_leave_out_partitions_unknown_and_unindexed_columns():
    assert maintain.zorder_columns(L.SILVER_EVENTS, ["user_id", "ts", "event_date"],
                                   ["event_date"]) == ["ts", "user_id"]
    # silver/events keeps statistics on ts, behavior and batch_id only (common.lake.STATS_COLUMNS)
    props = {"delta.dataSkippingStatsColumns": L.STATS_COLUMNS[L.SILVER_EVENTS]}
    assert maintain.zorder_columns(L.SILVER_EVENTS, ["user_id", "ts"], [], props) == ["ts"]
    cols = [f"c{i}" for i in range(40)] + ["user_idx"]
    assert maintain.zorder_columns(L.GOLD_SEQUENCES, cols, []) == []  # past the first 32
    assert maintain.zorder_columns(L.GOLD_SEQUENCES, cols, [],
                                   {"delta.dataSkippingNumIndexedCols": "-1"}) == ["user_idx"]
    assert maintain.zorder_columns(L.GOLD_SPLITS, ["user_idx", "protocol"],
                                   ["protocol"]) == ["user_idx"]
    assert maintain.zorder_columns(L.SILVER_EVENTS, ["user_id"], ["user_id"]) == []
    assert maintain.zorder_columns(L.BRONZE_EVENTS, ["raw"], []) == []


def test_unknown_table_is_refused_before_spark(make_cfg):
    with pytest.raises(ConfigError, match="unknown table.*'silver/nope'"):
        maintain.preflight(make_cfg(**{"maintain.tables": ["silver/nope"]}))


@pytest.mark.spark
def test_maintain_compacts_vacuums_and_reports_without_changing_data(spark, small_lake, capsys):
    cfg = small_lake
    lake = Lake(cfg.lake)
    tables = [t for t in L.ALL_TABLES if lake.exists(spark, t)]
    data = {t: _snapshot(spark, lake, t) for t in tables}
    versions = {t: lake.version(spark, t) for t in tables}
    files_before = _parquet_files(lake, L.SILVER_EVENTS)
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    was = spark.conf.get(check, "true")

    rows = maintain.main(spark, cfg.with_(**{"maintain.retention_hours": 0}))
    out = capsys.readouterr().out

    by = {r["table"]: r for r in rows}
    assert set(by) == set(tables)
    for t in tables:
        assert _snapshot(spark, lake, t) == data[t], t  # the data are the data
        assert by[t]["version"] > versions[t]  # OPTIMIZE / VACUUM committed
        assert by[t]["last_operation"] in ("OPTIMIZE", "VACUUM END"), by[t]
        # VACUUM with 0 h: the files on disk are exactly the current version's
        assert _parquet_files(lake, t) == by[t]["files"], t
        assert t in out
    ev = by[L.SILVER_EVENTS]
    assert ev["partitions"] == "event_date" and ev["optimized"].endswith("z:ts")
    assert ev["files"] <= files_before  # one file per event_date partition here already
    assert by[L.BRONZE_EVENTS]["partitions"] == "batch_id"
    assert spark.conf.get(check, "true") == was  # the retention check is back as it was
    assert "reclake maintain: done" in out and "files" in out.splitlines()[0]

    # again, health only: nothing written, the same figures
    again = maintain.main(spark, cfg.with_(**{"maintain.optimize": False,
                                              "maintain.vacuum": False,
                                              "maintain.tables": [L.SILVER_EVENTS]}))
    assert [r["table"] for r in again] == [L.SILVER_EVENTS]
    assert again[0]["version"] == ev["version"] and again[0]["files"] == ev["files"]
    assert again[0]["optimized"] == again[0]["vacuumed"] == "-"
