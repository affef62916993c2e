"""ALS benchmark: the reclake ALS job against bare MLlib, and its seen-excluding top-K against
``recommendForAllUsers``.

    make bench-als
    python tests/benchmarks/bench_als.py --users 100000 --items 30000 --interactions 2000000

Data: a generated implicit-feedback train split (``--users`` x ``--items``, about
``--interactions`` distinct pairs; item popularity Zipf-like, users drawn from a few taste
clusters so the factors have something to find; confidence = 1 + log1p(count)) written once as
``gold/splits`` (protocol ``stratified``, train only) of a private Delta lake under ``<workdir>/lake``. Both sides then run
in one local Spark session (``local[2]``), after an untimed warm-up fit on a small sample, in
alternating order from repeat to repeat. Same ALS parameters on both sides (rank 64, 10
iterations, implicitPrefs, checkpoint interval 10).

- **train, bare**: read the same train rows, ``ALS.fit``, write user and item factors as Parquet.
- **train, reclake**: ``jobs.fit.main`` minus its top-K step: read gold/splits, cold-start counts,
  fit, write both factor Delta tables (replaceWhere on run_id), save the ``ALSModel``, run record.
- **top-K, bare**: ``model.recommendForAllUsers(10)`` written as Parquet (seen items *not*
  excluded: it cannot).
- **top-K, reclake**: the job's top-K step: the exact seen-excluding top-10 for every user
  (``common.topk``) written to ``gold/recommendations`` (one row per recommendation, Delta).

Targets (ratios of medians over repeats): train reclake / bare <= 1.15; top-K reclake / bare <= 1.0.
The last line, ``BENCH_ALS_RESULT {json}``, holds every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import lake as L
from common import schema as S
from common.config import Config, load_config
from common.lake import Lake
from common.spark import get_spark
from common.splits import train_split
from jobs import fit
from jobs.models.als import make_als

PROTOCOL = "stratified"  # the bench lake holds only this generated split
TARGET_TRAIN, TARGET_TOPK = 1.15, 1.0
RESULT_PREFIX = "BENCH_ALS_RESULT "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=30_000)
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workdir", default="./bench-out/als")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--driver-memory", default="8g")
    return p.parse_args(argv)


def generate_pairs(users: int, items: int, interactions: int, seed: int) -> pd.DataFrame:
    """Distinct (user, item) pairs with a confidence; vectorised, deterministic."""
    rng = np.random.default_rng(seed)
    n_clusters = 20
    user_cluster = rng.integers(0, n_clusters, users)
    # each cluster prefers its own slice of a Zipf-ranked catalogue
    item_rank = np.arange(1, items + 1)
    base = 1.0 / item_rank**0.9
    cluster_items = [rng.permutation(items) for _ in range(n_clusters)]
    draws = int(interactions * 1.15)  # duplicates are merged below
    u = rng.integers(0, users, draws)
    popular = rng.random(draws) < 0.5
    cdf = np.cumsum(base) / base.sum()
    ranks = np.searchsorted(cdf, rng.random(draws))
    clustered = np.array(cluster_items)[user_cluster[u], ranks]
    i = np.where(popular, ranks, clustered)
    counts = rng.geometric(0.6, draws)
    df = pd.DataFrame({S.USER_IDX: u.astype(np.int32), S.ITEM_IDX: i.astype(np.int32),
                       "n": counts})
    df = df.groupby([S.USER_IDX, S.ITEM_IDX], as_index=False)["n"].sum()
    df = df.iloc[np.sort(rng.permutation(len(df))[:interactions])].reset_index(drop=True)
    df[S.CONFIDENCE] = 1.0 + np.log1p(df.pop("n").to_numpy(np.float64))
    return df


def write_split(spark, lake: Lake, pairs: pd.DataFrame) -> None:
    from pyspark.sql import functions as F

    df = spark.createDataFrame(pairs).select(
        F.lit(PROTOCOL).alias(S.PROTOCOL), F.lit("train").alias(S.SPLIT),
        F.col(S.USER_IDX).cast("int"), F.col(S.ITEM_IDX).cast("int"), S.CONFIDENCE,
        F.lit(None).cast("timestamp").alias(S.TS),
    )
    lake.replace_rows(df, L.GOLD_SPLITS, f"{S.PROTOCOL} = '{PROTOCOL}'",
                      partition_by=[S.PROTOCOL])


def bare_train(spark, lake: Lake, cfg: Config, out: Path):
    t = time.perf_counter()
    train = train_split(lake.read(spark, L.GOLD_SPLITS), protocol=PROTOCOL)
    model = make_als(cfg=cfg).fit(train)
    model.userFactors.write.mode("overwrite").parquet(str(out / "user_factors"))
    model.itemFactors.write.mode("overwrite").parquet(str(out / "item_factors"))
    return time.perf_counter() - t, model


def bare_topk(model, k: int, out: Path) -> float:
    t = time.perf_counter()
    model.recommendForAllUsers(k).write.mode("overwrite").parquet(str(out / "recs"))
    return time.perf_counter() - t


def reclake_job(spark, cfg: Config, run_id: str) -> tuple[float, float, dict]:
    cfg = cfg.with_(**{"run.run_id": run_id})
    t = time.perf_counter()
    record = fit.main(spark, cfg)
    wall = time.perf_counter() - t
    topk = record.seconds["recommend"]
    return wall - topk, topk, record


def main(argv=None) -> dict:
    a = parse_args(argv)
    work = Path(a.workdir).resolve()
    lake_dir = work / "lake"
    cfg = load_config(values={
        "lake": str(lake_dir), "spark.driver_memory": a.driver_memory,
        "spark.shuffle_partitions": 4, "split.protocol": PROTOCOL,
        "als.rank": a.rank, "als.max_iter": a.iters, "recommend.k": a.k,
        "run.dataset": "generated",
    })
    spark = get_spark(cfg)
    lake = Lake(str(lake_dir))
    marker = work / f"data-{a.users}-{a.items}-{a.interactions}-{a.seed}.done"
    if not marker.exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t = time.perf_counter()
        pairs = generate_pairs(a.users, a.items, a.interactions, a.seed)
        write_split(spark, lake, pairs)
        marker.touch()
        print(f"generated {len(pairs):,} interactions ({pairs[S.USER_IDX].nunique():,} users, "
              f"{pairs[S.ITEM_IDX].nunique():,} items) in {time.perf_counter() - t:.0f}s")
    n = lake.read(spark, L.GOLD_SPLITS).where(f"{S.PROTOCOL} = '{PROTOCOL}'").count()
    print(f"train rows: {n:,}; rank {a.rank}, {a.iters} iterations, top-{a.k}")

    # warm-up: JIT, Python workers, Delta code paths
    small = cfg.with_(**{"als.max_iter": 1, "als.rank": 8})
    warm_out = work / "bare-warmup"
    _, m = bare_train(spark, lake, small, warm_out)
    bare_topk(m, a.k, warm_out)
    reclake_job(spark, small, "bench-warmup")
    print("warm-up done")

    runs = []
    for r in range(a.repeats):
        order = ["reclake", "bare"] if r % 2 == 0 else ["bare", "reclake"]
        res = {}
        for side in order:
            if side == "bare":
                res["bare_train"], model = bare_train(spark, lake, cfg, work / "bare")
                res["bare_topk"] = bare_topk(model, a.k, work / "bare")
                model.userFactors.unpersist()
                model.itemFactors.unpersist()
            else:
                res["reclake_train"], res["reclake_topk"], rec = reclake_job(
                    spark, cfg, f"bench-{r}")
                res["detail_reclake"] = rec["seconds"]
            print(f"repeat {r + 1} {side}: " + ", ".join(
                f"{k}={v:.1f}s" for k, v in res.items() if k.startswith(side)), flush=True)
        res["train_ratio"] = res["reclake_train"] / res["bare_train"]
        res["topk_ratio"] = res["reclake_topk"] / res["bare_topk"]
        print(f"repeat {r + 1}: train ratio {res['train_ratio']:.3f}, "
              f"top-K ratio {res['topk_ratio']:.3f}", flush=True)
        runs.append(res)

    def med(key):
        return statistics.median(x[key] for x in runs)

    summary = {
        "users": a.users, "items": a.items, "interactions": n, "rank": a.rank,
        "iters": a.iters, "k": a.k, "repeats": a.repeats,
        "bare_train_s": med("bare_train"), "reclake_train_s": med("reclake_train"),
        "bare_topk_s": med("bare_topk"), "reclake_topk_s": med("reclake_topk"),
        "train_ratio": med("train_ratio"), "topk_ratio": med("topk_ratio"),
        "runs": runs,
    }
    print(f"\nALS job train phase: reclake {summary['reclake_train_s']:.1f}s vs bare fit + factor "
          f"write {summary['bare_train_s']:.1f}s -> ratio {summary['train_ratio']:.3f} "
          f"(target <= {TARGET_TRAIN})")
    print(f"top-{a.k} for all users: reclake seen-excluding {summary['reclake_topk_s']:.1f}s vs "
          f"recommendForAllUsers {summary['bare_topk_s']:.1f}s -> ratio "
          f"{summary['topk_ratio']:.3f} (target <= {TARGET_TOPK})")
    print(RESULT_PREFIX + json.dumps(summary, default=float))
    spark.stop()
    return summary


if __name__ == "__main__":
    main()
