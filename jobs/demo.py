"""Run the whole pipeline on generated data: generate -> ingest -> transform -> split -> ALS and
popularity -> evaluate -> influence.

    reclake demo            # ./demo-data and ./lake
    reclake --lake /tmp/lake demo --events 200000

Prints every lake table with its row count and location, and how to read a table from pandas /
DuckDB through ``deltalake`` (no Spark needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from pyspark.sql import SparkSession

from common import lake as L
from common.config import Config
from common.lake import Lake
from common.log import get_logger
from jobs import als, evaluate, generate, influence, ingest, split, transform

log = get_logger("demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", dest="generate.events", type=int, default=None,
                   help="events to generate (default 100000)")
    p.add_argument("--dirty-rate", dest="generate.dirty_rate", type=float, default=None,
                   help="share of bad rows and of exact duplicates to inject; the demo uses "
                        "0.01 when this is 0 or unset, so quarantine has something to show")
    p.add_argument("--out", dest="generate.out", default=None, help="where generated files go")


def table_summary(spark: SparkSession, lake: Lake) -> list[tuple[str, int, str]]:
    """(table, rows, path) for every lake table that exists."""
    out = []
    for t in L.ALL_TABLES:
        if lake.exists(spark, t):
            out.append((t, lake.read(spark, t).count(), lake.path(t)))
    return out


def main(spark: SparkSession, cfg: Config) -> list[tuple[str, int, str]]:
    t0 = time.perf_counter()
    if cfg.generate.dirty_rate == 0.0:  # the demo shows quarantine at work unless told otherwise
        cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, dirty_rate=0.01))
    gen_cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, formats=("csv",)))
    print(f"== 1/7 generate {cfg.generate.events:,} events -> {cfg.generate.out}")
    generate.main(None, gen_cfg)
    print("== 2/7 ingest (bronze, quarantine, silver, indices, audit)")
    ingest_cfg = dataclasses.replace(
        cfg, ingest=dataclasses.replace(cfg.ingest, source_format="generic",
                                        path=f"{cfg.generate.out}/csv")
    )
    ingest.main(spark, ingest_cfg)
    print("== 3/7 transform (gold)")
    transform.main(spark, cfg)
    print("== 4/7 split (stratified, temporal, leave_last_out)")
    for protocol in ("stratified", "temporal", "leave_last_out"):
        split.main(spark, dataclasses.replace(
            cfg, split=dataclasses.replace(cfg.split, protocol=protocol)))
    print("== 5/7 models on the stratified split: ALS and the popularity baseline")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_ids = []
    for model in ("als", "popularity"):
        run_cfg = dataclasses.replace(
            cfg, split=dataclasses.replace(cfg.split, protocol="stratified"),
            run=dataclasses.replace(cfg.run, model=model, run_id=f"demo-{model}-{stamp}",
                                    dataset=cfg.run.dataset or "demo-generated"))
        als.main(spark, run_cfg)
        run_ids.append(run_cfg)
    print("== 6/7 evaluate against the test split")
    metric_rows = []
    for run_cfg in run_ids:
        rows = evaluate.evaluate_run(
            spark, Lake(cfg.lake), run_id=run_cfg.run.run_id, ks=cfg.evaluate.k,
            target="all", dataset=run_cfg.run.dataset)
        evaluate.write_evaluation(spark, Lake(cfg.lake), rows, run_id=run_cfg.run.run_id,
                                  target="all")
        metric_rows += rows
    print("== 7/7 influence: which behaviours drive the ALS recommendations")
    als_cfg = run_ids[0]
    influence.main(spark, als_cfg)

    lake = Lake(cfg.lake)
    rows = table_summary(spark, lake)
    width = max(len(t) for t, _, _ in rows)
    print(f"\nreclake demo finished in {time.perf_counter() - t0:.0f}s. Lake tables:")
    for t, n, p in rows:
        print(f"  {t:<{width}}  {n:>10,} rows  {p}")
    audit = lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").orderBy("created_at")
    print("\naudit/batches (silver): rows_in = clean_new + duplicate + quarantined")
    for r in audit.collect():
        print(f"  batch {r.batch_id}: {r.rows_in:,} = {r.rows_clean_new:,} + {r.rows_duplicate:,}"
              f" + {r.rows_quarantined:,}")

    print("\nRanking metrics (metrics/evaluation), test split of the stratified protocol:")
    print(evaluate.format_table(metric_rows))
    print(f"""
Read any table without Spark (delta-rs):
  python -c "from deltalake import DeltaTable; print(DeltaTable('{lake.path(L.GOLD_INTERACTIONS)}').to_pandas().head())"
  duckdb -c "INSTALL delta; LOAD delta; SELECT * FROM delta_scan('{lake.path(L.GOLD_INTERACTIONS)}') LIMIT 5"
""")
    return rows


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("demo"))
