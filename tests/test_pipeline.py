"""`reclake pipeline`: stages in order, each skipped when its inputs' versions and its config are
unchanged, resumed at the stage that failed, rerun downstream of a change."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from common import lake as L
from common.config import ConfigError
from common.lake import Lake
from jobs import cli, pipeline

HEADER = "user_id,item_id,behavior,value,ts,session_id,category_id"
SPARK_ONLY = {"pipeline.skip": ["train", "tune", "embed"]}


def _write_batch(path: Path, batch: int, users: int = 30, items: int = 20, n: int = 400) -> None:
    rng = random.Random(batch)
    rows = []
    for i in range(n):
        u = (i * 7 + batch * 3) % users  # every user has events
        it = (u % 4) * 5 + rng.randrange(items // 2)  # four taste groups over shared items
        it %= items
        beh = ("view", "view", "click", "cart", "purchase")[i % 5]
        rows.append(f"u{u},i{it},{beh},,2024-01-{1 + (i % 28):02d}T10:{i % 60:02d}:00Z,s{u},c{it % 4}")
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")


def _status(summary: list[dict]) -> dict[str, str]:
    return {r["stage"]: r["status"] for r in summary}


@pytest.fixture
def pipe_cfg(make_cfg, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_batch(raw / "b0.csv", 0)
    return make_cfg(**{"ingest.source_format": "generic", "ingest.path": str(raw),
                       "spark.shuffle_partitions": 2, "als.rank": 4, "als.max_iter": 3,
                       "als.num_user_blocks": 2, "als.num_item_blocks": 2,
                       "influence.bootstrap": 10, **SPARK_ONLY}), raw


def test_input_version_is_what_the_upstream_stage_left():
    """evaluate reads gold/recommendations as als wrote it (v3) though train wrote v5 after it;
    influence, after both, reads v5; a table changed outside the pipeline counts as it is now."""
    records = {"als": {"done": {"outputs": {L.GOLD_RECOMMENDATIONS: 3, L.MODELS_RUNS: 3}}},
               "train": {"done": {"outputs": {L.GOLD_RECOMMENDATIONS: 5, L.MODELS_RUNS: 4}}}}
    current = {L.GOLD_RECOMMENDATIONS: 5, L.GOLD_SPLITS: 2, L.MODELS_RUNS: 4,
               L.MODELS_ALS_USER_FACTORS: 1, L.MODELS_ALS_ITEM_FACTORS: 1}
    cfg = None  # the table lists of these stages do not depend on the config
    ev = pipeline.input_versions(pipeline.BY_NAME["evaluate"], cfg, current.get, records)
    assert ev == {L.GOLD_RECOMMENDATIONS: 3, L.GOLD_SPLITS: 2, L.MODELS_RUNS: 3}
    inf = pipeline.input_versions(pipeline.BY_NAME["influence"], cfg, current.get, records)
    assert inf[L.GOLD_RECOMMENDATIONS] == 5 and inf[L.MODELS_RUNS] == 4
    current[L.GOLD_RECOMMENDATIONS] = 6  # someone else wrote it (reclake forget, a manual fit)
    ev = pipeline.input_versions(pipeline.BY_NAME["evaluate"], cfg, current.get, records)
    assert ev[L.GOLD_RECOMMENDATIONS] == 6


def test_fingerprint_follows_the_stage_config_only(make_cfg):
    als = pipeline.BY_NAME["als"]
    base = make_cfg()
    fp = pipeline.fingerprint(als, base, {L.GOLD_SPLITS: 1})
    assert pipeline.fingerprint(als, base.with_(**{"als.rank": 7}), {L.GOLD_SPLITS: 1}) != fp
    assert pipeline.fingerprint(als, base, {L.GOLD_SPLITS: 2}) != fp
    # another stage's section, or a key that changes how (not what) a stage runs: same
    assert pipeline.fingerprint(als, base.with_(**{"split.seed": 1}), {L.GOLD_SPLITS: 1}) == fp
    train = pipeline.BY_NAME["train"]
    t = pipeline.fingerprint(train, base, {})
    assert pipeline.fingerprint(train, base.with_(**{"train.num_cpus": 1}), {}) == t
    assert pipeline.fingerprint(train, base.with_(**{"train.epochs": 1}), {}) != t


def test_stage_lists_are_checked_before_anything_runs(make_cfg, capsys):
    with pytest.raises(ConfigError, match="pipeline.skip: unknown stage.*trian"):
        make_cfg(**{"pipeline.skip": ["trian"]})
    rc = cli.main(["--lake", "/nonexistent", "pipeline", "--only", "ingset"])
    assert rc == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unknown stage(s) ingset" in err and "Traceback" not in err
    assert [s.name for s in pipeline.selected(make_cfg(**{"pipeline.only": ["als", "split"]}))] \
        == ["split", "als"]


def test_tune_without_a_valid_part_is_skipped_saying_why(pipe_cfg):
    cfg, _ = pipe_cfg
    ctx = pipeline.Context(spark=None, cfg=cfg, lake=Lake(cfg.lake))
    assert "no valid part" in pipeline._tune_unavailable(ctx)
    ok = cfg.with_(**{"split.valid_ratio": 0.05, "split.valid_from": "train"})
    assert pipeline._tune_unavailable(pipeline.Context(None, ok, Lake(cfg.lake))) is None


@pytest.mark.slow
def test_pipeline_runs_skips_reruns_downstream_and_resumes(spark, pipe_cfg, capsys, monkeypatch):
    cfg, raw = pipe_cfg
    lake = Lake(cfg.lake)
    first = pipeline.run_pipeline(spark, cfg)
    out = capsys.readouterr().out
    assert _status(first) == {"ingest": "done", "transform": "done", "split": "done",
                              "als": "done", "evaluate": "done", "influence": "done"}
    # per-stage summary and final table: rows from Delta's commit metrics, versions, seconds
    by = {r["stage"]: r for r in first}
    assert by["ingest"]["rows"] >= 400 and by["transform"]["rows"] > 0 and by["als"]["rows"] > 0
    assert by["ingest"]["outputs"][L.SILVER_EVENTS] == 0
    assert "== pipeline 4/6 als: done in" in out and "6 stage(s) ran, 0 skipped" in out
    assert "gold/recommendations v0" in out
    als_recs = lake.read(spark, L.GOLD_RECOMMENDATIONS).where("run_id = 'default-als'")
    recs = als_recs.count()
    assert als_recs.select("user_idx").distinct().count() == 30 and recs > 30
    state = lake.read(spark, L.AUDIT_PIPELINE).where("status = 'done'").count()
    assert state == 6

    # nothing changed: every stage skipped, saying which inputs it compared
    again = pipeline.run_pipeline(spark, cfg)
    out = capsys.readouterr().out
    assert set(_status(again).values()) == {"skipped"}
    assert "== pipeline 2/6 transform: skipped, inputs unchanged (silver/events v0" in out
    assert lake.read(spark, L.GOLD_RECOMMENDATIONS).where("run_id = 'default-als'").count() == recs

    # a changed ALS setting reruns als and what reads its output, nothing upstream
    ranked = pipeline.run_pipeline(spark, cfg.with_(**{"als.rank": 3}))
    assert _status(ranked) == {"ingest": "skipped", "transform": "skipped", "split": "skipped",
                               "als": "done", "evaluate": "done", "influence": "done"}
    assert lake.read(spark, L.GOLD_RECOMMENDATIONS).where("run_id = 'default-als'").count() == recs

    # a failure resumes at the failed stage: the stages before it are not redone
    cfg3 = cfg.with_(**{"als.rank": 3, "influence.top_n": 3})
    calls = []

    def boom(ctx):
        calls.append(1)
        raise RuntimeError("influence worker lost")

    stages = tuple(s if s.name != "influence" else
                   pipeline.Stage(s.name, boom, s.inputs, s.outputs, s.sections)
                   for s in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    with pytest.raises(RuntimeError, match="worker lost"):
        pipeline.run_pipeline(spark, cfg3)
    out = capsys.readouterr().out
    assert "influence: FAILED" in out and "rerun the same command to resume" in out
    failed = lake.read(spark, L.AUDIT_PIPELINE).where("status = 'failed'").first()
    assert failed.stage == "influence" and "worker lost" in failed.reason
    monkeypatch.undo()
    resumed = pipeline.run_pipeline(spark, cfg3)
    assert _status(resumed)["influence"] == "done"
    assert {s for s, st in _status(resumed).items() if st == "done"} == {"influence"}

    # a new input file: ingest and everything downstream run again
    _write_batch(raw / "b1.csv", 1, users=34)
    grown = pipeline.run_pipeline(spark, cfg3)
    assert set(_status(grown).values()) == {"done"}
    users = lake.read(spark, L.GOLD_RECOMMENDATIONS).where("run_id = 'default-als'") \
        .select("user_idx").distinct().count()
    assert users == 34
    ingest_row = {r["stage"]: r for r in grown}["ingest"]
    assert json.loads(json.dumps(ingest_row["inputs"]))["ingest.batch"]

    # --force reruns one stage although nothing changed; --only runs just the named one
    forced = pipeline.run_pipeline(spark, cfg3.with_(**{"pipeline.force": ["split"],
                                                        "pipeline.only": ["split", "als"]}))
    assert _status(forced) == {"split": "done", "als": "done"}
