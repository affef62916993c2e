"""ETL benchmark: the full reclake pipeline against the bare PySpark pipeline it replaces.

    make bench-etl
    python tests/benchmarks/bench_etl.py --events 10000000 --repeats 1 --workdir ./bench-out

Both pipelines read the same generic CSV log, written once by the project's generator
(``jobs/generate.py``, ``--dirty-rate`` dirty rows and as many exact duplicates) under
``<workdir>/data/csv``; a manifest with the same events, seed and dirty rate is reused. They run in
one local Spark session (``local[2]``), after an untimed warm-up of both on a small log
(``--warmup-events``), in alternating order from repeat to repeat (reclake first on odd repeats).

- **bare**: the least a hand-written job would do. ``spark.read.csv`` with an all-string schema;
  ``ts`` try_cast to timestamp, ``value`` to double; rows without user, item or ts, or with an
  unknown behaviour, dropped; ``dropDuplicates`` over all columns; parquet partitioned by event
  date (``<workdir>/bare/events``); read back, and per (user, item) the count of each behaviour
  and the first and last ts, as parquet (``<workdir>/bare/pairs``).
- **reclake**: ``ingest.main`` (bronze, quarantine with reason codes, silver MERGE / append,
  user and item indices, audit) then ``transform.main`` (the four gold tables) into a fresh Delta
  lake (``<workdir>/lake``, deleted first).

Printed per repeat and in summary: wall times, events/s (input rows, dirty rows and duplicates
included, per second), the ratio reclake total / bare (median over repeats) against the target
(<= 2.0), and row counts as a sanity check (bare keeps values and timestamps out of range that
reclake quarantines, so its clean count can be a little higher). The last line,
``BENCH_ETL_RESULT {json}``, holds every figure for scripts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import schema as S
from common.config import Config, load_config
from common.spark import get_spark
from jobs import generate, ingest, transform

TARGET_RATIO = 2.0
SEED = 7
RESULT_PREFIX = "BENCH_ETL_RESULT "
CSV_COLUMNS = generate.GENERIC_COLUMNS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000, help="clean events to generate")
    p.add_argument("--repeats", type=int, default=1, help="runs of each pipeline")
    p.add_argument(
        "--warmup-events",
        type=int,
        default=200_000,
        help="untimed run of both pipelines on this many events first (JIT, class loading, "
        "Delta's first commit), so neither timed pipeline pays the cold start; 0: none",
    )
    p.add_argument("--workdir", default="./bench-out", help="data, bare output and lake go here")
    p.add_argument(
        "--dirty-rate",
        type=float,
        default=0.01,
        help="share of dirty rows, and of exact duplicates, in the log",
    )
    p.add_argument(
        "--shuffle-partitions",
        type=int,
        default=None,
        help="default: events / 1.25M, between 2 and 16 (8 for 10M)",
    )
    p.add_argument("--driver-memory", default="8g")
    args = p.parse_args(argv)
    if args.events < 1 or args.repeats < 1:
        p.error("--events and --repeats must be >= 1")
    return args


def shuffle_partitions(events: int) -> int:
    """Shuffle partitions for local[2]: few tasks, but each under ~1.25M events (8 for 10M)."""
    return max(2, min(16, round(events / 1_250_000)))


def bench_config(args: argparse.Namespace, work: Path) -> Config:
    data = work / "data"
    return load_config(
        values={
            "lake": str(work / "lake"),
            "spark.shuffle_partitions": args.shuffle_partitions or shuffle_partitions(args.events),
            "spark.driver_memory": args.driver_memory,
            # outside the lake, which each repeat deletes
            "spark.checkpoint_dir": str(work / "_checkpoints"),
            "spark.conf": {"spark.sql.warehouse.dir": str(work / "warehouse")},
            "generate.out": str(data),
            "generate.events": args.events,
            "generate.seed": SEED,
            "generate.dirty_rate": args.dirty_rate,
            "generate.formats": ["csv"],
            "ingest.source_format": "generic",
            "ingest.path": str(data / "csv" / "part-*.csv"),
        }
    )


# --- input ------------------------------------------------------------------------------------


def ensure_input(cfg: Config) -> tuple[dict, float | None]:
    """The csv manifest, generating the log unless one with the same settings exists.

    Returns (manifest, generation seconds or None when reused)."""
    g = cfg.generate
    manifest_path = Path(g.out) / "csv" / generate.MANIFEST
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        same = (m.get("events"), m.get("seed"), m.get("dirty_rate")) == (
            g.events,
            g.seed,
            g.dirty_rate,
        )
        if same and all((manifest_path.parent / f).exists() for f in m.get("files", [])):
            print(f"generate: reusing {m['rows']:,} rows in {manifest_path.parent}", flush=True)
            return m, None
    t0 = time.perf_counter()
    m = generate.main(None, cfg)["csv"]
    seconds = time.perf_counter() - t0
    print(f"generate: {seconds:.1f}s", flush=True)
    return m, seconds


# --- the two pipelines --------------------------------------------------------------------------


def run_bare(spark: SparkSession, csv_glob: str, out: Path) -> float:
    """The bare pipeline (module docstring); returns its wall seconds."""
    schema = T.StructType([T.StructField(c, T.StringType()) for c in CSV_COLUMNS])
    events_path, pairs_path = str(out / "events"), str(out / "pairs")
    t0 = time.perf_counter()
    raw = spark.read.csv(csv_glob, header=True, schema=schema)
    typed = raw.select(
        S.USER_ID,
        S.ITEM_ID,
        S.BEHAVIOR,
        F.col(S.VALUE).try_cast("double").alias(S.VALUE),
        F.col(S.TS).try_cast("timestamp").alias(S.TS),
        S.SESSION_ID,
        S.CATEGORY_ID,
    )
    clean = typed.where(
        F.col(S.USER_ID).isNotNull()
        & F.col(S.ITEM_ID).isNotNull()
        & F.col(S.TS).isNotNull()
        & F.col(S.BEHAVIOR).isin(*S.CANONICAL_BEHAVIORS)
    ).dropDuplicates()
    (
        clean.withColumn(S.EVENT_DATE, F.to_date(S.TS))
        .write.mode("overwrite")
        .partitionBy(S.EVENT_DATE)
        .parquet(events_path)
    )

    events = spark.read.parquet(events_path)
    pairs = events.groupBy(S.USER_ID, S.ITEM_ID).agg(
        *[
            F.count(F.when(F.col(S.BEHAVIOR) == b, 1)).alias(S.count_col(b))
            for b in S.CANONICAL_BEHAVIORS
        ],
        F.min(S.TS).alias(S.FIRST_TS),
        F.max(S.TS).alias(S.LAST_TS),
    )
    pairs.write.mode("overwrite").parquet(pairs_path)
    return time.perf_counter() - t0


def run_reclake(spark: SparkSession, cfg: Config) -> tuple[float, float, dict, dict]:
    """ingest.main then transform.main into a fresh lake.

    Returns (ingest seconds, transform seconds, ingest audit, gold row counts)."""
    shutil.rmtree(cfg.lake, ignore_errors=True)
    t0 = time.perf_counter()
    audit = ingest.main(spark, cfg)
    t1 = time.perf_counter()
    gold = transform.main(spark, cfg)
    t2 = time.perf_counter()
    if audit is None:  # cannot happen on a fresh lake; an empty figure would be a lie
        raise RuntimeError("ingest skipped the batch: the lake was not fresh")
    return t1 - t0, t2 - t1, audit, gold


# --- reporting ------------------------------------------------------------------------------------


def rate(rows: int, seconds: float) -> float:
    return rows / max(seconds, 1e-9)


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.2f}M rows/s" if r >= 1e5 else f"{r / 1e3:.1f}k rows/s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg = bench_config(args, work)
    manifest, gen_s = ensure_input(cfg)
    rows = manifest["rows"]
    print(
        f"input: {rows:,} rows = {manifest['clean_rows']:,} clean + "
        f"{manifest['duplicates']:,} duplicates + {manifest['dirty']:,} dirty; "
        f"shuffle partitions {cfg.spark.shuffle_partitions}, driver {cfg.spark.driver_memory}",
        flush=True,
    )

    spark = get_spark(cfg)
    runs: list[dict] = []
    if args.warmup_events > 0:
        warm_args = argparse.Namespace(**{**vars(args), "events": args.warmup_events})
        warm = bench_config(warm_args, work / "warmup")
        ensure_input(warm)
        t0 = time.perf_counter()
        run_bare(spark, warm.ingest.path, work / "warmup" / "bare")
        run_reclake(spark, warm)
        print(f"warm-up on {args.warmup_events:,} events (untimed): {time.perf_counter() - t0:.1f}s",
              flush=True)
    try:
        for i in range(args.repeats):
            # the first repeat runs reclake first: a cold JVM counts against it, not for it
            order = ("reclake", "bare") if i % 2 == 0 else ("bare", "reclake")
            run: dict = {"repeat": i + 1, "order": list(order)}
            for name in order:
                if name == "bare":
                    run["bare_s"] = run_bare(spark, cfg.ingest.path, work / "bare")
                else:
                    ing, tr, audit, gold = run_reclake(spark, cfg)
                    run.update(
                        ingest_s=ing, transform_s=tr, reclake_s=ing + tr, audit=audit, gold=gold
                    )
            run["ratio"] = run["reclake_s"] / run["bare_s"]
            runs.append(run)
            print(
                f"repeat {i + 1}/{args.repeats} ({' then '.join(order)}): "
                f"bare {run['bare_s']:.1f}s ({fmt_rate(rate(rows, run['bare_s']))}) | "
                f"reclake {run['reclake_s']:.1f}s = ingest {run['ingest_s']:.1f}s "
                f"+ transform {run['transform_s']:.1f}s "
                f"({fmt_rate(rate(rows, run['reclake_s']))}) | ratio {run['ratio']:.2f}",
                flush=True,
            )

        # counts after the clocks stopped: the last repeat's outputs are still on disk
        bare_events = spark.read.parquet(str(work / "bare" / "events")).count()
        bare_pairs = spark.read.parquet(str(work / "bare" / "pairs")).count()
    finally:
        spark.stop()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    last = runs[-1]
    audit, gold = last["audit"], last["gold"]
    ratio = med("ratio")
    met = ratio <= TARGET_RATIO
    print(f"\nmedian over {len(runs)} repeat(s), {rows:,} input rows:")
    print(f"  bare     {med('bare_s'):8.1f}s  {fmt_rate(rate(rows, med('bare_s')))}")
    print(
        f"  reclake  {med('reclake_s'):8.1f}s  {fmt_rate(rate(rows, med('reclake_s')))} "
        f"(ingest {med('ingest_s'):.1f}s, transform {med('transform_s'):.1f}s)"
    )
    print(
        f"  ratio reclake / bare = {ratio:.2f}: target <= {TARGET_RATIO} "
        f"{'MET' if met else 'NOT MET'}"
    )
    print(
        f"rows: bare distinct clean events {bare_events:,} | reclake silver "
        f"{audit['rows_clean_new']:,} (+ {audit['rows_duplicate']:,} duplicates, "
        f"{audit['rows_quarantined']:,} quarantined, of {audit['rows_in']:,} in) | "
        f"generator clean {manifest['clean_rows']:,}"
    )
    print(
        f"      bare (user, item) pairs {bare_pairs:,} | gold/interactions "
        f"{gold.get('gold/interactions', 0):,}",
        flush=True,
    )

    result = {
        "events": args.events,
        "input_rows": rows,
        "dirty_rate": args.dirty_rate,
        "seed": SEED,
        "repeats": args.repeats,
        "shuffle_partitions": cfg.spark.shuffle_partitions,
        "driver_memory": cfg.spark.driver_memory,
        "generate_s": gen_s,
        "runs": [{k: v for k, v in r.items() if k not in ("audit", "gold")} for r in runs],
        "median_bare_s": med("bare_s"),
        "median_ingest_s": med("ingest_s"),
        "median_transform_s": med("transform_s"),
        "median_reclake_s": med("reclake_s"),
        "bare_rows_per_s": rate(rows, med("bare_s")),
        "reclake_rows_per_s": rate(rows, med("reclake_s")),
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "counts": {
            "generator_clean": manifest["clean_rows"],
            "bare_events": bare_events,
            "bare_pairs": bare_pairs,
            "reclake_rows_in": audit["rows_in"],
            "reclake_silver": audit["rows_clean_new"],
            "reclake_duplicates": audit["rows_duplicate"],
            "reclake_quarantined": audit["rows_quarantined"],
            "reclake_gold": gold,
        },
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
