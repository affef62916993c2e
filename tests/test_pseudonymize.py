"""Pseudonymised user ids at ingest (``ingest.pseudonymize``): every table holds the keyed
HMAC-SHA256 of each user id, never the id itself, and the key (from the environment only) is in
no table, no log line, no Delta commit and no run record."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from common import lake as L
from common import schema as S
from common.config import ConfigError
from common.lake import Lake
from jobs import ingest

KEY = "k3y-for-tests-" + "7f0c9a" * 4  # 38 bytes: long enough, and easy to grep for
ENV = "RECLAKE_PSEUDONYM_KEY"
HEADER = "user_id,item_id,behavior,value,ts,session_id,category_id"
USERS = ["alice@example.com", "bob-0042", "carol.k", "dave"]


def _lines() -> list[str]:
    out = []
    for n, u in enumerate(USERS):
        for i in range(3):
            out.append(f"{u},item{i},view,,2024-01-0{i + 1}T10:0{n}:00Z,s{n},c1")
    out.append(f"{USERS[0]},item9,teleport,,2024-01-05T10:00:00Z,s0,c1")  # quarantined
    out.append(f"{'x' * 300},item1,view,,2024-01-05T10:00:00Z,s9,c1")  # id_too_long
    out.append(f"{USERS[1]},item0,view,,2024-01-01T10:01:00Z,s1,c1")  # a duplicate
    return out


def _cfg(make_cfg, path: Path, **more):
    return make_cfg(**{"ingest.source_format": "generic", "ingest.path": str(path),
                       "ingest.pseudonymize": True, **more})


def test_pseudonym_is_hmac_sha256_of_the_id():
    want = hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert ingest.pseudonym(KEY.encode(), "alice@example.com") == want
    assert len(want) == 64 and want != ingest.pseudonym(b"another key of 16+", "alice@example.com")


@pytest.mark.parametrize("value", [None, "short"])
def test_pseudonymize_without_a_usable_key_stops_before_spark(make_cfg, tmp_path, monkeypatch,
                                                            value):
    path = tmp_path / "e.csv"
    path.write_text(HEADER + "\n")
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    with pytest.raises(ConfigError, match=rf"\${ENV} is (unset|shorter than 16 bytes)") as e:
        ingest.preflight(_cfg(make_cfg, path))
    assert "openssl rand" in str(e.value)


@pytest.mark.spark
def test_tables_hold_pseudonyms_and_neither_ids_nor_key_appear_anywhere(
        spark, make_cfg, tmp_path, monkeypatch, capfd, caplog):
    from jobs import transform

    monkeypatch.setenv(ENV, KEY)
    path = tmp_path / "events.csv"
    lines = _lines()
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    cfg = _cfg(make_cfg, path)
    audit = ingest.main(spark, cfg)
    transform.main(spark, cfg)

    assert audit["rows_in"] == len(lines)
    assert audit["rows_clean_new"] == 12 and audit["rows_duplicate"] == 1
    assert audit["rows_quarantined"] == 2
    lake = Lake(cfg.lake)
    quarantine = {tuple(r[S.REASONS]) for r in lake.read(spark, L.QUARANTINE_EVENTS).collect()}
    assert quarantine == {(S.UNKNOWN_BEHAVIOR,), (S.ID_TOO_LONG,)}
    expected = {ingest.pseudonym(KEY.encode(), u) for u in USERS}
    silver = {r[0] for r in lake.read(spark, L.SILVER_EVENTS).select(S.USER_ID).collect()}
    index = {r[0] for r in lake.read(spark, L.SILVER_USER_INDEX).select(S.USER_ID).collect()}
    assert silver == index == expected

    # no value of any table holds a raw id or the key (every column cast to string)
    secrets = [KEY, *USERS, "x" * 300]
    for table in (L.BRONZE_EVENTS, L.QUARANTINE_EVENTS, L.SILVER_EVENTS, L.SILVER_USER_INDEX,
                  L.AUDIT_BATCHES, L.GOLD_INTERACTIONS, L.GOLD_USER_FEATURES, L.GOLD_SEQUENCES):
        if not lake.exists(spark, table):
            continue
        for row in lake.read(spark, table).toJSON().collect():
            for s in secrets:
                assert s not in row, f"{table} holds {s[:20]}: {row[:200]}"
    # nor any file of the lake (commit logs in plain JSON, Parquet footers and pages), nor what
    # the job printed or logged
    for f in Path(cfg.lake).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{f} holds {s[:20]}"
    out, err = capfd.readouterr()
    said = out + err + caplog.text
    assert KEY not in said
    assert "pseudonymised" in said and "$" + ENV in said  # the job says so, naming the variable


@pytest.mark.spark
def test_same_key_same_pseudonyms_across_batches(spark, make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(HEADER + "\ndave,i1,view,,2024-01-01T10:00:00Z,s,c\n")
    b.write_text(HEADER + "\ndave,i2,view,,2024-01-02T10:00:00Z,s,c\n")
    cfg = _cfg(make_cfg, a)
    ingest.main(spark, cfg)
    ingest.main(spark, cfg.with_(**{"ingest.path": str(b)}))
    lake = Lake(cfg.lake)
    users = lake.read(spark, L.SILVER_USER_INDEX).collect()
    assert [r[S.USER_ID] for r in users] == [ingest.pseudonym(KEY.encode(), "dave")]
    assert lake.read(spark, L.SILVER_EVENTS).count() == 2
