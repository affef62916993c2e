"""Fit any registered model on one protocol's train split; top-K for every user to the lake.

    spark-submit jobs/fit.py --lake ./lake --model als --protocol stratified --rank 64
    reclake fit --model popularity --protocol temporal --run-id pop-temporal
    reclake als --run-id als-1          # alias of `reclake fit --model als`

Models (``--model``, the registry in ``common/models.py``): the deep models ``ncf``, ``sasrec`` and
``lightgcn`` train on Ray (``raytrain/train.py``, the same path as ``reclake train``; no JVM is
started, the Ray flags come with ``--set train.*``); ``als`` (default; Spark MLlib ALS with
``implicitPrefs=True`` on gold's ``confidence``, so behaviour weights flow into the model) and
``popularity`` (items ranked by the share of train users who have them: the baseline every model
is judged against). An unknown name lists the registered ones.

Writes ``gold/recommendations`` (run_id, model, protocol, user_idx, rank, item_idx, score): the
top ``recommend.k`` items for every user with train history, items the user has in train
excluded exactly when ``recommend.exclude_seen`` (every item is scored, seen items are masked
before selection, block by block, so heavy users are as correct as light ones); the model's own
artefacts (ALS: ``models/als_user_factors``, ``models/als_item_factors``, the Spark model under
``models/als_model/<run_id>``); and the run record in ``models/runs`` (``common/runs.py``): typed
params and the Delta version of every table the run read and wrote, which every downstream job
reads at. Re-running a run_id replaces its rows.

Cold start, explicitly: users without train rows get no recommendations (``reclake evaluate``
counts them as ``users_truth_no_recs``); items without train rows are recommended only by the
content models (``text``, ``hybrid``: they know items by their text, ``jobs/models/text.py``) and
``random``. Both counts are logged and stored in the run record.
"""

from __future__ import annotations

import argparse
import secrets
import time
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common import lake as L
from common import models
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger, timed
from common.models import TrainContext
from common.runs import RunRecord, write_run
from common.splits import model_train_rows, train_params
from jobs.models.topk import seen_items, users_with_nothing_seen

log = get_logger("fit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="run.model", default=None, metavar="NAME",
                   help=f"registered model: {' | '.join(models.names())} (default als)")
    p.add_argument("--protocol", dest="split.protocol", default=None, metavar="P",
                   help=f"which gold/splits protocol to train on ({' | '.join(S.PROTOCOLS)})")
    p.add_argument("--run-id", dest="run.run_id", default=None, metavar="ID",
                   help="run to write (re-running replaces its rows); generated when absent")
    p.add_argument("--k", dest="recommend.k", type=int, default=None,
                   help="recommendations per user (default 10)")
    p.add_argument("--from-best", dest="run.from_best", action="store_const", const=True,
                   default=None, help="apply the best config of the latest `reclake tune` sweep "
                                      "of this model, dataset and protocol (its keys win)")
    p.add_argument("--include-seen", dest="recommend.exclude_seen", action="store_const",
                   const=False, default=None,
                   help="let a user's train items be recommended (default: excluded)")
    als = p.add_argument_group("ALS (--model als; every als.* key also via --set)")
    als.add_argument("--rank", dest="als.rank", type=int, default=None, metavar="N",
                     help="latent factors (default 64)")
    als.add_argument("--max-iter", dest="als.max_iter", type=int, default=None, metavar="N",
                     help="ALS iterations (default 10)")
    als.add_argument("--reg-param", dest="als.reg_param", type=float, default=None, metavar="X",
                     help="regularisation, scaled per user/item count (default 0.1)")
    als.add_argument("--alpha", dest="als.alpha", type=float, default=None, metavar="X",
                     help="confidence scale: c = 1 + alpha * confidence (default 1.0)")
    als.add_argument("--nonnegative", dest="als.nonnegative", action="store_const", const=True,
                     default=None, help="non-negative factors (influence cannot explain them)")
    als.add_argument("--seed", dest="als.seed", type=int, default=None, metavar="N")
    als.add_argument("--user-blocks", dest="als.num_user_blocks", type=int, default=None,
                     metavar="N")
    als.add_argument("--item-blocks", dest="als.num_item_blocks", type=int, default=None,
                     metavar="N")

def NEEDS_SPARK(cfg: Config) -> bool:  # noqa: N802 (the stage protocol's name)
    """Spark models fit inside this stage; Ray models run ``raytrain.train`` without a JVM."""
    return models.runtime(cfg.run.model) == models.SPARK


def preflight(cfg: Config) -> None:
    """Checks that need no Spark (run before the JVM starts)."""
    models.check_name(cfg.run.model)
    if models.runtime(cfg.run.model) == models.RAY:
        from raytrain.train import preflight as ray_preflight

        ray_preflight(cfg)


def new_run_id(model: str) -> str:
    return f"{model}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


# --- pure transforms ---------------------------------------------------------------------------


def recommendation_rows(recs: DataFrame, *, run_id: str, model: str, protocol: str) -> DataFrame:
    """``user_idx, rank, item_idx, score`` -> ``gold/recommendations`` columns."""
    return recs.select(
        F.lit(run_id).alias(S.RUN_ID), F.lit(model).alias(S.MODEL),
        F.lit(protocol).alias(S.PROTOCOL), S.USER_IDX, S.RANK, S.ITEM_IDX, S.SCORE,
    )


# --- job ------------------------------------------------------------------------------------------


def _cold_counts(ctx: TrainContext, splits: DataFrame, train: DataFrame) -> dict[str, int]:
    """Held-out (valid / test) rows whose user or item has no train row. The split stage counts
    them (``audit/batches``, batch ``split-<protocol>``) and drops or keeps them; its record is
    used when present, otherwise they are counted here."""
    protocol = ctx.protocol
    if ctx.lake.exists(ctx.spark, L.AUDIT_BATCHES):
        rec = ctx.read(L.AUDIT_BATCHES).where(
            (F.col(S.BATCH_ID) == f"split-{protocol}") & (F.col(S.STAGE) == "split")
        ).select("details").collect()
        if rec:
            d = rec[0]["details"] or {}
            return {
                "heldout_rows_cold_user": sum(v for k, v in d.items() if k.startswith("cold_user")),
                "heldout_rows_cold_item": sum(v for k, v in d.items() if k.startswith("cold_item")),
                "heldout_rows_cold_dropped": d.get("dropped_cold", 0),
            }
    held = splits.where((F.col(S.PROTOCOL) == protocol) & (F.col(S.SPLIT) != S.TRAIN))
    users = train.select(S.USER_IDX).distinct()
    items = train.select(S.ITEM_IDX).distinct()
    return {
        "heldout_rows_cold_user": held.join(users, S.USER_IDX, "left_anti").count(),
        "heldout_rows_cold_item": held.join(items, S.ITEM_IDX, "left_anti").count(),
        "heldout_rows_cold_dropped": 0,
    }


def _train_rows(ctx: TrainContext) -> tuple[DataFrame, DataFrame]:
    """The pinned ``gold/splits`` and the protocol's cached train rows (a clear error when the
    protocol has none)."""
    splits = ctx.read(L.GOLD_SPLITS)
    train = model_train_rows(splits, cfg=ctx.cfg).cache()
    if train.limit(1).count() == 0:
        train.unpersist()
        have = [r[0] for r in splits.select(S.PROTOCOL).distinct().collect()]
        raise ConfigError(
            f"gold/splits has no train rows for protocol '{ctx.protocol}' (protocols present: "
            f"{sorted(have)}); run `reclake split --protocol {ctx.protocol}` first"
        )
    return splits, train


def fit_run(spark: SparkSession, cfg: Config) -> RunRecord:
    """Fit ``cfg.run.model`` on ``cfg.split.protocol``, write its recommendations, artefacts and
    run record. Returns the record."""
    lake = Lake(cfg.lake)
    if cfg.run.from_best:
        from common.tuning import apply_best

        cfg = apply_best(cfg, lake).with_(**{"run.from_best": False})
    name, protocol = cfg.run.model, cfg.split.protocol
    run_id = cfg.run.run_id or new_run_id(name)
    print(f"run_id: {run_id}  (model={name}, protocol={protocol})")
    model = models.create(cfg, name)
    ctx = TrainContext(spark=spark, lake=lake, cfg=cfg, run_id=run_id)
    splits, train = _train_rows(ctx)
    counts = _cold_counts(ctx, splits, train)
    if counts["heldout_rows_cold_user"] or counts["heldout_rows_cold_item"]:
        log.info("cold start: %s (dropped by the split stage: %d rows); users without train "
                 "rows get no recommendations; items without train rows are recommended only "
                 "by content models (text, hybrid) and random", counts,
                 counts["heldout_rows_cold_dropped"])
    with timed(log, f"{name} fit"):
        secs = model.fit(ctx, train)
    t = time.perf_counter()
    artefacts, written = model.save(ctx)
    if written or artefacts:
        secs["save"] = time.perf_counter() - t
    preds = model.predictions(ctx)
    if preds is not None:
        with timed(log, f"held-out predictions -> {L.GOLD_PREDICTIONS}") as info:
            rows = preds.select(F.lit(run_id).alias(S.RUN_ID), F.lit(name).alias(S.MODEL),
                                F.lit(protocol).alias(S.PROTOCOL), S.TARGET, S.USER_IDX,
                                S.ITEM_IDX, S.PREDICTION)
            lake.replace_rows(rows, L.GOLD_PREDICTIONS, f"{S.RUN_ID} = {quote(run_id)}")
            info["rows"] = counts["prediction_rows"] = lake.last_metrics(
                spark, L.GOLD_PREDICTIONS).get("numOutputRows", 0)
        written = [*written, L.GOLD_PREDICTIONS]
    users = seen_items(train) if cfg.recommend.exclude_seen else users_with_nothing_seen(train)
    with timed(log, f"top-{cfg.recommend.k} for every user -> {L.GOLD_RECOMMENDATIONS}") as info:
        t = time.perf_counter()
        recs = recommendation_rows(model.recommend(ctx, users, k=cfg.recommend.k),
                                   run_id=run_id, model=name, protocol=protocol)
        lake.replace_rows(recs, L.GOLD_RECOMMENDATIONS, f"{S.RUN_ID} = {quote(run_id)}")
        info["rows"] = counts["recommendation_rows"] = lake.last_metrics(
            spark, L.GOLD_RECOMMENDATIONS).get("numOutputRows", 0)
        secs["recommend"] = time.perf_counter() - t
    counts["train_rows"] = train.count()  # cached by now: no extra read
    train.unpersist()
    record = RunRecord(
        run_id=run_id, model=name, protocol=protocol,
        dataset=cfg.run.dataset or cfg.ingest.source_format,
        params={**model.params(), **train_params(cfg)},
        inputs=dict(ctx.inputs),
        outputs={t: lake.version(spark, t) for t in (L.GOLD_RECOMMENDATIONS, *written)},
        artefacts=artefacts, counts=counts, seconds=secs,
    )
    write_run(spark, lake, record)
    print(f"run {run_id}: {counts['recommendation_rows']:,} recommendations in "
          f"{sum(secs.values()):.1f}s -> {lake.path(L.GOLD_RECOMMENDATIONS)} "
          f"(run record in {lake.path(L.MODELS_RUNS)})")
    return record


def main(spark: SparkSession | None, cfg: Config) -> RunRecord:
    if models.runtime(cfg.run.model) == models.RAY:
        from raytrain.train import train_run

        return train_run(cfg)
    return fit_run(spark, cfg)


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("fit"))
