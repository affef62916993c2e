"""Deployment folder: manifests parse and say what they should, submit.sh builds the right command.

Fast and Spark-free: YAML is only parsed, and submit.sh runs with DRY_RUN=1 or against a fake
spark-submit that records its arguments.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SUBMIT = DEPLOY / "spark" / "submit.sh"
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"

# deploy-relative path -> (apiVersion, kind) of each document, in order
SPARK_STAGES = ["ingest", "transform", "split", "als", "evaluate", "influence"]
SPARK_APPS = ["spark/k8s/spark-reclake-job.yaml",
              *[f"spark/k8s/stages/{s}.yaml" for s in SPARK_STAGES]]
RAY_JOBS = ["ray/kuberay-rayjob.yaml", "ray/kuberay-rayjob-tune.yaml"]
K8S_MANIFESTS = {
    **{rel: [("sparkoperator.k8s.io/v1beta2", "SparkApplication")] for rel in SPARK_APPS},
    "ray/kuberay-raycluster.yaml": [("ray.io/v1", "RayCluster")],
    **{rel: [("ray.io/v1", "RayJob")] for rel in RAY_JOBS},
}
RAY_LAUNCHER_CONFIGS = {"ray/cluster.yaml"}
RAY_RUNTIME_ENVS = {"ray/runtime-env.yaml"}

ALL_YAML = sorted(
    p.relative_to(DEPLOY).as_posix() for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext)
)


def _docs(rel: str) -> list:
    with open(DEPLOY / rel) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _one(rel: str) -> dict:
    docs = _docs(rel)
    assert len(docs) == 1, f"{rel}: expected one document, got {len(docs)}"
    return docs[0]


# --- YAML -------------------------------------------------------------------------------------


def test_expected_deploy_files_exist():
    for rel in [*K8S_MANIFESTS, *RAY_LAUNCHER_CONFIGS]:
        assert (DEPLOY / rel).is_file(), rel
    for rel in ["README.md", "spark/submit.sh", "spark/k8s/Dockerfile", "ray/Dockerfile"]:
        assert (DEPLOY / rel).is_file(), rel


@pytest.mark.parametrize("rel", ALL_YAML)
def test_yaml_parses_with_expected_kind(rel):
    docs = _docs(rel)
    assert docs, f"{rel} is empty"
    assert all(isinstance(d, dict) for d in docs), rel
    if rel in K8S_MANIFESTS:
        assert [(d.get("apiVersion"), d.get("kind")) for d in docs] == K8S_MANIFESTS[rel]
    elif rel in RAY_LAUNCHER_CONFIGS:
        (cfg,) = docs
        assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(cfg)
    elif rel in RAY_RUNTIME_ENVS:
        (env,) = docs
        assert env["working_dir"] == "." and ".venv" in env["excludes"] and ".git" in env["excludes"]
        assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())
    else:  # any other manifest must at least be a well-formed Kubernetes object
        for d in docs:
            assert d.get("apiVersion") and d.get("kind"), f"{rel}: missing apiVersion/kind"
            assert d.get("metadata", {}).get("name"), f"{rel}: missing metadata.name"


@pytest.mark.parametrize("rel", SPARK_APPS)
def test_spark_application(rel):
    app = _one(rel)
    spec = app["spec"]
    stage = Path(rel).stem if "/stages/" in rel else "ingest"  # the template is the ingest stage
    assert app["metadata"]["name"] == f"reclake-{stage}"
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["image"] == "ghcr.io/your-org/reclake:0.1.0"
    assert spec["sparkVersion"].startswith("4.2")
    assert spec["mainApplicationFile"] == f"local:///opt/reclake/jobs/{stage}.py"

    args = spec["arguments"]
    assert all(isinstance(a, str) for a in args), "arguments must be strings"
    assert args[args.index("--lake") + 1] == "s3a://your-bucket/lake"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert "spark.delta_pip=false" in sets
    if stage == "ingest":
        assert "--source-format" in args and "--path" in args

    # the Delta and S3 JARs are baked into the image: nothing resolved at start-up
    assert "deps" not in spec and "spark.jars.packages" not in spec["sparkConf"]
    conf = spec["sparkConf"]
    assert all(isinstance(v, str) for v in conf.values()), "sparkConf values must be strings"
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == (
        "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    )
    # S3 credentials come from a secret, in both driver and executors
    for role in ("driver", "executor"):
        refs = {k for k in conf if k.startswith(f"spark.kubernetes.{role}.secretKeyRef.")}
        assert {
            f"spark.kubernetes.{role}.secretKeyRef.AWS_ACCESS_KEY_ID",
            f"spark.kubernetes.{role}.secretKeyRef.AWS_SECRET_ACCESS_KEY",
        } <= refs
    for role in ("driver", "executor"):
        assert spec[role]["cores"] >= 1 and spec[role]["memory"]
    assert spec["executor"]["instances"] >= 1
    assert spec["driver"]["serviceAccount"]


def test_spark_stage_manifests_are_rendered_from_the_template():
    import sys

    r = subprocess.run([sys.executable, str(DEPLOY / "spark/k8s/render.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rendered = sorted(p.stem for p in (DEPLOY / "spark/k8s/stages").glob("*.yaml"))
    assert rendered == sorted(SPARK_STAGES)
    # a changed template is noticed
    app = _one("spark/k8s/stages/split.yaml")
    assert app["spec"]["arguments"][-2:] == ["--protocol", "temporal"]


def _gpu_workers(cluster_spec: dict) -> list[dict]:
    out = []
    for group in cluster_spec["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            if c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == 1:
                out.append(group)
    return out


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"].startswith("2.")
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    (head_c,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_c.get("resources", {}).get("limits", {})
    assert {p["containerPort"] for p in head_c["ports"]} >= {6379, 8265}
    gpu = _gpu_workers(spec)
    assert gpu, "no worker group with nvidia.com/gpu: 1"
    for g in gpu:
        assert g["groupName"] and "rayStartParams" in g
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_kuberay_raycluster():
    rc = _one("ray/kuberay-raycluster.yaml")
    assert rc["metadata"]["name"]
    _check_ray_cluster_spec(rc["spec"])


@pytest.mark.parametrize("rel", RAY_JOBS)
def test_kuberay_rayjob(rel):
    job = _one(rel)
    spec = job["spec"]
    entry = shlex.split(spec["entrypoint"])
    stage = "tune" if rel.endswith("-tune.yaml") else "train"
    assert entry[:2] == ["reclake", stage]
    assert entry[entry.index("--lake") + 1].startswith("s3a://")
    assert "--use-gpu" in entry or "train.use_gpu=true" in entry
    assert spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    _parses(None, entry[1:])  # the command exists in the CLI and every flag parses
    if stage == "tune":  # the space file it names is one the image has (configs/ is copied in)
        space = entry[entry.index("--space") + 1]
        assert space.startswith("/home/ray/reclake/configs/")
        assert (ROOT / "configs" / space.removeprefix("/home/ray/reclake/configs/")).is_file()
        sets = dict(entry[i + 1].split("=", 1) for i, a in enumerate(entry) if a == "--set")
        concurrent = int(entry[entry.index("--max-concurrent") + 1])
        gpus = sum(g["maxReplicas"] for g in _gpu_workers(spec["rayClusterSpec"]))
        assert concurrent * int(sets["train.num_workers"]) <= gpus  # the trials fit the GPUs


def test_ray_cluster_launcher_config():
    cfg = _one("ray/cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # CPU head
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert any(w["node_config"]["InstanceType"].startswith(("g", "p")) for w in workers)
    assert all(w["max_workers"] >= w.get("min_workers", 0) for w in workers)
    assert any("pip install" in c and "[ray]" in c for c in cfg["setup_commands"])


def test_ray_cluster_launcher_config_matches_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray not installed")
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler/ray-schema.json"
    if not schema_path.is_file():
        pytest.skip("this ray has no autoscaler/ray-schema.json")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [e.message for e in validator.iter_errors(_one("ray/cluster.yaml"))]
    assert errors == []


def test_dockerfiles():
    spark = (DEPLOY / "spark/k8s/Dockerfile").read_text()
    assert "ARG SPARK_TAG=4.2" in spark
    # apache/spark carries Java; the Delta and S3 JARs are resolved at build time into Spark's jars/
    assert "FROM ${SPARK_IMAGE}:${SPARK_TAG}" in spark and "ARG SPARK_IMAGE=apache/spark" in spark
    assert "pip install" in spark and "/opt/reclake/jobs" in spark
    assert f"ARG DELTA_PACKAGE={DELTA_PACKAGE}" in spark and "hadoop-aws:3.5.0" in spark
    assert "/opt/spark/jars/" in spark
    ray = (DEPLOY / "ray/Dockerfile").read_text()
    assert "FROM rayproject/ray:" in ray and "[ray,text]" in ray
    assert "openjdk-17-jre-headless" in ray and "JAVA_HOME=" in ray
    assert f"ARG DELTA_PACKAGE={DELTA_PACKAGE}" in ray and "pyspark.__file__" in ray
    # the Ray image's Ray is the manifests' rayVersion
    tag = re.search(r"ARG RAY_TAG=([\d.]+)-", ray).group(1)
    for rel in ["ray/kuberay-raycluster.yaml", *RAY_JOBS]:
        doc = _one(rel)["spec"]
        assert doc.get("rayVersion", doc.get("rayClusterSpec", {}).get("rayVersion")) == tag, rel


def test_delta_jars_baked_into_sparks_jars_folder_are_detected(tmp_path, monkeypatch):
    from common import spark as factory

    monkeypatch.setenv("SPARK_HOME", str(tmp_path))
    assert not factory.delta_jars_installed()  # this venv's pyspark has none: pip resolves them
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    assert factory.delta_jars_installed()


# --- submit.sh --------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DRY_RUN",
            "SPARK_MASTER",
            "DELTA_VERSION",
            "EXTRA_PACKAGES",
            "SPARK_SUBMIT_ARGS",
            "PYTHON",
            "PROFILE",
        }
    }
    env["SPARK_SUBMIT"] = "spark-submit"  # no lookup of SPARK_HOME / PATH / .venv
    env.update(extra)
    return env


def _run(script: Path, *args: str, cwd: Path = ROOT, **env: str):
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_submit_command(tokens: list[str], stage: str, flags: list[str],
                           profile: str = "local", partitions: str = "4") -> None:
    # DRY_RUN prefixes the environment the script exports (SPARK_HOME=..., PYSPARK_...=...)
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]
    assert tokens[0].endswith("spark-submit")
    script = next(i for i, t in enumerate(tokens) if t.endswith(f"jobs/{stage}.py"))
    before, after = tokens[:script], tokens[script + 1 :]
    # spark-submit options come before the application, stage flags after it; the master comes
    # from the profile (local by default), --master only when SPARK_MASTER asks
    assert before[before.index("--properties-file") + 1].endswith(
        f"deploy/spark/profiles/{profile}.conf")
    assert "--master" not in before
    assert before[before.index("--packages") + 1] == DELTA_PACKAGE
    assert before[before.index("--py-files") + 1].endswith("build/reclake-deps.zip")
    confs = [before[i + 1] for i, t in enumerate(before) if t == "--conf"]
    assert "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in confs
    assert (
        "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog" in confs
    )
    assert after[:4] == ["--set", "spark.delta_pip=false",
                         "--set", f"spark.shuffle_partitions={partitions}"]
    assert after[4:] == flags


def test_submit_sh_syntax_and_executable():
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True)
    assert SUBMIT.stat().st_mode & stat.S_IXUSR, "submit.sh must be executable"


def _repo_stage() -> str | None:
    names = sorted(p.stem for p in (ROOT / "jobs").glob("*.py"))
    names = [n for n in names if n not in ("__init__", "cli") and not n.startswith("_")]
    return "ingest" if "ingest" in names else (names[0] if names else None)


def test_submit_dry_run_in_repo():
    stage = _repo_stage()
    if stage is None:
        pytest.skip("no stage module under jobs/ yet")
    flags = ["--source-format", "taobao", "--path", "x"]
    r = _run(SUBMIT, stage, *flags, DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    assert f"jobs/{stage}.py" in r.stdout and "--py-files" in r.stdout
    assert DELTA_PACKAGE in r.stdout
    assert "--source-format taobao --path x" in r.stdout
    _assert_submit_command(shlex.split(r.stdout), stage, flags)


@pytest.fixture()
def fake_repo(tmp_path: Path) -> Path:
    """A minimal checkout: submit.sh plus common/ and jobs/ with an `ingest` stage."""
    (tmp_path / "deploy/spark").mkdir(parents=True)
    shutil.copy2(SUBMIT, tmp_path / "deploy/spark/submit.sh")
    shutil.copy2(DEPLOY / "dist.py", tmp_path / "deploy/dist.py")
    shutil.copytree(DEPLOY / "spark/profiles", tmp_path / "deploy/spark/profiles")
    for rel in [
        "common/__init__.py",
        "common/config.py",
        "jobs/__init__.py",
        "jobs/cli.py",
        "jobs/ingest.py",
        "jobs/_private.py",
        "jobs/sources/__init__.py",
        "jobs/sources/taobao.py",
        "jobs/__pycache__/cli.cpython-311.pyc",
        "jobs/helper.py",  # a module under jobs/ that is not an entry point
        "raytrain/__init__.py",
        "raytrain/train.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    (tmp_path / "jobs/ingest.py").write_text(
        'if __name__ == "__main__":\n    sys.exit(run_stage("ingest"))\n')
    return tmp_path


@pytest.mark.parametrize("how", ["before", "after"])
def test_submit_dry_run_flag_is_like_the_env_var(fake_repo: Path, how: str):
    script = fake_repo / "deploy/spark/submit.sh"
    flags = ["--source-format", "taobao", "--path", "x"]
    args = ["--dry-run", "ingest", *flags] if how == "before" else ["ingest", "--dry-run", *flags]
    r = _run(script, *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _run(script, "ingest", *flags, DRY_RUN="1").stdout
    _assert_submit_command(shlex.split(r.stdout), "ingest", flags)
    assert not (fake_repo / "build").exists(), "--dry-run must not build anything"


def test_submit_dry_run_prints_command(fake_repo: Path, tmp_path: Path):
    script = fake_repo / "deploy/spark/submit.sh"
    flags = ["--source-format", "taobao", "--path", "x"]
    r = _run(script, "ingest", *flags, cwd=tmp_path, DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    tokens = shlex.split(r.stdout)
    _assert_submit_command(tokens, "ingest", flags)
    assert f"{fake_repo}/jobs/ingest.py" in tokens
    assert f"{fake_repo}/build/reclake-deps.zip" in tokens
    assert not (fake_repo / "build").exists(), "DRY_RUN must not build anything"


def test_submit_env_overrides(fake_repo: Path):
    r = _run(
        fake_repo / "deploy/spark/submit.sh",
        "ingest",
        "--lake",
        "/tmp/l",
        DRY_RUN="1",
        SPARK_MASTER="spark://head:7077",
        DELTA_VERSION="9.9.9",
        EXTRA_PACKAGES="org.apache.hadoop:hadoop-aws:3.5.0",
        SPARK_SUBMIT_ARGS="--driver-memory 8g  --conf spark.executor.memory=4g",
    )
    assert r.returncode == 0, r.stderr
    tokens = shlex.split(r.stdout)
    script = next(i for i, t in enumerate(tokens) if t.endswith("jobs/ingest.py"))
    assert tokens[tokens.index("--master") + 1] == "spark://head:7077"
    assert tokens[tokens.index("--packages") + 1] == (
        "io.delta:delta-spark_4.2_2.13:9.9.9,org.apache.hadoop:hadoop-aws:3.5.0"
    )
    assert tokens[script - 4 : script] == [
        "--driver-memory",
        "8g",
        "--conf",
        "spark.executor.memory=4g",
    ]
    assert tokens[script + 1 :] == ["--set", "spark.delta_pip=false",
                                    "--set", "spark.shuffle_partitions=4", "--lake", "/tmp/l"]


def test_submit_runs_spark_submit_with_deps_zip(fake_repo: Path, tmp_path: Path):
    record = tmp_path / "argv"
    fake = tmp_path / "bin/spark-submit"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$ARGV_OUT"\n')
    fake.chmod(0o755)
    r = _run(
        fake_repo / "deploy/spark/submit.sh",
        "ingest",
        "--path",
        "a dir/with spaces",
        cwd=tmp_path,
        SPARK_SUBMIT=str(fake),
        ARGV_OUT=str(record),
    )
    assert r.returncode == 0, r.stderr
    argv = record.read_text().split("\0")[:-1]
    assert argv[-6:] == ["--set", "spark.delta_pip=false", "--set", "spark.shuffle_partitions=4",
                         "--path", "a dir/with spaces"]
    deps = Path(argv[argv.index("--py-files") + 1])
    assert deps == fake_repo / "build/reclake-deps.zip"
    names = set(zipfile.ZipFile(deps).namelist())
    assert {
        "common/__init__.py",
        "jobs/cli.py",
        "jobs/ingest.py",
        "jobs/sources/taobao.py",
        "raytrain/train.py",
    } <= names
    assert {"common/", "jobs/", "jobs/sources/", "raytrain/"} <= names  # zipimport needs directory entries
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith("deploy/") for n in names)


@pytest.mark.parametrize(
    "stage", ["nosuchstage", "cli", "__init__", "_private", "../jobs/ingest", "helper", "sources"]
)
def test_submit_unknown_stage_fails_with_usage(fake_repo: Path, stage: str):
    r = _run(fake_repo / "deploy/spark/submit.sh", stage, "--path", "x", DRY_RUN="1")
    assert r.returncode != 0
    assert "usage:" in r.stderr
    assert f"unknown stage '{stage}': not a spark-submit entry point" in r.stderr
    assert "valid stages: ingest" in r.stderr  # lists the stages that do exist, only those
    assert "helper" not in r.stderr.replace(f"'{stage}'", "")
    assert r.stdout == ""


def test_submit_unknown_stage_in_repo():
    r = _run(SUBMIT, "nosuchstage", DRY_RUN="1")
    assert r.returncode != 0 and "usage:" in r.stderr and r.stdout == ""


def test_submit_without_stage_prints_usage(fake_repo: Path):
    r = _run(fake_repo / "deploy/spark/submit.sh")
    assert r.returncode != 0 and "usage:" in r.stderr
    r = _run(fake_repo / "deploy/spark/submit.sh", "--help")
    assert r.returncode == 0 and "usage:" in r.stderr


# --- what the deploy folder names exists ------------------------------------------------------
# Every stage, module and flag that a script, manifest or the deploy README names must exist:
# stages are spark-submit entry points of the CLI, modules import, flags parse.


def _submit_stages() -> list[str]:
    r = _run(SUBMIT, "--help")
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("stages:")]
    return line.split(":", 1)[1].split()


def _entry_point_stage(rel_script: str) -> str:
    """``jobs/ingest.py`` -> ``ingest``, checked to be a CLI stage whose file hands over to it."""
    m = re.fullmatch(r"jobs/([a-z_]+)\.py", rel_script)
    assert m, f"{rel_script} is not a jobs/STAGE.py script"
    stage = m.group(1)
    path = ROOT / rel_script
    assert path.is_file(), f"{rel_script} does not exist"
    from jobs import cli

    assert stage in cli.STAGES, f"{stage} is not a reclake stage {sorted(cli.STAGES)}"
    assert re.search(rf"run_stage\([\"']{stage}[\"']\)", path.read_text()), (
        f"{rel_script} is not a spark-submit entry point (no run_stage('{stage}'))")
    return stage


def _parses(stage: str | None, args: list[str]) -> None:
    """The flags parse, and give a valid config: `stage` None means a `reclake ...` line."""
    from jobs import cli

    try:
        if stage is None:
            _, ns = cli.parse(args)
        else:
            ns = cli.stage_parser(stage).parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{'reclake' if stage is None else stage} {shlex.join(args)}: flags do not "
                    f"parse (exit {e.code})")
    cli.config_from_namespace(ns)


def test_submit_lists_exactly_the_cli_entry_points():
    from jobs import cli

    listed = _submit_stages()
    assert "ingest" in listed and "cli" not in listed
    for stage in listed:
        assert _entry_point_stage(f"jobs/{stage}.py") == stage
    # and every CLI stage with a jobs/STAGE.py entry point is listed (packages such as
    # jobs/generate/ run through `reclake` only)
    for stage, module in cli.STAGES.items():
        path = ROOT / (module.replace(".", "/") + ".py")
        if path.is_file() and module == f"jobs.{stage}":
            assert stage in listed, stage


@pytest.mark.parametrize("rel", SPARK_APPS)
def test_spark_application_runs_an_entry_point_with_flags_that_parse(rel):
    spec = _one(rel)["spec"]
    main = spec["mainApplicationFile"]
    assert main.startswith("local:///opt/reclake/")
    stage = _entry_point_stage(main.removeprefix("local:///opt/reclake/"))
    _parses(stage, spec["arguments"])


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every `deploy/spark/submit.sh ...` and `reclake ...` command written in the
    deploy folder (README, script and manifest comments), continuation lines joined."""
    out = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix not in (".md", ".sh", ".yaml", ".yml", ""):
            continue
        text = re.sub(r"\\\n\s*#?\s*", " ", path.read_text())
        for line in text.splitlines():
            line = line.strip().lstrip("#").strip().split("  #")[0]
            try:
                argv = shlex.split(line)
            except ValueError:
                continue  # prose with an apostrophe
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
                argv = argv[1:]  # SPARK_MASTER=... deploy/spark/submit.sh ...
            if not argv or argv[0] not in ("deploy/spark/submit.sh", "reclake") or len(argv) < 2:
                continue
            if argv[0] == "reclake" and not any(a.startswith("--") for a in argv[1:]):
                continue  # prose ("reclake image for ..."), not a command with flags
            if any(a.startswith("[") or a in ("STAGE", "...") or a.endswith("...") for a in argv):
                continue  # a usage line with placeholders, not a command
            out.append((path.relative_to(ROOT).as_posix(), argv))
    return out


def test_documented_commands_name_real_stages_and_flags():
    commands = _documented_commands()
    submits = [argv for _, argv in commands if argv[0] == "deploy/spark/submit.sh"]
    assert len(submits) >= 5, commands  # the README's examples were found
    for where, argv in commands:
        args = [a for a in argv[1:] if a != "--dry-run"]
        while args and args[0] == "--profile":  # submit.sh's own option, checked to exist
            assert (DEPLOY / f"spark/profiles/{args[1]}.conf").is_file(), f"{where}: {args[1]}"
            args = args[2:]
        if argv[0] == "reclake":
            _parses(None, args)
        else:
            stage, flags = args[0], args[1:]
            assert stage in _submit_stages(), f"{where}: {shlex.join(argv)}: no stage {stage}"
            _parses(stage, flags)


def _python_modules() -> list[tuple[str, str]]:
    """(file, module) of every `python -m MODULE` in the deploy folder (pip excepted)."""
    found = set()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for mod in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", path.read_text()):
                if mod != "pip":
                    found.add((path.relative_to(ROOT).as_posix(), mod))
    return sorted(found)


# modules a manifest may name before they exist (strict: the marker must go once they land)
_NOT_YET: dict[str, str] = {}


@pytest.mark.parametrize("where, module", [
    pytest.param(w, m, marks=pytest.mark.xfail(strict=True, reason=_NOT_YET[m]))
    if m in _NOT_YET else (w, m)
    for w, m in _python_modules()
])
def test_python_modules_named_in_deploy_exist(where: str, module: str):
    assert importlib.util.find_spec(module.split(".")[0]) is not None, f"{where}: {module}"
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"


# --- profiles and make dist -------------------------------------------------------------------


def _properties(path: Path) -> dict[str, str]:
    """A spark-defaults style file as spark-submit reads it (key, whitespace or '=', value)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = re.split(r"(\s*=\s*|\s+)", line, maxsplit=1)
        assert key.startswith("spark."), f"{path.name}: {key} is not a Spark property"
        assert key not in out, f"{path.name}: {key} twice"
        out[key] = value.strip()
    return out


def test_profiles_are_properties_files_with_a_master():
    profiles = {p.stem: _properties(p) for p in (DEPLOY / "spark/profiles").glob("*.conf")}
    assert set(profiles) >= {"local", "yarn", "k8s"}
    assert profiles["local"]["spark.master"] == "local[2]"
    assert profiles["yarn"]["spark.master"] == "yarn"
    assert profiles["yarn"]["spark.submit.deployMode"] == "cluster"
    k8s = profiles["k8s"]
    assert k8s["spark.master"].startswith("k8s://https://")
    assert k8s["spark.reclake.appRoot"] == "local:///opt/reclake"
    assert k8s["spark.kubernetes.container.image"]
    for name, props in profiles.items():
        assert int(props["spark.sql.shuffle.partitions"]) >= 1, name


def test_submit_k8s_profile_runs_the_images_copy(fake_repo: Path):
    r = _run(fake_repo / "deploy/spark/submit.sh", "--profile", "k8s", "ingest", "--path",
             "s3a://b/x", DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    tokens = shlex.split(r.stdout.replace("\n", " "))
    script = tokens.index("local:///opt/reclake/jobs/ingest.py")
    before, after = tokens[:script], tokens[script + 1:]
    assert before[before.index("--properties-file") + 1] == str(
        fake_repo / "deploy/spark/profiles/k8s.conf")
    assert "--py-files" not in before and "--packages" not in before  # baked into the image
    assert after == ["--set", "spark.delta_pip=false", "--set", "spark.shuffle_partitions=64",
                     "--path", "s3a://b/x"]
    assert not (fake_repo / "build").exists()


def test_submit_profile_file_and_master_override(fake_repo: Path, tmp_path: Path):
    conf = tmp_path / "mine.conf"
    conf.write_text("# mine\nspark.master=spark://h:7077\nspark.sql.shuffle.partitions = 12\n")
    r = _run(fake_repo / "deploy/spark/submit.sh", "--dry-run", "ingest", "--profile", str(conf),
             "--path", "x")
    assert r.returncode == 0, r.stderr
    tokens = shlex.split(r.stdout)
    assert tokens[tokens.index("--properties-file") + 1] == str(conf)
    assert "--master" not in tokens
    assert tokens[-4:] == ["--set", "spark.shuffle_partitions=12", "--path", "x"]
    r = _run(fake_repo / "deploy/spark/submit.sh", "ingest", DRY_RUN="1", PROFILE="yarn",
             SPARK_MASTER="yarn")
    tokens = shlex.split(r.stdout)
    assert tokens[tokens.index("--properties-file") + 1].endswith("profiles/yarn.conf")
    assert tokens[tokens.index("--master") + 1] == "yarn"


def test_submit_unknown_profile_fails_clearly(fake_repo: Path):
    r = _run(fake_repo / "deploy/spark/submit.sh", "--profile", "nope", "ingest", DRY_RUN="1")
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown profile 'nope'" in r.stderr and "local" in r.stderr
    assert "Traceback" not in r.stderr


def test_make_dist_builds_wheel_and_importable_pyfiles(tmp_path: Path):
    import sys

    r = subprocess.run([sys.executable, str(DEPLOY / "dist.py"), "--dist", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("reclake-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for mod in ("common/config.py", "jobs/cli.py", "jobs/ingest.py", "raytrain/train.py"):
        assert mod in names, mod
    assert not any(n.startswith("tests/") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
    pyfiles = tmp_path / "reclake-pyfiles.zip"
    zipped = set(zipfile.ZipFile(pyfiles).namelist())
    assert {"common/config.py", "jobs/sources/base.py", "raytrain/train.py"} <= zipped
    assert not any("__pycache__" in n or n.startswith("tests/") for n in zipped)
    # the zip alone is enough to import the stages (what --py-files gives an executor)
    code = ("import jobs.ingest, jobs.transform, raytrain.train, common.config;"
            "print(jobs.ingest.__file__)")
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                        f"{str(pyfiles)!r}); {code}"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(pyfiles)), r.stdout


# --- the scale profiles (docs/scaling.md) ---------------------------------------------------------

SCALE_PROFILES = {"yarn-1b-etl": ("ingest", "transform", "split"), "yarn-1b-als": ("fit",)}


def _bytes(size: str) -> int:
    """A JVM size ("12g", "512m") in bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].isalpha() else int(size)


@pytest.mark.parametrize("path", sorted((ROOT / "configs/scale").glob("*.yaml")), ids=lambda p: p.stem)
def test_scale_configs_load_and_match_their_profiles(path: Path):
    from common.config import load_config

    cfg = load_config(path)  # the real loader: an unknown or mistyped key fails here
    assert cfg.spark.master is None and not cfg.spark.delta_pip  # spark-submit decides
    for name in SCALE_PROFILES:
        props = _properties(DEPLOY / f"spark/profiles/{name}.conf")
        assert props["spark.master"] == "yarn", name
        assert int(props["spark.sql.shuffle.partitions"]) == cfg.spark.shuffle_partitions, name
        assert props["spark.driver.memory"] == cfg.spark.driver_memory, name
    als = _properties(DEPLOY / "spark/profiles/yarn-1b-als.conf")
    cores = int(als["spark.executor.instances"]) * int(als["spark.executor.cores"])
    assert cfg.als.num_user_blocks == cfg.als.num_item_blocks == cores  # one block per core
    # the top-K's Python memory per task (deploy/README.md) times the tasks of one executor
    r = cfg.recommend
    per_task = r.user_batch * r.item_block * 12 + r.broadcast_max_mb * 2**20
    assert int(als["spark.executor.cores"]) * per_task < _bytes(
        als["spark.executor.memoryOverhead"])
    assert cfg.train.use_gpu and cfg.train.num_workers >= 1 and cfg.train.address == "auto"


@pytest.mark.parametrize("profile, stage", [(p, s) for p, ss in SCALE_PROFILES.items() for s in ss])
def test_submit_accepts_the_scale_profiles(profile: str, stage: str):
    from common.config import load_config

    cfg = load_config(ROOT / "configs/scale/1b-per-day.yaml")
    flags = ["--config", "configs/scale/1b-per-day.yaml"]
    if stage == "ingest":
        flags += ["--path", "s3a://your-bucket/raw/dt=2024-01-01/*.csv"]
    r = _run(SUBMIT, "--profile", profile, stage, *flags, DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    _assert_submit_command(shlex.split(r.stdout), stage, flags, profile=profile,
                           partitions=str(cfg.spark.shuffle_partitions))
    _parses(stage, flags)  # the stage's own parser takes the flags


# --- the pipeline as an Airflow DAG and as a chain of cluster jobs ---------------------------------

DAG_FILE = DEPLOY / "airflow" / "reclake_dag.py"
CHAIN = DEPLOY / "pipeline" / "run-on-cluster.sh"
CONFIG_FILE = "configs/default.yaml"


def _check_pipeline_command(argv: list[str], stage: str, where: str) -> str:
    """One stage's command: ``submit.sh --profile P pipeline ... --only STAGE`` or ``ray job
    submit ... -- reclake ... pipeline --only STAGE``; the flags parse. Returns the runner."""
    if argv[0] == "deploy/spark/submit.sh":
        assert argv[1] == "--profile" and (DEPLOY / f"spark/profiles/{argv[2]}.conf").is_file()
        assert argv[3] == "pipeline", f"{where}: {shlex.join(argv)}"
        flags = argv[4:]
        _parses("pipeline", flags)
        runner = "spark"
    else:
        assert argv[:3] == ["ray", "job", "submit"], f"{where}: {shlex.join(argv)}"
        env = argv[argv.index("--runtime-env") + 1]
        assert (ROOT / env).is_file(), env
        flags = argv[argv.index("--") + 1:]
        assert flags[0] == "reclake" and "pipeline" in flags
        _parses(None, flags[1:])
        runner = "ray"
    assert flags[flags.index("--only") + 1] == stage, f"{where}: {shlex.join(argv)}"
    return runner


def _load_dag(monkeypatch, airflow: bool):
    """deploy/airflow/reclake_dag.py imported; with ``airflow``, against a stand-in Airflow that
    records the operators and the chain the DAG builds."""
    import sys
    import types

    built: dict = {"tasks": [], "chain": None, "dag": None}
    if airflow:
        class DAG:
            def __init__(self, **kw):
                built["dag"] = kw

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class BashOperator:
            def __init__(self, *, task_id, bash_command, cwd=None):
                self.task_id, self.bash_command, self.cwd = task_id, bash_command, cwd
                built["tasks"].append(self)

        def chain(*tasks):
            built["chain"] = [t.task_id for t in tasks]

        mods = {"airflow": types.ModuleType("airflow"),
                "airflow.models": types.ModuleType("airflow.models"),
                "airflow.models.baseoperator": types.ModuleType("airflow.models.baseoperator"),
                "airflow.providers": types.ModuleType("airflow.providers"),
                "airflow.providers.standard": types.ModuleType("airflow.providers.standard"),
                "airflow.providers.standard.operators":
                    types.ModuleType("airflow.providers.standard.operators"),
                "airflow.providers.standard.operators.bash":
                    types.ModuleType("airflow.providers.standard.operators.bash")}
        mods["airflow"].DAG = DAG
        mods["airflow.models.baseoperator"].chain = chain
        mods["airflow.providers.standard.operators.bash"].BashOperator = BashOperator
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("reclake_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, built


def test_airflow_dag_runs_the_pipeline_stages_in_order(monkeypatch):
    from common.config import PIPELINE_STAGES
    from jobs import pipeline

    module, _ = _load_dag(monkeypatch, airflow=False)  # importable without Airflow
    assert [s for s, _ in module.STAGES] == list(PIPELINE_STAGES)
    ray_stages = {"train", "tune", "embed"}
    for stage, runner in module.STAGES:
        argv = shlex.split(module.command(stage, runner, CONFIG_FILE, "http://head:8265"))
        assert _check_pipeline_command(argv, stage, "reclake_dag.py") == runner
        assert (runner == "ray") == (stage in ray_stages)
    assert [s.name for s in pipeline.STAGES] == list(PIPELINE_STAGES)

    module, built = _load_dag(monkeypatch, airflow=True)
    assert built["dag"]["dag_id"] == "reclake_pipeline" and built["dag"]["max_active_runs"] == 1
    assert built["chain"] == list(PIPELINE_STAGES)  # one task per stage, each after the last
    for task in built["tasks"]:
        assert "{{ var.value.reclake_config }}" in task.bash_command
        assert task.bash_command.endswith(f"--only {task.task_id}") and task.cwd


def test_cluster_chain_runs_the_pipeline_stages_in_order():
    from common.config import PIPELINE_STAGES

    r = subprocess.run(["bash", str(CHAIN)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=_env(DRY_RUN="1", CONFIG=CONFIG_FILE, PROFILE="yarn",
                                RAY_ADDRESS="http://head:8265"))
    assert r.returncode == 0, r.stderr
    commands = [shlex.split(ln[2:]) for ln in r.stderr.splitlines() if ln.startswith("+ ")]
    assert len(commands) == len(PIPELINE_STAGES)
    for stage, argv in zip(PIPELINE_STAGES, commands, strict=True):
        _check_pipeline_command(argv, stage, "run-on-cluster.sh")
    # an unknown profile stops the chain before the first stage (set -e, submit.sh's check)
    r = subprocess.run(["bash", str(CHAIN)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=_env(PROFILE="nope", CONFIG=CONFIG_FILE, SPARK_SUBMIT="/bin/false"))
    assert r.returncode != 0 and "+ deploy/spark/submit.sh --profile nope" in r.stderr
    assert "ray job submit" not in r.stderr


def test_readme_shows_the_pipeline_files_as_they_are():
    """README's DAG and chain blocks (marked with the file they come from) are the files' lines."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- from (deploy/\S+) -->\s*```\w*\n(.*?)```", readme, re.S)
    assert {f for f, _ in blocks} >= {"deploy/airflow/reclake_dag.py",
                                      "deploy/pipeline/run-on-cluster.sh"}
    for rel, block in blocks:
        text = (ROOT / rel).read_text()
        for line in block.splitlines():
            if line.strip() and line.strip() != "...":
                assert line in text, f"README block from {rel}: {line!r} is not in the file"
