"""The `reclake` CLI end to end: the demo pipeline in-process, spark-submit style entry, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from common import lake as L
from common.config import ConfigError, load_config
from common.lake import Lake
from jobs import cli

pytestmark = pytest.mark.spark


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for stage in cli.STAGES:
        assert stage in out


@pytest.mark.slow
def test_demo_end_to_end(spark, tmp_path: Path, capsys):
    lake_dir = tmp_path / "lake"
    rc = cli.main(["--lake", str(lake_dir), "--set", "spark.shuffle_partitions=2",
                   "--set", "generate.users=300", "--set", "generate.items=200",
                   "demo", "--events", "6000", "--out", str(tmp_path / "gen")])
    assert rc == 0
    printed = capsys.readouterr().out
    lake = Lake(str(lake_dir))
    for table in L.ALL_TABLES:
        if table in L.NOT_IN_DEMO:
            continue
        assert lake.exists(spark, table), table
        assert table in printed
    assert "deltalake" in printed
    audit = lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").first()
    # conservation against what was counted independently: the generated files' data lines and
    # the rows that landed in each table (not the audit's own sum)
    lines = sum(p.read_bytes().count(b"\n") - 1 for p in (tmp_path / "gen" / "csv").glob("*.csv"))
    assert audit.rows_in == lines == lake.read(spark, L.BRONZE_EVENTS).count()
    assert audit.rows_quarantined == lake.read(spark, L.QUARANTINE_EVENTS).count() > 0
    assert audit.rows_clean_new == lake.read(spark, L.SILVER_EVENTS).count()
    assert audit.rows_duplicate == lines - audit.rows_quarantined - audit.rows_clean_new > 0
    splits = lake.read(spark, L.GOLD_SPLITS)
    assert {r[0] for r in splits.select("protocol").distinct().collect()} == {
        "stratified", "temporal", "leave_last_out", "cold_items"}
    # re-running split for one protocol replaces its rows rather than appending
    before = splits.where(F.col("protocol") == "temporal").count()
    assert cli.run_stage("split", ["--lake", str(lake_dir), "--protocol", "temporal"]) == 0
    after = lake.read(spark, L.GOLD_SPLITS).where(F.col("protocol") == "temporal").count()
    assert after == before
    # the demo trained ALS, popularity and the three deep models and evaluated all five
    ev = lake.read(spark, L.METRICS_EVALUATION).where("metric = 'ndcg'").toPandas()
    ev = ev[~ev["run_id"].str.endswith("-refit")]  # the sweep's refits: below
    cold = ev[ev["target"] == "all/cold"].set_index("model")["value"]
    ev = ev[ev["target"] == "all"]
    assert sorted(ev["model"]) == ["als", "hybrid", "lightgcn", "ncf", "popularity", "random",
                                   "sasrec", "text"]
    assert ev["value"].between(0, 1).all()
    # the language model: on held-out items the generated titles' planted similarity carries
    # the tastes, so the text model's cold-item ranking beats a random one
    assert cold["text"] > 2 * cold["random"], cold.to_dict()
    assert "cold start, user_idx" in printed and "task:purchase: AUC" in printed
    # ... and swept ALS with Ray Tune: 4 trials, a leaderboard, the best config refit on test
    trials = lake.read(spark, L.METRICS_TUNE_TRIALS).where("sweep_id = 'demo-tune-als'")
    assert trials.count() == 4
    best = lake.read(spark, L.METRICS_BEST_CONFIGS).where("sweep_id = 'demo-tune-als'").first()
    assert 0 < best.valid_value < 1 and 0 < best.test_value < 1
    assert "best of demo-tune-als" in printed and "valid ndcg@10" in printed
    for model in ("ncf", "sasrec", "lightgcn"):
        assert f"demo-{model}" in printed
    # the demo is `reclake pipeline`: its per-stage lines, its final table, its state
    assert "reclake pipeline 'demo'" in printed and "9 stage(s) ran, 0 skipped" in printed
    assert lake.read(spark, L.AUDIT_PIPELINE).where("status = 'done'").count() == 9
    assert "ndcg" in printed and "popularity" in printed
    als_run = ev[ev["model"] == "als"]["run_id"].iloc[0]
    recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where(F.col("run_id") == als_run)
    assert recs.count() == recs.select("user_idx").distinct().count() * 10
    # evaluate from the CLI with another k and the published comparison
    assert cli.main(["--lake", str(lake_dir), "evaluate", "--run-id", als_run, "--k", "5,10",
                     "--compare-published"]) == 0
    out = capsys.readouterr().out
    assert "LightGCN" in out and "0.442" in out
    ks = lake.read(spark, L.METRICS_EVALUATION).where(F.col("run_id") == als_run)
    assert sorted(r[0] for r in ks.select("k").distinct().collect()) == [5, 10]
    # gold is readable without Spark through delta-rs, as the demo says
    from deltalake import DeltaTable

    pdf = DeltaTable(lake.path(L.GOLD_INTERACTIONS)).to_pandas()
    assert len(pdf) == lake.read(spark, L.GOLD_INTERACTIONS).count() and "confidence" in pdf


def _no_spark(monkeypatch):
    """Make starting Spark a test failure: these errors must come before it."""
    import common.spark

    def refuse(cfg):
        raise AssertionError("Spark was started")

    monkeypatch.setattr(common.spark, "get_spark", refuse)


@pytest.mark.parametrize("args, message", [
    (["--source-format", "nope", "--path", "x"], "unknown source format 'nope'"),
    (["--source-format", "taobao"], "--path is required"),
    (["--source-format", "taobao", "--path", "{missing}"], "no input files at"),
])
def test_ingest_bad_input_fails_before_spark(monkeypatch, tmp_path: Path, capsys, args, message):
    _no_spark(monkeypatch)
    args = [a.format(missing=tmp_path / "nope.csv") for a in args]
    assert cli.main(["--lake", str(tmp_path / "lake"), "ingest", *args]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("reclake ingest: ") and message in err
    assert cli.run_stage("ingest", ["--lake", str(tmp_path / "lake"), *args]) == 2


def test_global_flags_work_before_and_after_the_stage(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("split:\n  seed: 5\n")
    for argv in (
        ["--lake", "/L", "--config", str(cfg_file), "--master", "local[1]", "--verbose",
         "--set", "split.ratio=0.5", "split", "--protocol", "temporal"],
        ["split", "--lake", "/L", "--config", str(cfg_file), "--master", "local[1]",
         "--verbose", "--set", "split.ratio=0.5", "--protocol", "temporal"],
        ["--lake", "/elsewhere", "--set", "split.ratio=0.9", "split", "--lake", "/L",
         "--protocol", "temporal", "--set", "split.ratio=0.5", "--config", str(cfg_file),
         "--master", "local[1]", "--verbose"],
    ):
        _, ns = cli.parse(argv)
        cfg = cli.config_from_namespace(ns)
        assert (cfg.lake, cfg.spark.master, cfg.spark.verbose, cfg.split.seed, cfg.split.ratio,
                cfg.split.protocol) == ("/L", "local[1]", True, 5, 0.5, "temporal"), argv
    _, ns = cli.parse(["split"])
    cfg = cli.config_from_namespace(ns)
    assert (cfg.lake, cfg.spark.verbose) == ("./lake", False)


def test_help_lines_are_whole_sentences_and_metavars_read_well():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    flat = " ".join(out.split())
    assert "then a cold-start example." in flat  # the demo's line does not stop mid-sentence
    assert "skipping those whose inputs are unchanged." in flat
    assert "--config FILE" in out and "_CONFIG" not in out
    for stage in cli.STAGES:
        line = cli.first_sentence(__import__(cli.STAGES[stage], fromlist=["x"]).__doc__)
        assert line.endswith((".", ")")), (stage, line)
    assert cli.first_sentence("Run a and\nb. Then c.\n\nMore.") == "Run a and b."
    sub = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--lake PATH" in sub and "--source-format SOURCE_FORMAT" in sub and "INGEST." not in sub


def test_required_config_flag_is_shown_required_and_satisfied_by_config():
    p = cli.StageParser(prog="x")
    p.add_argument("--run-id", dest="run.run_id", default=None, required=True)
    p.add_argument_group("evaluation").add_argument("--k", dest="evaluate.k", default=None,
                                                    required=True)
    p.adopt_config_flags()
    usage = p.format_usage()
    assert "--run-id RUN_ID --k K" in usage and "[--run-id" not in usage
    cli._add_global_options(p)
    p.set_defaults(_required=cli._required(p))
    with pytest.raises(ConfigError, match=r"--run-id is required \(or set run.run_id"):
        cli.config_from_namespace(p.parse_args(["--k", "5"]))
    assert cli.config_from_namespace(p.parse_args(["--run-id", "r1"])).run.run_id == "r1"
    assert cli.config_from_namespace(
        p.parse_args(["--set", "run.run_id=r2"])).run.run_id == "r2"
    # ingest declares --path this way: required in its usage
    usage = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", "--help"],
                           capture_output=True, text=True, check=True).stdout.split("\n\n")[0]
    assert "--path PATH" in usage and "[--path" not in usage


def test_a_stage_exiting_with_a_message_is_one_error_line(capsys):
    import types

    def main(spark, cfg):
        raise SystemExit("fake: the thing is missing")

    stage = types.ModuleType("jobs.fake")
    stage.NEEDS_SPARK, stage.main = False, main
    assert cli.execute(stage, load_config()) == 2
    assert capsys.readouterr().err.strip() == "reclake fake: error: the thing is missing"


def test_stage_leaves_no_checkpoint_folder_and_prints_where_its_tables_are(
        spark, tmp_path: Path, capsys):
    lake_dir = tmp_path / "lake"
    data = tmp_path / "d.csv"
    data.write_text("user_id,item_id,behavior,value,ts,session_id,category_id\n"
                    "u,i,view,,2024-01-01T00:00:00Z,s,c\n")
    assert cli.main(["ingest", "--lake", str(lake_dir), "--source-format", "generic",
                     "--path", str(data)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("reclake ingest: done") and str(lake_dir) in out[-1]
    for table in ("bronze/events", "silver/events", "audit/batches"):
        assert table in out[-1]
    assert (lake_dir / "silver/events").is_dir()
    assert not (lake_dir / "_checkpoints").exists()
    # a stage that checkpoints: the folder exists while it runs, and is gone after
    from common.spark import stage_checkpoints

    cfg = load_config(values={"lake": str(lake_dir)})
    with stage_checkpoints(spark, cfg, "fit") as folder:
        df = spark.range(10)
        assert df.checkpoint().count() == 10
        assert Path(folder).is_dir() and any(Path(folder).rglob("*"))
    assert not Path(folder).exists() and not (lake_dir / "_checkpoints").exists()


@pytest.mark.slow
def test_cli_run_is_quiet_unless_verbose(tmp_path: Path):
    """A fresh process: no Ivy resolution, no log4j start-up, no WindowExec warnings; ends with
    the summary line. Spark starts once here, so this is the one subprocess run of a stage."""
    data = tmp_path / "d.csv"
    data.write_text("user_id,item_id,behavior,value,ts,session_id,category_id\n"
                    + "".join(f"u{k},i{k % 3},view,,2024-01-01T00:00:0{k}Z,s,c\n"
                              for k in range(5)))
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", "--lake",
                        str(tmp_path / "lake"), "--source-format", "generic", "--path",
                        str(data)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    both = r.stdout + r.stderr
    for noise in (":: resolving dependencies", "Ivy", "log4j", "WindowExec", "WARN Utils",
                  "incubator"):
        assert noise not in both, noise
    assert r.stdout.strip().splitlines()[-1].startswith("reclake ingest: done")
    assert not (tmp_path / "lake" / "_checkpoints").exists()


def test_reading_a_table_before_it_exists_names_the_stage(spark, tmp_path: Path, capsys):
    assert cli.main(["--lake", str(tmp_path / "lake"), "transform"]) == 2
    assert "silver/events" in capsys.readouterr().err
