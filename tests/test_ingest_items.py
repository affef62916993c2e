"""ingest-items: every reader on a tiny catalogue with known answers, the text, quarantine reasons,
exact accounting, idempotent re-runs, an updated catalogue, the item_idx join and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from common import lake as L
from common import schema as S
from common.lake import Lake
from jobs import cli, ingest_items
from jobs.sources import items as src

pytestmark = pytest.mark.spark

ITEM_COLS = [S.ITEM_ID, S.TITLE, S.CATEGORY_PATH, S.BRAND, S.ATTRIBUTES, S.TEXT]


def prepared(spark, cfg):
    """(standardised lines, items) of ``cfg.items`` without writing anything."""
    raw, spec = src.get_item_reader(cfg.items.source_format)(spark, cfg.items.path, cfg)
    std = ingest_items.standardize_items(raw, spec=spec)
    return std, ingest_items.build_items(ingest_items.clean_items(std), spec=spec), spec


def reasons_by_raw(std) -> dict[str, list[str]]:
    return {r[S.RAW]: r[S.REASONS] for r in std.where(F.size(S.REASONS) > 0).collect()}


def uitem(movie_id, title, date, url, genres) -> str:
    flags = ["1" if g in genres else "0" for g in src.ML100K_GENRES]
    return "|".join([movie_id, title, date, "", url, *flags])


def test_item_text_known_answers(spark):
    schema = ("title string, description string, category_path array<string>, brand string, "
              "tags array<string>, attributes map<string,string>")
    df = spark.createDataFrame([
        ("Galaxy S9", "A phone!", ["electronics", "smartphone"], "samsung", ["android", "camera"],
         {"color": "black", "sku": "9"}),
        ("Mr. Smith Goes to Washington.", None, None, None, None, {"size": "L"}),
        (None, None, None, None, None, {"sku": "1"}),
    ], schema)
    path = ingest_items.item_text(category_style="path", text_attributes=("color", "size"))
    genres = ingest_items.item_text(category_style="genres")
    got = [tuple(r) for r in df.select(path, genres).collect()]
    assert got == [
        ("Galaxy S9. electronics > smartphone. Brand: samsung. A phone! Tags: android, camera. "
         "color: black.",
         "Galaxy S9. Genres: electronics, smartphone. Brand: samsung. A phone! "
         "Tags: android, camera."),
        ("Mr. Smith Goes to Washington. size: L.", "Mr. Smith Goes to Washington."),
        (None, None),
    ]


def test_movielens_100k_reader_latin1_genres(spark, tmp_path: Path, make_cfg):
    url = "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    lines = [uitem("1", "Toy Story (1995)", "01-Jan-1995", url,
                   {"Animation", "Children's", "Comedy"}),
             uitem("2", "Café (1996)", "01-Jan-1996", "", {"Drama", "Romance"}),
             "3|Short line|01-Jan-1990"]
    p = tmp_path / "u.item"
    p.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    cfg = make_cfg(items__source_format="movielens-100k", items__path=str(p))
    std, items, _ = prepared(spark, cfg)
    assertDataFrameEqual(items.select(*ITEM_COLS), [
        Row(item_id="1", title="Toy Story (1995)",
            category_path=["Animation", "Children's", "Comedy"], brand=None,
            attributes={"release_date": "01-Jan-1995", "imdb_url": url},
            text="Toy Story (1995). Genres: Animation, Children's, Comedy."),
        Row(item_id="2", title="Café (1996)", category_path=["Drama", "Romance"], brand=None,
            attributes={"release_date": "01-Jan-1996"}, text="Café (1996). Genres: Drama, Romance."),
    ])
    assert reasons_by_raw(std) == {"3|Short line|01-Jan-1990": [S.MALFORMED]}


def test_movielens_csv_reader_quoted_titles_and_top_tags(spark, tmp_path: Path, make_cfg):
    movies = tmp_path / "movies.csv"
    movies.write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Animation|Children|Comedy\n"
        '11,"American President, The (1995)",Comedy|Drama\n'
        '12,"""Great Performances"" Cats (1998)",Musical\n'
        "13,Nothing (2000),(no genres listed)\n"
    )
    tags = tmp_path / "tags.csv"
    tags.write_text(
        "userId,movieId,tag,timestamp\n"
        "1,1,Pixar,100\n2,1,pixar ,101\n3,1,fun,102\n4,1,Animation,103\n5,1,animation,104\n"
        "6,1,cute,105\n7,11,politics,106\n8,11,\"president, fictional\",107\nbad line\n"
    )
    cfg = make_cfg(items__source_format="movielens-csv", items__path=str(movies),
                   items__tags_path=str(tags), items__max_tags=3)
    std, items, spec = prepared(spark, cfg)
    # pixar and animation twice each, then cute and fun once: ties alphabetical, top 3
    assertDataFrameEqual(items.select(S.ITEM_ID, S.TITLE, S.CATEGORY_PATH, S.TEXT), [
        Row(item_id="1", title="Toy Story (1995)", category_path=["Animation", "Children", "Comedy"],
            text="Toy Story (1995). Genres: Animation, Children, Comedy. "
                 "Tags: animation, pixar, cute."),
        Row(item_id="11", title="American President, The (1995)",
            category_path=["Comedy", "Drama"],
            text="American President, The (1995). Genres: Comedy, Drama. "
                 "Tags: politics, president, fictional."),
        Row(item_id="12", title='"Great Performances" Cats (1998)', category_path=["Musical"],
            text='"Great Performances" Cats (1998). Genres: Musical.'),
        Row(item_id="13", title="Nothing (2000)", category_path=None, text="Nothing (2000)."),
    ])
    assert reasons_by_raw(std) == {}
    assert spec.details == {"tag_lines": 9, "tag_lines_skipped": 1}


def test_rees46_aggregates_most_frequent_category_brand_and_median_price(
        spark, tmp_path: Path, make_cfg):
    p = tmp_path / "events.csv"
    head = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    rows = ["p1,c1,electronics.smartphone,samsung,100.00", "p1,c1,electronics.smartphone,samsung,110.00",
            "p1,c1,electronics.audio,apple,130.00", "p1,c1,,,120.00",
            "p2,c2,,,5.50", "p2,c2,,lego,6.50",
            "p3,c3,,,1.00", "p3,c3,,,2.00", ",c3,,,2.00"]
    lines = [f"2019-10-01 00:00:0{k} UTC,view,{r},u{k},s{k}" for k, r in enumerate(rows)]
    p.write_text(head + "\n" + "\n".join(lines) + "\n")
    cfg = make_cfg(items__source_format="rees46", items__path=str(p))
    std, items, _ = prepared(spark, cfg)
    assertDataFrameEqual(items.select(*ITEM_COLS), [
        Row(item_id="p1", title=None, category_path=["electronics", "smartphone"],
            brand="samsung", attributes={"category_id": "c1", "price": "115.00"},
            text="electronics > smartphone. Brand: samsung."),
        Row(item_id="p2", title=None, category_path=None, brand="lego",
            attributes={"category_id": "c2", "price": "6.00"}, text="Brand: lego."),
    ])
    # p3 has no category code and no brand on any line: each of its lines is quarantined
    assert reasons_by_raw(std) == {lines[6]: [S.NO_METADATA], lines[7]: [S.NO_METADATA],
                                   lines[8]: [S.MISSING_ITEM]}


def test_taobao_category_is_the_only_metadata(spark, tmp_path: Path, make_cfg):
    p = tmp_path / "UserBehavior.csv"
    p.write_text("1,100,4000,pv,1511544070\n2,100,4000,buy,1511544071\n3,200,5000,pv,1511544072\n"
                 "4,300,,pv,1511544073\n5,400,6000,pv\n")
    cfg = make_cfg(items__source_format="taobao", items__path=str(p))
    std, items, _ = prepared(spark, cfg)
    assertDataFrameEqual(items.select(S.ITEM_ID, S.CATEGORY_PATH, S.TEXT), [
        Row(item_id="100", category_path=["category 4000"], text="category 4000."),
        Row(item_id="200", category_path=["category 5000"], text="category 5000."),
    ])
    assert reasons_by_raw(std) == {"4,300,,pv,1511544073": [S.NO_METADATA],
                                   "5,400,6000,pv": [S.MALFORMED]}


def test_generic_csv_and_jsonl_with_attributes(spark, tmp_path: Path, make_cfg):
    mapping = {S.ITEM_ID: "sku", S.TITLE: "name", S.TEXT: "desc", "category": "cat",
               S.BRAND: "maker"}
    csv_path = tmp_path / "catalogue.csv"
    csv_path.write_text("sku,name,desc,cat,maker,color,size\n"
                        'a1,Blue Mug,"A mug, blue",Home > Kitchen,Acme,blue,\n'
                        "a2,Red Mug,,Home>Kitchen, ,red,L\n")
    cfg = make_cfg(items__source_format="generic", items__path=str(csv_path),
                   items__generic__columns=mapping, items__generic__attributes=["color", "size"])
    std, items, _ = prepared(spark, cfg)
    assertDataFrameEqual(items.select(*ITEM_COLS), [
        Row(item_id="a1", title="Blue Mug", category_path=["Home", "Kitchen"], brand="Acme",
            attributes={"color": "blue"},
            text="Blue Mug. Home > Kitchen. Brand: Acme. A mug, blue. color: blue."),
        Row(item_id="a2", title="Red Mug", category_path=["Home", "Kitchen"], brand=None,
            attributes={"color": "red", "size": "L"},
            text="Red Mug. Home > Kitchen. color: red. size: L."),
    ])
    assert reasons_by_raw(std) == {}

    jsonl = tmp_path / "catalogue.jsonl"
    jsonl.write_text('{"id": 7, "name": "Lamp", "cats": ["Home", "Lighting"], "watts": 40}\n'
                     '{"id": "8", "name": "Chair", "cats": "Home>Furniture"}\n'
                     '{"id": 9, "name": \n')
    cfg = make_cfg(items__source_format="generic", items__path=str(jsonl),
                   items__generic__format="jsonl",
                   items__generic__columns={S.ITEM_ID: "id", S.TITLE: "name", "category": "cats"},
                   items__generic__attributes=["watts"])
    std, items, _ = prepared(spark, cfg)
    assertDataFrameEqual(items.select(*ITEM_COLS), [
        Row(item_id="7", title="Lamp", category_path=["Home", "Lighting"], brand=None,
            attributes={"watts": "40"}, text="Lamp. Home > Lighting. watts: 40."),
        Row(item_id="8", title="Chair", category_path=["Home", "Furniture"], brand=None,
            attributes=None, text="Chair. Home > Furniture."),
    ])
    assert reasons_by_raw(std) == {'{"id": 9, "name": ': [S.MISSING_ITEM, S.MALFORMED,
                                                          S.NO_METADATA]}


def _silver(spark, lake):
    return lake.read(spark, L.SILVER_ITEMS).select(
        S.ITEM_ID, S.ITEM_IDX, S.TITLE, S.BRAND, S.BATCH_ID, S.INGEST_TS)


def test_lake_batches_quarantine_accounting_idempotency_updates_and_item_idx(
        spark, tmp_path: Path, make_cfg):
    lake = Lake(str(tmp_path / "lake"))
    index = spark.createDataFrame([("i1", 0), ("i2", 1), ("i9", 2)], S.INDEX_SCHEMA[S.ITEM_IDX])
    lake.write(index, L.SILVER_ITEM_INDEX)
    b1 = tmp_path / "b1.csv"
    b1.write_bytes(b"item_id,title,category,brand\n"
                   b"i1,Alpha,Books > Fiction,Penguin\n"
                   b"i2,Beta,Books,\n"
                   b"i2,Beta (2nd ed.),Books,Orbit\n"
                   b",NoId,Books,X\n"
                   b"i3,Gamma,Books\n"
                   b"i4,,,\n"
                   b"i5,Caf\xff,Books,Y\n"
                   b"i6,Delta,Toys,Lego\n")
    mapping = {S.ITEM_ID: "item_id", S.TITLE: "title", "category": "category", S.BRAND: "brand"}

    def cfg(path, **kw):
        return make_cfg(items__source_format="generic", items__path=str(path),
                        items__generic__columns=mapping, **kw)

    a1 = ingest_items.main(spark, cfg(b1))
    batch1 = a1[S.BATCH_ID]
    # i2's last line wins; i6 has no events yet (null item_idx)
    first = _silver(spark, lake)
    assertDataFrameEqual(first.drop(S.INGEST_TS), [
        Row(item_id="i1", item_idx=0, title="Alpha", brand="Penguin", batch_id=batch1),
        Row(item_id="i2", item_idx=1, title="Beta (2nd ed.)", brand="Orbit", batch_id=batch1),
        Row(item_id="i6", item_idx=None, title="Delta", brand="Lego", batch_id=batch1),
    ])
    q = lake.read(spark, L.QUARANTINE_ITEMS)
    assert {r[S.RAW]: r[S.REASONS] for r in q.collect()} == {
        ",NoId,Books,X": [S.MISSING_ITEM], "i3,Gamma,Books": [S.MALFORMED],
        "i4,,,": [S.NO_METADATA], "i5,Caf\ufffd,Books,Y": [S.BAD_ENCODING]}
    assert {k: a1[k] for k in ("rows_in", "rows_out", "rows_clean_new", "rows_duplicate",
                               "rows_quarantined")} == {
        "rows_in": 8, "rows_out": 3, "rows_clean_new": 3, "rows_duplicate": 1,
        "rows_quarantined": 4}
    assert a1["details"] == {
        S.MISSING_ITEM: 1, S.MALFORMED: 1, S.NO_METADATA: 1, S.BAD_ENCODING: 1, "items": 3,
        "rows_updated": 0, "rows_unchanged": 0, "item_idx_filled": 0, "duplicate_lines": 1,
        "items_without_metadata": 1, "catalogue_items_without_events": 1}
    audit = lake.read(spark, L.AUDIT_BATCHES).where(F.col(S.STAGE) == "items").collect()
    assert [(r[S.BATCH_ID], r["rows_in"], r["details"]["items_without_metadata"])
            for r in audit] == [(batch1, 8, 1)]

    # the same command again: already ingested, nothing written
    versions = {t: lake.version(spark, t) for t in ingest_items.TABLES}
    assert ingest_items.main(spark, cfg(b1)) is None
    assert {t: lake.version(spark, t) for t in ingest_items.TABLES} == versions
    # --force: reprocessed, the same rows (untouched: same ingest_ts), no duplicates
    a1f = ingest_items.main(spark, cfg(b1, items__force=True))
    assert a1f[S.BATCH_ID] == batch1
    assertDataFrameEqual(_silver(spark, lake), first)
    assert lake.read(spark, L.QUARANTINE_ITEMS).count() == 4
    assert (a1f["rows_in"], a1f["rows_clean_new"], a1f["rows_duplicate"],
            a1f["rows_quarantined"], a1f["details"]["rows_unchanged"]) == (8, 0, 4, 4, 3)

    # an updated catalogue: i2 changed, i7 new, i1 unchanged, i6 unchanged but now has events
    lake.write(spark.createDataFrame([("i6", 3)], S.INDEX_SCHEMA[S.ITEM_IDX]),
               L.SILVER_ITEM_INDEX, mode="append")
    b2 = tmp_path / "b2.csv"
    b2.write_text("item_id,title,category,brand\n"
                  "i1,Alpha,Books > Fiction,Penguin\n"
                  "i2,Beta (3rd ed.),Books,Orbit\n"
                  "i6,Delta,Toys,Lego\n"
                  "i7,Epsilon,Games,\n")
    a2 = ingest_items.main(spark, cfg(b2))
    batch2 = a2[S.BATCH_ID]
    assert batch2 != batch1
    before = {r[S.ITEM_ID]: r for r in first.collect()}
    ts2 = lake.read(spark, L.SILVER_ITEMS).where(F.col(S.BATCH_ID) == batch2).select(
        S.INGEST_TS).distinct().collect()
    assert len(ts2) == 1
    assertDataFrameEqual(_silver(spark, lake), [
        before["i1"],  # untouched
        Row(item_id="i2", item_idx=1, title="Beta (3rd ed.)", brand="Orbit", batch_id=batch2,
            ingest_ts=ts2[0][0]),
        Row(**{**before["i6"].asDict(), S.ITEM_IDX: 3}),  # only the index filled in
        Row(item_id="i7", item_idx=None, title="Epsilon", brand=None, batch_id=batch2,
            ingest_ts=ts2[0][0]),
    ])
    text = {r[S.ITEM_ID]: r[S.TEXT] for r in lake.read(spark, L.SILVER_ITEMS).collect()}
    assert text["i2"] == "Beta (3rd ed.). Books. Brand: Orbit."
    assert (a2["rows_in"], a2["rows_clean_new"], a2["details"]["rows_updated"],
            a2["rows_duplicate"], a2["rows_quarantined"]) == (4, 1, 1, 2, 0)
    assert a2["details"]["item_idx_filled"] == 1
    assert (a2["details"]["items_without_metadata"],
            a2["details"]["catalogue_items_without_events"]) == (1, 1)  # i9; i7


def test_cli_mapping_naming_missing_columns_is_one_error(spark, tmp_path: Path, capsys):
    p = tmp_path / "c.csv"
    p.write_text("item_id,title\ni1,Alpha\n")
    lake_dir = tmp_path / "lake"
    rc = cli.main(["--lake", str(lake_dir), "ingest-items", "--source-format", "generic",
                   "--path", str(p), "--set",
                   "items.generic.columns={item_id: item_id, title: name, brand: maker}"])
    assert rc == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reclake ingest-items: error: ")
    assert "['maker', 'name']" in err[0]
    assert not (lake_dir / "silver" / "items").exists()


@pytest.mark.realdata
def test_realdata_movielens_100k_items(spark, data_dir: Path, make_cfg):
    cfg = make_cfg(items__source_format="movielens-100k",
                   items__path=str(data_dir / "movielens-100k" / "u.item"))
    audit = ingest_items.main(spark, cfg)
    assert (audit["rows_in"], audit["rows_clean_new"], audit["rows_quarantined"]) == (1682, 1682, 0)
    items = Lake(cfg.lake).read(spark, L.SILVER_ITEMS)
    rows = {r[S.ITEM_ID]: r for r in items.where("item_id in ('1', '543')").collect()}
    assert rows["1"][S.CATEGORY_PATH] == ["Animation", "Children's", "Comedy"]
    assert rows["1"][S.TEXT] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert rows["543"][S.TITLE] == "Misérables, Les (1995)"  # latin-1 in the file
