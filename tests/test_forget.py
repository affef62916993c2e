"""`reclake forget`: a user leaves every table and every readable version of it; the others stay
as they were; the index entry is a tombstone whose idx is never given out again; later ingests of
the same file leave the user out unless ``ingest.allow_suppressed``."""

from __future__ import annotations

import hashlib
import random

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import lake as L
from common import schema as S
from common.config import load_config
from common.lake import Lake, VersionNotReadable
from jobs import cli, fit, forget, influence, ingest, split, transform

HEADER = "user_id,item_id,behavior,value,ts,session_id,category_id"
TARGET = "zz.gone@example.com"  # sorts last: it gets the highest user_idx, max + 1 would reuse it
OTHERS = [f"u{u:02d}" for u in range(15)]
RUN_ID = "forget-als"


def _csv(path, users, *, seed=3, extra=()):
    rng = random.Random(seed)
    lines = [HEADER]
    for n, u in enumerate(users):
        for e in range(10):
            i = rng.randrange(12)
            b = rng.choice(["view", "view", "click", "cart", "purchase"])
            lines.append(f"{u},i{i:02d},{b},,2024-01-{1 + e:02d}T10:{n:02d}:00Z,s{n}-{e // 5},"
                         f"c{i % 3}")
    lines.extend(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def _target_lines() -> list[str]:
    return [f"{TARGET},i01,teleport,,2024-01-05T10:00:00Z,sx,c1",  # quarantined
            f"{TARGET} ,i03,view,,2024-01-09T11:00:00Z,sx,c0",  # its twin below, other raw
            f"{TARGET},i03,view,,2024-01-09T11:00:00Z,sx,c0",
            "u01,i02,teleport,,2024-01-05T10:00:00Z,s1,c2"]  # another user's quarantined line


def _user_idx_cols(table: str, df) -> list:
    """Conditions that a row belongs to user_idx ``x`` (a function of x), per table."""
    if table == L.MODELS_ALS_USER_FACTORS:
        return [lambda x: F.col(S.IDX) == x]
    if table.endswith("_embeddings") and "kind" in df.columns:
        return [lambda x: (F.col("kind") == "user") & (F.col(S.IDX) == x)]
    if S.USER_IDX in df.columns:
        if table == L.SILVER_USER_INDEX:  # the tombstone keeps the idx, nothing else of the user
            return [lambda x: (F.col(S.USER_IDX) == x)
                    & ~F.col(S.USER_ID).startswith(S.TOMBSTONE_PREFIX)]
        return [lambda x: F.col(S.USER_IDX) == x]
    return []


def _holds(table: str, df, tidx: int) -> int:
    """Rows of ``df`` holding the target: its id in any string column, or its user_idx."""
    strings = [F.col(f"`{f.name}`").contains(TARGET) for f in df.schema.fields
               if isinstance(f.dataType, T.StringType)]
    conds = strings + [c(tidx) for c in _user_idx_cols(table, df)]
    if not conds:
        return 0
    any_ = conds[0]
    for c in conds[1:]:
        any_ = any_ | c
    return df.where(F.coalesce(any_, F.lit(False))).count()


def _versions(spark, lake: Lake, table: str) -> list[int]:
    from delta.tables import DeltaTable

    hist = DeltaTable.forPath(spark, lake.path(table)).history().select("version").collect()
    return sorted(r[0] for r in hist)


def _others(table: str, df, tidx: int):
    """The rows that are not the target's, as sorted strings (the tombstone left out)."""
    if table in (L.BRONZE_EVENTS, L.QUARANTINE_EVENTS):
        df = df.where(~F.col(S.RAW).contains(TARGET))
    elif table == L.SILVER_EVENTS:
        df = df.where(F.col(S.USER_ID) != TARGET)
    else:
        for c in _user_idx_cols(table, df):
            df = df.where(~c(tidx))
        if table == L.SILVER_USER_INDEX:
            df = df.where(F.col(S.USER_IDX) != tidx).drop(S.FORGOTTEN_AT)
    cols = sorted(df.columns)
    return sorted(tuple(str(r[c]) for c in cols) for r in df.collect())


@pytest.fixture(scope="module")
def forgotten(spark, tmp_path_factory):
    """A lake (ingest, transform, split, ALS fit, influence, and NeuMF-style embeddings rows),
    what it held before, and the result of forgetting TARGET."""
    root = tmp_path_factory.mktemp("forget")
    raw = _csv(root / "events.csv", [*OTHERS, TARGET], extra=_target_lines())
    cfg = load_config(values={
        "lake": str(root / "lake"), "spark.shuffle_partitions": 2,
        "ingest.source_format": "generic", "ingest.path": str(raw),
        "als.rank": 3, "als.max_iter": 3, "als.num_user_blocks": 2, "als.num_item_blocks": 2,
        "als.save_model": False, "recommend.k": 3, "run.model": "als", "run.run_id": RUN_ID,
        "influence.top_n": 2, "influence.pool": 3})
    lake = Lake(cfg.lake)
    ingest.main(spark, cfg)
    transform.main(spark, cfg)
    split.main(spark, cfg)
    fit.main(spark, cfg)
    influence.main(spark, cfg)
    index = lake.read(spark, L.SILVER_USER_INDEX)
    tidx = index.where(F.col(S.USER_ID) == TARGET).first()[S.USER_IDX]
    assert tidx == index.agg(F.max(S.USER_IDX)).first()[0]
    # a deep model's rows: the target's user vector, and an item vector with the same idx (stays)
    emb = [(RUN_ID, kind, idx, [0.5, 0.25]) for kind in ("user", "item") for idx in (0, tidx)]
    lake.write(spark.createDataFrame(emb, "run_id string, kind string, idx int, "
                                          "vector array<float>"), L.MODELS_NCF_EMBEDDINGS)
    tables = [t for t in L.ALL_TABLES if lake.exists(spark, t)]
    held = {(t, v) for t in tables for v in _versions(spark, lake, t)
            if _holds(t, lake.read(spark, t, version=v), tidx)}
    before = {t: _others(t, lake.read(spark, t), tidx) for t in forget.TABLES
              if lake.exists(spark, t)}
    out = forget.main(spark, cfg.with_(**{"forget.user_ids": [f" {TARGET}"]}))
    return {"cfg": cfg, "lake": lake, "tidx": tidx, "held": held, "before": before, "out": out,
            "raw": raw, "root": root}


@pytest.mark.slow
def test_no_table_and_no_readable_version_holds_the_user(spark, forgotten):
    lake, tidx, held = forgotten["lake"], forgotten["tidx"], forgotten["held"]
    touched = {t for t, _ in held}
    # the lake really held the user everywhere forget is meant to reach
    assert touched >= {L.BRONZE_EVENTS, L.QUARANTINE_EVENTS, L.SILVER_EVENTS, L.SILVER_USER_INDEX,
                       L.GOLD_INTERACTIONS, L.GOLD_USER_FEATURES, L.GOLD_SEQUENCES, L.GOLD_SPLITS,
                       L.GOLD_RECOMMENDATIONS, L.MODELS_ALS_USER_FACTORS, L.MODELS_NCF_EMBEDDINGS,
                       L.INFLUENCE_EVENT_CONTRIBUTIONS, L.INFLUENCE_USERS}
    unreadable = set()
    for t in L.ALL_TABLES:
        if not lake.exists(spark, t):
            continue
        assert _holds(t, lake.read(spark, t), tidx) == 0, f"{t} (current) holds the user"
        for v in _versions(spark, lake, t):
            try:
                df = lake.read(spark, t, version=v)
            except VersionNotReadable:
                # vacuumed: the data of that version are gone, not merely skipped by the helper
                with pytest.raises(Exception, match="(?i)file|exist"):
                    (spark.read.format("delta").option("versionAsOf", v).load(lake.path(t))
                     .collect())
                unreadable.add((t, v))
                continue
            assert _holds(t, df, tidx) == 0, f"{t} version {v} still holds the user"
    assert held <= unreadable  # every version that held the user is gone
    rows = {r["table"]: r for r in forgotten["out"]["tables"]}
    assert rows[L.SILVER_EVENTS]["rows_removed"] == 11  # 10 events + the clean twin line
    assert rows[L.BRONZE_EVENTS]["rows_removed"] == 13  # + the other-raw twin, the quarantined
    assert rows[L.QUARANTINE_EVENTS]["rows_removed"] == 1
    assert rows[L.MODELS_NCF_EMBEDDINGS]["rows_removed"] == 1  # the user row, not the item's
    assert rows[L.SILVER_USER_INDEX]["rows_removed"] == 1
    assert all(r["files_vacuumed"] > 0 for r in rows.values() if r["rows_removed"])


@pytest.mark.slow
def test_other_users_rows_are_unchanged_and_the_index_entry_is_a_tombstone(spark, forgotten):
    lake, tidx = forgotten["lake"], forgotten["tidx"]
    for t, rows in forgotten["before"].items():
        assert _others(t, lake.read(spark, t), tidx) == rows, t
    assert any(rows for rows in forgotten["before"].values())
    stone = lake.read(spark, L.SILVER_USER_INDEX).where(F.col(S.USER_IDX) == tidx).collect()
    assert len(stone) == 1
    assert stone[0][S.USER_ID] == f"{S.TOMBSTONE_PREFIX}{tidx}" and stone[0][S.FORGOTTEN_AT]
    supp = lake.read(spark, L.AUDIT_SUPPRESSED_USERS).collect()
    assert [r[S.USER_SHA256] for r in supp] == [hashlib.sha256(TARGET.encode()).hexdigest()]
    assert supp[0][S.COMPLETED_AT] is not None


@pytest.mark.slow
def test_rerun_is_a_no_op_and_an_unknown_id_is_one_clear_line(spark, forgotten, capsys):
    lake, cfg = forgotten["lake"], forgotten["cfg"]
    versions = {t: lake.version(spark, t) for t in L.ALL_TABLES}
    again = forget.main(spark, cfg.with_(**{"forget.user_ids": [TARGET]}))
    assert again == {"forgotten": 0, "already": 1, "tables": []}
    assert "already forgotten" in capsys.readouterr().out
    rc = cli.main(["--lake", cfg.lake, "forget", "--user-id", "nobody-like-this"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "reclake forget: error: --user-id #1 of 1: no such user" in err
    assert "Traceback" not in err
    assert {t: lake.version(spark, t) for t in L.ALL_TABLES} == versions  # nothing written


@pytest.mark.slow
def test_later_ingests_keep_the_user_out_unless_allowed_and_never_reuse_the_idx(spark, forgotten):
    lake, cfg, tidx = forgotten["lake"], forgotten["cfg"], forgotten["tidx"]
    fresh = _csv(forgotten["root"] / "later.csv", ["newcomer"], seed=9)
    ingest.main(spark, cfg.with_(**{"ingest.path": str(fresh)}))
    index = lake.read(spark, L.SILVER_USER_INDEX)
    assert index.where(F.col(S.USER_ID) == "newcomer").first()[S.USER_IDX] == tidx + 1

    audit = ingest.main(spark, cfg.with_(**{"ingest.force": True}))  # the same raw file again
    assert audit["rows_suppressed"] == 13
    assert audit["rows_in"] == (audit["rows_clean_new"] + audit["rows_duplicate"]
                                + audit["rows_quarantined"] + audit["rows_suppressed"])
    for t in (L.BRONZE_EVENTS, L.QUARANTINE_EVENTS, L.SILVER_EVENTS, L.SILVER_USER_INDEX):
        assert _holds(t, lake.read(spark, t), tidx) == 0, t

    back = ingest.main(spark, cfg.with_(**{"ingest.force": True, "ingest.allow_suppressed": True}))
    assert back["rows_suppressed"] == 0
    assert lake.read(spark, L.SILVER_EVENTS).where(F.col(S.USER_ID) == TARGET).count() == 11
    index = lake.read(spark, L.SILVER_USER_INDEX)
    assert index.where(F.col(S.USER_ID) == TARGET).first()[S.USER_IDX] == tidx + 2
    assert index.where(F.col(S.USER_IDX) == tidx).first()[S.USER_ID].startswith(
        S.TOMBSTONE_PREFIX)


def test_ids_are_stripped_and_pseudonymised_like_ingest_does(monkeypatch):
    key = "a-test-key-of-enough-bytes"
    monkeypatch.setenv("RECLAKE_PSEUDONYM_KEY", key)
    cfg = load_config(values={"ingest.pseudonymize": True,
                              "forget.user_ids": [" alice ", "alice", "bob", "\u200b"]})
    assert forget.lake_user_ids(cfg) == [ingest.pseudonym(key.encode(), "alice"),
                                         ingest.pseudonym(key.encode(), "bob")]
    plain = load_config(values={"forget.user_ids": ["alice"]})
    assert forget.lake_user_ids(plain) == ["alice"]
    assert forget.id_sha256("alice") == hashlib.sha256(b"alice").hexdigest()
