"""Ray Train end to end on a tiny planted lake: train -> recommendations, embeddings, metrics and
the run record in the lake; the Ray path's metrics equal `reclake evaluate`'s; a worker that
fails in epoch 2 resumes from its checkpoint; bad requests stop before anything starts."""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from common import lake as L
from common import schema as S
from common.config import ConfigError
from common.lake import Lake

N_USERS, N_ITEMS = 40, 20


def _planted_lake(root: str) -> dict:
    """Two taste groups: user u likes the items of parity u % 2. Each user has 8 of its 10 items:
    the oldest 6 in train, then one in valid and the newest in test (stratified rows and
    leave_last_out rows alike), and a matching event sequence in gold/sequences."""
    from deltalake import write_deltalake

    rng = np.random.default_rng(0)
    rows, seqs = [], []
    t0 = datetime(2024, 1, 1)
    for u in range(N_USERS):
        own = [i for i in range(N_ITEMS) if i % 2 == u % 2]
        picked = rng.permutation(own)[:8].tolist()
        items, behs, tss = [], [], []
        for j, i in enumerate(picked):
            ts = t0 + timedelta(hours=u * 100 + j)
            split = S.TRAIN if j < 6 else S.VALID if j == 6 else S.TEST
            for protocol in ("stratified", "leave_last_out"):
                # the multi-task label: a purchase of every fourth item
                rows.append({"protocol": protocol, "split": split, "user_idx": u, "item_idx": i,
                             "confidence": 1.0, "ts": ts, "cnt_purchase": float(i % 4 == 0)})
            items.append(i)
            behs.append(S.VIEW if j % 3 else S.PURCHASE)
            tss.append(ts)
        seqs.append({"user_idx": u, "item_seq": items, "behavior_seq": behs, "ts_seq": tss,
                     "length": len(items), "n_events": len(items)})
    splits = pa.Table.from_pylist(rows, pa.schema([
        ("protocol", pa.string()), ("split", pa.string()), ("user_idx", pa.int32()),
        ("item_idx", pa.int32()), ("confidence", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC")), ("cnt_purchase", pa.float64())]))
    write_deltalake(f"{root}/{L.GOLD_SPLITS}", splits, partition_by=["protocol"])
    seq_t = pa.Table.from_pylist(seqs, pa.schema([
        ("user_idx", pa.int32()), ("item_seq", pa.list_(pa.int32())),
        ("behavior_seq", pa.list_(pa.string())),
        ("ts_seq", pa.list_(pa.timestamp("us", tz="UTC"))), ("length", pa.int32()),
        ("n_events", pa.int64())]))
    write_deltalake(f"{root}/{L.GOLD_SEQUENCES}", seq_t)
    return {(r["user_idx"], r["item_idx"]) for r in rows
            if r["split"] == S.TRAIN and r["protocol"] == "stratified"}


def _cfg(make_cfg, **kw):
    base = dict(train__epochs=10, train__batch_size=32, train__lr=0.02, train__eval_k=5,
                train__num_cpus=2, train__patience=0, recommend__k=5, evaluate__k=[5, 10],
                ncf__dim_gmf=8, ncf__dim_mlp=8, ncf__layers=[16, 8], lightgcn__dim=16,
                lightgcn__layers=2, sasrec__dim=16, sasrec__heads=1, sasrec__blocks=1,
                sasrec__max_len=10, sasrec__dropout=0.0, train__score_batch=16)
    base.update(kw)
    return make_cfg(**base)


def _read(lake: Lake, table: str, run_id: str):
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table))
    out = dt.to_pandas()
    del dt
    return out[out[S.RUN_ID] == run_id]


@pytest.mark.slow
def test_ncf_train_writes_lake_and_matches_evaluate(ray_local, spark, make_cfg):
    from jobs import evaluate
    from raytrain.train import train_run

    cfg = _cfg(make_cfg, run__model="ncf", run__run_id="ncf-1", train__num_workers=2,
               train__cpus_per_worker=0.5, ncf__task_target="purchase")
    lake = Lake(cfg.lake)
    train_pairs = _planted_lake(cfg.lake)
    record = train_run(cfg)

    recs = _read(lake, L.GOLD_RECOMMENDATIONS, "ncf-1")
    assert len(recs) == N_USERS * 5 and set(recs[S.MODEL]) == {"ncf"}
    assert not {(u, i) for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=True)} \
        & train_pairs
    for _, g in recs.groupby(S.USER_IDX):
        assert g[S.RANK].tolist() == [1, 2, 3, 4, 5]
        assert (np.diff(g[S.SCORE].to_numpy()) <= 0).all()
    # the planted taste: a user has 4 unseen items of its own parity; they fill the top 4
    top4 = recs[recs[S.RANK] <= 4]
    own = (top4[S.ITEM_IDX] % 2 == top4[S.USER_IDX] % 2).mean()
    assert own > 0.8, own
    emb = _read(lake, L.MODELS_NCF_EMBEDDINGS, "ncf-1")
    assert set(emb["kind"]) == {"user", "item"}
    assert (emb["kind"] == "user").sum() == N_USERS and (emb["kind"] == "item").sum() == N_ITEMS
    assert record.inputs == {L.GOLD_SPLITS: 0}
    assert record.params["train.num_workers"] == 2 and record.params["ncf.dim_gmf"] == 8
    assert record.counts["epochs_run"] == 10 and os.path.isdir(record.artefacts["checkpoint"])

    ray_rows = _read(lake, L.METRICS_EVALUATION, "ncf-1")
    ray_metrics = {(r.k, r.metric): r.value for r in ray_rows.itertuples()}
    spark_rows = evaluate.main(spark, cfg.with_(**{"evaluate.k": [5, 10]}))
    assert {(r[S.K], r[S.METRIC]) for r in spark_rows} == set(ray_metrics)
    for r in spark_rows:
        a, b = ray_metrics[(r[S.K], r[S.METRIC])], r[S.VALUE]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), r
    assert ray_metrics[(5, "ndcg")] > 0.3  # far above random (own-parity items are half)
    # the task head: one probability per test pair, AUC far above item popularity's (uniform)
    preds = _read(lake, L.GOLD_PREDICTIONS, "ncf-1")
    assert len(preds) == N_USERS and set(preds[S.TARGET]) == {"task:purchase"}
    assert preds[S.PREDICTION].between(0, 1).all()
    assert ray_metrics[(0, "auc")] > 0.85 and ray_metrics[(0, "pairs")] == N_USERS
    assert ray_metrics[(0, "auc_popularity")] < 0.75
    from common import ranking

    labels = (preds[S.ITEM_IDX] % 4 == 0).to_numpy()
    assert ray_metrics[(0, "auc")] == pytest.approx(
        ranking.auc(labels, preds[S.PREDICTION].to_numpy()), abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_worker_fault_resumes_from_checkpoint(ray_local, make_cfg, tmp_path, how):
    """Rank 1 fails once in epoch 2, after its first batch (raises, or its process is SIGKILLed):
    the group restarts from epoch 1's checkpoint (epochs 0 and 1 are not repeated) and ends where
    an uninterrupted run ends."""
    from raytrain.train import load_state, train_run

    common = dict(run__model="lightgcn", train__num_workers=2, train__cpus_per_worker=0.5,
                  train__epochs=4, train__max_failures=1)
    fail_at = "1:2" if how == "raise" else "1:2:kill"
    cfg = _cfg(make_cfg, run__run_id="lg-fault", train__fail_at=fail_at, **common)
    _planted_lake(cfg.lake)
    faulty = train_run(cfg)
    clean = train_run(cfg.with_(**{"run.run_id": "lg-clean", "train.fail_at": None}))

    assert faulty.counts["attempts"] == 2 and clean.counts["attempts"] == 1
    hist = load_state(faulty.artefacts["checkpoint"])["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]  # each epoch once, none from 0 again
    attempts = [h["attempt"] for h in hist]
    if how == "raise":
        assert attempts == [0, 0, 1, 1]
    else:
        # a SIGKILL can land before the controller registered epoch 1's checkpoint (reported a
        # moment earlier): the group then resumes from epoch 0's. Either way from a checkpoint,
        # not from scratch, and no epoch is recorded twice.
        assert attempts in ([0, 0, 1, 1], [0, 1, 1, 1]), attempts
    clean_hist = load_state(clean.artefacts["checkpoint"])["history"]
    # stated tolerance: batch order within a shard is Ray Data's, so metrics agree to 0.05
    a, b = hist[-1]["valid_ndcg@5"], clean_hist[-1]["valid_ndcg@5"]
    assert abs(a - b) <= 0.05, (a, b)


@pytest.mark.slow
def test_sasrec_leave_last_out_trains_and_ranks(ray_local, make_cfg):
    from raytrain.train import train_run

    # bf16 autocast on CPU: the AMP path of a GPU run, exercised here
    # ... and item embeddings initialised from text vectors (one per parity: the planted taste)
    cfg = _cfg(make_cfg, run__model="sasrec", run__run_id="sas-1", split__protocol="leave_last_out",
               train__epochs=12, train__amp="bf16", sasrec__item_init="text")
    lake = Lake(cfg.lake)
    train_pairs = _planted_lake(cfg.lake)
    from deltalake import write_deltalake

    ids = [f"i{i}" for i in range(N_ITEMS)]
    write_deltalake(lake.path(L.SILVER_ITEM_INDEX), pa.table(
        {"item_id": ids, "item_idx": pa.array(range(N_ITEMS), pa.int32())}))
    write_deltalake(lake.path(L.MODELS_TEXT_EMBEDDINGS), pa.table(
        {"item_id": ids, "model": ["m"] * N_ITEMS,
         "vector": [[1.0, 0.0] if i % 2 else [0.0, 1.0] for i in range(N_ITEMS)]}))
    record = train_run(cfg)
    recs = _read(lake, L.GOLD_RECOMMENDATIONS, "sas-1")
    assert record.inputs == {L.GOLD_SPLITS: 0, L.GOLD_SEQUENCES: 0, L.MODELS_TEXT_EMBEDDINGS: 0,
                             L.SILVER_ITEM_INDEX: 0}
    assert record.params["sasrec.item_init"] == "text"
    assert len(recs) == N_USERS * 5
    assert not {(u, i) for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=True)} \
        & train_pairs
    top4 = recs[recs[S.RANK] <= 4]
    own = (top4[S.ITEM_IDX] % 2 == top4[S.USER_IDX] % 2).mean()
    assert own > 0.7, own
    emb = _read(lake, L.MODELS_SASREC_EMBEDDINGS, "sas-1")
    assert set(emb["kind"]) == {"item"} and len(emb) == N_ITEMS


# --- clear errors before anything starts -------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"run.model": "ncf", "train.num_workers": 64}, "needs 64 CPUs and Ray Data one more"),
    ({"run.model": "ncf", "train.num_workers": 2, "train.num_cpus": 2}, "cpus_per_worker=0.5"),
    ({"run.model": "ncf", "train.use_gpu": True}, "GPUs; this machine has 0"),
    ({"run.model": "twotower", "recommend.candidates": "cold"}, "ranks the whole catalogue"),
])
def test_preflight_refuses_bad_requests(make_cfg, values, message):
    from raytrain.train import preflight

    cfg = make_cfg(**{k.replace(".", "__"): v for k, v in values.items()})
    if values.get("train.use_gpu"):
        import torch

        if torch.cuda.device_count():
            pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=message):
        preflight(cfg)


def test_amp_dtype_by_device():
    import torch

    from raytrain.train import amp_dtype

    assert amp_dtype("auto", "cpu") is None and amp_dtype("off", "cuda") is None
    assert amp_dtype("bf16", "cpu") is torch.bfloat16 and amp_dtype("fp16", "cuda") is torch.float16


@pytest.mark.parametrize("preserve", [True, False])
def test_data_config_splits_train_and_keeps_block_order_by_config(make_cfg, preserve):
    from raytrain.train import data_config

    dc = data_config(make_cfg(train__preserve_order=preserve))
    assert dc._datasets_to_split == ["train"]
    assert dc._resolve_execution_options("train").preserve_order is preserve
    assert dc._resolve_execution_options("history").preserve_order is preserve


def test_cli_train_unknown_model_and_missing_splits(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "jobs.cli", "--lake", str(tmp_path / "lk"),
                               "train", *args], capture_output=True, text=True, timeout=120)

    r = run("--model", "nope")
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr and "ncf" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("--model", "ncf", "--set", "train.num_cpus=2")
    assert r.returncode == 2 and "gold/splits" in r.stderr and "reclake split" in r.stderr
    assert "Traceback" not in r.stderr


def test_fit_and_train_are_one_path_for_ray_models(make_cfg, tmp_path):
    """`reclake fit --model ncf` starts no JVM and runs the same preflight and run as train."""
    import subprocess
    import sys

    from common import models
    from jobs import fit

    assert {m: models.runtime(m) for m in ("ncf", "sasrec", "lightgcn", "als", "popularity")} == {
        "ncf": "ray", "sasrec": "ray", "lightgcn": "ray", "als": "spark", "popularity": "spark"}
    assert fit.NEEDS_SPARK(make_cfg(run__model="als"))
    assert not fit.NEEDS_SPARK(make_cfg(run__model="ncf"))
    with pytest.raises(ConfigError, match="needs 64 CPUs"):
        fit.preflight(make_cfg(run__model="ncf", train__num_workers=64))
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--lake", str(tmp_path / "lk"), "fit",
                        "--model", "lightgcn"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "gold/splits" in r.stderr and "Traceback" not in r.stderr
    assert "SparkContext" not in r.stderr and "Ivy" not in r.stderr


def test_resume_refuses_a_checkpoint_of_other_settings(make_cfg, tmp_path):
    """A re-run of a run id resumes only a checkpoint trained with the same model, protocol and
    optimiser settings on the same users x items (epochs may grow); anything else is refused."""
    import torch

    from raytrain.train import STATE_FILE, _check_resume, resume_settings, storage_path

    cfg = _cfg(make_cfg, run__model="lightgcn", run__run_id="r1")
    ck = os.path.join(storage_path(cfg), "r1", "checkpoint_2026-01-01_00-00-00.000000")
    os.makedirs(ck)
    torch.save({"n_users": 5, "n_items": 4, "settings": resume_settings(cfg)},
               os.path.join(ck, STATE_FILE))
    data = type("D", (), {"n_users": 5, "n_items": 4})()
    _check_resume(cfg, "r1", data)  # the same settings: resumes
    _check_resume(cfg.with_(**{"train.epochs": 50}), "r1", data)  # a longer run: resumes
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.02 -> 0\.5.*--fresh"):
        _check_resume(cfg.with_(**{"train.lr": 0.5}), "r1", data)
    with pytest.raises(ConfigError, match=r"lightgcn\.negatives: 1 -> 3"):
        _check_resume(cfg.with_(**{"lightgcn.negatives": 3}), "r1", data)
    with pytest.raises(ConfigError, match=r"users x items: 5 x 4 -> 6 x 4"):
        _check_resume(cfg, "r1", type("D", (), {"n_users": 6, "n_items": 4})())
    _check_resume(cfg, "r2", data)  # no checkpoint: a fresh start


def test_best_epoch_ties_go_to_the_lower_train_loss():
    from raytrain.train import is_better

    state = {"best": 0.0, "best_loss": 5.0}
    assert is_better(0.0, 4.0, state)  # valid NDCG tied at 0: the better-trained epoch
    assert not is_better(0.0, 6.0, state)
    assert is_better(0.1, 9.0, state)  # a better valid score wins whatever the loss
    assert not is_better(-0.1, 1.0, state)
    assert is_better(0.0, 1.0, {"best": float("-inf"), "best_loss": float("inf")})


JAZZ = ["jazz saxophone quartet", "bebop trumpet record", "swing big band", "cool jazz piano trio",
        "blues guitar live album", "soul organ groove", "latin jazz percussion", "jazz vocal ballads",
        "hard bop drummer", "free jazz clarinet"]
SPACE = ["comet telescope", "astronaut moon book", "galaxy star map", "rocket launch kit",
         "mars rover model", "planet mobile", "space station poster", "nebula photo print",
         "satellite orbit guide", "solar system puzzle"]


@pytest.mark.slow
def test_twotower_fine_tunes_the_encoder_with_ddp_and_writes_tuned_vectors(ray_local, make_cfg):
    """Two DDP workers fine-tune MiniLM on the planted lake (even items read as jazz, odd as
    space; each user keeps to one parity), under bf16 autocast: recommendations keep to the
    user's parity, seen items never come back, and the tuned vectors land in
    models/text_embeddings under <model>+ft:<run_id>, moved away from the frozen model's."""
    from deltalake import DeltaTable, write_deltalake

    from raytrain.embed import embed_texts, load_encoder
    from raytrain.train import train_run

    cfg = _cfg(make_cfg, run__model="twotower", run__run_id="tt-1",
               split__protocol="leave_last_out", train__epochs=2, train__batch_size=16,
               train__num_workers=2, train__cpus_per_worker=0.5, train__amp="bf16",
               twotower__history=3, twotower__max_len=6, twotower__max_tokens=12,
               twotower__lr=1e-4, twotower__encode_batch=8)
    lake = Lake(cfg.lake)
    train_pairs = _planted_lake(cfg.lake)
    ids = [f"i{i}" for i in range(N_ITEMS)]
    texts = [JAZZ[i // 2] if i % 2 == 0 else SPACE[i // 2] for i in range(N_ITEMS)]
    write_deltalake(lake.path(L.SILVER_ITEM_INDEX), pa.table(
        {"item_id": ids, "item_idx": pa.array(range(N_ITEMS), pa.int32())}))
    write_deltalake(lake.path(L.SILVER_ITEMS), pa.table({"item_id": ids, "text": texts}))
    record = train_run(cfg)
    assert record.inputs == {L.GOLD_SPLITS: 0, L.GOLD_SEQUENCES: 0, L.SILVER_ITEMS: 0,
                             L.SILVER_ITEM_INDEX: 0}
    assert record.params["twotower.history"] == 3 and record.counts["epochs_run"] == 2
    recs = _read(lake, L.GOLD_RECOMMENDATIONS, "tt-1")
    assert len(recs) == N_USERS * 5
    assert not {(u, i) for u, i in zip(recs[S.USER_IDX], recs[S.ITEM_IDX], strict=True)} \
        & train_pairs
    top4 = recs[recs[S.RANK] <= 4]
    own = (top4[S.ITEM_IDX] % 2 == top4[S.USER_IDX] % 2).mean()
    assert own > 0.8, own
    dt = DeltaTable(lake.path(L.MODELS_TEXT_EMBEDDINGS))
    emb = dt.to_pandas()
    del dt
    assert set(emb["model"]) == {"all-MiniLM-L6-v2+ft:tt-1"} and len(emb) == N_ITEMS
    emb = emb.sort_values("item_idx")
    tuned = np.stack(emb["vector"].to_numpy())
    assert np.allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-4)
    frozen = embed_texts(load_encoder(cfg)[0], texts)
    cos = np.sum(tuned * frozen, axis=1)
    assert cos.min() > 0.5 and cos.mean() < 0.9999, cos  # moved, not replaced


@pytest.mark.slow
def test_cli_train_output_is_one_line_per_epoch_without_ray_noise(tmp_path, ray_local):
    """`reclake train` in its own process, while another Ray runs on the machine (the session's):
    it starts a local Ray of its own, prints every epoch line once, and none of the lines Ray's
    workers print at INFO or that Train's placement-group cleaner repeats every second when the
    State API is absent (nor its traceback when it finds two Rays to ask)."""
    assert ray_local.is_initialized()
    import subprocess
    import sys

    lake = tmp_path / "lk"
    _planted_lake(str(lake))
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--lake", str(lake), "train",
                        "--model", "ncf", "--protocol", "stratified", "--run-id", "cli-1",
                        "--epochs", "3", "--set", "train.num_cpus=2", "--set", "recommend.k=5",
                        "--set", "evaluate.k=[5]"],
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for epoch in range(3):
        assert sum(f"epoch {epoch}: loss" in line for line in out.splitlines()) == 1, out[-3000:]
    for noise in ("Failed to query Ray Train Controller", "execution finished in",
                  "Progress bars disabled", "Traceback"):
        assert noise not in out, noise
    assert "run cli-1: 200 recommendations" in out
