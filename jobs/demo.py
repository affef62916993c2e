"""Run the whole pipeline on generated data: generate -> ingest -> transform -> split -> ALS and
popularity -> deep models on Ray Train -> evaluate -> influence.

    reclake demo            # ./demo-data and ./lake
    reclake --lake /tmp/lake demo --events 200000

Prints every lake table with its row count and location, and how to read a table from pandas /
DuckDB through ``deltalake`` (no Spark needed).

The demo trains ALS with ``DEMO_ALS``, settings chosen on a validation part of the demo data's
train split by ``tests/benchmarks/tune_demo_als.py`` (the test split is never looked at); a key
you set yourself (``--set als.rank=64``) wins over the demo's choice. ``tests/test_demo.py``
asserts that ALS beats the popularity baseline by a clear margin on the default demo data.
The deep models (NeuMF, SASRec, LightGCN) train small (``DEMO_DEEP``: a few epochs, 1 Ray Train
worker) on the same split, so their metrics print beside ALS and popularity; ``--no-deep`` skips
them. A 4-trial ALS sweep (``reclake tune``: Optuna + ASHA on the validation part the demo carves
from the stratified train share) prints its leaderboard and refits its best config; ``--no-tune``
skips it. The language-model step (``--no-text`` skips it) ingests the generated item catalogue,
embeds it with all-MiniLM-L6-v2 on Ray Data, holds out 20 % of the items (``cold_items``) and
shows a cold-start list by the text model beside a random ranking and the ALS + text hybrid.
"""

from __future__ import annotations

import argparse
import time

from pyspark.sql import SparkSession

from common import lake as L
from common.config import AlsConfig, Config, GenerateConfig
from common.lake import Lake
from common.log import get_logger
from jobs import als, evaluate, generate, influence, ingest, split, transform

log = get_logger("demo")

DEMO_DATASET = "demo-generated"
DEMO_DIRTY_RATE = 0.01  # quarantine has something to show
# chosen by tests/benchmarks/tune_demo_als.py on validation NDCG@10 (default generate settings;
# 54-point grid rank 4/8/16 x reg_param 0.01/0.1/1 x alpha 0.5/2/8 x max_iter 5/15: valid NDCG@10
# 0.2048 vs popularity 0.1071). The planted world is rank 9 (8 taste clusters + popularity).
DEMO_ALS: dict[str, object] = {
    "als.rank": 8,
    "als.reg_param": 0.01,
    "als.alpha": 0.5,
    "als.max_iter": 15,
}


# small and quick on 2 CPU cores (a few minutes for the three); not tuned
DEMO_DEEP: dict[str, object] = {
    "train.epochs": 8,
    "train.batch_size": 1024,
    "train.lr": 0.005,
    "train.patience": 0,
    "train.num_workers": 1,
    "ncf.dim_gmf": 16,
    "ncf.dim_mlp": 16,
    "ncf.layers": [32, 16],
    "lightgcn.dim": 32,
    "lightgcn.layers": 2,
    "sasrec.dim": 32,
    "sasrec.blocks": 1,
    "sasrec.max_len": 30,
    "ncf.task_target": "purchase",  # NeuMF's multi-task head: will the user buy the item?
}
DEEP_MODELS: tuple[str, ...] = ("ncf", "sasrec", "lightgcn")
# the demo's sweep: few trials, the shipped ALS space, rerun from scratch each time
DEMO_TUNE: dict[str, object] = {
    "tune.trials": 4,
    "tune.name": "demo-als",
    "tune.fresh": True,
    "split.protocol": "stratified",
    "run.model": "als",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", dest="generate.events", type=int, default=None,
                   help="events to generate (default 100000)")
    p.add_argument("--dirty-rate", dest="generate.dirty_rate", type=float, default=None,
                   help="share of bad rows and of exact duplicates to inject; the demo uses "
                        f"{DEMO_DIRTY_RATE} when this is 0 or unset, so quarantine has something "
                        "to show")
    p.add_argument("--out", dest="generate.out", default=None, help="where generated files go")
    p.add_argument("--no-deep", dest="demo.deep", action="store_const", const=False, default=None,
                   help="skip the Ray Train models (NeuMF, SASRec, LightGCN)")
    p.add_argument("--no-tune", dest="demo.tune", action="store_const", const=False,
                   default=None, help="skip the 4-trial Ray Tune sweep of ALS")
    p.add_argument("--no-text", dest="demo.text", action="store_const", const=False,
                   default=None, help="skip the language model (item catalogue, MiniLM vectors, "
                                      "cold-start recommendations by text)")


def demo_config(cfg: Config) -> Config:
    """``cfg`` with the demo's choices where it keeps the defaults: dirty rate ``DEMO_DIRTY_RATE``,
    the ``DEMO_ALS`` settings, csv files ingested as the generic source, dataset label."""
    values: dict[str, object] = {
        "generate.formats": ["csv"],
        "ingest.source_format": "generic",
        "ingest.path": f"{cfg.generate.out}/csv",
        "run.dataset": cfg.run.dataset or DEMO_DATASET,
    }
    if cfg.generate.dirty_rate == GenerateConfig.dirty_rate:
        values["generate.dirty_rate"] = DEMO_DIRTY_RATE
    if cfg.split.valid_ratio == 0.0:  # a valid part for the sweep; test stays the 75/25 split
        values.update({"split.valid_ratio": 0.05, "split.valid_from": "train"})
    for key, value in DEMO_ALS.items():
        if getattr(cfg.als, key.split(".", 1)[1]) == getattr(AlsConfig, key.split(".", 1)[1]):
            values[key] = value
    return cfg.with_(**values)


def build_lake(spark: SparkSession, cfg: Config) -> None:
    """Generate the log, ingest it (bronze, quarantine, silver, indices, audit), build gold."""
    print(f"== 1/7 generate {cfg.generate.events:,} events -> {cfg.generate.out}")
    generate.main(None, cfg)
    print("== 2/7 ingest (bronze, quarantine, silver, indices, audit)")
    ingest.main(spark, cfg)
    print("== 3/7 transform (gold)")
    transform.main(spark, cfg)


def fit_models(spark: SparkSession, cfg: Config, *, stamp: str,
               models: tuple[str, ...] = ("als", "popularity")) -> list[Config]:
    """Train each model on the stratified split as run ``demo-<model>-<stamp>``; returns each
    run's config."""
    runs = []
    for model in models:
        run_cfg = cfg.with_(**{"split.protocol": "stratified", "run.model": model,
                               "run.run_id": f"demo-{model}-{stamp}"})
        als.main(spark, run_cfg)
        runs.append(run_cfg)
    return runs


def train_deep(cfg: Config, *, stamp: str, models: tuple[str, ...] = DEEP_MODELS) -> list[dict]:
    """Train each deep model on the stratified split with ``DEMO_DEEP`` (Ray Train, local Ray);
    returns their ``metrics/evaluation`` rows (the runs write them, test split, target all)."""
    from raytrain.train import train_run

    deep = cfg.with_(**DEMO_DEEP, **{"split.protocol": "stratified"})
    rows = []
    for model in models:
        print(f"-- {model}")
        run_cfg = deep.with_(**{"run.model": model, "run.run_id": f"demo-{model}-{stamp}"})
        train_run(run_cfg)
        rows += _evaluation_rows(cfg, run_cfg.run.run_id)
    return rows


# the generated catalogue (jobs/generate/catalogue.py) through the generic items reader
DEMO_ITEMS: dict[str, object] = {
    "items.source_format": "generic",
    "items.generic.columns": {"item_id": "item_id", "title": "title", "category": "category",
                              "brand": "brand"},
}


def text_demo(spark: SparkSession, cfg: Config, *, stamp: str) -> list[dict]:
    """The language model on the demo data: the generated catalogue -> ``silver/items``, its
    MiniLM vectors (``reclake embed``, Ray Data), the ``cold_items`` split, then the text model
    and a random ranking on the held-out items and the ALS + text hybrid; prints one user's
    cold-start list beside their history. Returns the runs' ``metrics/evaluation`` rows."""
    from pathlib import Path

    from jobs import ingest_items
    from jobs.fit import fit_run
    from raytrain.embed import embed_run

    items_cfg = cfg.with_(**DEMO_ITEMS, **{
        "items.path": str(Path(cfg.generate.out) / "items" / "items.csv")})
    ingest_items.main(spark, items_cfg)
    embed_run(cfg)
    cold = cfg.with_(**{"split.protocol": "cold_items", "split.valid_ratio": 0.0})
    split.main(spark, cold)
    runs = [
        cold.with_(**{"run.model": "text", "recommend.candidates": "cold",
                      "run.run_id": f"demo-text-{stamp}"}),
        cold.with_(**{"run.model": "random", "recommend.candidates": "cold",
                      "run.run_id": f"demo-random-{stamp}"}),
        cold.with_(**{"run.model": "hybrid", "run.run_id": f"demo-hybrid-{stamp}"}),
    ]
    for run_cfg in runs:
        fit_run(spark, run_cfg)
    lake = Lake(cfg.lake)
    rows = []
    for run_cfg in runs:
        r = evaluate.evaluate_run(spark, lake, run_id=run_cfg.run.run_id, ks=cfg.evaluate.k,
                                  target="all", dataset=run_cfg.run.dataset)
        evaluate.write_evaluation(spark, lake, r, run_id=run_cfg.run.run_id, target="all")
        rows += r
    _show_cold_start(spark, lake, runs[0].run.run_id)
    return rows


def _show_cold_start(spark: SparkSession, lake: Lake, run_id: str) -> None:
    """One user's most confident train items and the cold items the text model gives them."""
    from pyspark.sql import functions as F

    from common import schema as S

    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col(S.RUN_ID) == run_id)
    user = recs.select(S.USER_IDX).orderBy(S.USER_IDX).first()
    if user is None:
        return
    u = user[0]
    titles = lake.read(spark, L.SILVER_ITEMS).join(
        lake.read(spark, L.SILVER_ITEM_INDEX).withColumnRenamed(S.ITEM_IDX, "_i"), S.ITEM_ID
    ).select(F.col("_i").alias(S.ITEM_IDX), S.TITLE)
    history = (lake.read(spark, L.GOLD_SPLITS)
               .where((F.col(S.PROTOCOL) == "cold_items") & (F.col(S.SPLIT) == S.TRAIN)
                      & (F.col(S.USER_IDX) == u))
               .orderBy(F.desc(S.CONFIDENCE)).limit(5).join(titles, S.ITEM_IDX)
               .orderBy(F.desc(S.CONFIDENCE)).collect())
    top = (recs.where(F.col(S.USER_IDX) == u).join(titles, S.ITEM_IDX).orderBy(S.RANK)
           .limit(5).collect())
    print(f"\ncold start, user_idx {u}: most confident train items")
    for r in history:
        print(f"    {r[S.TITLE]}")
    print("  recommended among items nobody has touched in train (text model):")
    for r in top:
        print(f"    {r[S.RANK]}. {r[S.TITLE]}  (cosine {r[S.SCORE]:.3f})")


def tune_demo(cfg: Config) -> dict:
    """The demo's sweep (``DEMO_TUNE``); returns its best-config row."""
    from raytrain.tune import tune_run

    return tune_run(cfg.with_(**DEMO_TUNE))


def _evaluation_rows(cfg: Config, run_id: str) -> list[dict]:
    from deltalake import DeltaTable

    from common import schema as S

    dt = DeltaTable(Lake(cfg.lake).path(L.METRICS_EVALUATION))
    df = dt.to_pandas()
    del dt
    return df[(df[S.RUN_ID] == run_id) & (df[S.TARGET] == "all")].to_dict("records")


def evaluate_runs(spark: SparkSession, cfg: Config, runs: list[Config]) -> list[dict]:
    """``metrics/evaluation`` rows of each run (test split, every test pair relevant), written."""
    lake = Lake(cfg.lake)
    metric_rows = []
    for run_cfg in runs:
        rows = evaluate.evaluate_run(
            spark, lake, run_id=run_cfg.run.run_id, ks=cfg.evaluate.k, target="all",
            dataset=run_cfg.run.dataset)
        evaluate.write_evaluation(spark, lake, rows, run_id=run_cfg.run.run_id, target="all")
        metric_rows += rows
    return metric_rows


def table_summary(spark: SparkSession, lake: Lake) -> list[tuple[str, int, str]]:
    """(table, rows, path) for every lake table that exists."""
    out = []
    for t in L.ALL_TABLES:
        if lake.exists(spark, t):
            out.append((t, lake.read(spark, t).count(), lake.path(t)))
    return out


def main(spark: SparkSession, cfg: Config) -> list[tuple[str, int, str]]:
    t0 = time.perf_counter()
    cfg = demo_config(cfg)
    build_lake(spark, cfg)
    print("== 4/7 split (stratified, temporal, leave_last_out)")
    for protocol in ("stratified", "temporal", "leave_last_out"):
        split.main(spark, cfg.with_(**{"split.protocol": protocol}))
    a = cfg.als
    print(f"== 5/7 models on the stratified split: ALS (rank {a.rank}, reg_param {a.reg_param}, "
          f"alpha {a.alpha}, max_iter {a.max_iter}) and the popularity baseline")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    runs = fit_models(spark, cfg, stamp=stamp)
    print("== 6/7 evaluate against the test split")
    metric_rows = evaluate_runs(spark, cfg, runs)
    ray_started = False
    text_rows: list[dict] = []
    if cfg.demo.deep or cfg.demo.tune or cfg.demo.text:
        from raytrain.train import _init_ray

        ray_started = _init_ray(cfg)  # one local Ray for the deep runs and the sweep
    try:
        if cfg.demo.deep:
            print("== 6b/7 deep models on Ray Train (NeuMF, SASRec, LightGCN; stratified split, "
                  f"{DEMO_DEEP['train.epochs']} epochs each)")
            metric_rows += train_deep(cfg, stamp=stamp)
        if cfg.demo.tune:
            print(f"== 6c/7 tune: a {DEMO_TUNE['tune.trials']}-trial ALS sweep on Ray Tune "
                  "(Optuna + ASHA, objective validation NDCG@10), then its best config refit "
                  "and tested")
            tune_demo(cfg)
        if cfg.demo.text:
            print("== 6d/7 language model: the item catalogue -> silver/items, all-MiniLM-L6-v2 "
                  "vectors by Ray Data (reclake embed), cold_items split, text / random / "
                  "hybrid recommenders")
            text_rows = text_demo(spark, cfg, stamp=stamp)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    print("== 7/7 influence: which behaviours drive the ALS recommendations")
    influence.main(spark, runs[0])

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
    if cfg.demo.text:
        print("\nCold start (cold_items protocol; all/cold: the held-out items only):")
        print(evaluate.format_table(text_rows))
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
