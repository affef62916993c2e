"""reclake tune: search-space files, the valid-part requirement, records, refit and --from-best
on a generated lake; a deep sweep over the Ray Train loop; an interrupted sweep resumed without
rerunning its finished trials; behaviour weights tuned on data with a planted dependence of
purchases on earlier carts / favourites / views recover the planted order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from common import lake as L
from common import schema as S
from common import tuning as TU
from common.config import ConfigError, load_config
from common.lake import Lake

REPO = Path(__file__).resolve().parents[1]


def _space(tmp_path: Path, text: str) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return str(p)


def _read(lake: Lake, table: str):
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table))
    out = dt.to_pyarrow_table().to_pylist()
    del dt
    return out


# --- search spaces (no Ray, no Spark) -------------------------------------------------------------


def test_space_parses_distributions_and_round_trips_list_choices(tmp_path):
    path = _space(tmp_path, """
space:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  ncf.layers: {choice: [[64, 32], [128, 64, 32]]}
  ncf.negatives: {randint: [1, 9]}
  ncf.dropout: {quniform: [0.0, 0.5, 0.1]}
baseline:
  train.lr: 1.0e-3
  ncf.layers: [64, 32]
  ncf.negatives: 4
  ncf.dropout: 0.0
""")
    space = TU.load_space(path, model="ncf", cfg=load_config())
    assert space.keys() == ["train.lr", "ncf.layers", "ncf.negatives", "ncf.dropout"]
    kinds = {p.key: (p.kind, p.encoded) for p in space.params}
    assert kinds["ncf.layers"] == ("choice", True) and kinds["train.lr"] == ("loguniform", False)
    enc = space.encode(space.baseline)
    assert enc["ncf.layers"] == "[64, 32]" and space.decode(enc) == dict(space.baseline)

    from raytrain.tune import _domains

    assert space.fixed == {}
    doms = _domains(space)
    assert sorted(doms["ncf.layers"].categories) == ["[128, 64, 32]", "[64, 32]"]
    assert (doms["train.lr"].lower, doms["train.lr"].upper) == (1e-4, 1e-2)


@pytest.mark.parametrize("text, model, message", [
    ("space:\n  ncf.dim_gmf: {choice: [8]}\n", "als", "is not a als key"),
    ("space:\n  confidence.weights.cart: {uniform: [0, 2]}\n", "ncf",
     "behaviour weights are ALS's"),
    ("space:\n  als.rank: {normal: [1, 2]}\n", "als", "unknown distribution 'normal'"),
    ("space:\n  als.rank: {choice: [16, 0]}\n", "als", "als.rank=0"),
    ("space:\n  als.alpha: {loguniform: [0.0, 1.0]}\n", "als", "lo > 0"),
    ("space:\n  als.rank: {choice: [16]}\n  als.alpha: {uniform: [0.1, 1]}\n"
     "baseline:\n  als.rank: 16\n", "als", "missing ['als.alpha']"),
    ("space: {}\n", "als", "non-empty 'space:'"),
    ("space:\n  als.nope: {choice: [1]}\n", "als", "nope"),
    ("space:\n  als.rank: {choice: [16]}\nextra: 1\n", "als", "unknown top-level"),
    ("space:\n  als.rank: {choice: [16]}\nfixed:\n  als.rank: 8\n", "als",
     "both searched and fixed"),
    ("space:\n  als.rank: {choice: [16]}\nfixed:\n  train.lr: 0.1\n", "als",
     "fixed train.lr is not a als key"),
    ("space:\n  als.rank: {choice: [16]}\nfixed:\n  confidence.f: cubic\n", "als",
     "fixed: confidence.f='cubic'"),
])
def test_space_errors_are_clear(tmp_path, text, model, message):
    with pytest.raises(ConfigError, match=None) as e:
        TU.load_space(_space(tmp_path, text), model=model, cfg=load_config())
    assert message in str(e.value)


def test_missing_space_file_and_model_without_space(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/tune"):
        TU.load_space(str(tmp_path / "none.yaml"), model="als", cfg=load_config())
    from raytrain.tune import preflight

    cfg = load_config(values={"lake": str(tmp_path / "lake"), "run.model": "popularity"})
    with pytest.raises(ConfigError, match="supports als, ncf"):
        preflight(cfg)
    with pytest.raises(ConfigError, match="pass one"):
        preflight(cfg.with_(**{"run.model": "als", "tune.resume": True, "tune.fresh": True}))
    with pytest.raises(ConfigError, match="tune.target is for ALS"):
        preflight(cfg.with_(**{"run.model": "ncf", "tune.target": "purchase",
                               "train.num_cpus": 2}))


def test_a_protocol_without_valid_part_is_refused_with_the_command(tmp_path):
    from deltalake import write_deltalake

    from raytrain.tune import require_valid

    lake = Lake(str(tmp_path / "lake"))
    rows = [{"protocol": "stratified", "split": s, "user_idx": 0, "item_idx": i,
             "confidence": 1.0, "cnt_purchase": 0} for i, s in enumerate(["train", "test"])]
    write_deltalake(lake.path(L.GOLD_SPLITS), pa.Table.from_pylist(rows))
    cfg = load_config(values={"lake": lake.root})
    with pytest.raises(ConfigError) as e:
        require_valid(lake, 0, cfg)
    assert "no validation part" in str(e.value)
    assert "reclake split --protocol stratified --valid-ratio 0.05 --valid-from train" in str(
        e.value)
    rows.append({**rows[0], "split": "valid", "item_idx": 5})
    write_deltalake(lake.path(L.GOLD_SPLITS), pa.Table.from_pylist(rows), mode="overwrite")
    assert require_valid(lake, 1, cfg) == 1
    with pytest.raises(ConfigError, match="no valid pair with a 'purchase' event"):
        require_valid(lake, 1, cfg.with_(**{"tune.target": "purchase"}))


def test_refit_params_status_and_leaderboard():
    from raytrain import tune as T

    als = load_config(values={"run.model": "als", "als.max_iter": 12})
    assert T.als_rungs(als) == [3, 6, 12]
    assert T._refit_params(als, {"confidence.weights.cart": 2.0}, 6) == {
        "confidence.weights.cart": 2.0, "als.max_iter": 6, "confidence.rebuild": True}
    weights = TU.Space(path="w.yaml", params=(TU.Param("als.alpha", "uniform", (0.1, 1.0)),),
                       baseline={}, fixed={"confidence.weights.purchase": 1.0})
    assert T.sweep_fixed(als, weights) == {"confidence.weights.purchase": 1.0,
                                           "confidence.rebuild": True}
    assert T.sweep_fixed(als, TU.Space(path="a.yaml", params=weights.params, baseline={})) == {}
    tuned = {"confidence.weights.cart": 0.2, "confidence.f": "binary", "als.alpha": 3.0}
    assert T.uniform_weights(als, tuned) == {
        **{f"confidence.weights.{b}": 1.0 for b in als.confidence.weights},
        "confidence.f": "binary", "als.alpha": 3.0}
    ncf = load_config(values={"run.model": "ncf", "train.epochs": 10, "train.patience": 2})
    assert T._refit_params(ncf, {"train.lr": 0.01}, 4) == {"train.lr": 0.01, "train.epochs": 4}
    assert T._trial_status(ncf, "TERMINATED", None, 10, {}) == "completed"
    assert T._trial_status(ncf, "TERMINATED", None, 5, {"epoch": 4, "best_epoch": 2}) == \
        "early_stopped"
    assert T._trial_status(ncf, "TERMINATED", None, 2, {"epoch": 1, "best_epoch": 1}) == "stopped"
    assert T._trial_status(ncf, "ERROR", None, 1, {}) == "error"
    rows = [{"trial_id": t, "status": "completed", "best_value": v, "best_iteration": 3,
             "seconds": 1.0, "params": json.dumps({"train.lr": lr}), "baseline": b}
            for t, v, lr, b in [("a", 0.2, 0.1, True), ("b", 0.3, 0.2, False),
                                ("c", None, 0.3, False)]]
    board = T.format_leaderboard(rows, "ndcg@10").splitlines()
    assert [line.split()[1] for line in board[1:]] == ["b", "a", "c"]
    assert "(baseline)" in board[2]


def test_resume_and_rerun_of_a_sweep_are_checked_before_anything_runs(tmp_path):
    from raytrain.tune import _prepare_experiment

    cfg = load_config(values={"lake": str(tmp_path / "lake"), "run.model": "als"})
    with pytest.raises(ConfigError, match="--resume: no sweep 'never-ran'"):
        _prepare_experiment(cfg.with_(**{"tune.resume": True}), "never-ran")
    path, restore = _prepare_experiment(cfg, "first")
    assert not restore and path.startswith(str(tmp_path / "lake"))
    os.makedirs(path)
    with pytest.raises(ConfigError, match="already exists"):
        _prepare_experiment(cfg, "first")
    assert _prepare_experiment(cfg.with_(**{"tune.fresh": True}), "first") == (path, False)
    assert not os.path.exists(path)  # --fresh discards it


def test_a_run_records_the_confidence_it_was_rebuilt_with():
    from common.runs import RunRecord
    from common.splits import train_params

    cfg = load_config(values={"confidence.rebuild": True, "confidence.weights.cart": 0.25,
                              "confidence.half_life_days": 3, "split.fold_valid": True})
    p = train_params(cfg)
    assert p["confidence.weights.cart"] == 0.25 and p["confidence.half_life_days"] == 3
    assert p["confidence.rebuild"] is True and p["split.fold_valid"] is True
    # the recorded keys rebuild the same confidence from a config that never set them
    back = RunRecord(run_id="r", model="als", protocol="stratified", params=p).config(
        load_config())
    assert back.confidence.rebuild and back.confidence.weights["cart"] == 0.25
    assert back.confidence.half_life_days == 3 and back.split.fold_valid
    assert train_params(load_config()) == {"split.fold_valid": False}


def test_lake_writes_refuse_timestamps_spark_could_not_read(tmp_path):
    from raytrain import lake_io as IO

    lake = Lake(str(tmp_path / "lake"))
    naive = pa.table({"a": pa.array([1]), "t": pa.array([0], pa.timestamp("us"))})
    with pytest.raises(ValueError, match="no time zone"):
        IO.replace_rows(lake, L.METRICS_TUNE_TRIALS, naive, "a = 1")
    assert not IO.exists(lake, L.METRICS_TUNE_TRIALS)
    for schema in (TU.tune_trials_schema(), TU.best_configs_schema()):
        assert all(f.type.tz == "UTC" for f in schema if pa.types.is_timestamp(f.type))


def test_record_tables_of_an_older_schema_are_merged_or_refused_before_a_sweep(tmp_path):
    from deltalake import write_deltalake

    from raytrain import lake_io as IO

    lake = Lake(str(tmp_path / "lake"))
    schema = TU.best_configs_schema()
    row = {f.name: None for f in schema} | {"sweep_id": "a", S.MODEL: "als", S.PROTOCOL: "p",
                                            "trial_id": "t", "params": "{}", S.METRIC: "ndcg@10"}
    # a table from before a nullable column was added: the new column is merged in
    older = pa.schema([f for f in schema if f.name != "uniform_weights_test_value"])
    write_deltalake(lake.path(L.METRICS_BEST_CONFIGS),
                    pa.Table.from_pylist([{k: row[k] for k in older.names}], older))
    assert IO.check_writable(lake, L.METRICS_BEST_CONFIGS, schema) == [
        "uniform_weights_test_value"]
    IO.replace_rows(lake, L.METRICS_BEST_CONFIGS,
                    pa.Table.from_pylist([row | {"sweep_id": "b",
                                                 "uniform_weights_test_value": 0.5}], schema),
                    "sweep_id = 'b'")
    got = {r["sweep_id"]: r for r in _read(lake, L.METRICS_BEST_CONFIGS)}
    assert got["a"]["uniform_weights_test_value"] is None
    assert got["b"]["uniform_weights_test_value"] == 0.5
    # a column of another type (naive timestamps, as an earlier version wrote): refused up front
    naive = pa.schema([pa.field(f.name, pa.timestamp("us")) if f.name == S.CREATED_AT else f
                       for f in TU.tune_trials_schema()])
    write_deltalake(lake.path(L.METRICS_TUNE_TRIALS), naive.empty_table())
    with pytest.raises(ConfigError, match="written with another schema.*created_at"):
        IO.check_writable(lake, L.METRICS_TUNE_TRIALS, TU.tune_trials_schema())


# --- sweeps on a generated lake ------------------------------------------------------------------


def _build_lake(spark, root: Path, **generate) -> dict:
    """generate -> ingest -> transform -> split (stratified, valid carved from train)."""
    from jobs import generate as G
    from jobs import ingest, split, transform

    values = {"lake": str(root / "lake"), "generate.out": str(root / "data"),
              "generate.formats": ["csv"], "ingest.path": str(root / "data" / "csv"),
              "spark.shuffle_partitions": 2, "split.valid_ratio": 0.1,
              "split.valid_from": "train", "train.num_cpus": 2,
              "spark.conf": {"spark.default.parallelism": "2"}}
    values.update({f"generate.{k}": v for k, v in generate.items()})
    cfg = load_config(values=values)
    G.main(None, cfg)
    ingest.main(spark, cfg)
    transform.main(spark, cfg)
    split.main(spark, cfg)
    return values


@pytest.fixture(scope="module")
def planted_lake(spark, tmp_path_factory):
    """Purchases planted after carts (p 0.9) and favourites (p 0.4), never after views; every
    sweep on Spark below runs on it (each under its own sweep name)."""
    return _build_lake(spark, tmp_path_factory.mktemp("planted"), users=600, items=100,
                       categories=20, events=60_000, fav_rate=0.2, taste_share=0.0,
                       behavior_signal={"cart": 0.9, "fav": 0.4, "view": 0.0})


@pytest.mark.slow
def test_deep_sweep_runs_the_train_loop_and_releases_each_trials_workers(ray_local, tmp_path):
    """Two NeuMF trials one after the other: the second only starts if the first trial's worker
    placement group was released (Tune stops a trial at its last epoch, before Train's own
    shutdown can remove it)."""
    from test_raytrain_train import _planted_lake

    from raytrain.tune import tune_run

    root = str(tmp_path / "lake")
    _planted_lake(root)
    space = _space(tmp_path, """
space:
  train.lr: {loguniform: [0.005, 0.05]}
  ncf.dim_gmf: {choice: [4, 8]}
""")
    cfg = load_config(values={
        "lake": root, "run.model": "ncf", "tune.trials": 2, "tune.space": space,
        "train.epochs": 3, "train.batch_size": 32, "train.eval_k": 5, "train.num_cpus": 2,
        "train.patience": 0, "recommend.k": 5, "evaluate.k": [5, 10], "ncf.dim_mlp": 8,
        "ncf.layers": [16, 8], "train.score_batch": 16, "tune.grace_period": 3})
    best = tune_run(cfg)
    trials = _read(Lake(root), L.METRICS_TUNE_TRIALS)
    assert len(trials) == 2 and all(r["status"] == "completed" for r in trials)
    assert all(r["iterations"] == 3 and len(r["history"]) == 3 for r in trials)
    params = json.loads(best["params"])
    top = max(trials, key=lambda r: r["best_value"])
    assert params["train.epochs"] == top["best_iteration"]
    assert params["ncf.dim_gmf"] == json.loads(top["params"])["ncf.dim_gmf"]
    assert best["test_value"] is not None
    # reclake train --from-best: the stored config (with its epoch count) over the file's
    from common.tuning import apply_best

    applied = apply_best(cfg.with_(**{"run.from_best": True}), Lake(root))
    assert applied.ncf.dim_gmf == params["ncf.dim_gmf"]
    assert applied.train.epochs == params["train.epochs"]
    assert applied.train.lr == pytest.approx(params["train.lr"])
    import ray

    live = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    assert live == []  # nothing of the sweep holds CPUs any more


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(planted_lake, tmp_path):
    lake = planted_lake["lake"]
    base = [sys.executable, "-m", "jobs.cli", "--lake", lake, "--set",
            "spark.shuffle_partitions=2", "tune", "--model", "als", "--trials", "4",
            "--name", "resume-me", "--no-refit", "--set", "als.max_iter=2", "--set",
            "tune.als_rungs=[1.0]", "--set", "train.num_cpus=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(base, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first, out = None, []
    deadline = time.time() + 300
    for line in proc.stdout:
        out.append(line)
        if line.startswith("trial 1/4 "):
            first = line.split()[2].rstrip(":")
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, "".join(out)
    rest = proc.communicate(timeout=300)[0]
    out.append(rest)
    assert first, "".join(out)
    assert proc.returncode == 130, "".join(out)
    assert "--resume" in rest
    done_before = {line.split()[2].rstrip(":") for line in "".join(out).splitlines()
                   if line.startswith("trial ") and "/4 " in line}
    resumed = subprocess.run(base + ["--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    again = [line.split()[2].rstrip(":") for line in resumed.stdout.splitlines()
             if line.startswith("trial ") and "/4 " in line]
    assert first in done_before and not (done_before & set(again)), resumed.stdout
    rows = [r for r in _read(Lake(lake), L.METRICS_TUNE_TRIALS) if r["sweep_id"] == "resume-me"]
    assert len(rows) == 4 and {r["trial_id"] for r in rows} >= done_before | set(again)
    assert all(r["status"] in ("completed", "stopped") for r in rows)


@pytest.mark.slow
def test_weights_sweep_recovers_the_planted_order_records_refits_and_applies_from_best(
        spark, ray_local, planted_lake, tmp_path):
    """One ALS sweep of the behaviour weights on the planted lake (16 trials, ASHA rungs at 3 and
    6 iterations): the tuned weights rank the behaviours in the planted order and beat uniform
    weights on validation; every trial, the best config and the refits are in the lake (readable
    by Spark's Delta as well as delta-rs); --from-best applies the stored config."""
    from jobs.fit import fit_run
    from raytrain.tune import tune_run

    space = _space(tmp_path, """
space:
  confidence.weights.view: {uniform: [0.0, 2.0]}
  confidence.weights.fav: {uniform: [0.0, 2.0]}
  confidence.weights.cart: {uniform: [0.0, 2.0]}
baseline:
  confidence.weights.view: 1.0
  confidence.weights.fav: 1.0
  confidence.weights.cart: 1.0
fixed:
  confidence.weights.purchase: 1.0
  confidence.weights.click: 0.0
""")
    sweep = "planted-weights"
    cfg = load_config(values={
        **planted_lake, "run.model": "als", "tune.trials": 16, "tune.space": space,
        "tune.target": "purchase", "tune.als_rungs": [0.5, 1.0], "tune.grace_period": 1,
        "als.max_iter": 6, "als.rank": 64, "tune.name": sweep})
    lake = Lake(cfg.lake)
    best = tune_run(cfg)
    w = json.loads(best["params"])
    view, fav, cart = (w[f"confidence.weights.{b}"] for b in ("view", "fav", "cart"))
    assert cart > fav > view, w
    assert best["valid_value"] > best["baseline_value"]
    # the fixed keys are part of the stored best config (what --from-best applies)
    assert w["confidence.weights.purchase"] == 1.0 and w["confidence.weights.click"] == 0.0
    assert w["confidence.rebuild"] is True

    # every trial: its params, one report per rung, status, duration
    trials = [r for r in _read(lake, L.METRICS_TUNE_TRIALS) if r["sweep_id"] == sweep]
    assert len(trials) == 16 and len({r["trial_id"] for r in trials}) == 16
    assert sum(r["baseline"] for r in trials) == 1  # the file's baseline point ran first
    assert {r["status"] for r in trials} <= {"completed", "stopped"}
    assert any(r["status"] == "stopped" for r in trials)  # ASHA cut some at the first rung
    for r in trials:
        assert r["error"] is None and r["seconds"] > 0 and 0 <= r["best_value"] < 1
        # one report per rung reached (Tune iterations); the best at 3 or 6 ALS iterations
        assert [h["iteration"] for h in r["history"]] == list(range(1, r["iterations"] + 1))
        assert r["iterations"] in (1, 2) and r["best_iteration"] in (3, 6)
        assert r["best_value"] == max(h["value"] for h in r["history"])
    top = max(trials, key=lambda r: r["best_value"])
    # the tables delta-rs wrote open in Spark's Delta too
    assert spark.read.format("delta").load(lake.path(L.METRICS_TUNE_TRIALS)).where(
        f"sweep_id = '{sweep}'").count() == 16
    stored = [r.asDict() for r in spark.read.format("delta")
              .load(lake.path(L.METRICS_BEST_CONFIGS)).collect() if r["sweep_id"] == sweep]
    assert len(stored) == 1 and stored[0]["trial_id"] == top["trial_id"] == best["trial_id"]
    stored = stored[0]
    params = json.loads(stored["params"])
    assert {k: v for k, v in json.loads(top["params"]).items()} == {
        k: params[k] for k in json.loads(top["params"])}
    assert params["als.max_iter"] == top["best_iteration"]
    assert stored["valid_value"] == pytest.approx(top["best_value"])

    # the refit trained on train + valid with the tuned confidence; its test value is its
    # metrics/evaluation row, and the baseline was refit the same way
    ev = [r for r in _read(lake, L.METRICS_EVALUATION)
          if r[S.RUN_ID] == stored["refit_run_id"] and r[S.METRIC] == "ndcg" and r[S.K] == 10]
    assert len(ev) == 1 and stored["test_value"] == pytest.approx(ev[0][S.VALUE])
    assert stored["baseline_test_value"] is not None
    # ... and the best config with uniform weights (the weights' own share of the gain)
    uni = [r for r in _read(lake, L.METRICS_EVALUATION)
           if r[S.RUN_ID] == f"{sweep}-uniform-weights-refit" and r[S.METRIC] == "ndcg"
           and r[S.K] == 10]
    assert len(uni) == 1 and stored["uniform_weights_test_value"] == pytest.approx(uni[0][S.VALUE])
    refit = {r[S.RUN_ID]: r for r in _read(lake, L.MODELS_RUNS)}[stored["refit_run_id"]]
    rp = json.loads(refit["params"])
    assert rp["split.fold_valid"] is True and rp["confidence.weights.cart"] == cart
    weighted = [b for b in S.CANONICAL_BEHAVIORS if params.get(f"confidence.weights.{b}", 1.0) > 0]
    rows = [r for r in _read(lake, L.GOLD_SPLITS)
            if r[S.PROTOCOL] == "stratified" and r[S.SPLIT] in ("train", "valid")]
    expected = sum(any((r.get(S.amount_col(b)) or 0) > 0 for b in weighted) for r in rows)
    assert dict(refit["counts"])["train_rows"] == expected

    # a rerun without --resume / --fresh is refused rather than overwriting the sweep
    with pytest.raises(ConfigError, match="already exists"):
        tune_run(cfg)
    # --from-best: the stored keys win over the file's, confidence rebuilt with them
    rec = fit_run(spark, cfg.with_(**{"run.from_best": True, "run.run_id": "from-best"}))
    assert rec.params["als.max_iter"] == params["als.max_iter"]
    assert rec.params["confidence.weights.cart"] == pytest.approx(cart)
    assert rec.params["confidence.weights.view"] == pytest.approx(view)
