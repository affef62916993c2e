"""Real submissions on this machine: spark-submit (pip's pyspark, ``--master local[2]`` through the
local profile) of the Spark stages via ``deploy/spark/submit.sh``, and ``reclake train`` /
``reclake tune`` as Ray jobs through the Jobs API of a ``ray start`` head, as the README's
"Running on a cluster" commands do.

Slow (each spark-submit starts a JVM and resolves Delta's JARs through Ivy; the Ray head takes
seconds to start): kept in CI.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import lake as L
from common.config import load_config
from common.lake import Lake

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "deploy" / "spark" / "submit.sh"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _submit(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_MASTER", "PROFILE", "DRY_RUN", "SPARK_SUBMIT_ARGS", "PYSPARK_PYTHON",
                        "PYSPARK_DRIVER_PYTHON")}
    r = subprocess.run(["bash", str(SUBMIT), *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"submit.sh {' '.join(args)}: rc {r.returncode}\n{r.stderr[-4000:]}"
    return r


def _data_lines(folder: Path) -> int:
    """The generated csv files' data lines, counted here (header excluded), not by the job."""
    return sum(p.read_bytes().count(b"\n") - 1 for p in folder.glob("*.csv"))


@pytest.fixture(scope="module")
def submitted_lake(tmp_path_factory):
    """Generated events -> ingest, transform, split, als, each one real spark-submit."""
    from jobs import generate

    root = tmp_path_factory.mktemp("submitted")
    data, lake = root / "data", root / "lake"
    generate.main(None, load_config(values={
        "generate.out": str(data), "generate.users": 200, "generate.items": 120,
        "generate.events": 6000, "generate.formats": ["csv"], "generate.dirty_rate": 0.03}))
    common = ["--lake", str(lake), "--set", "spark.shuffle_partitions=2"]
    t0 = time.perf_counter()
    timings = {}
    for stage, flags in [
        ("ingest", ["--source-format", "generic", "--path", str(data / "csv")]),
        ("transform", []),
        ("split", ["--protocol", "stratified", "--valid-ratio", "0.1"]),
        ("als", ["--run-id", "submitted-als", "--rank", "8", "--max-iter", "3"]),
    ]:
        t = time.perf_counter()
        _submit(stage, *common, *flags)
        timings[stage] = round(time.perf_counter() - t, 1)
    print(f"\nspark-submit stages (s): {timings}, total {time.perf_counter() - t0:.0f}")
    return {"root": root, "data": data, "lake": lake}


def test_spark_submit_runs_the_spark_stages_against_a_lake(submitted_lake, spark):
    from pyspark.sql import functions as F

    lake = Lake(str(submitted_lake["lake"]))
    lines = _data_lines(submitted_lake["data"] / "csv")
    (audit,) = lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").collect()
    bronze = lake.read(spark, L.BRONZE_EVENTS).count()
    silver = lake.read(spark, L.SILVER_EVENTS).count()
    quarantine = lake.read(spark, L.QUARANTINE_EVENTS).count()
    assert audit.rows_in == lines == bronze
    assert audit.rows_clean_new == silver > 0 and audit.rows_quarantined == quarantine > 0
    assert audit.rows_clean_new + audit.rows_duplicate + audit.rows_quarantined == lines
    # transform: one interaction per (user, item) of silver
    pairs = lake.read(spark, L.SILVER_EVENTS).select("user_id", "item_id").distinct().count()
    assert lake.read(spark, L.GOLD_INTERACTIONS).count() == pairs
    splits = lake.read(spark, L.GOLD_SPLITS).where(F.col("protocol") == "stratified")
    parts = {r["split"]: r["count"] for r in splits.groupBy("split").count().collect()}
    assert sum(parts.values()) == pairs and parts["train"] > parts["test"] > 0
    assert parts.get("valid", 0) > 0
    # als: factors and k recommendations per user, recorded as a run
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col("run_id") == "submitted-als")
    per_user = recs.groupBy("user_idx").count()
    k = load_config().recommend.k
    assert per_user.agg(F.min("count"), F.max("count")).first() == (k, k)
    assert per_user.count() == lake.read(spark, L.SILVER_USER_INDEX).count()
    run = lake.read(spark, L.MODELS_RUNS).where(F.col("run_id") == "submitted-als").first()
    assert run is not None and run["model"] == "als"
    assert lake.read(spark, L.MODELS_ALS_USER_FACTORS).count() > 0


# --- Ray Jobs ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` on free ports with its own temp dir; always stopped afterwards."""
    pytest.importorskip("ray.dashboard")
    ray_bin = VENV_BIN / "ray"
    if not ray_bin.exists():
        pytest.skip("no ray CLI next to this interpreter")
    tmp = tmp_path_factory.mktemp("rayhead")
    # the socket paths under --temp-dir must stay short (AF_UNIX limit 107 bytes)
    temp_dir = Path(f"/tmp/rl-{os.getpid()}")
    port, dash = _free_port(), _free_port()
    # token authentication, as Ray (2.59+) wants for every cluster: the head, the job drivers it
    # starts and the submitting client share one token
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", **auth}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    start = [str(ray_bin), "start", "--head", "--num-cpus=2", "--num-gpus=0",
             f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
             "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    r = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}", "env": env,
               "auth": auth, "tmp": tmp}
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_job(head: dict, submission_id: str, entrypoint: list[str], timeout_s: int = 900) -> str:
    """``ray job submit`` (the README's command, in a shell of its own that holds the cluster's
    token) and then ``ray job status``: the job's logs, once it SUCCEEDED."""
    ray_bin = str(VENV_BIN / "ray")
    cmd = [ray_bin, "job", "submit", "--address", head["address"],
           "--submission-id", submission_id,
           "--runtime-env", "deploy/ray/runtime-env.yaml", "--", *entrypoint]
    r = subprocess.run(cmd, cwd=ROOT, env=head["env"], capture_output=True, text=True,
                       timeout=timeout_s)
    status = subprocess.run([ray_bin, "job", "status", "--address", head["address"],
                             submission_id], cwd=ROOT, env=head["env"], capture_output=True,
                            text=True, timeout=120)
    said = status.stdout + status.stderr  # the ray CLI logs to stderr
    assert re.search(rf"job '{submission_id}' succeeded|status for job '{submission_id}': "
                     rf"succeeded", said, re.I), (
        f"{' '.join(entrypoint)}: rc {r.returncode}\n{said[-2000:]}\n"
        f"{r.stdout[-6000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def test_ray_jobs_run_train_and_tune_on_a_ray_start_head(submitted_lake, ray_head, spark):
    """`reclake train` and a 2-trial `reclake tune` submitted with `ray job submit` to the Jobs API
    of a `ray start` head, the checkout as working_dir (deploy/ray/runtime-env.yaml)."""
    from pyspark.sql import functions as F

    lake = str(submitted_lake["lake"])
    small = ["--set", "train.batch_size=64", "--set", "train.eval_k=5", "--set", "ncf.dim_gmf=4",
             "--set", "ncf.dim_mlp=4", "--set", "ncf.layers=[8,4]", "--set", "train.num_cpus=2"]
    t0 = time.perf_counter()
    logs = _ray_job(ray_head, "reclake-train-1", [
        "reclake", "train", "--lake", lake, "--model", "ncf", "--protocol", "stratified",
        "--run-id", "rayjob-ncf", "--epochs", "2", "--workers", "1", *small])
    t_train = time.perf_counter() - t0
    assert "rayjob-ncf" in logs
    space = submitted_lake["root"] / "space.yaml"
    space.write_text("space:\n  train.lr: {loguniform: [0.005, 0.05]}\n")
    t0 = time.perf_counter()
    _ray_job(ray_head, "reclake-tune-1", [
        "reclake", "tune", "--lake", lake, "--model", "ncf", "--protocol", "stratified",
        "--trials", "2", "--space", str(space), "--name", "rayjob-sweep", "--no-refit",
        "--set", "train.epochs=2", "--set", "tune.grace_period=2", *small])
    t_tune = time.perf_counter() - t0
    print(f"\nRay jobs: train {t_train:.0f}s, 2-trial tune {t_tune:.0f}s")

    lk = Lake(lake)
    recs = lk.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col("run_id") == "rayjob-ncf")
    k = load_config().recommend.k
    per_user = recs.groupBy("user_idx").count().agg(F.min("count"), F.max("count"),
                                                    F.count("*")).first()
    assert per_user[0] == per_user[1] == k and per_user[2] > 0
    run = lk.read(spark, L.MODELS_RUNS).where(F.col("run_id") == "rayjob-ncf").first()
    assert run is not None and run["model"] == "ncf"
    trials = lk.read(spark, L.METRICS_TUNE_TRIALS).where(F.col("sweep_id") == "rayjob-sweep")
    statuses = [r["status"] for r in trials.collect()]
    assert len(statuses) == 2 and set(statuses) <= {"completed", "stopped"}
