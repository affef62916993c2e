"""Train a deep recommender (NeuMF, SASRec with behaviour types, LightGCN) with Ray Train.

    reclake train --model ncf --protocol stratified [--run-id R] [--workers 2] [--use-gpu]
    reclake train --model sasrec --protocol leave_last_out --target purchase
    reclake train --model lightgcn --address auto          # on an existing Ray cluster
    reclake fit --model ncf ...                            # the same path
    reclake train --model text --protocol cold_items       # a Spark model: `reclake fit`'s run

The run reads the lake with Ray Data at table versions pinned when it starts (``gold/splits``,
``gold/sequences`` for SASRec), recorded in ``models/runs``; no Spark and no JVM are involved.
Three functions, as in Ray Train's examples:

- :func:`train_loop_per_worker` (module level, so Ray Tune can reuse it through
  ``param_space["train_loop_config"]``): each worker builds the model, wraps it with
  ``prepare_model`` (DDP across workers), reads only its shard of the train examples
  (``get_dataset_shard``), samples negatives / builds sequence windows per epoch, seeded by
  (seed, epoch, rank), trains with AMP (bf16/fp16) and pinned memory on GPU and gradient clipping,
  evaluates NDCG@``train.eval_k`` on the valid part (exact full ranking, train items removed;
  workers score disjoint user slices and sum), reports loss, validation metrics and samples/s, and
  checkpoints every epoch (model, optimiser, scaler, epoch, early-stopping state, best weights).
  A restarted worker group (``train.max_failures``) resumes from the last checkpoint; so does a
  re-run of the same ``--run-id`` after the driver died (``--fresh`` starts over).
- :func:`build_trainer`: the ``TorchTrainer`` from config (``ScalingConfig(num_workers, use_gpu,
  resources_per_worker)``, ``RunConfig(storage_path, name=run_id, FailureConfig,
  CheckpointConfig)``). Checkpoints go to ``train.storage_path`` (default
  ``<lake>/_ray_results``; any pyarrow filesystem URI).
- :func:`train_run`: the run: pin, read, train, then score every train user with the best epoch's
  weights (Ray Data ``map_batches``, the model loaded once per actor; exact top-K over the whole
  catalogue with the user's train items removed, ``common.topk``), and write
  ``gold/recommendations`` (model, run_id), ``models/<model>_embeddings``, ``metrics/evaluation``
  (test metrics by ``common.ranking``, the NumPy form of the Spark evaluator's definitions) and the
  run record. Re-running a run_id replaces its rows.

Memory per worker: the embedding tables (and optimiser state: Adam keeps two more copies), the
user -> train-items index (4 bytes per train pair), the valid truth of the worker's user slice and,
for SASRec, the history windows of those users (2 x 4 x max_len bytes each). Train examples
stream through Ray Data.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from common import lake as L
from common import models
from common import schema as S
from common.config import Config, ConfigError, from_dict, to_dict
from common.lake import Lake
from common.log import get_logger
from common.runs import RunRecord

log = get_logger("train")
STATE_FILE = "state.pt"
DEEP_MODELS = ("ncf", "sasrec", "lightgcn", "twotower")
PLACEMENT_GROUP_KEY = "worker_placement_group"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="run.model", default=None, metavar="NAME",
                   help=f"deep model: {' | '.join(DEEP_MODELS)} (any other registered model "
                        "is fitted as `reclake fit --model NAME` does)")
    p.add_argument("--protocol", dest="split.protocol", default=None, metavar="P",
                   help=f"gold/splits protocol to train on ({' | '.join(S.PROTOCOLS)})")
    p.add_argument("--run-id", dest="run.run_id", default=None, metavar="ID",
                   help="run to write (re-running replaces its rows; an unfinished run resumes "
                        "from its last checkpoint); generated when absent")
    p.add_argument("--fresh", dest="train.fresh", action="store_const", const=True, default=None,
                   help="discard the run's earlier checkpoints instead of resuming from them")
    p.add_argument("--k", dest="recommend.k", type=int, default=None,
                   help="recommendations per user (default 10)")
    p.add_argument("--from-best", dest="run.from_best", action="store_const", const=True,
                   default=None, help="apply the best config of the latest `reclake tune` sweep "
                                      "of this model, dataset and protocol (its keys win)")
    g = p.add_argument_group("training (every train.* key also via --set)")
    g.add_argument("--epochs", dest="train.epochs", type=int, default=None, metavar="N")
    g.add_argument("--batch-size", dest="train.batch_size", type=int, default=None, metavar="N")
    g.add_argument("--lr", dest="train.lr", type=float, default=None, metavar="X")
    g.add_argument("--seed", dest="train.seed", type=int, default=None, metavar="N")
    g.add_argument("--workers", dest="train.num_workers", type=int, default=None, metavar="N",
                   help="Ray Train workers (DDP ranks; default 1)")
    g.add_argument("--use-gpu", dest="train.use_gpu", action="store_const", const=True,
                   default=None, help="one GPU per worker (train.gpus_per_worker), AMP per "
                                      "train.amp")
    g.add_argument("--address", dest="train.address", default=None, metavar="ADDR",
                   help="existing Ray cluster (auto, ray://host:10001); default: local Ray")
    g.add_argument("--storage-path", dest="train.storage_path", default=None, metavar="URI",
                   help="checkpoints (default <lake>/_ray_results)")
    g.add_argument("--target", dest="sasrec.target", default=None, metavar="B",
                   help="sasrec: next item of any behaviour (all) or of one (e.g. purchase)")


# --- checks before anything starts ------------------------------------------------------------


def NEEDS_SPARK(cfg: Config) -> bool:  # noqa: N802 (the stage protocol's name)
    """A Ray model trains without a JVM; any other model is `reclake fit`'s (Spark)."""
    return models.runtime(cfg.run.model) == models.SPARK


def preflight(cfg: Config) -> None:
    """Checks that need neither Ray nor the data: a known model and, for a Ray Train model, a
    possible resource request (a Spark model is handed to `reclake fit`, :func:`main`)."""
    name = cfg.run.model
    models.check_name(name)
    if models.runtime(name) != models.RAY:
        return
    if cfg.recommend.candidates != "all":
        raise ConfigError(
            f"recommend.candidates={cfg.recommend.candidates!r}: a Ray Train model ranks the whole "
            f"catalogue (set recommend.candidates=all; `reclake evaluate` reports its cold and "
            f"warm items apart on cold_items)")
    t = cfg.train
    if ray_address(cfg) is None:
        cpus = cfg.train.num_cpus or os.cpu_count() or 1
        _check_cpus(t, cpus, "local Ray")
        if t.use_gpu:
            import torch

            have = torch.cuda.device_count()
            if t.num_workers * t.gpus_per_worker > have:
                raise ConfigError(
                    f"train.use_gpu with {t.num_workers} worker(s) x {t.gpus_per_worker:g} GPU "
                    f"needs {t.num_workers * t.gpus_per_worker:g} GPUs; this machine has {have} "
                    f"(drop --use-gpu, or pass --address of a GPU cluster)")


def ray_address(cfg: Config) -> str | None:
    """``train.address``, else ``RAY_ADDRESS`` (set inside ``ray job submit`` / a RayJob), else
    None: start a local Ray."""
    return cfg.train.address or os.environ.get("RAY_ADDRESS") or None


def _check_cpus(t, cpus: float, where: str) -> None:
    """The workers must leave a CPU for Ray Data's reads and maps (else the run waits for
    ever)."""
    need = t.num_workers * t.cpus_per_worker
    if need + 1 > cpus and not (t.num_workers == 1 and need <= cpus):
        raise ConfigError(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker:g} "
            f"needs {need:g} CPUs and Ray Data one more; {where} has {cpus:g} (lower them, e.g. "
            f"--set train.cpus_per_worker=0.5, or pass --address of a larger cluster)")


def _check_cluster(cfg: Config) -> None:
    """On a cluster: the request fits what the cluster has (Ray would wait for ever)."""
    import ray

    have = ray.cluster_resources()
    t = cfg.train
    _check_cpus(t, have.get("CPU", 0), "the Ray cluster")
    need_cpu = t.num_workers * t.cpus_per_worker
    need_gpu = t.num_workers * t.gpus_per_worker if t.use_gpu else 0
    if need_gpu > have.get("GPU", 0):
        raise ConfigError(
            f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; "
            f"the run asks for {need_cpu:g} CPUs and {need_gpu:g} GPUs "
            f"(train.num_workers, train.cpus_per_worker, train.gpus_per_worker)")


# --- the loop on every worker ---------------------------------------------------------------------


def amp_dtype(amp: str, device_type: str):
    """The autocast dtype for ``train.amp`` on this device (None: full precision)."""
    import torch

    if amp == "off" or (amp == "auto" and device_type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _fault(config: dict, rank: int, epoch: int) -> None:
    """``train.fail_at = "RANK:EPOCH[:kill]"``: that rank fails once in that epoch, after its
    first batch (a marker file under the run's storage folder remembers that it did, so the
    restarted attempt goes through): it raises, or with ``:kill`` its process dies of SIGKILL, as
    a worker does when the OOM killer or a lost node takes it (no Python clean-up runs)."""
    spec = config.get("fail_at")
    if not spec:
        return
    r, e, *how = spec.split(":")
    marker = os.path.join(config["fault_dir"], f"fault-{r}-{e}")
    if rank == int(r) and epoch == int(e) and not os.path.exists(marker):
        os.makedirs(config["fault_dir"], exist_ok=True)
        open(marker, "w").close()
        if how == ["kill"]:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault (train.fail_at={spec}): rank {rank}, epoch {epoch}")


def _all_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _to_device(batch: dict, device, pin: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if pin:
            v = v.pin_memory()
        out[k] = v.to(device, non_blocking=pin)
    return out


def _ranked(net, batch: dict, users: np.ndarray, data, k: int, exclude_seen: bool):
    """Exact top-k of ``users`` (scores from ``net.score_users(batch)``): counts, items, scores."""
    import torch

    from common.topk import top_k_scores

    with torch.no_grad():
        scores = net.score_users(batch).float().cpu().numpy()
    seen = data.seen_of(users) if exclude_seen else None
    return top_k_scores(scores, np.arange(scores.shape[1]), seen, k)


def _user_batches(kind: str, users: np.ndarray, history: dict | None, size: int):
    """(users, batch dict of CPU tensors) for scoring ``users`` in slices of ``size``."""
    import torch

    for start in range(0, len(users), size):
        u = users[start:start + size]
        if kind == "sequence":
            rows = np.searchsorted(history["user_idx"], u)
            yield u, {"seq": torch.as_tensor(history["seq"][rows]),
                      "beh": torch.as_tensor(history["beh"][rows])}
        else:
            yield u, {"user_idx": torch.as_tensor(u, dtype=torch.long)}


def validation_ndcg(net, kind: str, users: np.ndarray, history, data, *, k: int, device,
                    size: int, exclude_seen: bool) -> tuple[float, float]:
    """(sum of per-user NDCG@k, number of users) over ``users`` against the valid truth."""
    from common import ranking

    total, n = 0.0, 0
    for u, batch in _user_batches(kind, users, history, size):
        counts, items, _ = _ranked(net, _to_device(batch, device, False), u, data, k,
                                   exclude_seen)
        hits, n_truth = ranking.hit_matrix(u, items, data.valid_indptr, data.valid_indices)
        ndcg = ranking.per_user_metrics(hits, n_truth, counts > 0, k)["ndcg"]
        total += float(ndcg.sum())
        n += len(u)
    return total, n


def _history(shard_or_rows, users: np.ndarray, max_len: int) -> dict:
    """History windows (sorted by user) of ``users`` from the sequences dataset."""
    from raytrain import data as D

    rows: dict[str, list] = {"user_idx": [], "seq": [], "beh": []}
    for b in shard_or_rows.iter_batches(batch_format="numpy", batch_size=4096):
        keep = np.isin(b["user_idx"], users)
        for key in rows:
            rows[key].extend(b[key][keep])
    order = np.argsort(np.asarray(rows["user_idx"], dtype=np.int64), kind="stable")
    wins = D.history_windows({k: [v[i] for i in order] for k, v in rows.items()}, max_len)
    wins["user_idx"] = np.asarray(rows["user_idx"], dtype=np.int64)[order]
    return wins


# what a checkpoint was trained with; resuming under other values would mix two runs
RESUME_KEYS = ("split.protocol", "train.batch_size", "train.lr", "train.weight_decay", "train.seed",
               "train.grad_clip")


def resume_settings(cfg: Config) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint: the model's section, the
    protocol and the optimiser's keys (epochs and patience may change: a run can be extended)."""
    d = to_dict(cfg)
    out = {f"{cfg.run.model}.{k}": v for k, v in d[cfg.run.model].items()}
    for key in RESUME_KEYS:
        section, name = key.split(".")
        out[key] = d[section][name]
    return out


def is_better(score: float, loss: float, state: dict) -> bool:
    """Whether an epoch beats the best so far: a higher score (validation NDCG, or minus the train
    loss without a valid part); a tie (a sparse valid part scoring 0 epoch after epoch) goes to
    the lower train loss, not to the first epoch."""
    return score > state["best"] or (score == state["best"] and loss < state["best_loss"])


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker. ``config``: ``cfg`` (``to_dict`` of the run's Config), ``data``
    (:class:`raytrain.data.TrainData`), ``fault_dir``, ``fail_at``. Datasets: ``train`` (pairs or
    sequences, sharded), ``history`` (sequences, whole; SASRec only)."""
    import ray.train
    import ray.train.torch
    import ray.util
    import torch

    from raytrain import data as D
    from raytrain.models import build_for

    cfg = from_dict(config["cfg"])
    data = config["data"]
    t, name = cfg.train, cfg.run.model
    if not cfg.spark.verbose:  # the epoch lines, not Ray Train's per-report INFO lines
        import logging

        logging.getLogger("ray").setLevel(logging.WARNING)
        try:  # Train V2 logs every report at INFO under a logger named by its file's path
            from ray.train.v2._internal.execution import context as train_context

            logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
        except ImportError:
            pass
    kind = models.get(name).kind
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    net = build_for(cfg, data)
    model = ray.train.torch.prepare_model(
        net, parallel_strategy_kwargs={"broadcast_buffers": False})
    opt = torch.optim.Adam(net.parameters(), lr=net.lr or t.lr, weight_decay=t.weight_decay)
    dtype = amp_dtype(t.amp, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    pin = device.type == "cuda"

    state = {"epoch": -1, "best": -math.inf, "best_loss": math.inf, "best_epoch": -1, "bad": 0,
             "history": [], "attempt": 0, "best_model": None}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            saved = load_state(d)
        refuse_mismatched_resume(saved, cfg, data, run_id=cfg.run.run_id)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        state = {k: saved.get(k, state[k]) for k in state}
        state["attempt"] += 1
        if rank == 0:
            log.info("resuming from the checkpoint of epoch %d (attempt %d)", state["epoch"],
                     state["attempt"])

    valid_users = np.flatnonzero(np.diff(data.valid_indptr) > 0)[rank::world]
    history = None
    if kind == "sequence":
        history = _history(ray.train.get_dataset_shard("history"), valid_users,
                           D.window_len(cfg))
        valid_users = history["user_idx"]
    shard = ray.train.get_dataset_shard("train")
    target_id = (None if name != "sasrec" or cfg.sasrec.target == "all"
                 else 1 + list(cfg.vocabulary).index(cfg.sasrec.target))

    for epoch in range(state["epoch"] + 1, t.epochs):
        t0 = time.perf_counter()
        rng = D.epoch_rng(t.seed, epoch, rank)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        torch.manual_seed(int(rng.integers(2**62)))  # dropout: per (seed, epoch, rank)
        model.train()
        if kind == "sequence":
            batches = D.sequence_batches(shard, batch_size=t.batch_size,
                                         max_len=D.window_len(cfg), target_behavior_id=target_id,
                                         prefetch_batches=t.prefetch_batches,
                                         local_shuffle_seed=int(rng.integers(2**31)))
        else:
            n_neg = cfg.ncf.negatives if kind == "pairs" else cfg.lightgcn.negatives
            task = cfg if name == "ncf" and cfg.ncf.task_target else None
            batches = D.pairs_batches(shard, batch_size=t.batch_size, data=data, n_neg=n_neg,
                                      rng=rng, prefetch_batches=t.prefetch_batches, task_cfg=task,
                                      local_shuffle_seed=int(rng.integers(2**31)))
        loss_sum, steps, samples = 0.0, 0, 0
        for batch in batches:
            if steps == 1:
                _fault(config, rank, epoch)
            batch = _to_device(batch, device, pin)
            with torch.autocast(device.type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                loss = model(batch, generator=gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
            scaler.step(opt)
            scaler.update()
            loss_sum += float(loss.detach())
            steps += 1
            samples += len(next(iter(batch.values())))
        train_s = time.perf_counter() - t0
        loss_sum, steps, samples = _all_sum([loss_sum, steps, samples], device)
        metrics: dict[str, Any] = {
            "epoch": epoch, "loss": loss_sum / max(steps, 1), "samples": int(samples),
            "samples_per_s": samples / max(train_s, 1e-9), "epoch_s": train_s,
            "attempt": state["attempt"]}
        if data.valid_indptr[-1] > 0:
            net.eval()
            total, n = validation_ndcg(net, kind, valid_users, history, data, k=t.eval_k,
                                       device=device, size=t.score_batch,
                                       exclude_seen=cfg.recommend.exclude_seen)
            total, n = _all_sum([total, n], device)
            metrics[f"valid_ndcg@{t.eval_k}"] = total / max(n, 1)
            score = metrics[f"valid_ndcg@{t.eval_k}"]
        else:
            score = -loss_sum / max(steps, 1)  # no valid part: the lowest train loss is best
        epoch_loss = loss_sum / max(steps, 1)
        improved = is_better(score, epoch_loss, state)
        if improved:
            state.update(best=score, best_loss=epoch_loss, best_epoch=epoch, bad=0,
                         best_model={k: v.detach().cpu().clone()
                                     for k, v in net.state_dict().items()})
        else:
            state["bad"] += 1
        state["epoch"] = epoch
        state["history"].append({**metrics, "rank0_s": time.perf_counter() - t0})
        metrics.update(best_epoch=state["best_epoch"], best_score=state["best"])
        if rank == 0:
            # the worker group's placement group: a sweep's driver removes it when Tune stops
            # the trial mid-run (Train's own cleaner needs the State API, absent without a
            # dashboard); raytrain.tune reads it from the reports
            pg = ray.util.get_current_placement_group()
            if pg is not None:
                metrics[PLACEMENT_GROUP_KEY] = pg.id.hex()
            valid = metrics.get(f"valid_ndcg@{t.eval_k}")
            # written, not printed: Ray Train patches print() in its workers to both stdout and
            # the root logger, which reach the driver as two copies of the line
            sys.stdout.write(f"epoch {epoch}: loss {metrics['loss']:.4f}"
                             + (f", valid ndcg@{t.eval_k} {valid:.4f}" if valid is not None
                                else "")
                             + f", {metrics['samples_per_s']:,.0f} samples/s ({train_s:.1f}s)\n")
            sys.stdout.flush()
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({**state, "model": net.state_dict(), "optimizer": opt.state_dict(),
                            "scaler": scaler.state_dict(), "n_users": data.n_users,
                            "n_items": data.n_items, "model_name": name,
                            "settings": resume_settings(cfg)},
                           os.path.join(tmp, STATE_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if t.patience and state["bad"] >= t.patience:
            if rank == 0:
                log.info("early stop after epoch %d: no better validation score for %d epochs "
                         "(best epoch %d)", epoch, t.patience, state["best_epoch"])
            break


# --- the trainer ------------------------------------------------------------------------------------


def storage_path(cfg: Config) -> str:
    return cfg.train.storage_path or f"{Lake(cfg.lake).root.rstrip('/')}/_ray_results"


def build_trainer(cfg: Config, data, datasets: dict, *, run_id: str, callbacks=None):
    """The ``TorchTrainer`` of a run (``datasets``: ``train`` sharded across workers, ``history``
    given whole to every worker; ``callbacks``: Ray Train callbacks, e.g. Tune's
    ``TuneReportCallback`` when a sweep's trial runs it)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    store = storage_path(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "data": data, "fail_at": t.fail_at,
                           "fault_dir": os.path.join(store, run_id, "_faults")},
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_id, storage_path=store, callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level="INFO" if cfg.spark.verbose else "WARNING"),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints)),
        datasets=datasets,
        dataset_config=data_config(cfg),
    )


def data_config(cfg: Config):
    """Ray Train's ingest settings: ``train`` split across the workers, ``history`` whole; with
    ``train.preserve_order`` the blocks come in read order (a seed then reproduces the run)."""
    import ray.train

    opts = ray.train.DataConfig.default_ingest_options()
    opts.preserve_order = bool(cfg.train.preserve_order)
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=opts)


def _check_resume(cfg: Config, run_id: str, data) -> None:
    """Before any worker starts: a run id whose latest checkpoint (local storage) was trained on
    other data or with other settings is refused, rather than resumed into a mixed model. Remote
    storage is checked by the workers when they load the checkpoint."""
    root = os.path.join(storage_path(cfg), run_id)
    if "://" in root or not os.path.isdir(root):
        return
    ckpts = sorted(e for e in os.listdir(root) if e.startswith("checkpoint_")
                   and os.path.isfile(os.path.join(root, e, STATE_FILE)))
    if not ckpts:
        return
    refuse_mismatched_resume(load_state(os.path.join(root, ckpts[-1])), cfg, data, run_id=run_id)


def refuse_mismatched_resume(saved: dict, cfg: Config, data, *, run_id: str) -> None:
    """ConfigError naming every difference between a checkpoint's settings / users x items and
    this run's (the driver's check and the workers' backstop both come here)."""
    was, now = saved.get("settings", {}), resume_settings(cfg)
    changed = [f"{k}: {was[k]!r} -> {now.get(k)!r}" for k in sorted(was) if was[k] != now.get(k)]
    if (saved["n_users"], saved["n_items"]) != (data.n_users, data.n_items):
        changed.append(f"users x items: {saved['n_users']} x {saved['n_items']} -> "
                       f"{data.n_users} x {data.n_items}")
    if changed:
        raise ConfigError(f"run {run_id!r} has a checkpoint trained with other settings or data "
                          f"({'; '.join(changed)}); re-run with --fresh or a new --run-id")


def load_state(checkpoint_path: str) -> dict:
    import torch

    return torch.load(os.path.join(checkpoint_path, STATE_FILE), map_location="cpu",
                      weights_only=False)


class Scorer:
    """Ray Data actor: the best epoch's model, loaded once; a batch of users -> their top-k rows
    (``user_idx, rank, item_idx, score``)."""

    def __init__(self, checkpoint_path: str, cfg: dict, data, use_gpu: bool):
        import torch

        from raytrain.models import build_for

        self.cfg = from_dict(cfg)
        self.data = data
        self.kind = models.get(self.cfg.run.model).kind
        state = load_state(checkpoint_path)
        self.net = build_for(self.cfg, data)
        self.net.load_state_dict(state["best_model"] or state["model"])
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.net.to(self.device).eval()

    def __call__(self, batch: dict) -> dict:
        import torch

        from raytrain import data as D

        users = np.array(batch["user_idx"], dtype=np.int64)  # a writable copy for torch
        if self.kind == "sequence":
            w = D.history_windows({"seq": list(batch["seq"]), "beh": list(batch["beh"])},
                                  D.window_len(self.cfg))
            tb = {"seq": torch.as_tensor(w["seq"]), "beh": torch.as_tensor(w["beh"])}
        else:
            tb = {"user_idx": torch.as_tensor(users)}
        tb = {k: v.to(self.device) for k, v in tb.items()}
        k = self.cfg.recommend.k
        counts, items, scores = _ranked(self.net, tb, users, self.data, k,
                                        self.cfg.recommend.exclude_seen)
        mask = np.arange(k)[None, :] < counts[:, None]
        return {S.USER_IDX: np.repeat(users, counts).astype(np.int32),
                S.RANK: np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), items.shape)[mask],
                S.ITEM_IDX: items[mask].astype(np.int32),
                S.SCORE: scores[mask].astype(np.float64)}


_PROGRESS_LOGGER = "ray.data._internal.progress"


def _quiet_ray(verbose: bool) -> None:
    """Ray Data's progress bars and per-dataset INFO lines only with ``--verbose``."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    for name in ("ray.data", "ray.train", "ray.tune", "ray"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # "Progress bars disabled" (a warning, once per process) says what was just asked for
    logging.getLogger(_PROGRESS_LOGGER).setLevel(logging.INFO if verbose else logging.ERROR)


def _init_ray(cfg: Config) -> bool:
    """``ray.init`` of the train and tune stages. Returns whether this call started it."""
    address = ray_address(cfg)
    started = start_ray(address, cfg.train.num_cpus, cfg.spark.verbose, log_to_driver=True)
    if started and address:
        _check_cluster(cfg)
    return started


def start_ray(address: str | None, num_cpus: int, verbose: bool, log_to_driver: bool) -> bool:
    """The one ``ray.init`` of the Ray path: join ``address``, or start a local Ray of this
    process's own (``address="local"``: never a ``ray start`` head that happens to run on the
    machine, whose CPUs and GPUs were not asked for). Returns whether this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    _quiet_ray(verbose)
    # workers' output reaches the driver (the per-epoch lines); Ray's own logs stay quiet
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver,
                          "configure_logging": verbose,
                          "logging_level": "INFO" if verbose else "WARNING"}
    if address:
        ray.init(address=address, **kw)
    else:
        hook = local_worker_setup if verbose else quiet_local_worker
        ray.init(address="local", num_cpus=num_cpus,
                 runtime_env={"worker_process_setup_hook": hook}, **kw)
    return True


def local_worker_setup() -> None:
    """Ray's ``worker_process_setup_hook`` of a local Ray: the worker's State API calls (Ray
    Train's placement-group cleaner makes one every second) address this Ray, not whichever
    one they would find by looking, which fails when the machine runs more than one."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def quiet_local_worker() -> None:
    """:func:`local_worker_setup`, and (not ``--verbose``) Ray Data's INFO lines stay in the
    workers' log files, and so does the warning Train's placement group cleaner repeats every
    second when the State API is absent (a local Ray started without a dashboard). Ray Train's
    own INFO lines are quieted by the run's ``LoggingConfig``; the epoch lines still reach the
    driver."""
    import logging

    local_worker_setup()
    try:
        import ray.data  # its import configures Ray Data's loggers: quiet them after it

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except ImportError:  # a worker without Ray Data installed
        pass
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger(_PROGRESS_LOGGER).setLevel(logging.ERROR)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner"
                      ).setLevel(logging.ERROR)


def train_run(cfg: Config) -> RunRecord:
    """The whole run of a deep model (see the module docstring). Returns its record."""
    import pyarrow as pa
    import ray

    from raytrain import data as D
    from raytrain import lake_io as IO

    if cfg.run.from_best:
        from common.tuning import apply_best

        cfg = apply_best(cfg, Lake(cfg.lake)).with_(**{"run.from_best": False})
    preflight(cfg)
    from jobs.fit import new_run_id  # the run-id format of every model

    name, protocol = cfg.run.model, cfg.split.protocol
    run_id = cfg.run.run_id or new_run_id(name)
    cfg = cfg.with_(**{"run.run_id": run_id})
    lake = Lake(cfg.lake)
    model_cls = models.get(name)
    kind = model_cls.kind
    print(f"run_id: {run_id}  (model={name}, protocol={protocol}, "
          f"workers={cfg.train.num_workers}, gpu={cfg.train.use_gpu})")
    secs: dict[str, float] = {}
    # pinned before Ray starts: a missing table is a one-line error without a cluster
    tables = [L.GOLD_SPLITS] + ([L.GOLD_SEQUENCES] if kind == "sequence" else [])
    text_init = getattr(getattr(cfg, name, None), "item_init", "random") == "text"
    if text_init:
        tables += [L.MODELS_TEXT_EMBEDDINGS, L.SILVER_ITEM_INDEX]
    if name == "twotower":  # the encoder reads every item's text
        tables += [L.SILVER_ITEMS, L.SILVER_ITEM_INDEX]
    versions = D.pin_versions(lake, list(dict.fromkeys(tables)))
    t0 = time.perf_counter()
    started = _init_ray(cfg)
    secs["ray_start"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        data, pairs = D.load_train_data(lake, cfg, versions)
        if text_init:
            data = dataclasses.replace(
                data, item_text=D.load_item_text(lake, cfg, versions, data.n_items))
        if name == "twotower":
            data = dataclasses.replace(
                data, item_tokens=D.load_item_tokens(lake, cfg, versions, data.n_items))
        datasets = {"train": pairs}
        if kind == "sequence":
            seqs = D.load_sequences(lake, cfg, versions, data).materialize()
            datasets = {"train": seqs, "history": seqs}
        secs["load"] = time.perf_counter() - t0
        if cfg.train.fresh:
            shutil.rmtree(os.path.join(storage_path(cfg), run_id), ignore_errors=True)
        else:
            _check_resume(cfg, run_id, data)
        t0 = time.perf_counter()
        result = build_trainer(cfg, data, datasets, run_id=run_id).fit()
        secs["fit"] = time.perf_counter() - t0
        if result.error:
            raise result.error
        if result.checkpoint is None:
            raise ConfigError(f"run {run_id!r} reported no checkpoint (no epoch finished)")
        ckpt_path = result.checkpoint.path
        state = load_state(ckpt_path)
        best_epoch = state["best_epoch"]
        by = (f"valid ndcg@{cfg.train.eval_k} {state['best']:.4f}" if data.valid_indptr[-1]
              else f"lowest train loss {-state['best']:.4f}")
        print(f"trained {state['epoch'] + 1} epoch(s) in {secs['fit']:.1f}s; best epoch "
              f"{best_epoch} ({by})")

        t0 = time.perf_counter()
        users_ds = (datasets["train"].select_columns([S.USER_IDX, "seq", "beh"])
                    if kind == "sequence" else
                    ray.data.from_arrow(pa.table({S.USER_IDX: np.flatnonzero(
                        np.diff(data.seen_indptr) > 0).astype(np.int64)})))
        recs_ds = users_ds.map_batches(
            Scorer, fn_constructor_kwargs={"checkpoint_path": ckpt_path, "cfg": to_dict(cfg),
                                           "data": data, "use_gpu": cfg.train.use_gpu},
            batch_size=cfg.train.score_batch, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.train.num_workers)),
            num_gpus=cfg.train.gpus_per_worker if cfg.train.use_gpu else 0)
        recs = pa.concat_tables(list(recs_ds.iter_batches(batch_format="pyarrow",
                                                          batch_size=None)))
        recs = recs.sort_by([(S.USER_IDX, "ascending"), (S.RANK, "ascending")])
        secs["recommend"] = time.perf_counter() - t0
        outputs, evaluation = _write_outputs(cfg, lake, data, recs, state, run_id=run_id,
                                             protocol=protocol)
        secs["write"] = time.perf_counter() - t0 - secs["recommend"]
        counts = {"train_pairs": int(data.seen_indptr[-1]), "users": data.n_users,
                  "items": data.n_items, "recommendation_rows": recs.num_rows,
                  "epochs_run": state["epoch"] + 1, "best_epoch": best_epoch,
                  "attempts": state["attempt"] + 1}
        record = RunRecord(
            run_id=run_id, model=name, protocol=protocol,
            dataset=cfg.run.dataset or cfg.ingest.source_format,
            params=model_cls(cfg).params(), inputs=versions, outputs=outputs,
            artefacts={"checkpoint": ckpt_path}, counts=counts, seconds=secs)
        IO.write_run(lake, record)
        _print_evaluation(evaluation)
        print(f"run {run_id}: {recs.num_rows:,} recommendations -> "
              f"{lake.path(L.GOLD_RECOMMENDATIONS)} (run record in {lake.path(L.MODELS_RUNS)})")
        return record
    finally:
        if started:
            ray.shutdown()


def _write_outputs(cfg: Config, lake: Lake, data, recs, state: dict, *, run_id: str,
                   protocol: str) -> tuple[dict[str, int], list[dict]]:
    """gold/recommendations, the embeddings, metrics/evaluation; table -> version written."""
    import pyarrow as pa
    import torch

    from common import ranking
    from jobs.evaluate import ALL_TARGETS
    from raytrain import lake_io as IO
    from raytrain.models import build_for

    name = cfg.run.model
    n = recs.num_rows
    head = {S.RUN_ID: pa.array([run_id] * n), S.MODEL: pa.array([name] * n),
            S.PROTOCOL: pa.array([protocol] * n)}
    table = pa.table({**head, **{c: recs.column(c) for c in (S.USER_IDX, S.RANK, S.ITEM_IDX,
                                                           S.SCORE)}},
                     schema=IO.recommendations_schema())
    where = IO.run_where(run_id)
    outputs = {L.GOLD_RECOMMENDATIONS: IO.replace_rows(lake, L.GOLD_RECOMMENDATIONS, table,
                                                       where)}
    # embeddings of the best epoch
    net = build_for(cfg, data)
    net.load_state_dict(state["best_model"] or state["model"])
    net.eval()
    with torch.no_grad():
        emb = net.embeddings()
    if name == "twotower":  # tuned text vectors, beside the frozen model's (reclake embed)
        outputs.update(write_tuned_text_vectors(cfg, lake, data, emb["item"], run_id=run_id,
                                                created=IO.utc_now()))
    else:
        outputs.update(write_embeddings(lake, name, emb, run_id=run_id))
    # test metrics, the Spark evaluator's definitions (common/metrics) in NumPy (common/ranking)
    users = recs.column(S.USER_IDX).to_numpy()
    uniq, start, counts = np.unique(users, return_index=True, return_counts=True)
    k = cfg.recommend.k
    items = np.full((len(uniq), k), -1, dtype=np.int64)
    ranks = recs.column(S.RANK).to_numpy() - 1
    items[np.repeat(np.arange(len(uniq)), counts), ranks] = recs.column(S.ITEM_IDX).to_numpy()
    ks = sorted(set(cfg.evaluate.k))
    rank_m = ranking.ranking_metrics(uniq, counts, items, data.test_indptr, data.test_indices, ks)
    cat_m = ranking.catalogue_metrics(items, counts, data.seen_indptr, data.seen_indices, ks)
    created = IO.utc_now()
    dataset = cfg.run.dataset or cfg.ingest.source_format
    rows = [{S.RUN_ID: run_id, S.MODEL: name, S.DATASET: dataset, S.PROTOCOL: protocol,
             S.TARGET: ALL_TARGETS, S.K: kk, S.METRIC: m, S.VALUE: v, S.CREATED_AT: created}
            for kk in ks for m, v in {**rank_m[kk], **cat_m[kk]}.items()]
    outputs[L.METRICS_EVALUATION] = IO.write_evaluation(lake, rows, run_id=run_id,
                                                        target=ALL_TARGETS)
    if name == "ncf" and cfg.ncf.task_target:
        task_rows, version = _task_predictions(cfg, lake, data, net, run_id=run_id,
                                               protocol=protocol, created=created)
        outputs[L.GOLD_PREDICTIONS] = version
        outputs[L.METRICS_EVALUATION] = IO.write_evaluation(
            lake, task_rows, run_id=run_id, target=task_rows[0][S.TARGET])
        rows = rows + task_rows
    return outputs, rows


def _task_predictions(cfg: Config, lake: Lake, data, net, *, run_id: str, protocol: str,
                      created) -> tuple[list[dict], int]:
    """The task head's probability on every test pair -> ``gold/predictions``; its AUC and
    log-loss against the pairs' labels, beside the AUC of item popularity (the train users of
    the item), as ``metrics/evaluation`` rows of target ``task:<label>``, k 0."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from common import ranking
    from raytrain import data as D
    from raytrain import lake_io as IO

    rows = D.read_table(lake, L.GOLD_SPLITS, data.inputs[L.GOLD_SPLITS],
                        columns=[S.USER_IDX, S.ITEM_IDX, *D.task_columns(cfg)],
                        filter_protocol=protocol, predicate=pc.field(S.SPLIT) == S.TEST)
    got = D._collect(rows, [S.USER_IDX, S.ITEM_IDX, *D.task_columns(cfg)])
    users, items = got[S.USER_IDX].astype(np.int64), got[S.ITEM_IDX].astype(np.int64)
    labels = D.task_labels(got, cfg)
    probs = np.zeros(len(users), np.float64)
    step = 1 << 16
    with torch.no_grad():
        for s0 in range(0, len(users), step):
            u = torch.from_numpy(users[s0:s0 + step])
            i = torch.from_numpy(items[s0:s0 + step])
            probs[s0:s0 + step] = torch.sigmoid(net.task_logits(u, i).float()).numpy()
    popularity = np.bincount(data.seen_indices, minlength=data.n_items)[items]
    name = D.task_name(cfg)
    target = f"task:{name}"
    table = pa.table({S.RUN_ID: [run_id] * len(users), S.MODEL: [cfg.run.model] * len(users),
                      S.PROTOCOL: [protocol] * len(users), S.TARGET: [target] * len(users),
                      S.USER_IDX: users.astype(np.int32), S.ITEM_IDX: items.astype(np.int32),
                      S.PREDICTION: probs},
                     schema=IO.arrow_schema(S.PREDICTIONS_SCHEMA))
    version = IO.replace_rows(lake, L.GOLD_PREDICTIONS, table, IO.run_where(run_id))
    metrics = ranking.prediction_metrics(labels, probs, popularity)
    log.info("task %s on %s test pairs: AUC %.4f (item popularity %.4f), log-loss %.4f", name,
             f"{len(users):,}", metrics["auc"], metrics["auc_popularity"], metrics["log_loss"])
    dataset = cfg.run.dataset or cfg.ingest.source_format
    return ([{S.RUN_ID: run_id, S.MODEL: cfg.run.model, S.DATASET: dataset, S.PROTOCOL: protocol,
              S.TARGET: target, S.K: 0, S.METRIC: m, S.VALUE: v, S.CREATED_AT: created}
             for m, v in metrics.items()], version)


def write_embeddings(lake: Lake, model: str, emb: dict, *, run_id: str) -> dict[str, int]:
    """``models/<model>_embeddings`` rows (run_id, kind, idx, vector) of one run, replaced."""
    import pyarrow as pa

    from raytrain import lake_io as IO

    table = {"ncf": L.MODELS_NCF_EMBEDDINGS, "sasrec": L.MODELS_SASREC_EMBEDDINGS,
             "lightgcn": L.MODELS_LIGHTGCN_EMBEDDINGS}[model]
    parts = []
    for kind, mat in emb.items():
        mat = mat.float().cpu().numpy()
        parts.append(pa.table({
            S.RUN_ID: pa.array([run_id] * len(mat)), "kind": pa.array([kind] * len(mat)),
            S.IDX: pa.array(np.arange(len(mat), dtype=np.int32)),
            "vector": pa.array(list(mat), type=pa.list_(pa.float32()))},
            schema=IO.embeddings_schema()))
    return {table: IO.replace_rows(lake, table, pa.concat_tables(parts), IO.run_where(run_id))}


def tuned_model_name(cfg: Config, run_id: str) -> str:
    """The ``model`` under which a two-tower run's fine-tuned item vectors are stored in
    ``models/text_embeddings``: ``<embed model>+ft:<run_id>`` (``--model text --set
    text.embed_model=...`` then ranks by them)."""
    from raytrain.embed import model_spec

    return f"{model_spec(cfg).name}+ft:{run_id}"


def write_tuned_text_vectors(cfg: Config, lake: Lake, data, vectors, *, run_id: str,
                             created) -> dict[str, int]:
    """The fine-tuned item tower's vector of every indexed item to ``models/text_embeddings``
    (model :func:`tuned_model_name`, weights_sha the base model's, text_hash of the text the
    tower read), replacing that model's earlier rows."""
    import pyarrow as pa

    from raytrain import data as D
    from raytrain import lake_io as IO
    from raytrain.embed import model_spec, text_hash, verify_weights

    spec = model_spec(cfg)
    sha = verify_weights(spec.model_dir, spec.expected_sha256)
    ids, texts = D.item_texts(lake, data.inputs, data.n_items)
    rows = [j for j, i in enumerate(ids) if i is not None]
    mat = vectors.float().cpu().numpy()[rows]
    name = tuned_model_name(cfg, run_id)
    n = len(rows)
    schema = IO.arrow_schema(S.TEXT_EMBEDDINGS_SCHEMA)
    table = pa.table({
        S.ITEM_ID: pa.array([ids[j] for j in rows], pa.string()),
        S.ITEM_IDX: pa.array(rows, pa.int32()), S.MODEL: pa.array([name] * n),
        S.WEIGHTS_SHA: pa.array([sha] * n), S.TEXT_HASH: pa.array([text_hash(texts[j])
                                                                   for j in rows]),
        S.VECTOR: pa.array(list(mat), type=pa.list_(pa.float32())),
        S.CREATED_AT: pa.array([created] * n, schema.field(S.CREATED_AT).type)}, schema=schema)
    where = f"{S.MODEL} = {L.quote(name)}"
    return {L.MODELS_TEXT_EMBEDDINGS: IO.replace_rows(lake, L.MODELS_TEXT_EMBEDDINGS, table,
                                                      where)}


def _print_evaluation(rows: list[dict]) -> None:
    from jobs.evaluate import format_prediction_rows, format_table

    print(format_table([r for r in rows if r[S.K] > 0]))
    task = format_prediction_rows(rows)
    if task:
        print(task)


def main(spark, cfg: Config) -> RunRecord:
    if models.runtime(cfg.run.model) != models.RAY:  # als, popularity, text, hybrid, random
        from jobs.fit import fit_run

        log.info("%s is not a Ray Train model (%s): fitted as `reclake fit --model %s` "
                 "(the train.* options do not apply)", cfg.run.model, ", ".join(DEEP_MODELS),
                 cfg.run.model)
        return fit_run(spark, cfg)
    return train_run(cfg)


if __name__ == "__main__":
    from jobs.cli import run_stage

    sys.exit(run_stage("train"))
