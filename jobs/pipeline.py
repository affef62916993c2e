"""Run every stage in order, skipping those whose inputs are unchanged.

ingest -> transform -> split -> als -> evaluate -> train -> tune -> embed -> influence:

    reclake --config configs/my-lake.yaml pipeline                  # every stage
    reclake --config configs/my-lake.yaml pipeline --skip tune,embed
    reclake --config configs/my-lake.yaml pipeline --only transform # one stage (an Airflow task)
    reclake --config configs/my-lake.yaml pipeline --force als      # rerun als (and what it feeds)

One configuration drives every stage (``pipeline.*`` in ``configs/default.yaml`` says which
models, protocols and sweep; every other section is the stage's own). A stage runs only when its
*fingerprint* changed since it last finished: the Delta versions of the tables it reads, the
input files' batch id (ingest, and the item catalogue of embed), and the config sections it
depends on. So a rerun after a crash resumes at the stage that failed (a failed ``train``
resumes from its checkpoints, a failed ``tune`` continues its sweep), a rerun with nothing new
skips every stage and says why, a new input file reruns everything downstream, and a changed
``als.rank`` reruns als and the stages that read its output. The state is the table
``audit/pipeline``: one row per stage per invocation (done, skipped, failed, with inputs,
outputs, rows and seconds).

The input version a stage is judged by is the one its upstream stages left: ``evaluate`` reads
``gold/recommendations`` as ``als`` wrote it, even though ``train`` writes the same table later;
a table changed outside the pipeline (``reclake forget``, a manual ``reclake ingest``) counts at
its current version, so its readers rerun.

Each stage prints a summary line (rows written, seconds, table versions before -> after), and the
run ends with a table of all stages. Run ids are ``<pipeline.name>-<model>`` (replaced by a rerun,
never duplicated), the sweep ``<pipeline.name>-tune-<model>``. ``influence`` explains the ALS run
(exact for ALS), so it needs ``als`` in ``pipeline.fit_models``; ``embed`` needs an item catalogue
(``items.path``, ingested first, or an existing ``silver/items``) and is skipped, saying so,
without one. Stages on Ray (train, tune, embed) share one local Ray, or join ``train.address``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from common import lake as L
from common.config import PIPELINE_STAGES, Config, to_dict
from common.lake import Lake, retry_conflicts
from common.log import get_logger

log = get_logger("pipeline")

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
# config keys that change how a stage runs, not what it produces: not in the fingerprint
RUNTIME_KEYS = frozenset({
    "fresh", "resume", "force", "address", "num_cpus", "num_cpus_local", "storage_path",
    "fail_at", "max_failures", "concurrency", "max_concurrent", "prefetch_batches"})


def pipeline_schema() -> T.StructType:
    return T.StructType([
        T.StructField("pipeline", T.StringType(), False),
        T.StructField("attempt", T.StringType(), False),  # one `reclake pipeline` invocation
        T.StructField("stage", T.StringType(), False),
        T.StructField("status", T.StringType(), False),  # done | skipped | failed
        T.StructField("reason", T.StringType(), True),
        T.StructField("fingerprint", T.StringType(), True),
        T.StructField("inputs", T.StringType(), True),  # JSON {table or file key: version}
        T.StructField("outputs", T.StringType(), True),  # JSON {table: version after the stage}
        T.StructField("rows", T.LongType(), True),  # rows the stage's commits wrote
        T.StructField("seconds", T.DoubleType(), True),
        T.StructField("started_at", T.TimestampType(), True),
        T.StructField("finished_at", T.TimestampType(), True),
    ])


@dataclass
class Context:
    spark: SparkSession
    cfg: Config
    lake: Lake
    resume: bool = False  # the stage failed last time with the same fingerprint
    ray_started: bool = False

    def run_id(self, model: str) -> str:
        return f"{self.cfg.pipeline.name}-{model}"

    @property
    def protocol(self) -> str:
        return self.cfg.pipeline.protocols[0]

    def ensure_ray(self) -> None:
        if not self.ray_started:
            from raytrain.train import _init_ray

            self.ray_started = _init_ray(self.cfg) or self.ray_started


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], str | None]  # returns a reason when it had nothing to do
    inputs: Callable[[Config], tuple[str, ...]]  # lake tables whose versions gate the stage
    outputs: Callable[[Config], tuple[str, ...]]  # lake tables it writes
    sections: tuple[str, ...]  # config sections (or "pipeline.<key>") in its fingerprint
    files: Callable[[Context], dict[str, str]] = lambda ctx: {}  # input files' batch ids
    unavailable: Callable[[Context], str | None] = lambda ctx: None  # why it cannot run


def _tables(*names: str) -> Callable[[Config], tuple[str, ...]]:
    return lambda cfg: names


# --- the stages ------------------------------------------------------------------------------------

INGEST_OUT = (L.BRONZE_EVENTS, L.QUARANTINE_EVENTS, L.AUDIT_BATCHES, L.SILVER_EVENTS,
              L.SILVER_USER_INDEX, L.SILVER_ITEM_INDEX)


def _batch_id(spark: SparkSession, source_format: str, path: str) -> str:
    from jobs.ingest import batch_fingerprint, list_input_files

    files = list_input_files(spark, path)
    if not files:
        raise FileNotFoundError(f"no input files at {path}")
    return batch_fingerprint(source_format, files)


def _ingest_files(ctx: Context) -> dict[str, str]:
    ic = ctx.cfg.ingest
    return {"ingest.batch": ic.batch_id or _batch_id(ctx.spark, ic.source_format, ic.path)}


def _run_ingest(ctx: Context) -> str | None:
    from jobs import ingest

    return None if ingest.main(ctx.spark, ctx.cfg) else "batch already in audit/batches"


def _run_transform(ctx: Context) -> None:
    from jobs import transform

    transform.main(ctx.spark, ctx.cfg)


def _run_split(ctx: Context) -> None:
    from jobs import split

    for protocol in ctx.cfg.pipeline.protocols:
        split.main(ctx.spark, ctx.cfg.with_(**{"split.protocol": protocol}))


def _model_cfg(ctx: Context, model: str, **more) -> Config:
    return ctx.cfg.with_(**{"run.model": model, "run.run_id": ctx.run_id(model),
                            "split.protocol": ctx.protocol, **more})


def _run_als(ctx: Context) -> None:
    from jobs.fit import fit_run

    for model in ctx.cfg.pipeline.fit_models:
        fit_run(ctx.spark, _model_cfg(ctx, model))


def _run_evaluate(ctx: Context) -> None:
    from jobs import evaluate

    for model in ctx.cfg.pipeline.fit_models:
        evaluate.main(ctx.spark, _model_cfg(ctx, model))


def _run_train(ctx: Context) -> None:
    from raytrain.train import train_run

    ctx.ensure_ray()
    for model in ctx.cfg.pipeline.train_models:
        # new inputs: start over; the same inputs after a failure: resume from the checkpoints
        train_run(_model_cfg(ctx, model, **{"train.fresh": not ctx.resume}))


def _sweep(ctx: Context) -> str:
    return f"{ctx.cfg.pipeline.name}-tune-{ctx.cfg.pipeline.tune_model}"


def _run_tune(ctx: Context) -> None:
    from ray.tune import Tuner

    from raytrain.tune import storage_root, tune_run

    model = ctx.cfg.pipeline.tune_model
    cfg = _model_cfg(ctx, model, **{"tune.name": _sweep(ctx)})
    # the sweep interrupted with the same inputs continues; otherwise it starts over
    resume = ctx.resume and Tuner.can_restore(f"{storage_root(cfg)}/{_sweep(ctx)}")
    ctx.ensure_ray()
    tune_run(cfg.with_(**{"tune.resume": resume, "tune.fresh": not resume}))


def _tune_unavailable(ctx: Context) -> str | None:
    s = ctx.cfg.split
    if ctx.protocol == "stratified" and s.valid_ratio == 0:
        return ("the stratified split has no valid part for the sweep's objective (set "
                "split.valid_ratio, e.g. 0.05 with split.valid_from: train)")
    if ctx.protocol == "temporal" and s.valid_fraction == 0 and s.cutoff is None:
        return "the temporal split has no valid part (set split.valid_fraction, e.g. 0.1)"
    if ctx.protocol == "cold_items":
        return "tune does not sweep on cold_items"
    return None


def _items_path(cfg: Config) -> str | None:
    return cfg.items.path


def _embed_files(ctx: Context) -> dict[str, str]:
    ic = ctx.cfg.items
    if not ic.path:
        return {}
    return {"items.batch": ic.batch_id or _batch_id(ctx.spark, ic.source_format, ic.path)}


def _embed_unavailable(ctx: Context) -> str | None:
    if ctx.cfg.items.path or ctx.lake.exists(ctx.spark, L.SILVER_ITEMS):
        return None
    return "no item catalogue (set items.path, or run `reclake ingest-items` first)"


def _run_embed(ctx: Context) -> None:
    from raytrain.embed import embed_run

    if ctx.cfg.items.path:
        from jobs import ingest_items

        ingest_items.main(ctx.spark, ctx.cfg)
    ctx.ensure_ray()
    embed_run(ctx.cfg)


def _influence_unavailable(ctx: Context) -> str | None:
    if "als" not in ctx.cfg.pipeline.fit_models:
        return "influence explains an ALS run: add als to pipeline.fit_models"
    return None


def _run_influence(ctx: Context) -> None:
    from jobs import influence

    influence.main(ctx.spark, _model_cfg(ctx, "als"))


TRAIN_OUT = (L.GOLD_RECOMMENDATIONS, L.GOLD_PREDICTIONS, L.MODELS_RUNS, L.METRICS_EVALUATION,
             L.MODELS_NCF_EMBEDDINGS, L.MODELS_SASREC_EMBEDDINGS, L.MODELS_LIGHTGCN_EMBEDDINGS)

STAGES: tuple[Stage, ...] = (
    Stage("ingest", _run_ingest, _tables(), _tables(*INGEST_OUT), ("ingest", "behaviors"),
          files=_ingest_files,
          unavailable=lambda ctx: None if ctx.cfg.ingest.path else
          "ingest.path is not set (the lake's silver tables are used as they are)"),
    Stage("transform", _run_transform,
          _tables(L.SILVER_EVENTS, L.SILVER_USER_INDEX, L.SILVER_ITEM_INDEX),
          _tables(L.GOLD_INTERACTIONS, L.GOLD_USER_FEATURES, L.GOLD_ITEM_FEATURES,
                  L.GOLD_SEQUENCES),
          ("confidence", "sequences", "behaviors")),
    Stage("split", _run_split, _tables(L.GOLD_INTERACTIONS, L.GOLD_SEQUENCES, L.SILVER_EVENTS),
          _tables(L.GOLD_SPLITS), ("split", "pipeline.protocols")),
    Stage("als", _run_als, _tables(L.GOLD_SPLITS, L.GOLD_INTERACTIONS),
          _tables(L.GOLD_RECOMMENDATIONS, L.GOLD_PREDICTIONS, L.MODELS_ALS_USER_FACTORS,
                  L.MODELS_ALS_ITEM_FACTORS, L.MODELS_RUNS),
          ("als", "recommend", "text", "hybrid", "run.dataset", "pipeline.fit_models",
           "pipeline.protocols", "pipeline.name")),
    Stage("evaluate", _run_evaluate,
          _tables(L.GOLD_RECOMMENDATIONS, L.GOLD_SPLITS, L.MODELS_RUNS),
          _tables(L.METRICS_EVALUATION), ("evaluate", "pipeline.fit_models", "pipeline.name")),
    Stage("train", _run_train, _tables(L.GOLD_SPLITS, L.GOLD_SEQUENCES), _tables(*TRAIN_OUT),
          ("train", "ncf", "sasrec", "lightgcn", "recommend", "run.dataset",
           "pipeline.train_models", "pipeline.protocols", "pipeline.name")),
    Stage("tune", _run_tune, _tables(L.GOLD_SPLITS, L.GOLD_SEQUENCES),
          _tables(L.METRICS_TUNE_TRIALS, L.METRICS_BEST_CONFIGS, *TRAIN_OUT,
                  L.MODELS_ALS_USER_FACTORS, L.MODELS_ALS_ITEM_FACTORS),
          ("tune", "als", "train", "ncf", "sasrec", "lightgcn", "recommend", "run.dataset",
           "pipeline.tune_model", "pipeline.protocols", "pipeline.name"),
          unavailable=_tune_unavailable),
    Stage("embed", _run_embed,
          lambda cfg: () if _items_path(cfg) else (L.SILVER_ITEMS,),
          lambda cfg: ((L.SILVER_ITEMS, L.QUARANTINE_ITEMS, L.AUDIT_BATCHES)
                       if _items_path(cfg) else ()) + (L.MODELS_TEXT_EMBEDDINGS,),
          ("embed", "items"), files=_embed_files, unavailable=_embed_unavailable),
    Stage("influence", _run_influence,
          _tables(L.GOLD_RECOMMENDATIONS, L.GOLD_SPLITS, L.MODELS_RUNS,
                  L.MODELS_ALS_USER_FACTORS, L.MODELS_ALS_ITEM_FACTORS),
          _tables(L.INFLUENCE_EVENT_CONTRIBUTIONS, L.INFLUENCE_BEHAVIOR_TYPE, L.INFLUENCE_ITEMS,
                  L.INFLUENCE_USERS),
          ("influence", "pipeline.name"), unavailable=_influence_unavailable),
)
assert tuple(s.name for s in STAGES) == PIPELINE_STAGES
BY_NAME = {s.name: s for s in STAGES}


# --- state, fingerprints ---------------------------------------------------------------------------


def _section(cfg: Config, key: str):
    node = to_dict(cfg)
    for part in key.split("."):
        node = node[part]
    if isinstance(node, dict):
        node = {k: v for k, v in node.items() if k not in RUNTIME_KEYS}
    return node


def last_records(spark: SparkSession, lake: Lake, name: str) -> dict[str, dict]:
    """Per stage, the latest ``done`` row and (if later) the latest ``failed`` row of pipeline
    ``name``: ``{stage: {"done": row, "failed": row}}``."""
    out: dict[str, dict] = {}
    if not lake.exists(spark, L.AUDIT_PIPELINE):
        return out
    rows = (lake.read(spark, L.AUDIT_PIPELINE).where(f"pipeline = {L.quote(name)}")
            .where("status IN ('done', 'failed')").orderBy("finished_at").collect())
    for r in rows:
        d = r.asDict()
        d["inputs"] = json.loads(d["inputs"] or "{}")
        d["outputs"] = json.loads(d["outputs"] or "{}")
        out.setdefault(r["stage"], {})[r["status"]] = d
    for recs in out.values():  # a failure before the last success is history
        if "failed" in recs and "done" in recs and recs["failed"]["finished_at"] < recs["done"]["finished_at"]:
            del recs["failed"]
    return out


def input_versions(stage: Stage, cfg: Config, current: Callable[[str], int],
                   records: dict[str, dict]) -> dict[str, int]:
    """The version of each input table the stage is judged by: as its latest upstream writer
    in the pipeline left it, while the table is still as the pipeline last left it; else (never
    written by the pipeline, or changed since by something else) its current version."""
    index = PIPELINE_STAGES.index(stage.name)
    out = {}
    for table in stage.inputs(cfg):
        cur = current(table)
        written = {s: r["done"]["outputs"][table] for s, r in records.items()
                   if "done" in r and table in r["done"]["outputs"]}
        upstream = [v for s, v in written.items() if PIPELINE_STAGES.index(s) < index]
        if written and cur == max(written.values()) and upstream:
            out[table] = max(upstream)
        else:
            out[table] = cur
    return out


def fingerprint(stage: Stage, cfg: Config, inputs: dict) -> str:
    body = {"inputs": inputs, "config": {k: _section(cfg, k) for k in stage.sections}}
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rows_written(spark: SparkSession, lake: Lake, before: dict[str, int],
                 after: dict[str, int]) -> int:
    """Rows the commits between ``before`` and ``after`` wrote, from Delta's operation metrics
    (Spark's ``numOutputRows``; delta-rs writers' ``num_added_rows``)."""
    from delta.tables import DeltaTable

    total = 0
    for table, v1 in after.items():
        v0 = before.get(table, -1)
        if v1 <= v0:
            continue
        hist = (DeltaTable.forPath(spark, lake.path(table)).history()
                .where(f"version > {v0} AND version <= {v1}").select("operationMetrics")
                .collect())
        for (m,) in hist:
            m = m or {}
            v = m.get("numOutputRows") or m.get("num_added_rows") or "0"
            total += int(v) if str(v).isdigit() else 0
    return total


def _versions(spark: SparkSession, lake: Lake, tables) -> dict[str, int]:
    return {t: lake.version(spark, t) for t in tables}


def _record(spark: SparkSession, lake: Lake, row: dict) -> None:
    full = {f.name: row.get(f.name) for f in pipeline_schema().fields}
    for key in ("inputs", "outputs"):
        if isinstance(full[key], dict):
            full[key] = json.dumps(full[key], sort_keys=True)
    df = spark.createDataFrame([full], pipeline_schema())
    retry_conflicts(lambda: lake.write(df, L.AUDIT_PIPELINE, mode="append"),
                    f"{L.AUDIT_PIPELINE} row", log=log)


# --- the run ---------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    stages = "|".join(PIPELINE_STAGES)
    p.add_argument("--skip", dest="pipeline.skip", type=_stage_list, default=None,
                   metavar="STAGES", help=f"comma-separated stages not to run ({stages})")
    p.add_argument("--only", dest="pipeline.only", type=_stage_list, default=None,
                   metavar="STAGES", help="run just these stages (still skipped when unchanged)")
    p.add_argument("--force", dest="pipeline.force", type=_stage_list, default=None,
                   metavar="STAGES", help="rerun these stages even when unchanged ('all': every one)")
    p.add_argument("--name", dest="pipeline.name", default=None, metavar="NAME",
                   help="pipeline id: run ids NAME-<model>, resume state (default 'default')")


def _stage_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def selected(cfg: Config) -> list[Stage]:
    p = cfg.pipeline
    return [s for s in STAGES if s.name not in p.skip and (not p.only or s.name in p.only)]


def preflight(cfg: Config) -> None:
    """Every check that needs no Spark, for every selected stage, before the first one runs."""
    names = {s.name for s in selected(cfg)}
    if "ingest" in names and cfg.ingest.path:
        from jobs import ingest

        ingest.preflight(cfg)
    if "train" in names:
        from raytrain.train import preflight as train_preflight

        for model in cfg.pipeline.train_models:
            train_preflight(cfg.with_(**{"run.model": model}))
    if "tune" in names:
        from raytrain.tune import preflight as tune_preflight

        tune_preflight(cfg.with_(**{"run.model": cfg.pipeline.tune_model}))
    from common import models

    for model in cfg.pipeline.fit_models:
        models.check_name(model)


def _fmt_versions(before: dict[str, int], after: dict[str, int]) -> str:
    parts = []
    for t, v in after.items():
        v0 = before.get(t, -1)
        if v != v0:
            parts.append(f"{t} v{v}" if v0 < 0 else f"{t} v{v0}->v{v}")
    return ", ".join(parts) or "no table changed"


def run_pipeline(spark: SparkSession, cfg: Config) -> list[dict]:
    """Run the selected stages in order; returns one summary row per stage (also printed)."""
    preflight(cfg)
    lake = Lake(cfg.lake)
    name = cfg.pipeline.name
    attempt = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
    force = set(cfg.pipeline.force)
    stages = selected(cfg)
    records = last_records(spark, lake, name)
    ctx = Context(spark, cfg, lake)
    summary: list[dict] = []
    print(f"reclake pipeline {name!r}: {' -> '.join(s.name for s in stages)} "
          f"(lake {lake.root})", flush=True)
    try:
        for i, stage in enumerate(stages, 1):
            head = f"== pipeline {i}/{len(stages)} {stage.name}"
            started = datetime.now(timezone.utc).replace(tzinfo=None)
            row = {"pipeline": name, "attempt": attempt, "stage": stage.name,
                   "started_at": started}
            why_not = stage.unavailable(ctx)
            if why_not:
                print(f"{head}: skipped, {why_not}", flush=True)
                row.update(status=SKIPPED, reason=why_not, seconds=0.0, rows=0)
                _finish(spark, lake, row, summary)
                continue
            inputs = input_versions(stage, cfg, lambda t: lake.version(spark, t), records)
            inputs.update(stage.files(ctx))
            fp = fingerprint(stage, cfg, inputs)
            last = records.get(stage.name, {})
            done = last.get("done")
            outputs = stage.outputs(cfg)
            before = _versions(spark, lake, outputs)
            unchanged = (done is not None and done["fingerprint"] == fp and "failed" not in last
                         and all(before.get(t, -1) >= 0 for t, v in done["outputs"].items()
                                 if v >= 0))
            if unchanged and not ({"all", stage.name} & force):
                reason = "inputs unchanged (" + (", ".join(
                    f"{t} v{v}" if isinstance(v, int) else f"{t} {v}"
                    for t, v in inputs.items()) or "no inputs") + f"; done {done['attempt']})"
                print(f"{head}: skipped, {reason}", flush=True)
                row.update(status=SKIPPED, reason=reason, fingerprint=fp, inputs=inputs,
                           outputs=done["outputs"], rows=0, seconds=0.0)
                _finish(spark, lake, row, summary)
                continue
            print(f"{head}: running", flush=True)
            ctx.resume = last.get("failed", {}).get("fingerprint") == fp
            t0 = time.perf_counter()
            try:
                note = stage.run(ctx)
            except BaseException as e:
                row.update(status=FAILED, reason=f"{type(e).__name__}: {e}".splitlines()[0][:500],
                           fingerprint=fp, inputs=inputs, seconds=time.perf_counter() - t0,
                           outputs=_versions(spark, lake, outputs))
                _finish(spark, lake, row, summary)
                print(f"{head}: FAILED after {row['seconds']:.1f}s; rerun the same command to "
                      f"resume here (the stages before it are kept)", flush=True)
                raise
            after = _versions(spark, lake, outputs)
            seconds = time.perf_counter() - t0
            n = rows_written(spark, lake, before, after)
            row.update(status=DONE, reason=note, fingerprint=fp, inputs=inputs, outputs=after,
                       rows=n, seconds=seconds)
            _finish(spark, lake, row, summary)
            records[stage.name] = {"done": {**row}}
            print(f"{head}: done in {seconds:.1f}s, {n:,} rows written; "
                  f"{_fmt_versions(before, after)}", flush=True)
    finally:
        if ctx.ray_started:
            import ray

            ray.shutdown()
        print_table(summary, [s.name for s in stages])
    return summary


def _finish(spark: SparkSession, lake: Lake, row: dict, summary: list[dict]) -> None:
    row["finished_at"] = datetime.now(timezone.utc).replace(tzinfo=None)
    _record(spark, lake, row)
    summary.append(row)


def print_table(summary: list[dict], order: list[str]) -> None:
    by = {r["stage"]: r for r in summary}
    print("\nstage       status     seconds        rows  outputs (version)")
    for name in order:
        r = by.get(name)
        if r is None:
            print(f"{name:<11} {'not run':<9}")
            continue
        outs = r.get("outputs") or {}
        shown = ", ".join(f"{t} v{v}" for t, v in outs.items() if isinstance(v, int) and v >= 0)
        print(f"{name:<11} {r['status']:<9} {r.get('seconds') or 0:>8.1f} {r.get('rows') or 0:>11,}  "
              f"{shown or (r.get('reason') or '')}")
    total = sum(r.get("seconds") or 0 for r in summary)
    ran = sum(r["status"] == DONE for r in summary)
    print(f"{ran} stage(s) ran, {sum(r['status'] == SKIPPED for r in summary)} skipped, "
          f"{total:.1f}s in the stages", flush=True)


def main(spark: SparkSession, cfg: Config) -> list[dict]:
    return run_pipeline(spark, cfg)


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("pipeline"))

