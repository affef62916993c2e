"""Run the whole pipeline on generated data, then a cold-start example.

Generate, then ``reclake pipeline``: ingest -> transform -> split -> ALS and popularity ->
evaluate -> deep models on Ray Train -> tune -> embed -> influence.

    reclake demo            # ./demo-data and ./lake
    reclake --lake /tmp/lake demo --events 200000

Prints every lake table with its row count and location, and how to read a table from pandas /
DuckDB through ``deltalake`` (no Spark needed).

The demo is :mod:`jobs.pipeline` (pipeline ``demo``: run ids ``demo-<model>``, its per-stage
summary and final table) over the generated files, with the demo's choices where the config keeps
the defaults (:func:`demo_config`). A rerun on the same lake skips what is unchanged.

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
from common.config import AlsConfig, Config, GenerateConfig, PipelineConfig, TuneConfig
from common.lake import Lake
from common.log import get_logger
from jobs import als, evaluate, generate, ingest, split, transform
from jobs.pipeline import run_pipeline

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
DEMO_TUNE_TRIALS = 4  # the demo's sweep: few trials, the shipped ALS space, on stratified
# the pipeline's choices: three protocols (models on the first), ALS beside its baseline
DEMO_PIPELINE: dict[str, object] = {
    "pipeline.protocols": ["stratified", "temporal", "leave_last_out"],
    "pipeline.fit_models": ["als", "popularity"],
    "pipeline.train_models": list(DEEP_MODELS),
    "pipeline.tune_model": "als",
}
DEMO_PIPELINE_NAME = "demo"


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
    the ``DEMO_ALS`` settings, csv files ingested as the generic source, dataset label; and the
    pipeline's (``DEMO_PIPELINE``, ``DEMO_DEEP``, the item catalogue, the stages --no-deep /
    --no-tune / --no-text leave out)."""
    values: dict[str, object] = {
        "generate.formats": ["csv"],
        "ingest.source_format": "generic",
        "ingest.path": f"{cfg.generate.out}/csv",
        "run.dataset": cfg.run.dataset or DEMO_DATASET,
        **DEMO_PIPELINE,
        **DEMO_DEEP,
    }
    if cfg.generate.dirty_rate == GenerateConfig.dirty_rate:
        values["generate.dirty_rate"] = DEMO_DIRTY_RATE
    if cfg.split.valid_ratio == 0.0:  # a valid part for the sweep; test stays the 75/25 split
        values.update({"split.valid_ratio": 0.05, "split.valid_from": "train"})
    for key, value in DEMO_ALS.items():
        if getattr(cfg.als, key.split(".", 1)[1]) == getattr(AlsConfig, key.split(".", 1)[1]):
            values[key] = value
    if cfg.pipeline.name == PipelineConfig.name:
        values["pipeline.name"] = DEMO_PIPELINE_NAME
    if cfg.tune.trials == TuneConfig.trials:
        values["tune.trials"] = DEMO_TUNE_TRIALS
    skip = list(cfg.pipeline.skip)
    for flag, stage in ((cfg.demo.deep, "train"), (cfg.demo.tune, "tune"), (cfg.demo.text, "embed")):
        if not flag and stage not in skip:
            skip.append(stage)
    values["pipeline.skip"] = skip
    if cfg.demo.text:
        values.update(DEMO_ITEMS)
        values["items.path"] = f"{cfg.generate.out}/items/items.csv"
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


# the generated catalogue (jobs/generate/catalogue.py) through the generic items reader
DEMO_ITEMS: dict[str, object] = {
    "items.source_format": "generic",
    "items.generic.columns": {"item_id": "item_id", "title": "title", "category": "category",
                              "brand": "brand"},
}


def text_demo(spark: SparkSession, cfg: Config) -> list[dict]:
    """The language model on the demo data, after the pipeline's embed stage put the generated
    catalogue in ``silver/items`` and its MiniLM vectors in ``models/text_embeddings``: the
    ``cold_items`` split, then the text model and a random ranking on the held-out items and the
    ALS + text hybrid; prints one user's cold-start list beside their history. Returns the runs'
    ``metrics/evaluation`` rows."""
    from jobs.fit import fit_run

    name = cfg.pipeline.name
    cold = cfg.with_(**{"split.protocol": "cold_items", "split.valid_ratio": 0.0})
    split.main(spark, cold)
    runs = [
        cold.with_(**{"run.model": "text", "recommend.candidates": "cold",
                      "run.run_id": f"{name}-text"}),
        cold.with_(**{"run.model": "random", "recommend.candidates": "cold",
                      "run.run_id": f"{name}-random"}),
        cold.with_(**{"run.model": "hybrid", "run.run_id": f"{name}-hybrid"}),
    ]
    for run_cfg in runs:
        fit_run(spark, run_cfg)
    rows = evaluate_runs(spark, cfg, runs)
    _show_cold_start(spark, Lake(cfg.lake), runs[0].run.run_id)
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


def _evaluation_rows(spark: SparkSession, cfg: Config, run_ids: list[str]) -> list[dict]:
    """The ``metrics/evaluation`` rows (target all) of these runs, in their order."""
    from pyspark.sql import functions as F

    from common import schema as S

    df = (Lake(cfg.lake).read(spark, L.METRICS_EVALUATION)
          .where(F.col(S.RUN_ID).isin(run_ids) & (F.col(S.TARGET) == "all")).toPandas())
    rows = df.to_dict("records")
    return sorted(rows, key=lambda r: run_ids.index(r[S.RUN_ID]))


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
    print(f"== generate {cfg.generate.events:,} events -> {cfg.generate.out}", flush=True)
    generate.main(None, cfg)
    run_pipeline(spark, cfg)
    p = cfg.pipeline
    models = [*p.fit_models, *([] if "train" in p.skip else p.train_models)]
    metric_rows = _evaluation_rows(spark, cfg, [f"{p.name}-{m}" for m in models])
    text_rows: list[dict] = []
    if cfg.demo.text:
        print("\n== cold start: cold_items split (20 % of the items held out whole), text / "
              "random / hybrid recommenders over the MiniLM vectors", flush=True)
        text_rows = text_demo(spark, cfg)

    lake = Lake(cfg.lake)
    rows = table_summary(spark, lake)
    width = max(len(t) for t, _, _ in rows)
    print(f"\nreclake demo finished in {time.perf_counter() - t0:.0f}s. Lake tables:")
    for t, n, where in rows:
        print(f"  {t:<{width}}  {n:>10,} rows  {where}")
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
