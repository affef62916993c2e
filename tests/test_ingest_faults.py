"""Ingest under faults: every physical line accounted for, whitespace and over-long ids,
compressed / binary / truncated input, a crash and its rerun, concurrent writers."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.errors import ConcurrentWriteError, InputError
from common.interactions import committed_events
from common.lake import Lake, is_write_conflict, retry_conflicts
from jobs import ingest
from jobs.sources import get_reader
from jobs.sources.base import content_problem

GENERIC_HEADER = "user_id,item_id,behavior,value,ts,session_id,category_id"

# format -> (header line or None, three data lines)
SAMPLES = {
    "movielens-100k": (None, ["1\t10\t4\t881250949", "2\t11\t3\t881250950",
                              "3\t12\t5\t881250951"]),
    "movielens-dat": (None, ["1::10::4::978300760", "2::11::3::978300761",
                             "3::12::5::978300762"]),
    "movielens-csv": ("userId,movieId,rating,timestamp",
                      ["1,10,4.0,1112486027", "2,11,3.5,1112486028", "3,12,5.0,1112486029"]),
    "taobao": ("user_id,item_id,category_id,behavior,ts",
               ["1,10,100,pv,1511544070", "2,11,100,buy,1511544071", "3,12,101,cart,1511544072"]),
    "retailrocket": ("timestamp,visitorid,event,itemid,transactionid",
                     ["1433221332117,257597,view,355908,", "1433221332118,257598,view,355909,",
                      "1433221332119,257599,transaction,355910,4000"]),
    "rees46": ("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
               "user_session",
               ["2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,"
                "541312140,72d76fde", "2019-10-01 00:00:01 UTC,view,3900821,2053013552326770905,"
                "appliances.water_heater,aqua,33.20,554748717,9333dfbd",
                "2019-10-01 00:00:02 UTC,purchase,17200506,2053013559792632471,"
                "\"furniture.living_room,sofa\",,543.10,519107250,566511c2"]),
    "lastfm-hetrec": ("userID\tartistID\tweight", ["2\t51\t13883", "2\t52\t11690",
                                                   "3\t53\t11351"]),
    "generic": (GENERIC_HEADER, ["u1,i1,view,,2024-01-01T10:00:00Z,s1,c1",
                                 "u2,i2,cart,,2024-01-01T10:01:00Z,s2,c1",
                                 "u3,i1,purchase,9.5,2024-01-01T10:02:00Z,s3,c2"]),
}


def _ingest(spark, cfg, path, fmt="generic", **more):
    c = cfg.with_(**{"ingest.source_format": fmt, "ingest.path": str(path),
                     **{f"ingest.{k}": v for k, v in more.items()}})
    return ingest.main(spark, c)


def physical_lines(data: bytes) -> int:
    """What ``wc -l`` counts, plus a last line without its newline (LF, CRLF and CR endings)."""
    return len(data.splitlines())


@pytest.mark.spark
@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_every_physical_line_is_accounted_for(spark, make_cfg, tmp_path: Path, fmt):
    """Blank lines, whitespace-only lines and a header repeated mid-file (concatenated exports)
    are quarantined under their own reasons; rows_in is the file's lines less its header."""
    header, (a, b, c) = SAMPLES[fmt]
    body = [a, "", b, " \t\u00a0"] + ([header] if header else []) + [c]
    text = "\n".join(([header] if header else []) + body)  # the last line has no newline
    data = text.encode("latin-1" if fmt.startswith("movielens-") and fmt != "movielens-csv"
                       else "utf-8")
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    audit = _ingest(spark, make_cfg(), path, fmt)
    headers = 1 if header else 0
    assert audit["rows_in"] == physical_lines(data) - headers
    assert audit["details"]["file_headers"] == headers
    assert audit["details"][S.BLANK_LINE] == 2
    assert audit["details"].get(S.REPEATED_HEADER, 0) == headers
    assert audit["rows_quarantined"] == 2 + headers
    assert audit["rows_clean_new"] == 3
    assert audit["rows_in"] == (audit["rows_clean_new"] + audit["rows_duplicate"]
                                + audit["rows_quarantined"])


@pytest.mark.spark
def test_two_files_each_keep_their_header_out_and_crlf_counts_once(spark, make_cfg,
                                                                   tmp_path: Path):
    header, lines = SAMPLES["generic"]
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_bytes(("\r\n".join([header, lines[0], lines[1]]) + "\r\n").encode())
    (d / "b.csv").write_bytes(("\r".join([header, lines[2], header]) + "\r").encode())
    audit = _ingest(spark, make_cfg(), d)
    assert audit["details"]["file_headers"] == 2
    assert audit["rows_in"] == 2 + 2  # a: 2 data lines; b: 1 data line + a repeated header
    assert audit["details"][S.REPEATED_HEADER] == 1 and audit["rows_clean_new"] == 3


@pytest.mark.spark
def test_whitespace_of_every_kind_is_missing_and_long_ids_are_quarantined(spark, make_cfg,
                                                                          tmp_path: Path):
    cfg = make_cfg(**{"ingest.max_id_length": 40})
    ts = "2024-01-01T10:00:00Z"
    rows = {
        "tab": f"\t,i1,view,,{ts},s,c",
        "nbsp": f"\u00a0,i1,view,,{ts},s,c",
        "ideographic": f"\u3000\u2003,i1,view,,{ts},s,c",
        "zero_width": f"\u200b\ufeff,i1,view,,{ts},s,c",
        "padded": f"\u00a0u7\u2009,i1,view,,{ts},s,c",
        "long_user": f"{'u' * 41},i1,view,,{ts},s,c",
        "long_item": f"u8,{'i' * 2_500_000},view,,{ts},s,c",
        "long_session": f"u9,i1,view,,{ts},{'s' * 41},c",
        "at_limit": f"{'u' * 40},i1,view,,{ts},s,c",
        "no_ts": "u10,i1,view,,\u00a0,s,c",
    }
    path = tmp_path / "ws.csv"
    path.write_text(GENERIC_HEADER + "\n" + "\n".join(rows.values()) + "\n", encoding="utf-8")
    c = cfg.with_(**{"ingest.source_format": "generic", "ingest.path": str(path)})
    raw, spec = get_reader("generic")(spark, str(path), c)
    std, _ = ingest.drop_file_headers(ingest.standardize_events(raw, spec=spec, cfg=c))
    got = {r[S.RAW]: (r[S.USER_ID], r[S.REASONS]) for r in std.collect()}
    by_name = {name: got[line] for name, line in rows.items()}
    for name in ("tab", "nbsp", "ideographic", "zero_width"):
        assert by_name[name] == (None, [S.MISSING_USER]), name
    assert by_name["padded"] == ("u7", [])
    for name in ("long_user", "long_item", "long_session"):
        assert by_name[name][1] == [S.ID_TOO_LONG], name
    assert by_name["at_limit"][1] == []
    assert by_name["no_ts"][1] == [S.BAD_TS]  # a missing timestamp is not a clean row


# --- compressed, binary and truncated input ------------------------------------------------------


def test_content_problem_by_first_bytes():
    gz = gzip.compress(b"a,b\n")
    assert "gzip-compressed" in content_problem("events.csv", gz, "UTF-8")
    assert "rename it to events.csv.gz" in content_problem("events.csv", gz, "UTF-8")
    assert content_problem("events.csv.gz", gz, "UTF-8") is None
    assert "does not hold gz data" in content_problem("events.csv.gz", b"user,item\n", "UTF-8")
    assert "zip archive" in content_problem("e.csv", b"PK\x03\x04rest", "UTF-8")
    assert "Parquet" in content_problem("e.csv", b"PAR1\x15\x04", "UTF-8")
    assert "bzip2" in content_problem("e.txt", b"BZh91AY&SY", "UTF-8")
    assert "NUL byte at offset 3" in content_problem("e.csv", b"abc\x00def", "UTF-8")
    assert "--encoding UTF-16" in content_problem("e.csv", b"\xff\xfeu\x00", "UTF-8")
    assert content_problem("e.csv", b"\xff\xfeu\x00", "UTF-16") is None
    assert content_problem("e.csv", "ü,é\n".encode("latin-1"), "ISO-8859-1") is None
    assert content_problem("e.csv", b"", "UTF-8") is None


def _lake_with_a_good_batch(spark, make_cfg, tmp_path: Path):
    """A lake holding one clean generic batch: (cfg, lake, its file, every table's version)."""
    header, lines = SAMPLES["generic"]
    cfg = make_cfg()
    lake = Lake(cfg.lake)
    good = tmp_path / "good.csv"
    good.write_text("\n".join([header, *lines]) + "\n")
    _ingest(spark, cfg, good)
    return cfg, lake, good, {t: lake.version(spark, t) for t in ingest.TABLES}


@pytest.mark.spark
def test_gzip_under_a_csv_name_and_binary_junk_are_refused_before_any_write(spark, make_cfg,
                                                                          tmp_path: Path):
    cfg, lake, good, versions = _lake_with_a_good_batch(spark, make_cfg, tmp_path)
    gz = tmp_path / "gz" / "events.csv"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(InputError, match=r"events.csv is gzip-compressed .*Nothing was written"):
        _ingest(spark, cfg, gz)
    junk = tmp_path / "junk" / "events.csv"
    junk.parent.mkdir()
    junk.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(InputError, match="binary data"):
        _ingest(spark, cfg, junk)
    assert {t: lake.version(spark, t) for t in ingest.TABLES} == versions


@pytest.mark.spark
def test_truncated_gzip_is_rejected_and_a_line_cut_short_is_quarantined(spark, make_cfg,
                                                                         tmp_path: Path):
    cfg, lake, good, versions = _lake_with_a_good_batch(spark, make_cfg, tmp_path)
    header, lines = SAMPLES["generic"]
    big = "\n".join([header] + [f"u{k},i{k % 50},view,,2024-01-02T10:00:00Z,s{k},c"
                                for k in range(20_000)]) + "\n"
    packed = gzip.compress(big.encode())
    cut = tmp_path / "cut" / "events.csv.gz"
    cut.parent.mkdir()
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        _ingest(spark, cfg, cut)
    assert {t: lake.version(spark, t) for t in ingest.TABLES} == versions
    short = tmp_path / "short.csv"
    short.write_text("\n".join([header, lines[0], "u9,i9,vi"]))  # cut mid-line, no newline
    audit = _ingest(spark, cfg, short)
    assert (audit["rows_in"], audit["rows_clean_new"], audit["rows_quarantined"]) == (2, 0, 1)
    assert audit["rows_duplicate"] == 1  # lines[0] is in silver already
    assert audit["details"][S.MALFORMED] == 1


# --- a crash and its rerun -----------------------------------------------------------------------


def _audit_view(a: dict) -> dict:
    return {k: v for k, v in a.items() if k not in ("seconds", "created_at", S.BATCH_ID)}


@pytest.mark.spark
def test_rerun_after_a_crash_in_the_index_step_records_what_a_clean_run_does(
        spark, make_cfg, tmp_path: Path, monkeypatch):
    header, lines = SAMPLES["generic"]
    path = tmp_path / "in.csv"
    path.write_text("\n".join([header, *lines, lines[0], "bad,line"]) + "\n")
    clean = _ingest(spark, make_cfg(lake=str(tmp_path / "clean-lake")), path)
    cfg = make_cfg()
    lake = Lake(cfg.lake)
    real = ingest.update_index

    def dies(*a, **kw):
        raise RuntimeError("killed in the index step")

    monkeypatch.setattr(ingest, "update_index", dies)
    with pytest.raises(RuntimeError, match="killed"):
        _ingest(spark, cfg, path)
    # silver holds the batch's rows, but the batch is not done: readers leave them out
    assert lake.read(spark, L.SILVER_EVENTS).count() == 3
    assert committed_events(spark, lake).count() == 0
    assert lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").count() == 0
    monkeypatch.setattr(ingest, "update_index", real)
    rerun = _ingest(spark, cfg, path)
    assert _audit_view(rerun) == _audit_view(clean)
    assert rerun["rows_clean_new"] == 3 and rerun["details"]["new_users"] == 3
    assert committed_events(spark, lake).count() == 3


# --- concurrent writers: retries and the index ---------------------------------------------------


def test_retry_conflicts_reruns_only_lost_commits():
    calls = []

    class ConcurrentAppendException(Exception):
        pass

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConcurrentAppendException("[DELTA_CONCURRENT_APPEND] files were added")
        return "ok"

    assert retry_conflicts(flaky, "t", base_s=0.001) == "ok" and len(calls) == 3
    assert is_write_conflict(Exception("[DELTA_PROTOCOL_CHANGED.CREATE_TABLE] x"))
    assert not is_write_conflict(ValueError("a bug"))
    with pytest.raises(ValueError):
        retry_conflicts(lambda: (_ for _ in ()).throw(ValueError("a bug")), "t", base_s=0.001)
    with pytest.raises(ConcurrentWriteError, match="on each of 2 tries"):
        retry_conflicts(lambda: (_ for _ in ()).throw(ConcurrentAppendException("lost")),
                        "silver/events", attempts=2, base_s=0.001)


@pytest.mark.spark
def test_index_entries_that_collide_with_another_batch_are_reassigned(spark, make_cfg):
    lake = Lake(make_cfg().lake)
    rows = [("a", 0, "X"), ("b", 1, "X"), ("c", 1, "Y"), ("d", 2, "Y")]
    lake.write(spark.createDataFrame(
        rows, f"{S.USER_ID} string, {S.USER_IDX} int, {S.FIRST_BATCH_ID} string"),
        L.SILVER_USER_INDEX)
    with pytest.raises(ingest.IndexCollision, match="1 new entries"):
        ingest.drop_index_collisions(spark, lake, L.SILVER_USER_INDEX, id_col=S.USER_ID,
                                     idx_col=S.USER_IDX, batch_id="X")
    left = {r[0]: (r[1], r[2]) for r in lake.read(spark, L.SILVER_USER_INDEX).collect()}
    assert left == {"a": (0, "X"), "c": (1, "Y"), "d": (2, "Y")}  # Y's entries stay
    clean = spark.createDataFrame([("a",), ("b",)], f"{S.USER_ID} string")
    n = retry_conflicts(lambda: ingest.update_index(
        spark, lake, clean, table=L.SILVER_USER_INDEX, id_col=S.USER_ID, idx_col=S.USER_IDX,
        batch_id="X"), "index", base_s=0.001)
    final = {r[0]: r[1] for r in lake.read(spark, L.SILVER_USER_INDEX).collect()}
    assert n == 2 and final == {"a": 0, "b": 3, "c": 1, "d": 2}


# --- real processes: SIGKILL mid-write, two ingests at once --------------------------------------


def _events_file(path: Path, n: int, offset: int = 0, users: int = 5000) -> None:
    """A Taobao-format file of ``n`` events (distinct lines; users overlap between offsets)."""
    with path.open("w") as f:
        for k in range(offset, offset + n):
            f.write(f"{k % users},{(k * 7) % 20011},{k % 97},pv,{1511544070 + k}\n")


def _cli_ingest(lake: Path, path: Path, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "--lake", str(lake), "--set", "spark.shuffle_partitions=2",
         "ingest", "--source-format", "taobao", "--path", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _commits(table_dir: Path) -> int:
    log = table_dir / "_delta_log"
    return len(list(log.glob("*.json"))) if log.is_dir() else 0


def _check_lake(spark, lake: Lake) -> list[dict]:
    """Every finished batch agrees with bronze, quarantine and silver; no duplicate event, id or
    index; indices dense. Returns the silver audit rows."""
    audits = [r.asDict() for r in lake.read(spark, L.AUDIT_BATCHES)
              .where("stage = 'silver'").collect()]
    silver = committed_events(spark, lake)
    assert silver.count() == silver.select(S.EVENT_ID).distinct().count()
    assert silver.count() == sum(a["rows_clean_new"] for a in audits)
    for a in audits:
        pred = F.col(S.BATCH_ID) == a[S.BATCH_ID]
        assert lake.read(spark, L.BRONZE_EVENTS).where(pred).count() == a["rows_in"]
        assert a["rows_in"] == a["rows_clean_new"] + a["rows_duplicate"] + a["rows_quarantined"]
    for table, id_col, idx_col in ((L.SILVER_USER_INDEX, S.USER_ID, S.USER_IDX),
                                   (L.SILVER_ITEM_INDEX, S.ITEM_ID, S.ITEM_IDX)):
        index = lake.read(spark, table)
        n = index.count()
        assert index.select(id_col).distinct().count() == n
        assert sorted(r[0] for r in index.select(idx_col).collect()) == list(range(n))
    return audits


@pytest.mark.slow
@pytest.mark.spark
def test_sigkill_mid_write_then_rerun_gives_the_clean_audit(spark, make_cfg, tmp_path: Path):
    first, second = tmp_path / "day1.csv", tmp_path / "day2.csv"
    _events_file(first, 2000)
    _events_file(second, 300_000, offset=1000)  # 1,000 lines repeat day 1's
    ref_lake = tmp_path / "ref"
    for p in (first, second):
        assert _cli_ingest(ref_lake, p).wait(timeout=600) == 0
    reference = {a["source"] + str(a["rows_in"]): _audit_view(a)
                 for a in _check_lake(spark, Lake(str(ref_lake)))}

    lake_dir = tmp_path / "lake"
    assert _cli_ingest(lake_dir, first).wait(timeout=600) == 0
    lake = Lake(str(lake_dir))
    before = {t: lake.version(spark, t) for t in ingest.TABLES}
    committed_before = committed_events(spark, lake).count()
    bronze_commits = _commits(lake_dir / "bronze" / "events")
    proc = _cli_ingest(lake_dir, second, start_new_session=True)
    deadline = time.time() + 300
    while _commits(lake_dir / "bronze" / "events") == bronze_commits:  # bronze is written first
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, mid-batch
    proc.wait(timeout=60)
    after = {t: lake.version(spark, t) for t in ingest.TABLES}
    assert after[L.AUDIT_BATCHES] <= before[L.AUDIT_BATCHES] + 1  # at most the bronze-stage row
    assert lake.read(spark, L.AUDIT_BATCHES).where("stage = 'silver'").count() == 1
    assert committed_events(spark, lake).count() == committed_before  # readers see no change
    # the rerun finishes the batch: exact conservation, no duplicates, the clean run's audit
    rerun = _cli_ingest(lake_dir, second)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out
    got = {a["source"] + str(a["rows_in"]): _audit_view(a) for a in _check_lake(spark, lake)}
    assert got == reference


@pytest.mark.slow
@pytest.mark.spark
def test_two_ingests_at_once_into_a_fresh_lake_both_land_once(spark, tmp_path: Path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _events_file(a, 20_000)
    _events_file(b, 20_000, offset=15_000)  # 5,000 events and most users in common
    lake_dir = tmp_path / "lake"
    procs = {p: _cli_ingest(lake_dir, p) for p in (a, b)}
    outs = {p: pr.communicate(timeout=600)[0] for p, pr in procs.items()}
    for p, pr in procs.items():
        # a writer that lost every retry says so and exits 3; run again, it lands
        assert pr.returncode in (0, 3), outs[p]
        if pr.returncode == 3:
            assert "another writer committed first" in outs[p]
            again = _cli_ingest(lake_dir, p)
            assert again.wait(timeout=600) == 0
    lake = Lake(str(lake_dir))
    audits = _check_lake(spark, lake)
    assert len(audits) == 2
    assert sum(x["rows_in"] for x in audits) == 40_000
    assert sum(x["rows_clean_new"] for x in audits) == 35_000
    assert sum(x["rows_duplicate"] for x in audits) == 5_000
    assert lake.read(spark, L.SILVER_USER_INDEX).count() == 5000


# --- schema drift in a generic source ----------------------------------------------------------


@pytest.mark.spark
def test_csv_files_with_drifted_headers_are_each_read_by_their_own(spark, make_cfg,
                                                                   tmp_path: Path):
    """One batch, three files: the usual header; columns moved, a new one added, optional ones
    dropped and ts as epoch seconds; a third with the first's header. Every row lands in the
    right fields, the absent optional fields are null, every line is accounted for."""
    d = tmp_path / "drift"
    d.mkdir()
    (d / "a.csv").write_text(GENERIC_HEADER + "\nu1,i1,view,,2024-01-01T10:00:00Z,s1,c1\n"
                             "u2,i2,purchase,9.5,2024-01-01T10:01:00Z,s2,c2\n")
    (d / "b.csv").write_text("ts,channel,item_id,user_id,behavior\n"
                             "1704103200,app,i3,u3,cart\n1704103260,web,i1,u4,view\n"
                             "1704103320,web,i1\n")  # the last one is short: malformed
    (d / "c.csv").write_text(GENERIC_HEADER + "\nu5,i2,view,,2024-01-01T10:05:00Z,s5,c2\n")
    audit = _ingest(spark, make_cfg(), d)
    lake = Lake(make_cfg().lake)
    assert audit["rows_in"] == 6 and audit["details"]["file_headers"] == 3
    assert audit["rows_clean_new"] == 5 and audit["rows_quarantined"] == 1
    rows = {r[S.USER_ID]: r for r in lake.read(spark, L.SILVER_EVENTS).collect()}
    assert set(rows) == {"u1", "u2", "u3", "u4", "u5"}
    assert (rows["u3"][S.ITEM_ID], rows["u3"][S.BEHAVIOR]) == ("i3", "cart")
    assert rows["u3"][S.SESSION_ID] is None and rows["u3"][S.CATEGORY_ID] is None
    assert rows["u3"][S.TS].isoformat().startswith("2024-01-01T10:00")
    assert (rows["u2"][S.VALUE], rows["u2"][S.SESSION_ID]) == (9.5, "s2")
    assert (rows["u5"][S.ITEM_ID], rows["u5"][S.CATEGORY_ID]) == ("i2", "c2")
    (bad,) = lake.read(spark, L.QUARANTINE_EVENTS).collect()
    assert S.MALFORMED in bad[S.REASONS] and bad[S.RAW] == "1704103320,web,i1"


@pytest.mark.spark
def test_a_file_without_a_required_column_stops_the_batch_before_any_write(spark, make_cfg,
                                                                          tmp_path: Path):
    from common.config import ConfigError

    d = tmp_path / "drift"
    d.mkdir()
    (d / "a.csv").write_text(GENERIC_HEADER + "\nu1,i1,view,,2024-01-01T10:00:00Z,s1,c1\n")
    (d / "b.csv").write_text("user_id,item_id,behavior\nu2,i2,view\n")  # no ts
    cfg = make_cfg()
    with pytest.raises(ConfigError, match=r"\['ts'\] that b\.csv \(header 'user_id,item_id,"
                                          r"behavior'\) lacks.*ingest\.generic\.optional"):
        _ingest(spark, cfg, d)
    assert not Lake(cfg.lake).exists(spark, L.BRONZE_EVENTS)
    # told that ts may be absent, the batch lands and b's row is quarantined (no timestamp)
    audit = _ingest(spark, cfg, d, **{"generic.optional": ["value", "session_id", "category_id",
                                                            "ts"]})
    assert audit["rows_in"] == 2 and audit["rows_clean_new"] == 1
    assert audit["details"][S.BAD_TS] == 1


@pytest.mark.spark
def test_parquet_files_merge_added_columns_and_refuse_a_changed_type(spark, make_cfg,
                                                                   tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ok, bad = tmp_path / "ok", tmp_path / "bad"
    ok.mkdir()
    bad.mkdir()
    base = {"user_id": ["u1"], "item_id": ["i1"], "behavior": ["purchase"],
            "ts": ["2024-01-01T10:00:00Z"]}
    pq.write_table(pa.table({**base, "value": pa.array([9.5])}), ok / "a.parquet")
    pq.write_table(pa.table({**base, "user_id": ["u2"], "channel": ["app"]}), ok / "b.parquet")
    pq.write_table(pa.table({**base, "value": pa.array([9.5])}), bad / "a.parquet")
    pq.write_table(pa.table({**base, "user_id": ["u2"], "value": ["9.5 EUR"]}),
                   bad / "b.parquet")
    cfg = make_cfg(**{"ingest.generic.format": "parquet"})
    audit = _ingest(spark, cfg, ok)
    assert audit["rows_in"] == audit["rows_clean_new"] == 2
    values = {r[S.USER_ID]: r[S.VALUE] for r in Lake(cfg.lake).read(spark, L.SILVER_EVENTS)
              .collect()}
    assert values == {"u1": 9.5, "u2": None}
    cfg2 = make_cfg(**{"ingest.generic.format": "parquet", "lake": str(tmp_path / "lake2")})
    with pytest.raises(InputError, match="do not agree on their columns' types.*Nothing was "
                                         "written"):
        _ingest(spark, cfg2, bad)
    assert not Lake(cfg2.lake).exists(spark, L.BRONZE_EVENTS)
