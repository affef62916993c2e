"""Ingest: validation known answers, exact conservation on generated dirty data, idempotent
re-runs, incremental batches and stable indices."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.config import ConfigError
from common.errors import InputError
from common.lake import Lake
from jobs import generate, ingest
from jobs.sources import retailrocket, taobao
from jobs.sources.base import SourceSpec

pytestmark = pytest.mark.spark

HEADER = "user_id,item_id,behavior,value,ts,session_id,category_id\n"


def raw_df(spark, rows):
    cols = list(S.RAW_FIELDS) + [S.N_FIELDS, S.RAW]
    return spark.createDataFrame(
        [tuple(r.get(c) for c in S.RAW_FIELDS) + (r.get(S.N_FIELDS, 8), r[S.RAW]) for r in rows],
        ", ".join(f"{c} {'int' if c == S.N_FIELDS else 'string'}" for c in cols),
    )


def test_standardize_reason_codes_known_answers(spark, make_cfg):
    ok = {S.USER_ID: "u", S.ITEM_ID: "i", S.BEHAVIOR: "view", S.TS: "2024-01-01T00:00:00Z"}
    cases = {
        "clean": ({}, []),
        "no_user": ({S.USER_ID: None}, [S.MISSING_USER]),
        "no_item": ({S.ITEM_ID: None}, [S.MISSING_ITEM]),
        "bad_ts": ({S.TS: "yesterday"}, [S.BAD_TS]),
        "old_ts": ({S.TS: "1970-01-02T00:00:00Z"}, [S.TS_OUT_OF_RANGE]),
        "future_ts": ({S.TS: "2150-01-01T00:00:00Z"}, [S.TS_OUT_OF_RANGE]),
        "huge_epoch": ({S.TS: "99999999999999999999"}, [S.TS_OUT_OF_RANGE]),
        "teleport": ({S.BEHAVIOR: "teleport"}, [S.UNKNOWN_BEHAVIOR]),
        "no_behavior": ({S.BEHAVIOR: None}, [S.UNKNOWN_BEHAVIOR]),
        "abc_value": ({S.VALUE: "abc"}, [S.BAD_VALUE]),
        "nan_value": ({S.VALUE: "NaN"}, [S.BAD_VALUE]),
        "rating_9": ({S.BEHAVIOR: "rating", S.VALUE: "9"}, [S.VALUE_OUT_OF_RANGE]),
        "rating_none": ({S.BEHAVIOR: "rating"}, [S.BAD_VALUE]),
        "neg_price": ({S.BEHAVIOR: "purchase", S.VALUE: "-3"}, [S.VALUE_OUT_OF_RANGE]),
        "fields": ({S.N_FIELDS: 6}, [S.MALFORMED]),
        "encoding": ({S.ITEM_ID: "i\ufffd"}, [S.BAD_ENCODING]),
        "two": ({S.USER_ID: None, S.BEHAVIOR: "teleport"}, [S.MISSING_USER, S.UNKNOWN_BEHAVIOR]),
    }
    rows = []
    for name, (patch, _) in cases.items():
        r = {**ok, **patch, S.RAW: name}
        if name == "encoding":
            r[S.RAW] = "encoding\ufffd"
        rows.append(r)
    spec = SourceSpec("t", expected_fields=8, ts_format="auto")
    out = ingest.standardize_events(raw_df(spark, rows), spec=spec, cfg=make_cfg())
    got = {r[S.RAW].rstrip("\ufffd"): r for r in out.collect()}
    for name, (_, reasons) in cases.items():
        assert got[name][S.REASONS] == reasons, name
    clean = got["clean"]
    assert clean[S.EVENT_ID] and len(clean[S.EVENT_ID]) == 32
    assert str(clean[S.EVENT_DATE]) == "2024-01-01"


def test_event_id_is_deterministic_and_content_based(spark, make_cfg):
    base = {S.USER_ID: "u", S.ITEM_ID: "i", S.BEHAVIOR: "view", S.TS: "1700000000", S.RAW: "a"}
    rows = [base, {**base, S.RAW: "b"}, {**base, S.ITEM_ID: "j", S.RAW: "c"},
            {**base, S.EVENT_ID: "given", S.RAW: "d"}]
    spec = SourceSpec("t", expected_fields=8, ts_format="auto")
    out = {r[S.RAW]: r[S.EVENT_ID] for r in
           ingest.standardize_events(raw_df(spark, rows), spec=spec, cfg=make_cfg()).collect()}
    assert out["a"] == out["b"] != out["c"]
    assert out["d"] == "given"


def test_next_index_and_assignment(spark):
    existing = spark.createDataFrame([("a", 0)], "user_id string, user_idx int")
    assert ingest.next_index(existing, S.USER_IDX) == 1  # a lone index 0 is taken
    assert ingest.next_index(existing.limit(0), S.USER_IDX) == 0
    ids = spark.createDataFrame([("c",), ("a",), ("b",), ("c",)], "user_id string")
    new = ingest.assign_new_indices(ids, existing, id_col=S.USER_ID, idx_col=S.USER_IDX, start=1)
    assert sorted(tuple(r) for r in new.collect()) == [("b", 1), ("c", 2)]


def _ingest(spark, cfg, path, fmt="generic", **more):
    c = cfg.with_(**{"ingest.source_format": fmt, "ingest.path": str(path),
                     **{f"ingest.{k}": v for k, v in more.items()}})
    return ingest.main(spark, c)


def test_conservation_on_generated_dirty_data(spark, make_cfg, tmp_path: Path):
    cfg = make_cfg(**{"generate.events": 4000, "generate.users": 200, "generate.items": 300,
                      "generate.dirty_rate": 0.03, "generate.out": str(tmp_path / "gen"),
                      "generate.formats": ["csv"]})
    generate.main(None, cfg)
    manifest = json.loads((tmp_path / "gen" / "csv" / "_manifest.json").read_text())
    assert set(manifest["dirty_by_kind"]) == set(S.REASON_CODES)  # every bad-row kind present
    audit = _ingest(spark, cfg, tmp_path / "gen" / "csv")
    lake = Lake(cfg.lake)
    assert audit["rows_in"] == manifest["rows"]
    assert audit["rows_in"] == (audit["rows_clean_new"] + audit["rows_duplicate"]
                                + audit["rows_quarantined"])
    assert audit["rows_quarantined"] == manifest["dirty"]
    assert audit["rows_duplicate"] == manifest["duplicates"]
    assert audit["rows_clean_new"] == manifest["clean_rows"]
    # the tables agree with the audit, and nothing is lost
    assert lake.read(spark, L.BRONZE_EVENTS).count() == manifest["rows"]
    assert lake.read(spark, L.SILVER_EVENTS).count() == manifest["clean_rows"]
    q = lake.read(spark, L.QUARANTINE_EVENTS)
    assert q.count() == manifest["dirty"]
    firsts = {r[0]: r[1] for r in q.groupBy(F.col(S.REASONS)[0]).count().collect()}
    for kind, n in manifest["dirty_by_kind"].items():
        with_kind = q.where(F.array_contains(S.REASONS, kind)).count()
        assert with_kind >= n, kind  # each injected row carries its reason (maybe more)
    assert sum(firsts.values()) == manifest["dirty"]
    assert q.where(F.col(S.RAW).isNull()).count() == 0  # raw content kept
    stored = lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").first()
    assert stored.rows_in == audit["rows_in"] and stored.details["new_users"] > 0


def _write_day(path: Path, day: int, users: list[str], items: list[str]):
    lines = [HEADER]
    for k, (u, i) in enumerate(zip(users, items, strict=True)):
        lines.append(f"{u},{i},view,,2024-01-{day:02d}T10:{k:02d}:00Z,s{day}{u},c1\n")
    path.write_text("".join(lines))


def test_rerun_is_noop_and_force_replaces(spark, make_cfg, tmp_path: Path):
    cfg = make_cfg()
    p = tmp_path / "d1.csv"
    _write_day(p, 1, ["a", "b", "c"], ["x", "y", "x"])
    first = _ingest(spark, cfg, p)
    lake = Lake(cfg.lake)
    versions = {t: lake.history_version(spark, t) for t in (L.SILVER_EVENTS, L.BRONZE_EVENTS)}
    assert _ingest(spark, cfg, p) is None  # same batch: nothing to do
    assert {t: lake.history_version(spark, t) for t in versions} == versions
    forced = _ingest(spark, cfg, p, force=True)
    for k in ("rows_in", "rows_clean_new", "rows_duplicate", "rows_quarantined"):
        assert forced[k] == first[k], k
    assert lake.read(spark, L.SILVER_EVENTS).count() == 3
    assert lake.read(spark, L.BRONZE_EVENTS).count() == 3
    assert lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").count() == 1


def test_incremental_days_and_index_stability(spark, make_cfg, tmp_path: Path):
    cfg = make_cfg()
    lake = Lake(cfg.lake)
    d1, d2 = tmp_path / "d1.csv", tmp_path / "d2.csv"
    _write_day(d1, 1, ["b", "a", "c"], ["y", "x", "x"])
    _write_day(d2, 2, ["a", "d"], ["z", "y"])
    _ingest(spark, cfg, d1)
    idx1 = {r.user_id: r.user_idx for r in lake.read(spark, L.SILVER_USER_INDEX).collect()}
    items1 = {r.item_id: r.item_idx for r in lake.read(spark, L.SILVER_ITEM_INDEX).collect()}
    assert idx1 == {"a": 0, "b": 1, "c": 2} and items1 == {"x": 0, "y": 1}
    a2 = _ingest(spark, cfg, d2)
    assert a2["rows_clean_new"] == 2 and a2["details"]["new_users"] == 1
    silver = lake.read(spark, L.SILVER_EVENTS)
    assert silver.count() == 5
    assert {str(r[0]) for r in silver.select(S.EVENT_DATE).distinct().collect()} == {
        "2024-01-01", "2024-01-02"}
    idx2 = {r.user_id: r.user_idx for r in lake.read(spark, L.SILVER_USER_INDEX).collect()}
    items2 = {r.item_id: r.item_idx for r in lake.read(spark, L.SILVER_ITEM_INDEX).collect()}
    assert idx2 == {**idx1, "d": 3}  # old ids keep their index, new ones are appended
    assert items2 == {**items1, "z": 2}
    # day 1 again under another batch id: every row is a duplicate, nothing new
    again = _ingest(spark, cfg, d1, batch_id="day1-again")
    assert (again["rows_clean_new"], again["rows_duplicate"]) == (0, 3)
    assert lake.read(spark, L.SILVER_EVENTS).count() == 5


@pytest.mark.slow
@pytest.mark.parametrize("fmt, source_format, extra", [
    ("taobao", "taobao", {}),
    ("retailrocket", "retailrocket", {}),
    ("jsonl", "generic", {"ingest.generic.format": "jsonl"}),
    ("parquet", "generic", {"ingest.generic.format": "parquet"}),
])
def test_conservation_in_every_generated_format(spark, make_cfg, tmp_path: Path, fmt,
                                                source_format, extra):
    cfg = make_cfg(**{"generate.events": 3000, "generate.users": 150, "generate.items": 200,
                      "generate.dirty_rate": 0.03, "generate.out": str(tmp_path / "gen"),
                      "generate.formats": [fmt], **extra})
    generate.main(None, cfg)
    manifest = json.loads((tmp_path / "gen" / fmt / "_manifest.json").read_text())
    audit = _ingest(spark, cfg, tmp_path / "gen" / fmt, fmt=source_format)
    assert audit["rows_in"] == manifest["rows"]
    assert audit["rows_quarantined"] == manifest["dirty"]
    assert audit["rows_duplicate"] == manifest["duplicates"]
    assert audit["rows_clean_new"] == manifest["clean_rows"]
    silver = Lake(cfg.lake).read(spark, L.SILVER_EVENTS)
    got = {r[0]: r[1] for r in silver.groupBy(S.BEHAVIOR).count().collect()}
    # the format's own behaviour words, mapped the way its reader maps them
    mapping = {"taobao": taobao.BEHAVIORS, "retailrocket": retailrocket.BEHAVIORS}.get(fmt, {})
    expected = Counter()
    for word, n in manifest["source_behaviors"].items():
        expected[mapping.get(word, word)] += n
    assert got == {b: n for b, n in expected.items() if n}


def test_preflight_needs_no_spark(make_cfg, tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown source format 'nope'"):
        ingest.preflight(make_cfg(**{"ingest.source_format": "nope", "ingest.path": "x"}))
    with pytest.raises(ConfigError, match="--path is required"):
        ingest.preflight(make_cfg())
    with pytest.raises(FileNotFoundError, match="no input files"):
        ingest.preflight(make_cfg(**{"ingest.path": str(tmp_path / "nope.csv")}))
    # globs and URIs are left to Hadoop's listing
    ingest.preflight(make_cfg(**{"ingest.path": str(tmp_path / "*.csv")}))
    ingest.preflight(make_cfg(**{"ingest.path": "s3a://bucket/raw/"}))


def test_empty_input_warns_and_fail_on_empty_makes_it_an_error(spark, make_cfg, tmp_path: Path,
                                                               caplog, capsys):
    cfg = make_cfg()
    p = tmp_path / "empty.csv"
    p.write_text(HEADER)
    with caplog.at_level("WARNING", logger="reclake"):
        audit = _ingest(spark, cfg, p)
    assert (audit["rows_in"], audit["rows_clean_new"]) == (0, 0)
    assert "the input has no rows" in caplog.text and "fail_on_empty" in caplog.text
    assert capsys.readouterr().out.strip().startswith("reclake ingest: done")
    with pytest.raises(InputError, match="the input has no rows"):
        _ingest(spark, cfg, p, batch_id="empty-2", fail_on_empty=True)
    # the batch is recorded, so a re-run finds it done: under fail_on_empty still an error
    with pytest.raises(InputError, match="already ingested"):
        _ingest(spark, cfg, p, batch_id="empty-2", fail_on_empty=True)
    assert _ingest(spark, cfg, p, batch_id="empty-2") is None


def test_all_rows_quarantined_warns_or_fails(spark, make_cfg, tmp_path: Path, caplog):
    cfg = make_cfg()
    p = tmp_path / "bad.csv"
    p.write_text(HEADER + "u1,i1,teleport,,2024-01-01T00:00:00Z,s,c\n"
                 "u2,i2,view,,not a time,s,c\n")
    with caplog.at_level("WARNING", logger="reclake"):
        audit = _ingest(spark, cfg, p)
    assert (audit["rows_in"], audit["rows_quarantined"], audit["rows_clean_new"]) == (2, 2, 0)
    assert "every one of its 2 rows was quarantined" in caplog.text
    assert S.UNKNOWN_BEHAVIOR in caplog.text and S.BAD_TS in caplog.text
    with pytest.raises(InputError, match="every one of its 2 rows was quarantined"):
        _ingest(spark, cfg, p, batch_id="bad-2", fail_on_empty=True)
    # a batch of duplicates only is not empty: its rows are in silver already
    good = tmp_path / "good.csv"
    _write_day(good, 1, ["a"], ["x"])
    _ingest(spark, cfg, good, fail_on_empty=True)
    again = _ingest(spark, cfg, good, batch_id="good-again", fail_on_empty=True)
    assert (again["rows_duplicate"], again["rows_clean_new"]) == (1, 0)
