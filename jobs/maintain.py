"""Maintain the lake: OPTIMIZE (Z-ordered by the columns readers filter on), VACUUM, and a health summary of every table.

    reclake maintain                                  # every table: optimize, vacuum (168 h), health
    reclake maintain --table silver/events --table gold/recommendations
    reclake maintain --no-optimize --no-vacuum        # only the health summary
    spark-submit jobs/maintain.py --lake s3a://bucket/lake --retention-hours 336

Per table: ``OPTIMIZE`` compacts small files (each ingest batch, each run appends some) and
Z-orders them by ``ZORDER`` below (partition columns and columns without statistics excluded, as
Delta requires); ``VACUUM``
removes files that no version within ``maintain.retention_hours`` needs (below Delta's 168 h
default the check ``spark.databricks.delta.retentionDurationCheck.enabled`` is lifted for this
stage only, and time travel past the retention stops working). Then one line per table: files,
bytes, current version, partitions, and the last writer (operation, time, engine). Idempotent:
a second run finds nothing to compact and nothing to remove.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from common import lake as L
from common.config import Config, ConfigError
from common.lake import Lake
from common.log import get_logger, summary

log = get_logger("maintain")

# the columns readers filter a table by (per-user reads, one run's rows, erasure by user)
ZORDER: dict[str, tuple[str, ...]] = {
    L.SILVER_EVENTS: ("ts", "user_id"),  # user_id only where its stats are kept (see below)
    L.SILVER_USER_INDEX: ("user_id",),
    L.GOLD_INTERACTIONS: ("user_idx", "item_idx"),
    L.GOLD_SPLITS: ("user_idx",),
    L.GOLD_SEQUENCES: ("user_idx",),
    L.GOLD_USER_FEATURES: ("user_idx",),
    L.GOLD_RECOMMENDATIONS: ("run_id", "user_idx"),
    L.GOLD_PREDICTIONS: ("run_id", "user_idx"),
    L.INFLUENCE_EVENT_CONTRIBUTIONS: ("run_id", "user_idx"),
    L.INFLUENCE_BEHAVIOR_TYPE: ("run_id",),
    L.INFLUENCE_ITEMS: ("run_id",),
    L.INFLUENCE_USERS: ("run_id", "user_idx"),
    L.METRICS_EVALUATION: ("run_id",),
}
DELTA_DEFAULT_RETENTION_H = 168.0
HEALTH_COLUMNS = ("table", "files", "bytes", "version", "partitions", "last_operation",
                  "last_write", "engine", "optimized", "vacuumed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", dest="maintain.tables", action="append", default=None,
                   metavar="NAME", help="only this table (repeatable; default every table)")
    p.add_argument("--retention-hours", dest="maintain.retention_hours", type=float,
                   default=None, metavar="H", help="VACUUM keeps files the last H hours need "
                   "(default 168; 0 removes every file the current version does not read)")
    p.add_argument("--no-optimize", dest="maintain.optimize", action="store_const", const=False,
                   default=None, help="skip OPTIMIZE")
    p.add_argument("--no-vacuum", dest="maintain.vacuum", action="store_const", const=False,
                   default=None, help="skip VACUUM")


def preflight(cfg: Config) -> None:
    unknown = sorted(set(cfg.maintain.tables) - set(L.ALL_TABLES))
    if unknown:
        raise ConfigError(f"maintain.tables: unknown table(s) {unknown}; the lake's tables: "
                          f"{', '.join(L.ALL_TABLES)}")


def stats_columns(columns: list[str], properties: dict) -> list[str]:
    """The columns Delta keeps min/max statistics for: ``delta.dataSkippingStatsColumns``, else
    the first ``delta.dataSkippingNumIndexedCols`` (default 32)."""
    named = properties.get("delta.dataSkippingStatsColumns")
    if named:
        return [c.strip().strip("`") for c in named.split(",")]
    n = int(properties.get("delta.dataSkippingNumIndexedCols", 32))
    return list(columns) if n < 0 else list(columns[:n])


def zorder_columns(table: str, columns: list[str], partitions: list[str],
                   properties: dict | None = None) -> list[str]:
    """``ZORDER[table]`` restricted to the table's columns that have statistics (Z-order works
    through them: silver/events keeps none on user_id, to keep ingest fast), partition columns
    left out."""
    stats = stats_columns(columns, properties or {})
    return [c for c in ZORDER.get(table, ())
            if c in columns and c not in partitions and c in stats]


def optimize(spark: SparkSession, lake: Lake, table: str) -> dict:
    """OPTIMIZE (Z-ordered where ``ZORDER`` names columns). Returns Delta's metrics."""
    from delta.tables import DeltaTable

    dt = DeltaTable.forPath(spark, lake.path(table))
    detail = dt.detail().first()
    cols = zorder_columns(table, dt.toDF().columns, list(detail["partitionColumns"]),
                          dict(detail["properties"] or {}))
    builder = dt.optimize()
    result = builder.executeZOrderBy(*cols) if cols else builder.executeCompaction()
    m = result.first()["metrics"]
    return {"zorder": cols, "files_added": m["numFilesAdded"],
            "files_removed": m["numFilesRemoved"]}


RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


@contextmanager
def retention_check_lifted(spark: SparkSession, retention_hours: float) -> Iterator[None]:
    """Within the block, Delta's check that refuses VACUUM below its 168 h default is off when
    ``retention_hours`` is below it; the session's setting is restored on the way out (also
    when the block fails), so the lift never outlives the stage."""
    before = spark.conf.get(RETENTION_CHECK, "true")
    if retention_hours < DELTA_DEFAULT_RETENTION_H:
        spark.conf.set(RETENTION_CHECK, "false")
    try:
        yield
    finally:
        spark.conf.set(RETENTION_CHECK, before)


def vacuum(spark: SparkSession, lake: Lake, table: str, retention_hours: float) -> None:
    from delta.tables import DeltaTable

    DeltaTable.forPath(spark, lake.path(table)).vacuum(retention_hours)


def health(spark: SparkSession, lake: Lake, table: str) -> dict:
    """Files, bytes, version, partition columns and the last commit of one table."""
    from delta.tables import DeltaTable

    dt = DeltaTable.forPath(spark, lake.path(table))
    d = dt.detail().first()
    last = dt.history(1).first()
    return {"table": table, "files": int(d["numFiles"]), "bytes": int(d["sizeInBytes"]),
            "version": int(last["version"]), "partitions": ",".join(d["partitionColumns"]),
            "last_operation": last["operation"],
            "last_write": last["timestamp"].strftime("%Y-%m-%d %H:%M:%S"),
            "engine": (last["engineInfo"] or "").split(" ")[0]}


def format_health(rows: list[dict]) -> str:
    def cell(r, c):
        v = r.get(c, "")
        if c == "bytes":
            return _size(v)
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    grid = [list(HEALTH_COLUMNS)] + [[cell(r, c) for c in HEALTH_COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(HEALTH_COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(spark: SparkSession, cfg: Config) -> list[dict]:
    preflight(cfg)
    mc = cfg.maintain
    lake = Lake(cfg.lake)
    t0 = time.perf_counter()
    wanted = mc.tables or L.ALL_TABLES
    tables = [t for t in wanted if lake.exists(spark, t)]
    missing = [t for t in mc.tables if t not in tables]
    if missing:
        log.warning("not in the lake (yet): %s", ", ".join(missing))
    if mc.vacuum and mc.retention_hours < DELTA_DEFAULT_RETENTION_H:
        log.warning("VACUUM with %.4g h retention (< Delta's %.0f h): versions older than that "
                    "can no longer be read (time travel, pinned run inputs)", mc.retention_hours,
                    DELTA_DEFAULT_RETENTION_H)
    rows = []
    with retention_check_lifted(spark, mc.retention_hours if mc.vacuum else
                                DELTA_DEFAULT_RETENTION_H):
        for i, table in enumerate(tables, 1):
            t = time.perf_counter()
            opt = optimize(spark, lake, table) if mc.optimize else None
            if mc.vacuum:
                vacuum(spark, lake, table, mc.retention_hours)
            row = health(spark, lake, table)
            row["optimized"] = ("-" if opt is None else
                                f"{opt['files_removed']}->{opt['files_added']} files"
                                + (f" z:{'+'.join(opt['zorder'])}" if opt["zorder"] else ""))
            row["vacuumed"] = f"{mc.retention_hours:g}h" if mc.vacuum else "-"
            rows.append(row)
            log.info("[%d/%d] %s: %s, %s files, %.1fs", i, len(tables), table, row["optimized"],
                     f"{row['files']:,}", time.perf_counter() - t)
    print(format_health(rows))
    summary("maintain", tables=tables, lake=lake.root, seconds=time.perf_counter() - t0,
            tables_maintained=len(rows), files=sum(r["files"] for r in rows),
            bytes=sum(r["bytes"] for r in rows))
    return rows


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("maintain"))
