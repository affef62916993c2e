"""One loader test per source format, on small files written here in that real format, quirks
included (latin-1, CRLF, quoted commas, headers, ms vs s timestamps, time zones)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import schema as S
from jobs.ingest import drop_file_headers, standardize_events
from jobs.sources import READERS, get_reader

pytestmark = pytest.mark.spark


def load(spark, cfg, fmt, path):
    raw, spec = get_reader(fmt)(spark, str(path), cfg)
    std, _ = drop_file_headers(standardize_events(raw, spec=spec, cfg=cfg))
    rows = std.orderBy(S.RAW).collect()
    return [r.asDict() for r in rows]


def by(rows, key=S.RAW):
    return {r[key]: r for r in rows}


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


def test_registry_names_every_documented_format():
    assert set(READERS) == {
        "movielens-100k", "movielens-dat", "movielens-csv", "taobao", "retailrocket", "rees46",
        "lastfm-hetrec", "generic",
    }
    with pytest.raises(ValueError, match="unknown source format 'nope'"):
        get_reader("nope")


def test_movielens_100k_tab_latin1(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "u.data"
    # latin-1 byte in a (bogus) extra field makes a malformed row that still decodes cleanly
    p.write_bytes(b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\tcaf\xe9\n")
    rows = by(load(spark, make_cfg(), "movielens-100k", p))
    r = rows["196\t242\t3\t881250949"]
    assert (r[S.USER_ID], r[S.ITEM_ID], r[S.BEHAVIOR], r[S.VALUE]) == ("196", "242", "rating", 3.0)
    assert r[S.TS] == ts("1997-12-04 15:55:49") and r[S.REASONS] == []
    bad = rows["22\t377\t1\t878887116\tcafé"]  # decoded as latin-1, not replaced
    assert bad[S.REASONS] == [S.MALFORMED]


def test_movielens_dat_double_colon(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::3068::4.5::978299000\n")
    rows = by(load(spark, make_cfg(), "movielens-dat", p), S.ITEM_ID)
    assert rows["1193"][S.VALUE] == 5.0 and rows["1193"][S.TS] == ts("2000-12-31 22:12:40")
    assert rows["3068"][S.VALUE] == 4.5
    assert all(r[S.REASONS] == [] for r in rows.values())


def test_movielens_csv_header_crlf(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "ratings.csv"
    p.write_bytes(b"userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,3,9.0,964981247\r\n")
    rows = load(spark, make_cfg(), "movielens-csv", p)
    assert len(rows) == 2  # header dropped, \r stripped
    good = by(rows, S.ITEM_ID)
    assert good["1"][S.REASONS] == [] and good["1"][S.TS] == ts("2000-07-30 18:45:03")
    assert good["3"][S.REASONS] == [S.VALUE_OUT_OF_RANGE]  # rating 9 > rating_max 5


def test_taobao_behaviours_and_seconds(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "UserBehavior.csv"
    p.write_text(
        "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,cart,1511561733\n"
        "1,2576651,149192,fav,1511572885\n1,3830808,4181361,buy,1511593493\n"
        "1,4365585,2520377,share,1511596146\n"
    )
    rows = by(load(spark, make_cfg(), "taobao", p), S.ITEM_ID)
    assert [rows[i][S.BEHAVIOR] for i in ("2268318", "2333346", "2576651", "3830808")] == [
        "view", "cart", "fav", "purchase"]
    assert rows["2268318"][S.CATEGORY_ID] == "2520377"
    assert rows["2268318"][S.TS] == ts("2017-11-24 17:21:10")
    assert rows["4365585"][S.REASONS] == [S.UNKNOWN_BEHAVIOR]


def test_taobao_extra_behaviour_via_config(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "UserBehavior.csv"
    p.write_text("1,4365585,2520377,share,1511596146\n")
    cfg = make_cfg(**{"behaviors.extras": ["share"]})
    (row,) = load(spark, cfg, "taobao", p)
    assert row[S.BEHAVIOR] == "share" and row[S.REASONS] == []


def test_retailrocket_milliseconds(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "events.csv"
    p.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433193500981,121688,transaction,15335,11117\n"
    )
    rows = by(load(spark, make_cfg(), "retailrocket", p), S.ITEM_ID)
    assert rows["355908"][S.TS] == ts("2015-06-02 05:02:12.117000")
    assert [rows[i][S.BEHAVIOR] for i in ("355908", "248676", "15335")] == ["view", "cart", "purchase"]
    assert rows["15335"][S.USER_ID] == "121688"
    assert all(r[S.REASONS] == [] for r in rows.values())


def test_rees46_utc_strings_prices_quoted_commas(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "2019-Oct.csv"
    p.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d76fde-8bb3-4e00-8c23-a032dfed738c\n"
        '2019-10-01 00:00:01 UTC,purchase,3900821,2053013552326770905,"appliances,water_heater",'
        "aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\n"
        "2019-10-01 00:00:02 UTC,remove_from_cart,5100816,1,,xiaomi,29.51,1,s3\n"
    )
    rows = by(load(spark, make_cfg(), "rees46", p), S.ITEM_ID)
    assert rows["44600062"][S.TS] == ts("2019-10-01 00:00:00") and rows["44600062"][S.VALUE] == 35.79
    bought = rows["3900821"]  # the quoted comma did not shift fields
    assert (bought[S.BEHAVIOR], bought[S.VALUE], bought[S.USER_ID]) == ("purchase", 33.2, "554748717")
    assert bought[S.SESSION_ID] == "9333dfbd-b87a-4708-9857-6336556b0fcc" and bought[S.REASONS] == []
    assert rows["5100816"][S.REASONS] == [S.UNKNOWN_BEHAVIOR]  # kept in quarantine, not dropped


def test_lastfm_default_timestamp(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "user_artists.dat"
    p.write_text("userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n")
    rows = by(load(spark, make_cfg(**{"ingest.default_ts": "2011-05-01T00:00:00Z"}),
                   "lastfm-hetrec", p), S.ITEM_ID)
    assert set(rows) == {"51", "52"}
    assert rows["51"][S.VALUE] == 13883.0 and rows["51"][S.BEHAVIOR] == "view"
    assert rows["51"][S.TS] == ts("2011-05-01 00:00:00") and rows["51"][S.REASONS] == []


def test_generic_csv_mapping_timezone_and_quotes(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "log.csv"
    p.write_text(
        "uid;sku;what;when;sess\n"
        'a;i1;purchase;2024-03-01 12:00:00;"s;1"\n'
        "b;i2;view;2024-03-01T12:00:00+00:00;s2\n"
    )
    cfg = make_cfg(**{
        "ingest.timezone": "Asia/Shanghai",
        "ingest.generic.delimiter": ";",
        "ingest.generic.columns": {"user_id": "uid", "item_id": "sku", "behavior": "what",
                                   "ts": "when", "session_id": "sess"},
    })
    rows = by(load(spark, cfg, "generic", p), S.USER_ID)
    # naive time read in Asia/Shanghai (UTC+8); an explicit offset wins
    assert rows["a"][S.TS] == ts("2024-03-01 04:00:00") and rows["a"][S.SESSION_ID] == "s;1"
    assert rows["b"][S.TS] == ts("2024-03-01 12:00:00")
    assert all(r[S.REASONS] == [] for r in rows.values())


def test_generic_csv_mapping_errors_name_the_column(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "log.csv"
    p.write_text("user,item\nu,i\n")
    cfg = make_cfg(**{"ingest.generic.columns": {"user_id": "user", "item_id": "sku"},
                      "ingest.generic.default_behavior": "view"})
    with pytest.raises(ValueError, match="sku"):
        load(spark, cfg, "generic", p)


def test_generic_jsonl_numbers_epoch_auto_and_broken_json(spark, make_cfg, tmp_path: Path):
    p = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"user_id": 7, "item_id": "x", "behavior": "cart", "value": 12.5,
                    "ts": 1700000000}),
        json.dumps({"user_id": "8", "item_id": "y", "behavior": "view", "ts": 1700000000123}),
        '{"user_id": "9", "item_id": ',
    ]
    p.write_text("\n".join(lines) + "\n")
    rows = load(spark, make_cfg(**{"ingest.generic.format": "jsonl"}), "generic", p)
    got = {r[S.USER_ID]: r for r in rows}
    assert got["7"][S.VALUE] == 12.5 and got["7"][S.TS] == ts("2023-11-14 22:13:20")
    assert got["8"][S.TS] == ts("2023-11-14 22:13:20.123000")  # auto: ms detected
    broken = [r for r in rows if r[S.USER_ID] is None]
    assert len(broken) == 1 and S.MALFORMED in broken[0][S.REASONS]


def test_generic_parquet(spark, make_cfg, tmp_path: Path):
    d = tmp_path / "pq"
    d.mkdir()
    table = pa.table({
        "user_id": ["u1", "u2"], "item_id": ["i1", None], "behavior": ["fav", "view"],
        "value": [None, 1.0],
        "ts": pa.array([datetime(2024, 1, 2, 3, 4, 5)] * 2, pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, d / "part-0.parquet")
    cfg = make_cfg(**{"ingest.generic.format": "parquet", "ingest.generic.columns": {
        "user_id": "user_id", "item_id": "item_id", "behavior": "behavior", "value": "value",
        "ts": "ts"}})
    rows = by(load(spark, cfg, "generic", d), S.USER_ID)
    assert rows["u1"][S.TS] == ts("2024-01-02 03:04:05") and rows["u1"][S.REASONS] == []
    assert rows["u2"][S.REASONS] == [S.MISSING_ITEM]
    assert json.loads(rows["u1"][S.RAW])["behavior"] == "fav"  # raw row kept for audit
