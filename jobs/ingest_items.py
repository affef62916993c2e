"""Ingest item metadata (titles, genres / category paths, brands, tags) into silver/items, the
catalogue that text and cold-start models read.

    spark-submit jobs/ingest_items.py --lake ./lake --source-format movielens-100k \\
        --path data/ml-100k/u.item
    spark-submit jobs/ingest_items.py --lake ./lake --source-format movielens-csv \\
        --path data/ml-25m/movies.csv --tags data/ml-25m/tags.csv

Formats (readers in ``jobs/sources/items.py``): ``movielens-100k`` (u.item, latin-1, genre
flags), ``movielens-csv`` (movies.csv, plus the most frequent tags of tags.csv with ``--tags``),
``rees46`` and ``taobao`` (event logs aggregated to one row per product; Taobao's only metadata
is an opaque category id, so text models on it are a category baseline) and ``generic`` (CSV or
JSON lines mapped by ``items.generic.columns``).

One call is one *batch*. Each raw line is cleaned and validated once (``standardize_items``);
lines with a problem go to ``quarantine/items`` with reason codes (``missing_item``,
``malformed_row``, ``bad_encoding``, ``no_metadata``: neither title, description, category,
brand nor tags). The clean lines give one row per ``item_id``: the last line of the file wins
(files in path order), or, for event logs, the aggregate of the item's lines. Each item gets
``text`` (``item_text``), what a language model reads::

    Toy Story (1995). Genres: Animation, Children's, Comedy.
    Galaxy S9. electronics > smartphone. Brand: samsung. Tags: android, camera. color: black.

``silver/items`` is MERGEd on ``item_id``: new items are inserted, items whose title, text,
category path, brand or attributes changed are updated, unchanged rows are left alone (so
re-embedding by text hash sees real changes only). ``item_idx`` comes from
``silver/item_index`` (items without events keep null; an existing row gets its index filled
once the item has events). ``audit/batches`` (stage ``items``) records ``rows_in = rows_clean_new
+ rows_updated + rows_duplicate + rows_quarantined``, where ``rows_duplicate`` counts unchanged
items and the extra lines of an item id within the batch; ``details`` has each of these, the
reason counts, and after the write ``items_without_metadata`` (ids in ``silver/item_index``
without a catalogue row) and ``catalogue_items_without_events`` (the reverse).

The batch id defaults to a hash of the format, its options and the files' names, sizes and
modification times: running the same command twice finds the batch done and writes nothing;
``--force`` reprocesses it (same rows, no duplicates).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger, summary, timed
from jobs.ingest import batch_fingerprint, list_input_files
from jobs.sources.base import blank_to_null, check_text_files
from jobs.sources.items import ItemSpec, check_generic_mapping, get_item_reader

log = get_logger("ingest_items")

AUDIT_STAGE = "items"
_REPLACEMENT_CHAR = "\ufffd"
# every table one batch writes, in the order it writes them
TABLES = (L.QUARANTINE_ITEMS, L.SILVER_ITEMS, L.AUDIT_BATCHES)
# how a batch's item compares with its silver/items row (diff_items)
_CHANGE = "_change"
NEW, CHANGED, IDX_FILLED, UNCHANGED = "new", "changed", "item_idx", "unchanged"
# the columns whose change makes an item "changed" (attributes compared as sorted entries)
CONTENT_COLUMNS: tuple[str, ...] = (S.TITLE, S.TEXT, S.CATEGORY_PATH, S.BRAND, S.ATTRIBUTES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-format", dest="items.source_format", default=None,
                   help="movielens-100k | movielens-csv | rees46 | taobao | generic")
    p.add_argument("--path", dest="items.path", default=None, required=True,
                   help="file, directory or glob")
    p.add_argument("--tags", dest="items.tags_path", default=None, metavar="PATH",
                   help="movielens-csv: tags.csv; each film's most frequent tags join its text")
    p.add_argument("--batch-id", dest="items.batch_id", default=None,
                   help="default: hash of format, options, file names, sizes, mtimes")
    p.add_argument("--force", dest="items.force", action="store_const", const=True,
                   default=None, help="reprocess a batch already recorded in audit/batches")
    p.add_argument("--encoding", dest="items.encoding", default=None,
                   help="default per format (latin-1 for u.item, else UTF-8)")


def _check_local(path: str, what: str) -> None:
    if "://" not in path and not glob.has_magic(path) and not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path}")


def preflight(cfg: Config) -> None:
    """What can be checked before Spark starts: a known format, a local input path (and tags
    path) that exists, and a generic mapping of known catalogue fields with ``item_id``."""
    ic = cfg.items
    get_item_reader(ic.source_format)
    if not ic.path:
        raise ConfigError("--path is required (or set items.path in the config)")
    _check_local(ic.path, "input files")
    if ic.tags_path:
        if ic.source_format != "movielens-csv":
            raise ConfigError(f"--tags (items.tags_path) applies to movielens-csv only, not "
                              f"{ic.source_format}")
        _check_local(ic.tags_path, "tags file")
    if ic.source_format == "generic":
        check_generic_mapping(cfg)


# --- pure transforms ------------------------------------------------------------------------------


def _clean_array(c: Column) -> Column:
    kept = F.filter(F.transform(c, blank_to_null), lambda x: x.isNotNull())
    return F.when(F.size(kept) > 0, kept)


def clean_item_fields(df: DataFrame) -> DataFrame:
    """Normalise the raw item fields of ``df`` (``schema.RAW_ITEM_FIELDS``; other columns pass):
    strings trimmed, blank -> null; arrays without blank elements, empty -> null; attributes
    without blank values, empty -> null. Equal content then has one representation."""
    S.require_columns(df, *S.RAW_ITEM_FIELDS, where="clean_item_fields")
    attrs = F.map_filter(F.transform_values(S.ATTRIBUTES, lambda _, v: blank_to_null(v)),
                         lambda _, v: v.isNotNull())
    cleaned = {
        S.ITEM_ID: blank_to_null(F.col(S.ITEM_ID)),
        S.TITLE: blank_to_null(F.col(S.TITLE)),
        S.DESCRIPTION: blank_to_null(F.col(S.DESCRIPTION)),
        S.CATEGORY_PATH: _clean_array(F.col(S.CATEGORY_PATH)),
        S.BRAND: blank_to_null(F.col(S.BRAND)),
        S.TAGS: _clean_array(F.col(S.TAGS)),
        S.ATTRIBUTES: F.when(F.size(attrs) > 0, attrs),
    }
    return df.withColumns(cleaned)


def _has_metadata() -> Column:
    return (F.col(S.TITLE).isNotNull() | F.col(S.DESCRIPTION).isNotNull()
            | F.col(S.CATEGORY_PATH).isNotNull() | F.col(S.BRAND).isNotNull()
            | F.col(S.TAGS).isNotNull())


def standardize_items(raw: DataFrame, *, spec: ItemSpec) -> DataFrame:
    """Clean and validate raw item lines.

    In: ``schema.RAW_ITEM_FIELDS``, ``n_fields``, ``raw`` (and any lineage columns, kept). Out:
    the same columns cleaned (``clean_item_fields``) plus ``reasons``: reason codes, empty when
    clean. ``missing_item``, ``malformed_row`` (``n_fields`` differs from the format's),
    ``bad_encoding`` (U+FFFD in ``raw``) are per line; ``no_metadata`` (no title, description,
    category, brand or tags) is per line, or for event logs (``spec.aggregate``) per item: every
    otherwise clean line of an item none of whose lines has any metadata.
    """
    S.require_columns(raw, *S.RAW_ITEM_FIELDS, S.N_FIELDS, S.RAW, where="standardize_items")
    df = clean_item_fields(raw)
    checks: list[tuple[Column, str]] = [
        (F.col(S.ITEM_ID).isNull(), S.MISSING_ITEM),
        (F.col(S.RAW).contains(_REPLACEMENT_CHAR), S.BAD_ENCODING),
    ]
    if spec.expected_fields >= 0:
        checks.insert(1, (F.col(S.N_FIELDS) != spec.expected_fields, S.MALFORMED))
    if spec.aggregate is None:
        checks.append((~_has_metadata(), S.NO_METADATA))
    reasons = F.filter(
        F.array(*[F.when(F.coalesce(cond, F.lit(False)), F.lit(code)) for cond, code in checks]),
        lambda r: r.isNotNull(),
    )
    df = df.withColumn(S.REASONS, reasons)
    if spec.aggregate is not None:
        ok = F.size(S.REASONS) == 0
        item_has = F.max(F.when(ok, _has_metadata())).over(Window.partitionBy(S.ITEM_ID))
        df = df.withColumn(
            S.REASONS,
            F.when(ok & ~F.coalesce(item_has, F.lit(False)), F.array(F.lit(S.NO_METADATA)))
            .otherwise(F.col(S.REASONS)),
        )
    return df


def build_quarantine_items(std: DataFrame) -> DataFrame:
    """Rejected lines: ``batch_id, source, source_file, raw, reasons, ingest_ts``."""
    return std.where(F.size(S.REASONS) > 0).select(*[f.name for f in S.QUARANTINE_SCHEMA.fields])


def clean_items(std: DataFrame) -> DataFrame:
    """Standardised lines without any reason code."""
    return std.where(F.size(S.REASONS) == 0)


def item_text(*, category_style: str = "path", text_attributes: tuple[str, ...] = ()) -> Column:
    """The text a language model reads for an item, from ``title``, ``category_path``, ``brand``,
    ``description``, ``tags`` and ``attributes``::

        title. category. Brand: brand. description. Tags: a, b, c. attr: value.

    ``category_path`` reads ``a > b > c`` (``category_style="path"``) or ``Genres: a, b, c``
    (``"genres"``); only the ``text_attributes`` keys of ``attributes`` appear, in that order,
    as ``key: value``. Empty parts are skipped; every part ends with a full stop unless it ends
    in ``.``, ``!`` or ``?`` already. Null when every part is empty.
    """
    cat = F.col(S.CATEGORY_PATH)
    if category_style == "genres":
        category = F.concat(F.lit("Genres: "), F.array_join(cat, ", "))
    elif category_style == "path":
        category = F.array_join(cat, " > ")
    else:
        raise ValueError(f"category_style must be path|genres, got {category_style!r}")
    parts = [
        F.col(S.TITLE),
        F.when(F.size(cat) > 0, category),
        F.concat(F.lit("Brand: "), F.col(S.BRAND)),
        F.col(S.DESCRIPTION),
        F.when(F.size(S.TAGS) > 0, F.concat(F.lit("Tags: "), F.array_join(S.TAGS, ", "))),
        *[F.concat(F.lit(f"{k}: "), F.col(S.ATTRIBUTES)[k]) for k in text_attributes],
    ]
    kept = F.filter(F.array(*parts), lambda p: p.isNotNull() & (F.trim(p) != ""))
    ended = F.transform(
        kept, lambda p: F.when(F.trim(p).rlike(r"[.!?]$"), F.trim(p))
        .otherwise(F.concat(F.trim(p), F.lit(".")))
    )
    return F.when(F.size(kept) > 0, F.array_join(ended, " "))


def build_items(clean: DataFrame, *, spec: ItemSpec) -> DataFrame:
    """One row per ``item_id`` from clean lines: the last line of an id (``source_file`` then
    ``line``, descending), or ``spec.aggregate`` of its lines. Out: ``item_id``, ``title``,
    ``text`` (``item_text``), ``category_path``, ``brand``, ``attributes``."""
    if spec.aggregate is None:
        S.require_columns(clean, S.SOURCE_FILE, S.LINE, where="build_items")
        w = Window.partitionBy(S.ITEM_ID).orderBy(F.col(S.SOURCE_FILE).desc(), F.col(S.LINE).desc())
        items = clean.withColumn("_rn", F.row_number().over(w)).where(F.col("_rn") == 1)
    else:
        items = clean_item_fields(spec.aggregate(clean))
    text = item_text(category_style=spec.category_style, text_attributes=spec.text_attributes)
    return items.select(S.ITEM_ID, S.TITLE, text.alias(S.TEXT), S.CATEGORY_PATH, S.BRAND,
                        S.ATTRIBUTES)


def build_silver_items(items: DataFrame, item_index: DataFrame | None, *, source: str,
                       batch_id: str, ingest_ts: datetime) -> DataFrame:
    """``build_items`` output with ``item_idx`` (left join on ``item_id`` with ``item_index``;
    null without one) and lineage: the columns of ``schema.ITEMS_SCHEMA``, in order."""
    if item_index is not None:
        items = items.join(item_index.select(S.ITEM_ID, S.ITEM_IDX), S.ITEM_ID, "left")
    else:
        items = items.withColumn(S.ITEM_IDX, F.lit(None).cast("int"))
    items = items.withColumns({
        S.SOURCE: F.lit(source),
        S.BATCH_ID: F.lit(batch_id),
        S.INGEST_TS: F.lit(ingest_ts).cast(T.TimestampType()),
    })
    # arrays and maps keep their types: Spark cannot cast to the schema's non-null elements
    return items.select(*[
        F.col(f.name) if isinstance(f.dataType, (T.ArrayType, T.MapType))
        else F.col(f.name).cast(f.dataType) for f in S.ITEMS_SCHEMA.fields
    ])


def _comparable(name: str, c: Column) -> Column:
    # maps cannot be compared in Spark: compare their entries, sorted
    return F.array_sort(F.map_entries(c)) if name == S.ATTRIBUTES else c


def diff_items(items: DataFrame, existing: DataFrame | None) -> DataFrame:
    """``items`` (silver/items columns) plus ``_change`` against the ``existing`` table: ``new``
    (no row yet), ``changed`` (a ``CONTENT_COLUMNS`` value differs), ``item_idx`` (same content,
    an index that the row lacks or has otherwise) or ``unchanged``."""
    if existing is None:
        return items.withColumn(_CHANGE, F.lit(NEW))
    old = existing.select(
        S.ITEM_ID, F.lit(True).alias("_old"), F.col(S.ITEM_IDX).alias("_old_idx"),
        *[F.col(c).alias(f"_old_{c}") for c in CONTENT_COLUMNS],
    )
    j = items.join(old, S.ITEM_ID, "left")
    same = F.lit(True)
    for c in CONTENT_COLUMNS:
        same = same & _comparable(c, F.col(c)).eqNullSafe(_comparable(c, F.col(f"_old_{c}")))
    idx_differs = F.col(S.ITEM_IDX).isNotNull() & ~F.col(S.ITEM_IDX).eqNullSafe(F.col("_old_idx"))
    change = (F.when(F.col("_old").isNull(), NEW).when(~same, CHANGED)
              .when(idx_differs, IDX_FILLED).otherwise(UNCHANGED))
    return j.select(*items.columns, change.alias(_CHANGE))


def items_without_metadata(item_index: DataFrame, items: DataFrame) -> DataFrame:
    """``item_id`` of ``silver/item_index`` rows (items with events) without a catalogue row."""
    return item_index.select(S.ITEM_ID).join(items.select(S.ITEM_ID), S.ITEM_ID, "left_anti")


def catalogue_items_without_events(items: DataFrame, item_index: DataFrame | None) -> DataFrame:
    """``item_id`` of ``silver/items`` rows that are not in ``silver/item_index``."""
    ids = items.select(S.ITEM_ID)
    return ids if item_index is None else ids.join(item_index.select(S.ITEM_ID), S.ITEM_ID,
                                                   "left_anti")


# --- I/O -------------------------------------------------------------------------------------------


def batch_key(cfg: Config) -> str:
    """What besides the files makes a batch: the format and the options that change its rows."""
    ic = cfg.items
    opts: dict = {"encoding": ic.encoding}
    if ic.tags_path:
        opts["max_tags"] = ic.max_tags
    if ic.source_format == "generic":
        g = ic.generic
        opts["generic"] = {"format": g.format, "header": g.header, "delimiter": g.delimiter,
                           "columns": dict(g.columns), "category_separator": g.category_separator,
                           "attributes": list(g.attributes)}
    return f"items:{ic.source_format}:{json.dumps(opts, sort_keys=True, default=str)}"


def items_batch_audit(spark: SparkSession, lake: Lake, batch_id: str) -> dict | None:
    """The ``audit/batches`` row (stage ``items``) of a batch already ingested; else None."""
    if not lake.exists(spark, L.AUDIT_BATCHES):
        return None
    row = lake.read(spark, L.AUDIT_BATCHES).where(
        (F.col(S.BATCH_ID) == batch_id) & (F.col(S.STAGE) == AUDIT_STAGE)
    ).first()
    return None if row is None else row.asDict()


def merge_silver_items(lake: Lake, diff: DataFrame) -> None:
    """MERGE ``diff_items`` rows into silver/items: insert ``new``, update every column of
    ``changed`` (keeping a known index), only ``item_idx`` of ``item_idx`` rows."""
    from delta.tables import DeltaTable

    cols = [f.name for f in S.ITEMS_SCHEMA.fields]
    spark = diff.sparkSession
    target = DeltaTable.forPath(spark, lake.path(L.SILVER_ITEMS))
    update_all = {c: f"s.`{c}`" for c in cols}
    update_all[S.ITEM_IDX] = f"coalesce(s.`{S.ITEM_IDX}`, t.`{S.ITEM_IDX}`)"
    (
        target.alias("t")
        .merge(diff.where(F.col(_CHANGE) != UNCHANGED).alias("s"),
               f"t.`{S.ITEM_ID}` = s.`{S.ITEM_ID}`")
        .whenMatchedUpdate(condition=f"s.{_CHANGE} = '{CHANGED}'", set=update_all)
        .whenMatchedUpdate(condition=f"s.{_CHANGE} = '{IDX_FILLED}'",
                           set={S.ITEM_IDX: f"s.`{S.ITEM_IDX}`"})
        .whenNotMatchedInsert(condition=f"s.{_CHANGE} = '{NEW}'",
                              values={c: f"s.`{c}`" for c in cols})
        .execute()
    )


def main(spark: SparkSession, cfg: Config) -> dict | None:
    """Ingest one catalogue batch; returns its ``audit/batches`` row (stage ``items``) as a dict,
    None when the batch was already ingested."""
    preflight(cfg)
    ic = cfg.items
    lake = Lake(cfg.lake)
    reader = get_item_reader(ic.source_format)
    files = list_input_files(spark, ic.path)
    if not files:
        raise FileNotFoundError(f"no input files at {ic.path}")
    if ic.tags_path:
        tag_files = list_input_files(spark, ic.tags_path)
        if not tag_files:
            raise FileNotFoundError(f"no tags file at {ic.tags_path}")
        files = files + tag_files
    check_text_files(spark, files, ic.encoding or "UTF-8")
    batch_id = ic.batch_id or batch_fingerprint(batch_key(cfg), files)
    log.info("batch %s: %d file(s), %s bytes, format %s", batch_id, len(files),
             f"{sum(f[1] for f in files):,}", ic.source_format)
    if not ic.force and items_batch_audit(spark, lake, batch_id) is not None:
        log.info("batch %s is already ingested (audit/batches, stage items); nothing to do. "
                 "Use --force to reprocess it.", batch_id)
        summary("ingest-items", tables=(), lake=lake.root,
                note=f"batch {batch_id} already ingested, nothing written")
        return None
    t_start = time.perf_counter()
    ingest_ts = datetime.now(timezone.utc).replace(tzinfo=None)

    raw, spec = reader(spark, ic.path, cfg)
    lineage = raw.select(
        *S.RAW_ITEM_FIELDS, S.N_FIELDS, S.RAW, S.LINE, S.SOURCE_FILE,
        F.lit(spec.name).alias(S.SOURCE), F.lit(batch_id).alias(S.BATCH_ID),
        F.lit(ingest_ts).cast(T.TimestampType()).alias(S.INGEST_TS),
    )
    # one parse of the input: quarantine, the counts and silver/items all read this cache
    std = standardize_items(lineage, spec=spec).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        audit = _write_batch(spark, lake, std, spec, batch_id, ingest_ts, t_start)
    finally:
        std.unpersist()
    d = audit["details"]
    summary("ingest-items", tables=TABLES, lake=lake.root, seconds=audit["seconds"],
            batch=batch_id, rows_in=audit["rows_in"], clean_new=audit["rows_clean_new"],
            updated=d["rows_updated"], unchanged_or_duplicate=audit["rows_duplicate"],
            quarantined=audit["rows_quarantined"],
            items_without_metadata=d["items_without_metadata"],
            catalogue_items_without_events=d["catalogue_items_without_events"])
    return audit


def _write_batch(spark: SparkSession, lake: Lake, std: DataFrame, spec: ItemSpec, batch_id: str,
                 ingest_ts: datetime, t_start: float) -> dict:
    batch_pred = f"{S.BATCH_ID} = {quote(batch_id)}"
    with timed(log, "quarantine/items") as info:
        lake.replace_rows(build_quarantine_items(std), L.QUARANTINE_ITEMS, batch_pred,
                          partition_by=[S.BATCH_ID])
        counts = std.agg(F.count(F.lit(1)), F.sum(F.when(F.size(S.REASONS) > 0, 1).otherwise(0))
                         ).first()
        rows_in, quarantined = int(counts[0]), int(counts[1] or 0)
        reason_counts = {r[0]: int(r[1]) for r in std.select(F.explode(S.REASONS).alias("r"))
                         .groupBy("r").count().collect()}
        info["rows"] = quarantined

    with timed(log, "silver/items") as info:
        index = (lake.read(spark, L.SILVER_ITEM_INDEX)
                 if lake.exists(spark, L.SILVER_ITEM_INDEX) else None)
        silver = build_silver_items(build_items(clean_items(std), spec=spec), index,
                                    source=spec.name, batch_id=batch_id, ingest_ts=ingest_ts)
        existing = lake.read(spark, L.SILVER_ITEMS) if lake.exists(spark, L.SILVER_ITEMS) else None
        diff = diff_items(silver, existing).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            change = {r[0]: int(r[1]) for r in diff.groupBy(_CHANGE).count().collect()}
            if existing is None:
                lake.write(diff.drop(_CHANGE), L.SILVER_ITEMS, mode="append")
            elif any(change.get(k) for k in (NEW, CHANGED, IDX_FILLED)):
                merge_silver_items(lake, diff)
        finally:
            diff.unpersist()
        new, changed = change.get(NEW, 0), change.get(CHANGED, 0)
        idx_filled, unchanged = change.get(IDX_FILLED, 0), change.get(UNCHANGED, 0)
        info.update(new=new, updated=changed, item_idx_filled=idx_filled, unchanged=unchanged)

    with timed(log, "items without metadata / without events") as info:
        items_now = lake.read(spark, L.SILVER_ITEMS)
        no_meta = 0 if index is None else items_without_metadata(index, items_now).count()
        no_events = catalogue_items_without_events(items_now, index).count()
        info.update(items_without_metadata=no_meta, catalogue_items_without_events=no_events)

    n_items = new + changed + idx_filled + unchanged
    dup_lines = rows_in - quarantined - n_items
    audit = {
        S.BATCH_ID: batch_id, S.STAGE: AUDIT_STAGE, S.SOURCE: spec.name,
        "rows_in": rows_in, "rows_out": new + changed, "rows_clean_new": new,
        "rows_duplicate": unchanged + idx_filled + dup_lines, "rows_quarantined": quarantined,
        "details": {
            **reason_counts, "items": n_items, "rows_updated": changed,
            "rows_unchanged": unchanged + idx_filled, "item_idx_filled": idx_filled,
            "duplicate_lines": dup_lines, "items_without_metadata": no_meta,
            "catalogue_items_without_events": no_events, **spec.details,
        },
        "seconds": time.perf_counter() - t_start,
    }
    lake.record_audit(spark, audit)
    log.info("batch %s: rows_in=%s = new %s + updated %s + unchanged %s + duplicate lines %s + "
             "quarantined %s; reasons %s", batch_id, f"{rows_in:,}", f"{new:,}", f"{changed:,}",
             f"{unchanged + idx_filled:,}", f"{dup_lines:,}", f"{quarantined:,}",
             reason_counts or "none")
    log.info("%s item(s) with events lack metadata (silver/item_index without silver/items); "
             "%s catalogue item(s) have no events", f"{no_meta:,}", f"{no_events:,}")
    if n_items == 0:
        log.warning("batch %s gave silver/items no item (%s lines, %s quarantined; see "
                    "quarantine/items where batch_id = '%s')", batch_id, f"{rows_in:,}",
                    f"{quarantined:,}", batch_id)
    return audit


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("ingest-items"))
