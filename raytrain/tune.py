"""Hyperparameter sweeps with Ray Tune: deep models, ALS, and the behaviour weights.

    reclake tune --model lightgcn --protocol stratified --trials 16
    reclake tune --model als --trials 24 --space configs/tune/als-weights.yaml --target purchase
    reclake tune --model ncf --resume          # continue an interrupted sweep
    reclake train --model lightgcn --from-best # the sweep's best config, on its own

One ``Tuner`` per sweep: a real searcher (Optuna's TPE, seeded; ``--searcher random`` for plain
random search) proposes configs from a search-space file (``configs/tune/<model>.yaml``, format in
``common/tuning.py``); the first trial is the file's ``baseline`` point when it has one; an ASHA
scheduler stops weak trials at its rungs; ``tune.max_concurrent`` trials run at once. The
objective is validation NDCG@``train.eval_k`` on the protocol's ``valid`` part, never the test
part (a protocol without one is refused before anything starts, with the command that makes one).

- **Deep models** (ncf, sasrec, lightgcn): each trial is a small driver function that builds the
  run's ``TorchTrainer`` over the same :func:`raytrain.train.train_loop_per_worker`, the sampled
  keys arriving through ``param_space["train_loop_config"]``, and passes every epoch's report on
  to Tune (``TuneReportCallback``): one Tune iteration per epoch, so ASHA can stop a trial between
  epochs and ``train.patience`` still stops it early. The data are read once per sweep (the pinned
  versions, Ray Data) and shared by every trial.
- **ALS**: each trial owns a Spark session (local mode here, ``spark.master`` on a cluster), reads
  ``gold/splits`` at the pinned version and fits MLlib ALS at ``tune.als_rungs`` shares of
  ``als.max_iter`` (MLlib ALS cannot resume a fit, so each rung is a fit of its own), reporting
  validation NDCG after each: ASHA's rungs. Keys under ``confidence.*`` (behaviour weights, f,
  half-life) rebuild the trial's confidence from the stored per-behaviour amounts
  (``interactions.rebuild_confidence``): no re-ingest. ``--target B`` scores the objective on the
  valid pairs that hold behaviour B (how well the weights predict purchases).

After the sweep: every trial (params, per-iteration values, status, seconds) to
``metrics/tune_trials``, the best config to ``metrics/best_configs`` (with the epochs / iterations
of its best report), and, unless ``--no-refit``, the best config refit on train + valid
(``split.fold_valid``) and evaluated once on test (``metrics/evaluation`` of run
``<sweep>-refit``); with a baseline point the baseline is refit the same way, so the gain is
measured on test too. A line per finished trial and a leaderboard at the end.

Tune's experiment lives under ``tune.storage_path`` (default ``<lake>/_ray_tune/<sweep>``; the
deep trials' checkpoints under its ``_train``). Ctrl-C stops a sweep with its state saved;
``--resume`` continues it (``Tuner.restore``: finished trials are kept, not rerun; an unfinished
deep trial resumes from its last epoch checkpoint), ``--fresh`` discards it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from typing import Any

import numpy as np

from common import lake as L
from common import schema as S
from common import tuning as TU
from common.config import Config, ConfigError, from_dict, to_dict
from common.lake import Lake, quote
from common.log import get_logger
from raytrain.train import PLACEMENT_GROUP_KEY

log = get_logger("tune")
NEEDS_SPARK = False
OBJECTIVE = "best_score"  # what Tune optimises: a trial's best validation NDCG so far
DEEP = ("ncf", "sasrec", "lightgcn")
REFIT_SUFFIX = "-refit"
BASELINE_SUFFIX = "-baseline-refit"
UNIFORM_SUFFIX = "-uniform-weights-refit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="run.model", default=None, metavar="NAME",
                   help=f"model to tune: {' | '.join(TU.TUNABLE_SECTIONS)}")
    p.add_argument("--protocol", dest="split.protocol", default=None, metavar="P",
                   help="gold/splits protocol (it needs a valid part)")
    p.add_argument("--trials", dest="tune.trials", type=int, default=None, metavar="N",
                   help="trials in the sweep (default 8)")
    p.add_argument("--space", dest="tune.space", default=None, metavar="FILE",
                   help="search-space file (default configs/tune/<model>.yaml)")
    p.add_argument("--max-concurrent", dest="tune.max_concurrent", type=int, default=None,
                   metavar="N", help="trials at once (default 1)")
    p.add_argument("--name", dest="tune.name", default=None, metavar="ID",
                   help="sweep id (default tune-<model>-<dataset>-<protocol>)")
    p.add_argument("--resume", dest="tune.resume", action="store_const", const=True,
                   default=None, help="continue the interrupted sweep of that name")
    p.add_argument("--fresh", dest="tune.fresh", action="store_const", const=True, default=None,
                   help="discard an earlier sweep of that name and start over")
    p.add_argument("--no-refit", dest="tune.refit", action="store_const", const=False,
                   default=None, help="skip the refit of the best config on train + valid")
    p.add_argument("--target", dest="tune.target", default=None, metavar="B",
                   help="ALS: score the objective on the valid pairs with behaviour B (default "
                        "all)")
    p.add_argument("--searcher", dest="tune.searcher", choices=("optuna", "random"),
                   default=None)
    p.add_argument("--scheduler", dest="tune.scheduler", choices=("asha", "fifo"), default=None)
    p.add_argument("--seed", dest="tune.seed", type=int, default=None, help="searcher's seed")
    p.add_argument("--address", dest="train.address", default=None, metavar="ADDR",
                   help="existing Ray cluster (auto, ray://host:10001); default: local Ray")
    p.add_argument("--storage-path", dest="tune.storage_path", default=None, metavar="URI",
                   help="Tune's experiments (default <lake>/_ray_tune)")


# --- names and checks ---------------------------------------------------------------------------


def dataset_of(cfg: Config) -> str:
    return cfg.run.dataset or cfg.ingest.source_format


def sweep_id(cfg: Config) -> str:
    return cfg.tune.name or f"tune-{cfg.run.model}-{dataset_of(cfg)}-{cfg.split.protocol}"


def storage_root(cfg: Config) -> str:
    return (cfg.tune.storage_path or f"{Lake(cfg.lake).root.rstrip('/')}/_ray_tune").rstrip("/")


def metric_name(cfg: Config) -> str:
    return f"ndcg@{cfg.train.eval_k}"


def space_of(cfg: Config) -> TU.Space:
    path = cfg.tune.space or TU.default_space_path(cfg.run.model)
    return TU.load_space(path, model=cfg.run.model, cfg=cfg)


def preflight(cfg: Config) -> None:
    """Everything that can be refused before Ray starts: the model, the space, the flags."""
    name, u = cfg.run.model, cfg.tune
    if name not in TU.TUNABLE_SECTIONS:
        raise ConfigError(f"reclake tune supports {', '.join(TU.TUNABLE_SECTIONS)}; got model "
                          f"{name!r}")
    if u.resume and u.fresh:
        raise ConfigError("--resume continues a sweep and --fresh discards it: pass one")
    if name in DEEP:
        from raytrain.train import preflight as train_preflight

        train_preflight(cfg)
        if u.target != "all":
            raise ConfigError("tune.target is for ALS sweeps (the objective's truth); a deep "
                              "model validates on every valid pair (SASRec: sasrec.target sets "
                              "what it predicts)")
    space_of(cfg)  # a bad space file is one line now, not a failed trial later


def max_iterations(cfg: Config) -> int:
    """Reports per trial: epochs (deep) or ALS rungs."""
    return len(als_rungs(cfg)) if cfg.run.model == "als" else cfg.train.epochs


def als_rungs(cfg: Config) -> list[int]:
    """The distinct ``als.max_iter`` of each rung, ascending."""
    return sorted({max(1, round(r * cfg.als.max_iter)) for r in cfg.tune.als_rungs})


def _valid_rows(lake: Lake, version: int, protocol: str, target: str) -> int:
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(L.GOLD_SPLITS), version=version)
    try:
        ds = dt.to_pyarrow_dataset()
        flt = (pads.field(S.PROTOCOL) == protocol) & (pads.field(S.SPLIT) == S.VALID)
        if target != "all":
            col = S.count_col(target)
            if col not in ds.schema.names:
                raise ConfigError(f"tune.target={target!r}: gold/splits has no column {col!r}")
            flt = flt & (pads.field(col) > 0)
        return int(ds.count_rows(filter=flt))
    finally:
        del dt


def require_valid(lake: Lake, version: int, cfg: Config) -> int:
    """Valid rows of the protocol (and target); a ConfigError saying how to make them when
    there are none."""
    p, target = cfg.split.protocol, cfg.tune.target
    n = _valid_rows(lake, version, p, "all")
    if n == 0:
        how = {"stratified": f"reclake split --protocol {p} --valid-ratio 0.05 --valid-from train",
               "temporal": f"reclake split --protocol {p} --set split.valid_fraction=0.1",
               "leave_last_out": f"reclake split --protocol {p} (it always holds the "
                                 "second-to-last interaction out as valid)"}.get(p, "")
        raise ConfigError(
            f"protocol {p!r} has no validation part in gold/splits (version {version}): a sweep "
            f"chooses on validation NDCG, never on test; make one with `{how}`")
    if target != "all":
        n = _valid_rows(lake, version, p, target)
        if n == 0:
            raise ConfigError(f"protocol {p!r} has no valid pair with a {target!r} event "
                              f"(tune.target); use --target all or a larger valid part")
    return n


# --- ALS trials ------------------------------------------------------------------------------------


def als_valid_ndcg(model, users: np.ndarray, truth: tuple[np.ndarray, np.ndarray],
                   seen: list[np.ndarray], k: int) -> float:
    """Mean NDCG@k over ``users`` (those with valid truth; CSR ``truth`` over their positions):
    exact top-k by the ALS factors, ``seen`` (per user, train items) excluded; a user without
    factors counts 0. The same ranking and metric code as the deep models' validation."""
    from common import ranking
    from common.topk import top_k_dot

    uf = model.userFactors.toPandas()
    itf = model.itemFactors.toPandas().sort_values("id")
    rank = model.rank
    item_ids = itf["id"].to_numpy(np.int64)
    items_mat = (np.stack(itf["features"].to_numpy()).astype(np.float32) if len(itf)
                 else np.zeros((0, rank), np.float32))
    pos = {int(u): i for i, u in enumerate(uf["id"].to_numpy(np.int64))}
    user_mat = np.zeros((len(users), rank), np.float32)
    has = np.zeros(len(users), dtype=bool)
    if len(uf):
        all_u = np.stack(uf["features"].to_numpy()).astype(np.float32)
        for j, u in enumerate(users):
            i = pos.get(int(u))
            if i is not None:
                user_mat[j], has[j] = all_u[i], True
    counts, items, _ = top_k_dot(user_mat, items_mat, item_ids, seen, k)
    counts = np.where(has, counts, 0)
    hits, n_truth = ranking.hit_matrix(np.arange(len(users)), items, *truth)
    ndcg = ranking.per_user_metrics(hits, n_truth, counts > 0, k)["ndcg"]
    return float(ndcg.sum() / max(len(users), 1))


def _als_validation_data(spark, splits, train, cfg: Config):
    """(users, truth CSR over their positions, seen lists) of the valid part (tune.target)."""
    from pyspark.sql import functions as F

    from raytrain.data import build_csr

    valid = splits.where((F.col(S.PROTOCOL) == cfg.split.protocol)
                         & (F.col(S.SPLIT) == S.VALID))
    if cfg.tune.target != "all":
        valid = valid.where(F.col(S.count_col(cfg.tune.target)) > 0)
    vp = valid.select(S.USER_IDX, S.ITEM_IDX).toPandas()
    users = np.unique(vp[S.USER_IDX].to_numpy(np.int64))
    posn = np.searchsorted(users, vp[S.USER_IDX].to_numpy(np.int64))
    truth = build_csr(posn, vp[S.ITEM_IDX].to_numpy(np.int64), len(users))
    ulist = spark.createDataFrame([(int(u),) for u in users], f"{S.USER_IDX} int")
    sp = train.join(ulist, S.USER_IDX).select(S.USER_IDX, S.ITEM_IDX).toPandas()
    sp_pos = np.searchsorted(users, sp[S.USER_IDX].to_numpy(np.int64))
    s_indptr, s_indices = build_csr(sp_pos, sp[S.ITEM_IDX].to_numpy(np.int64), len(users))
    seen = [s_indices[s_indptr[i]:s_indptr[i + 1]] for i in range(len(users))]
    return users, truth, seen


def als_trial(config: dict, *, base: dict, space: TU.Space, version: int) -> None:
    """One ALS trial (a Tune function trainable): fits at each rung, reports validation NDCG."""
    import ray.tune

    from common.spark import get_spark
    from common.splits import model_train_rows
    from jobs.models.als import fit_als

    overrides = space.decode(config["train_loop_config"])
    cfg = from_dict(base).with_(**overrides)  # base has confidence.rebuild: sweep_fixed
    spark = get_spark(cfg)  # one JVM per Tune actor, reused by the trials it runs
    lake = Lake(cfg.lake)
    splits = lake.read(spark, L.GOLD_SPLITS, version=version, why="pinned by the sweep")
    train = model_train_rows(splits, cfg=cfg).cache()
    users, truth, seen = _als_validation_data(spark, splits, train, cfg)
    best, best_iter = -math.inf, 0
    trial_id = ray.tune.get_context().get_trial_id()
    checkpoints = f"{lake.root.rstrip('/')}/_checkpoints/tune-{trial_id}"
    try:
        for i, iters in enumerate(als_rungs(cfg)):
            t0 = time.perf_counter()
            model = fit_als(spark, train, cfg=cfg.with_(**{"als.max_iter": iters}),
                            checkpoint_dir=checkpoints)
            value = als_valid_ndcg(model, users, truth, seen, cfg.train.eval_k)
            if value > best:
                best, best_iter = value, iters
            ray.tune.report({f"valid_ndcg@{cfg.train.eval_k}": value, OBJECTIVE: best,
                             "max_iter": iters, "best_max_iter": best_iter, "rung": i,
                             "fit_s": time.perf_counter() - t0})
    finally:
        train.unpersist()


# --- deep trials -----------------------------------------------------------------------------------


def deep_trial(config: dict, *, base: dict, space: TU.Space, data, datasets: dict,
               sweep: str) -> None:
    """One deep-model trial: the run's TorchTrainer over ``train_loop_per_worker`` with the
    sampled keys, each epoch's report passed on to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrain.train import build_trainer

    overrides = space.decode(config["train_loop_config"])
    trial_id = ray.tune.get_context().get_trial_id()
    run_id = f"{sweep}-{trial_id}"
    cfg = from_dict(base).with_(**overrides, **{"run.run_id": run_id})
    result = build_trainer(cfg, data, datasets, run_id=run_id,
                           callbacks=[TuneReportCallback()]).fit()
    if result.error:
        raise result.error


# --- the sweep -------------------------------------------------------------------------------------


def _domains(space: TU.Space) -> dict:
    from ray import tune

    out = {}
    for p in space.params:
        a = p.args
        if p.kind == "uniform":
            out[p.key] = tune.uniform(a[0], a[1])
        elif p.kind == "loguniform":
            out[p.key] = tune.loguniform(a[0], a[1])
        elif p.kind == "quniform":
            out[p.key] = tune.quniform(a[0], a[1], a[2])
        elif p.kind == "randint":
            out[p.key] = tune.randint(int(a[0]), int(a[1]))
        else:
            out[p.key] = tune.choice([json.dumps(v) for v in a] if p.encoded else list(a))
    return out


def _searcher(cfg: Config, space: TU.Space):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    point = space.encode(space.baseline) if space.baseline else None
    if cfg.tune.searcher == "random":
        return BasicVariantGenerator(
            points_to_evaluate=[{"train_loop_config": point}] if point else None,
            random_state=cfg.tune.seed, max_concurrent=cfg.tune.max_concurrent)
    from ray.tune.search.optuna import OptunaSearch

    # Optuna names the nested keys by their flattened path
    points = [{f"train_loop_config/{k}": v for k, v in point.items()}] if point else None
    return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points, seed=cfg.tune.seed),
                              max_concurrent=cfg.tune.max_concurrent)


def _scheduler(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    max_t = max_iterations(cfg)
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=min(cfg.tune.grace_period, max_t),
                         reduction_factor=cfg.tune.reduction_factor)


def _progress_callback(cfg: Config, space: TU.Space):
    from ray.tune import Callback

    metric, total = metric_name(cfg), cfg.tune.trials
    unit = "rung" if cfg.run.model == "als" else "epoch"

    class Progress(Callback):
        """A line per finished trial; keeps the latest list of trials (their statuses)."""

        def __init__(self):
            self.trials: list = []
            self.finished: set[str] = set()

        def _done(self, trials, trial) -> int:
            """Finished trials, this one and those restored from an earlier run included."""
            self.trials = list(trials)
            self.finished.add(trial.trial_id)
            self.finished.update(t.trial_id for t in trials
                                 if t.status in ("TERMINATED", "ERROR"))
            return len(self.finished)

        def _release(self, trial) -> None:
            """Remove the placement group of a deep trial's worker group: when Tune stops a
            trial its Train controller dies with it, before it can remove the group."""
            pg = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
            if pg:
                release_placement_group(pg)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._release(trial)
            r = trial.last_result or {}
            params = ", ".join(f"{k}={_short(v)}" for k, v in
                               space.decode(trial.config.get("train_loop_config", {})).items())
            print(f"trial {self._done(trials, trial)}/{total} {trial.trial_id}: valid {metric} "
                  f"{r.get(OBJECTIVE, float('nan')):.4f} after {r.get('training_iteration', 0)} "
                  f"{unit}(s), {r.get('time_total_s', 0.0):.0f}s; {params}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._release(trial)
            print(f"trial {self._done(trials, trial)}/{total} {trial.trial_id}: failed "
                  f"({_first_line(trial.error_file or 'see its log')})", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.trials = list(trials)

        def on_experiment_end(self, trials, **info):
            self.trials = list(trials)

    return Progress()


def release_placement_group(pg_hex: str) -> bool:
    """Remove a placement group by id unless it is gone already; whether it was removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    entry = ray.util.placement_group_table().get(pg_hex)
    if not entry or entry.get("state") == "REMOVED":
        return False
    try:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))
    except Exception as e:  # raced with Train's own shutdown
        log.debug("placement group %s: %s", pg_hex, e)
        return False
    return True


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else "error"


def _prepare_experiment(cfg: Config, sweep: str) -> tuple[str, bool]:
    """(experiment path, whether to restore it): refuses to overwrite a sweep silently."""
    from ray.tune import Tuner

    root = storage_root(cfg)
    path = f"{root}/{sweep}"
    local = "://" not in path
    exists = Tuner.can_restore(path)
    if cfg.tune.fresh:
        if local:
            shutil.rmtree(path, ignore_errors=True)
        return path, False
    if cfg.tune.resume:
        if not exists:
            raise ConfigError(f"--resume: no sweep {sweep!r} to continue under {root} (start it "
                              f"without --resume)")
        return path, True
    if exists or (local and os.path.isdir(path)):
        raise ConfigError(f"sweep {sweep!r} already exists under {root}: --resume to continue "
                          f"it, --fresh to discard it, or --name for a new sweep")
    return path, False


def tune_run(cfg: Config) -> dict:
    """The whole sweep (module docstring). Returns the best-config row written."""
    import ray
    from ray import tune

    from raytrain import data as D
    from raytrain import lake_io as IO
    from raytrain.train import _init_ray

    preflight(cfg)
    space = space_of(cfg)
    cfg = cfg.with_(**sweep_fixed(cfg, space))  # every trial, the refit, the stored best
    lake = Lake(cfg.lake)
    name, protocol, sweep = cfg.run.model, cfg.split.protocol, sweep_id(cfg)
    deep = name in DEEP
    tables = [L.GOLD_SPLITS] + ([L.GOLD_SEQUENCES] if name == "sasrec" else [])
    # the record tables must take this sweep's rows: checked now, not after the sweep
    IO.check_writable(lake, L.METRICS_TUNE_TRIALS, TU.tune_trials_schema())
    IO.check_writable(lake, L.METRICS_BEST_CONFIGS, TU.best_configs_schema())
    versions = D.pin_versions(lake, tables, protocol=protocol)
    n_valid = require_valid(lake, versions[L.GOLD_SPLITS], cfg)
    print(f"sweep {sweep}: {name} on {protocol} ({n_valid:,} valid pairs"
          + (f" with {cfg.tune.target}" if cfg.tune.target != "all" else "")
          + f"), {cfg.tune.trials} trials, {cfg.tune.searcher} + {cfg.tune.scheduler}, "
          f"{len(space.params)} keys from {_shown_path(space.path)}; objective valid "
          f"{metric_name(cfg)}", flush=True)
    t_start = time.perf_counter()
    _quiet_tune(cfg.spark.verbose)
    started = _init_ray(cfg)
    try:
        path, restore = _prepare_experiment(cfg, sweep)
        base = cfg.with_(**{"run.from_best": False, "tune.resume": False})
        if deep:
            base = base.with_(**{"train.storage_path": f"{path}/_train", "train.fresh": False})
            data, pairs = D.load_train_data(lake, base, versions)
            datasets = {"train": pairs}
            if name == "sasrec":
                seqs = D.load_sequences(lake, base, versions, data).materialize()
                datasets = {"train": seqs, "history": seqs}
            trainable = tune.with_parameters(deep_trial, base=to_dict(base), space=space,
                                             data=data, datasets=datasets, sweep=sweep)
            # the driver only waits on its trainer: no CPU (Tune needs some request: 1 MiB of memory)
            trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 2**20})
        else:
            trainable = tune.with_parameters(als_trial, base=to_dict(base), space=space,
                                             version=versions[L.GOLD_SPLITS])
            trainable = tune.with_resources(trainable, {"CPU": cfg.tune.cpus_per_trial})
        progress = _progress_callback(cfg, space)
        run_config = tune.RunConfig(name=sweep, storage_path=storage_root(cfg), verbose=0,
                                    callbacks=[progress])
        param_space = {"train_loop_config": _domains(space)}
        if restore:
            print(f"resuming sweep {sweep} from {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                       resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space, run_config=run_config,
                tune_config=tune.TuneConfig(
                    metric=OBJECTIVE, mode="max", num_samples=cfg.tune.trials,
                    search_alg=_searcher(cfg, space), scheduler=_scheduler(cfg),
                    reuse_actors=not deep))
        grid = tuner.fit()
        statuses = {t.trial_id: t.status for t in progress.trials}
        rows = trial_rows(cfg, space, grid, sweep=sweep, statuses=statuses)
        IO.replace_rows(lake, L.METRICS_TUNE_TRIALS, _table(rows, TU.tune_trials_schema()),
                        f"sweep_id = {quote(sweep)}")
        finished = [r for r in rows if r["status"] not in ("pending", "running")]
        print(format_leaderboard(rows, metric_name(cfg)))
        if len(finished) < cfg.tune.trials:
            print(f"sweep {sweep} stopped after {len(finished)} of {cfg.tune.trials} trials "
                  f"(state saved); continue it with `reclake tune --model {name} --protocol "
                  f"{protocol} --name {sweep} --resume`", flush=True)
            raise SystemExit(130)
        best = best_row(cfg, rows, space, sweep=sweep, versions=versions,
                        seconds=time.perf_counter() - t_start)
        if cfg.tune.refit:
            best.update(refit(cfg, space, best, rows, sweep=sweep))
        IO.replace_rows(lake, L.METRICS_BEST_CONFIGS, _table([best], TU.best_configs_schema()),
                        f"sweep_id = {quote(sweep)}")
        _print_best(best)
        return best
    finally:
        if started:
            ray.shutdown()


def _shown_path(path: str) -> str:
    try:
        return os.path.relpath(path, TU.REPO_ROOT) if os.path.abspath(path).startswith(
            str(TU.REPO_ROOT) + os.sep) else path
    except ValueError:
        return path


def _quiet_tune(verbose: bool) -> None:
    """Tune's own status tables and Optuna's per-trial INFO lines only with ``--verbose``: the
    sweep prints a line per finished trial and the leaderboard."""
    if verbose:
        return
    import logging

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter, silent at verbose=0
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def _table(rows: list[dict], schema):
    import pyarrow as pa

    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema)


def _trial_status(cfg: Config, status: str, error, iterations: int, last: dict) -> str:
    if error is not None or status == "ERROR":
        return "error"
    if status in ("PENDING", "RUNNING", "PAUSED"):
        return status.lower()
    if iterations >= max_iterations(cfg):
        return "completed"
    t = cfg.train
    if (cfg.run.model in DEEP and t.patience and last.get("best_epoch") is not None
            and last.get("epoch", 0) - last["best_epoch"] >= t.patience):
        return "early_stopped"  # train.patience
    return "stopped"  # by ASHA at a rung


def trial_rows(cfg: Config, space: TU.Space, grid, *, sweep: str,
               statuses: dict[str, str]) -> list[dict]:
    """``metrics/tune_trials`` rows of every trial in ``grid`` (a Tune ``ResultGrid``)."""
    from raytrain.lake_io import utc_now

    value_key = f"valid_ndcg@{cfg.train.eval_k}"
    created = utc_now()
    baseline = space.baseline
    rows = []
    for res in grid:
        m = dict(res.metrics or {})
        trial_id = m.get("trial_id") or os.path.basename(str(res.path)).split("_")[1]
        params = space.decode((res.config or {}).get("train_loop_config", {}))
        df = res.metrics_dataframe
        history = []
        if df is not None and value_key in df.columns:
            for it, v in zip(df["training_iteration"], df[value_key], strict=True):
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    history.append({"iteration": int(it), "value": float(v)})
        iterations = int(m.get("training_iteration", 0) or 0)
        best_value = max((h["value"] for h in history), default=None)
        if cfg.run.model == "als":
            best_iteration = m.get("best_max_iter")
        else:
            best_iteration = (m["best_epoch"] + 1) if m.get("best_epoch", -1) >= 0 else None
        status = _trial_status(cfg, statuses.get(trial_id, "TERMINATED"), res.error,
                               iterations, m)
        rows.append({
            "sweep_id": sweep, S.MODEL: cfg.run.model, S.DATASET: dataset_of(cfg),
            S.PROTOCOL: cfg.split.protocol, "trial_id": trial_id, "status": status,
            "params": json.dumps(params, sort_keys=True), S.METRIC: metric_name(cfg),
            "best_value": best_value,
            "best_iteration": int(best_iteration) if best_iteration is not None else None,
            "iterations": iterations, "history": history,
            "seconds": float(m.get("time_total_s", 0.0) or 0.0),
            "error": _first_line(str(res.error)) if res.error is not None else None,
            "baseline": bool(baseline) and _same_point(params, baseline),
            S.CREATED_AT: created,
        })
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def _same_point(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k, v in b.items():
        w = a[k]
        if isinstance(v, (int, float)) and isinstance(w, (int, float)) \
                and not isinstance(v, bool):
            if not math.isclose(float(v), float(w), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif v != w:
            return False
    return True


def sweep_fixed(cfg: Config, space: TU.Space) -> dict:
    """What every trial of the sweep sets besides its sampled point: the file's ``fixed:`` keys,
    and for ALS ``confidence.rebuild`` when the sweep touches ``confidence.*`` (a fixed weight
    must be rebuilt into confidence as much as a searched one)."""
    out = dict(space.fixed)
    if cfg.run.model == "als" and any(k.startswith("confidence.")
                                      for k in [*space.keys(), *space.fixed]):
        out["confidence.rebuild"] = True
    return out


def _refit_params(cfg: Config, params: dict, best_iteration: int | None) -> dict:
    """A trial's params plus what a refit needs: the epochs / iterations of its best report,
    confidence rebuilt when the sweep changed confidence.*."""
    out = dict(params)
    if cfg.run.model == "als":
        if best_iteration:
            out["als.max_iter"] = int(best_iteration)
        if any(k.startswith("confidence.") for k in params):
            out["confidence.rebuild"] = True
    elif best_iteration:
        out["train.epochs"] = int(best_iteration)
    return out


def best_row(cfg: Config, rows: list[dict], space: TU.Space, *, sweep: str,
             versions: dict, seconds: float) -> dict:
    from raytrain.lake_io import utc_now

    scored = [r for r in rows if r["best_value"] is not None and r["status"] != "error"]
    if not scored:
        raise ConfigError(f"sweep {sweep}: no trial reported a validation score (see "
                          f"metrics/tune_trials for their errors)")
    best = max(scored, key=lambda r: (r["best_value"], -rows.index(r)))
    base = next((r for r in rows if r["baseline"]), None)
    fixed = sweep_fixed(cfg, space)

    def stored(r: dict) -> str:
        return json.dumps({**fixed, **_refit_params(cfg, json.loads(r["params"]),
                                                    r["best_iteration"])}, sort_keys=True)

    return {
        "sweep_id": sweep, S.MODEL: cfg.run.model, S.DATASET: dataset_of(cfg),
        S.PROTOCOL: cfg.split.protocol, "trial_id": best["trial_id"], "params": stored(best),
        S.METRIC: metric_name(cfg), "valid_value": best["best_value"],
        "baseline_value": base["best_value"] if base else None,
        "baseline_params": stored(base) if base else None,
        "target": cfg.tune.target, "trials": len(rows), "seconds": seconds,
        "inputs": json.dumps(versions, sort_keys=True), S.CREATED_AT: utc_now(),
    }


def refit(cfg: Config, space: TU.Space, best: dict, rows: list[dict], *, sweep: str) -> dict:
    """The best config (and the baseline, when the space has one and it is not the best) on
    train + valid, evaluated once on test: {test_value, refit_run_id, baseline_test_value}; when
    the sweep searched behaviour weights, also the best config with uniform weights
    (uniform_weights_test_value), which separates the weights' gain from the other keys'."""
    out = {"refit_run_id": f"{sweep}{REFIT_SUFFIX}"}
    out["test_value"] = _fit_and_score(cfg, json.loads(best["params"]), out["refit_run_id"])
    if best.get("baseline_params"):
        if best["baseline_params"] == best["params"]:
            out["baseline_test_value"] = out["test_value"]
        else:
            out["baseline_test_value"] = _fit_and_score(
                cfg, json.loads(best["baseline_params"]), f"{sweep}{BASELINE_SUFFIX}")
    if any(k.startswith("confidence.weights.") for k in space.keys()):
        # the weights' own share of the gain: the best config with every behaviour weight at 1
        out["uniform_weights_test_value"] = _fit_and_score(
            cfg, uniform_weights(cfg, json.loads(best["params"])), f"{sweep}{UNIFORM_SUFFIX}")
    return out


def uniform_weights(cfg: Config, params: dict) -> dict:
    """``params`` with every behaviour's weight (``cfg.confidence.weights`` and any in
    ``params``) set to 1, the rest (f, half-life, ALS settings) kept."""
    keys = {f"confidence.weights.{b}" for b in cfg.confidence.weights}
    keys |= {k for k in params if k.startswith("confidence.weights.")}
    return {**params, **{k: 1.0 for k in sorted(keys)}}


def _fit_and_score(cfg: Config, params: dict, run_id: str) -> float:
    """Fit ``params`` on train + valid as run ``run_id``; its test NDCG@train.eval_k."""
    k = cfg.train.eval_k
    run_cfg = cfg.with_(**params, **{
        "split.fold_valid": True, "run.run_id": run_id, "run.from_best": False,
        "evaluate.k": sorted({k, *cfg.evaluate.k})})
    print(f"refit {run_id} on train + valid: " + ", ".join(f"{a}={_short(b)}"
                                                           for a, b in params.items()),
          flush=True)
    if cfg.run.model in DEEP:
        from raytrain.train import train_run

        run_cfg = run_cfg.with_(**{"train.patience": 0, "train.fresh": True})
        train_run(run_cfg)
        rows = _read_evaluation(Lake(cfg.lake), run_id)
    else:
        from common.spark import get_spark, stage_checkpoints
        from jobs.evaluate import ALL_TARGETS, evaluate_run, format_table, write_evaluation
        from jobs.fit import fit_run

        spark = get_spark(run_cfg)
        lake = Lake(cfg.lake)
        with stage_checkpoints(spark, run_cfg, "tune-refit"):
            fit_run(spark, run_cfg)
        rows = evaluate_run(spark, lake, run_id=run_id, ks=run_cfg.evaluate.k,
                            target=ALL_TARGETS, dataset=dataset_of(cfg))
        write_evaluation(spark, lake, rows, run_id=run_id, target=ALL_TARGETS)
        print(format_table(rows))
    got = [r[S.VALUE] for r in rows if r[S.METRIC] == "ndcg" and r[S.K] == k]
    if not got:
        raise ConfigError(f"refit {run_id}: no test ndcg@{k} in metrics/evaluation")
    return float(got[0])


def _read_evaluation(lake: Lake, run_id: str) -> list[dict]:
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(L.METRICS_EVALUATION))
    try:
        return dt.to_pyarrow_table(filters=[(S.RUN_ID, "=", run_id)]).to_pylist()
    finally:
        del dt


def format_leaderboard(rows: list[dict], metric: str, top: int = 20) -> str:
    """The sweep's trials, best first."""
    ranked = sorted(rows, key=lambda r: -(r["best_value"] if r["best_value"] is not None
                                          else -math.inf))
    lines = [f"{'#':>3}  {'trial':<12} {'status':<13} {'valid ' + metric:>14} {'at':>4} "
             f"{'s':>6}  params"]
    for i, r in enumerate(ranked[:top], 1):
        v = f"{r['best_value']:.4f}" if r["best_value"] is not None else "-"
        params = ", ".join(f"{k}={_short(x)}" for k, x in json.loads(r["params"]).items())
        mark = " (baseline)" if r["baseline"] else ""
        lines.append(f"{i:>3}  {r['trial_id']:<12} {r['status']:<13} {v:>14} "
                     f"{r['best_iteration'] or '-':>4} {r['seconds']:>6.0f}  {params}{mark}")
    if len(ranked) > top:
        lines.append(f"     ... {len(ranked) - top} more in metrics/tune_trials")
    return "\n".join(lines)


def _print_best(best: dict) -> None:
    params = ", ".join(f"{k}={_short(v)}" for k, v in json.loads(best["params"]).items())
    line = (f"best of {best['sweep_id']}: trial {best['trial_id']}, valid {best[S.METRIC]} "
            f"{best['valid_value']:.4f}")
    if best.get("baseline_value") is not None:
        line += f" (baseline {best['baseline_value']:.4f})"
    if best.get("test_value") is not None:
        line += f"; refit on train + valid: test {best[S.METRIC]} {best['test_value']:.4f}"
        if best.get("baseline_test_value") is not None:
            line += f" (baseline {best['baseline_test_value']:.4f})"
        if best.get("uniform_weights_test_value") is not None:
            line += (f"; these settings with uniform weights "
                     f"{best['uniform_weights_test_value']:.4f}")
    print(line + f"\n  {params}\n  -> {L.METRICS_BEST_CONFIGS} (reclake "
                 f"{'als' if best[S.MODEL] == 'als' else 'train'} --from-best)", flush=True)


def main(spark, cfg: Config) -> dict:
    return tune_run(cfg)


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("tune"))
