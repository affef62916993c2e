"""Ingest raw behaviour logs into bronze, quarantine, silver, the id indices and the batch audit.

    spark-submit jobs/ingest.py --lake ./lake --source-format taobao --path data/UserBehavior.csv

One call is one *batch*: raw rows are appended to ``bronze/events`` as read; each is typed and
validated once (``standardize_events``); rows with any problem go to ``quarantine/events`` with
their reason codes; the rest are deduplicated by ``event_id`` and MERGEd insert-only into
``silver/events``; new user / item ids get stable int32 indices. ``audit/batches`` records, per
batch and stage, ``rows_in = rows_clean_new + rows_duplicate + rows_quarantined +
rows_suppressed`` exactly. Rows of users that ``reclake forget`` erased (``audit/suppressed_users``,
matched by the sha256 of the user id as stored) are dropped before bronze and counted as
``rows_suppressed``, unless ``ingest.allow_suppressed`` (``--allow-suppressed``) lets them in.

The batch id defaults to a hash of the format and the files' names, sizes and modification times,
so running the same command twice finds the batch already done and changes nothing; ``--force``
reprocesses it (its rows are replaced, never duplicated).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import hmac
import os
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.errors import InputError
from common.lake import Lake, quote, retry_conflicts
from common.log import get_logger, summary, timed
from jobs.sources import get_reader
from jobs.sources.base import SourceSpec, check_text_files, read_failure, strip_space

log = get_logger("ingest")

# Beyond these, timestamp_seconds / timestamp_millis overflow (Spark's max is year 294247)
_MAX_EPOCH_S = 9.0e12
_MAX_EPOCH_MS = 9.0e15
_REPLACEMENT_CHAR = "\ufffd"
BROADCAST_DUP_IDS = 500_000  # more repeated ids than this: deduplicate with a full shuffle

# every table one batch writes, in the order it writes them
TABLES = (L.BRONZE_EVENTS, L.QUARANTINE_EVENTS, L.SILVER_EVENTS, L.SILVER_USER_INDEX,
          L.SILVER_ITEM_INDEX, L.AUDIT_BATCHES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-format", dest="ingest.source_format", default=None,
                   help="movielens-100k | movielens-dat | movielens-csv | taobao | retailrocket | "
                        "rees46 | lastfm-hetrec | generic")
    p.add_argument("--path", dest="ingest.path", default=None, required=True,
                   help="file, directory or glob")
    p.add_argument("--batch-id", dest="ingest.batch_id", default=None,
                   help="default: hash of format + file names, sizes, mtimes")
    p.add_argument("--force", dest="ingest.force", action="store_const", const=True,
                   default=None, help="reprocess a batch already recorded in audit/batches")
    p.add_argument("--encoding", dest="ingest.encoding", default=None)
    p.add_argument("--timezone", dest="ingest.timezone", default=None,
                   help="zone of naive datetime strings (default UTC)")
    p.add_argument("--allow-suppressed", dest="ingest.allow_suppressed", action="store_const",
                   const=True, default=None,
                   help="ingest rows of users `reclake forget` erased (default: dropped, counted)")


def preflight(cfg: Config) -> None:
    """What can be checked before Spark starts: a known source format, and a local input path
    that exists (URIs and globs are listed through Hadoop once Spark runs)."""
    ic = cfg.ingest
    get_reader(ic.source_format)
    if not ic.path:
        raise ConfigError("--path is required (or set ingest.path in the config)")
    if "://" not in ic.path and not glob.has_magic(ic.path) and not os.path.exists(ic.path):
        raise FileNotFoundError(f"no input files at {ic.path}")
    pseudonym_key(cfg)


MIN_KEY_BYTES = 16


def pseudonym_key(cfg: Config) -> bytes | None:
    """The HMAC key of ``ingest.pseudonymize`` from the environment (None when it is off).
    The key is never put in the config, a table, a log line or a run record."""
    ic = cfg.ingest
    if not ic.pseudonymize:
        return None
    key = os.environ.get(ic.pseudonym_key_env, "").encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"ingest.pseudonymize is on but ${ic.pseudonym_key_env} is "
            f"{'unset' if not key else f'shorter than {MIN_KEY_BYTES} bytes'}: export a secret "
            f"key (e.g. `export {ic.pseudonym_key_env}=$(openssl rand -hex 32)`), the same one "
            f"for every batch of the lake")
    return key


def pseudonym(key: bytes, user_id: str) -> str:
    """HMAC-SHA256 of a user id under ``key``, hex: what ``ingest.pseudonymize`` stores."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize_lineage(lineage: DataFrame, key: bytes, max_id_length: int) -> DataFrame:
    """User ids replaced by their keyed HMAC (a pandas UDF: the key travels in the function's
    closure, never in a query plan that Spark would print or log), and the raw line replaced by
    its parsed fields joined by tabs with the user id so replaced: the original line holds the id
    and is not kept. An id longer than ``max_id_length`` is flagged first (``_user_too_long``),
    so that it is still quarantined as ``id_too_long``."""
    @F.pandas_udf("string")
    def hmac_ids(ids: pd.Series) -> pd.Series:
        base = hmac.new(key, digestmod=hashlib.sha256)

        def one(v):
            if not isinstance(v, str):
                return None
            h = base.copy()
            h.update(v.encode("utf-8"))
            return h.hexdigest()

        return pd.Series([one(v) for v in ids], index=ids.index, dtype=object)

    user = F.col(S.USER_ID)
    hashed = hmac_ids(user)
    out = lineage.withColumn(S.USER_TOO_LONG, F.coalesce(F.length(user) > max_id_length,
                                                         F.lit(False)))
    out = out.withColumn(S.USER_ID, hashed)
    return out.withColumn(S.RAW, F.concat_ws("\t", *[F.col(f) for f in S.RAW_FIELDS]))


# --- pure transforms ------------------------------------------------------------------------------


def _parse_ts(raw: Column, ts_format: str, tz: str) -> tuple[Column, Column]:
    """(timestamp or null, numeric-but-overflowing flag) for a raw ts string."""
    trimmed = strip_space(raw)
    num = trimmed.try_cast("double")
    is_num = trimmed.rlike(r"^-?[0-9]+(\.[0-9]+)?$")

    def from_seconds(x: Column) -> Column:
        return F.when(F.abs(x) < _MAX_EPOCH_S, F.timestamp_micros((x * 1_000_000).cast("long")))

    def from_millis(x: Column) -> Column:
        return F.when(F.abs(x) < _MAX_EPOCH_MS, F.timestamp_micros((x * 1_000).cast("long")))

    def from_string(s: Column, pattern: str | None = None) -> Column:
        parsed = F.try_to_timestamp(s, F.lit(pattern)) if pattern else s.try_cast("timestamp")
        if tz.upper() in ("UTC", "Z", "GMT", "ETC/UTC"):
            return parsed
        has_zone = s.rlike(r"(Z|[+-][0-9]{2}:?[0-9]{2}|[A-Za-z]{3,}[A-Za-z/_+-]*)$")
        return F.when(has_zone, parsed).otherwise(F.to_utc_timestamp(parsed, tz))

    if ts_format == "epoch_s":
        ts = from_seconds(num)
        overflow = num.isNotNull() & (F.abs(num) >= _MAX_EPOCH_S)
    elif ts_format == "epoch_ms":
        ts = from_millis(num)
        overflow = num.isNotNull() & (F.abs(num) >= _MAX_EPOCH_MS)
    elif ts_format == "auto":
        # >= 1e11 cannot be seconds of any plausible date (year 5138): read it as milliseconds
        ts = F.when(
            is_num, F.when(F.abs(num) >= 1e11, from_millis(num)).otherwise(from_seconds(num))
        ).otherwise(from_string(trimmed))
        overflow = is_num & (F.abs(num) >= _MAX_EPOCH_MS)
    elif ts_format in ("iso", "none"):
        ts = from_string(trimmed)
        overflow = F.lit(False)
    else:  # a Spark datetime pattern
        ts = from_string(trimmed, ts_format)
        overflow = F.lit(False)
    return ts, overflow


def _behavior_map(spec: SourceSpec, cfg: Config) -> dict[str, str]:
    out = {b: b for b in cfg.vocabulary}
    out.update({k.lower(): v for k, v in spec.behavior_map.items()})
    out.update({k.lower(): v for k, v in cfg.ingest.behavior_map.items()})
    return out


def _ts_bound(value: str | None, default: datetime) -> datetime:
    if value is None:
        return default
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def standardize_events(raw: DataFrame, *, spec: SourceSpec, cfg: Config) -> DataFrame:
    """Type and validate raw fields.

    In: the raw-field columns of ``schema.RAW_FIELDS`` (strings), ``n_fields``, ``raw`` and the
    bronze lineage columns. Out: canonical columns (``event_id``, ``user_id``, ``item_id``,
    ``behavior`` canonical, ``value`` double, ``ts`` UTC timestamp, ``session_id``,
    ``category_id``, ``event_date``) plus ``reasons``: array of reason codes, empty when clean.
    """
    S.require_columns(raw, *S.RAW_FIELDS, S.N_FIELDS, S.RAW, where="standardize_events")
    ic = cfg.ingest
    bmap = _behavior_map(spec, cfg)
    lookup = F.create_map(*[F.lit(x) for kv in bmap.items() for x in kv])
    behavior = lookup[F.lower(F.col(S.BEHAVIOR))]

    ts, ts_overflow = _parse_ts(F.col(S.TS), spec.ts_format, ic.timezone)
    ts_min = _ts_bound(ic.ts_min, datetime(1990, 1, 1, tzinfo=timezone.utc))
    ts_max = _ts_bound(ic.ts_max, datetime.now(timezone.utc) + timedelta(days=1))

    value = F.col(S.VALUE).try_cast("double")
    finite = value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))
    is_rating = behavior == F.lit(S.RATING_B)
    in_range = F.when(is_rating, value.between(ic.rating_min, ic.rating_max)).otherwise(
        value.between(ic.value_min, ic.value_max)
    )

    checks: list[tuple[Column, str]] = [
        (F.col(S.USER_ID).isNull(), S.MISSING_USER),
        (F.col(S.ITEM_ID).isNull(), S.MISSING_ITEM),
        # a missing ts too (its overflow flag is null then: coalesced, or the row passed clean)
        (F.col("_ts").isNull() & ~F.coalesce(F.col("_ts_overflow"), F.lit(False)), S.BAD_TS),
        (F.col("_ts_overflow") | ~F.col("_ts").between(F.lit(ts_min), F.lit(ts_max)),
         S.TS_OUT_OF_RANGE),
        (F.col(S.BEHAVIOR).isNull() | F.col("_behavior").isNull(), S.UNKNOWN_BEHAVIOR),
        ((F.col(S.VALUE).isNotNull() & ~F.col("_finite"))
         | (F.col(S.VALUE).isNull() & (F.col("_behavior") == S.RATING_B)), S.BAD_VALUE),
        (F.col("_finite") & ~F.col("_in_range"), S.VALUE_OUT_OF_RANGE),
        (F.col(S.RAW).contains(_REPLACEMENT_CHAR), S.BAD_ENCODING),
    ]
    if spec.expected_fields >= 0:
        checks.append((F.col(S.N_FIELDS) != spec.expected_fields, S.MALFORMED))
    too_long = F.col(S.USER_TOO_LONG) if S.USER_TOO_LONG in raw.columns else F.lit(False)
    for c in (S.USER_ID, S.ITEM_ID, S.SESSION_ID):
        too_long = too_long | F.coalesce(F.length(c) > ic.max_id_length, F.lit(False))
    checks.append((too_long, S.ID_TOO_LONG))

    df = raw.select(
        "*",
        behavior.alias("_behavior"),
        ts.alias("_ts"),
        ts_overflow.alias("_ts_overflow"),
        value.alias("_value"),
        finite.alias("_finite"),
        in_range.alias("_in_range"),
    )
    field_reasons = F.filter(
        F.array(*[F.when(F.coalesce(cond, F.lit(False)), F.lit(code)) for cond, code in checks]),
        lambda r: r.isNotNull(),
    )
    # a blank line, or a header line (ingest drops each file's first), has this one reason only
    is_header = F.col(S.IS_HEADER) if S.IS_HEADER in raw.columns else F.lit(False)
    reasons = (F.when(strip_space(F.col(S.RAW)) == "", F.array(F.lit(S.BLANK_LINE)))
               .when(is_header, F.array(F.lit(S.REPEATED_HEADER)))
               .otherwise(field_reasons))
    # 128-bit content id: two seeded 64-bit xxhashes over the typed fields (hashing typed values
    # avoids formatting doubles and timestamps as strings, which cost as much as the rest of
    # standardisation). Null fields are skipped by the hash; user, item, behaviour and ts of a
    # clean row are never null.
    id_cols = [F.lit(spec.name), F.col(S.USER_ID), F.col(S.ITEM_ID), F.col("_behavior"),
               F.col("_ts"), F.col("_value"), F.col(S.SESSION_ID)]
    hashed = F.concat(
        F.lpad(F.hex(F.xxhash64(*id_cols)), 16, "0"),
        F.lpad(F.hex(F.xxhash64(F.lit("reclake.event_id"), *id_cols)), 16, "0"),
    )
    keep = [c for c in raw.columns if c not in S.RAW_FIELDS and c != S.N_FIELDS]
    return df.select(
        F.coalesce(F.col(S.EVENT_ID), hashed).alias(S.EVENT_ID),
        S.USER_ID,
        S.ITEM_ID,
        F.col("_behavior").alias(S.BEHAVIOR),
        F.col("_value").alias(S.VALUE),
        F.col("_ts").alias(S.TS),
        S.SESSION_ID,
        S.CATEGORY_ID,
        F.to_date(F.col("_ts")).alias(S.EVENT_DATE),
        reasons.alias(S.REASONS),
        *keep,
    )


def drop_file_headers(std: DataFrame) -> tuple[DataFrame, int]:
    """``std`` without each file's first header line (header lines are flagged by the reader;
    a file's first is its header, not data; any later one stays, quarantined as
    ``repeated_header``), and how many were dropped. The header lines are few: they are found,
    collected and anti-joined by their place in the file."""
    if S.IS_HEADER not in std.columns:
        return std, 0
    firsts = (std.where(F.col(S.IS_HEADER))
              .groupBy(S.SOURCE_FILE)
              .agg(F.min(F.struct(S.LINE_BLOCK, S.LINE_POS)).alias("_first"))
              .select(S.SOURCE_FILE, F.col(f"_first.{S.LINE_BLOCK}").alias(S.LINE_BLOCK),
                      F.col(f"_first.{S.LINE_POS}").alias(S.LINE_POS))
              .collect())
    if not firsts:
        return std, 0
    keys = std.sparkSession.createDataFrame(
        [tuple(r) for r in firsts],
        T.StructType([T.StructField(S.SOURCE_FILE, T.StringType()),
                      T.StructField(S.LINE_BLOCK, T.LongType()),
                      T.StructField(S.LINE_POS, T.LongType())]))
    on = [S.SOURCE_FILE, S.LINE_BLOCK, S.LINE_POS]
    return std.join(F.broadcast(keys), on, "left_anti"), len(firsts)


def build_quarantine_events(std: DataFrame) -> DataFrame:
    """Rejected rows: ``batch_id, source, source_file, raw, reasons, ingest_ts, user_id``."""
    return std.where(F.size(S.REASONS) > 0).select(
        *[f.name for f in S.QUARANTINE_EVENTS_SCHEMA.fields]
    )


def user_sha256(user_id: Column) -> Column:
    """Hex sha256 of a user id as the lake stores it: the key of ``audit/suppressed_users``."""
    return F.sha2(user_id, 256)


def drop_suppressed(std: DataFrame, suppressed: DataFrame) -> DataFrame:
    """``std`` without the rows whose ``user_id`` hashes (``user_sha256``) to one of
    ``suppressed``'s ``user_sha256`` (a small table: broadcast). Rows without a user id stay."""
    hashes = F.broadcast(suppressed.select(S.USER_SHA256).distinct())
    keyed = std.withColumn("_user_sha256", user_sha256(F.col(S.USER_ID)))
    kept = keyed.join(hashes, keyed["_user_sha256"] == hashes[S.USER_SHA256], "left_anti")
    return kept.drop("_user_sha256")


def suppressed_users(spark: SparkSession, lake: Lake) -> DataFrame | None:
    """``audit/suppressed_users`` when it holds any user; None otherwise."""
    if not lake.exists(spark, L.AUDIT_SUPPRESSED_USERS):
        return None
    table = lake.read(spark, L.AUDIT_SUPPRESSED_USERS)
    return table if table.limit(1).count() else None


def clean_events(std: DataFrame) -> DataFrame:
    """Standardised rows without any reason code."""
    return std.where(F.size(S.REASONS) == 0)


def duplicate_event_ids(clean: DataFrame) -> DataFrame:
    """``event_id`` of every id that occurs more than once (a narrow shuffle of ids only)."""
    return clean.groupBy(S.EVENT_ID).count().where(F.col("count") > 1).select(S.EVENT_ID)


def build_silver_events(clean: DataFrame, dup_ids: DataFrame | None = None) -> DataFrame:
    """Clean rows, one per ``event_id`` (columns of ``schema.SILVER_SCHEMA``).

    With ``dup_ids`` (small: the output of ``duplicate_event_ids``), only rows with those ids
    are shuffled to deduplicate; all others pass straight through. That avoids shuffling every
    wide row (raw line included) for the usual batch where duplicates are rare."""
    cols = [f.name for f in S.SILVER_SCHEMA.fields]
    if dup_ids is None:
        return clean.dropDuplicates([S.EVENT_ID]).select(*cols)
    ids = F.broadcast(dup_ids)
    unique = clean.join(ids, S.EVENT_ID, "left_anti")
    repeated = clean.join(ids, S.EVENT_ID, "left_semi").dropDuplicates([S.EVENT_ID])
    return unique.select(*cols).unionByName(repeated.select(*cols))


def assign_new_indices(ids: DataFrame, existing: DataFrame, *, id_col: str, idx_col: str,
                       start: int) -> DataFrame:
    """Indices ``start, start+1, ...`` for ids in ``ids`` not yet in ``existing`` (ordered by id,
    so the assignment is deterministic). Existing ids are never renumbered."""
    new = ids.select(id_col).distinct().join(existing.select(id_col), id_col, "left_anti")
    # the ordering window has no partition: one task, but only over the *new* ids of a batch
    w = Window.orderBy(id_col)
    return new.select(id_col, (F.row_number().over(w) + F.lit(start - 1)).cast("int").alias(idx_col))


def next_index(existing: DataFrame, idx_col: str) -> int:
    """The first free index: max + 1, or 0 for an empty index."""
    top = existing.agg(F.max(idx_col)).first()[0]
    return 0 if top is None else top + 1


# --- I/O -------------------------------------------------------------------------------------------


def list_input_files(spark: SparkSession, path: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every data file under ``path`` (file, directory or glob), via the
    Hadoop FileSystem so that s3a:// and abfss:// work like local paths."""
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())
    statuses = fs.globStatus(hpath) or []
    out = []
    for st in statuses:
        if st.isDirectory():
            it = fs.listFiles(st.getPath(), True)
            while it.hasNext():
                f = it.next()
                name = f.getPath().getName()
                if not name.startswith(("_", ".")):
                    out.append((f.getPath().toString(), f.getLen(), f.getModificationTime()))
        else:
            out.append((st.getPath().toString(), st.getLen(), st.getModificationTime()))
    return sorted(out)


def batch_fingerprint(source_format: str, files: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256(source_format.encode())
    for p, size, mtime in files:
        h.update(f"|{p}|{size}|{mtime}".encode())
    return h.hexdigest()[:16]


def batch_done(spark: SparkSession, lake: Lake, batch_id: str) -> bool:
    return batch_audit(spark, lake, batch_id) is not None


def batch_audit(spark: SparkSession, lake: Lake, batch_id: str) -> dict | None:
    """The ``audit/batches`` silver row of a batch already ingested, as a dict; else None."""
    if not lake.exists(spark, L.AUDIT_BATCHES):
        return None
    audit = lake.read(spark, L.AUDIT_BATCHES)
    row = audit.where((F.col(S.BATCH_ID) == batch_id) & (F.col(S.STAGE) == "silver")).first()
    return None if row is None else row.asDict()


def empty_batch_problem(audit: dict, batch_id: str) -> str | None:
    """Why a batch gave silver nothing to build on (no rows, or every row quarantined); None when
    it had clean rows, or only duplicates of rows already in silver."""
    rows_in = audit.get("rows_in") or 0
    quarantined = audit.get("rows_quarantined") or 0
    if rows_in == 0:
        return f"batch {batch_id}: the input has no rows"
    if quarantined == rows_in:
        reasons = {k: v for k, v in (audit.get("details") or {}).items()
                   if k in S.ALL_REASON_CODES and v}
        return (f"batch {batch_id}: every one of its {rows_in:,} rows was quarantined "
                f"(reasons {reasons or 'unknown'}; see quarantine/events where "
                f"batch_id = '{batch_id}')")
    return None


def update_index(spark: SparkSession, lake: Lake, clean: DataFrame, *, table: str, id_col: str,
                 idx_col: str, batch_id: str) -> int:
    """Give ids first seen in ``clean`` the next free indices; returns how many ids the index
    holds that ``batch_id`` introduced (the same number on a rerun after a crash).

    Safe under concurrent writers by construction: the new entries go in by a MERGE on the id,
    which reads the index, so Delta refuses its commit when another writer added entries since
    it read max+1 (``ConcurrentAppendException``); the caller runs it again on fresh indices.
    A blind append would commit both and give two ids the same index."""
    schema = T.StructType([*S.INDEX_SCHEMA[idx_col].fields,
                           T.StructField(S.FIRST_BATCH_ID, T.StringType())])
    lake.add_missing_columns(spark, table, schema)
    existing = lake.read_or_empty(spark, table, schema)
    new = assign_new_indices(clean, existing, id_col=id_col, idx_col=idx_col,
                             start=next_index(existing, idx_col))
    new = new.withColumn(S.FIRST_BATCH_ID, F.lit(batch_id))
    # columns the index has beyond these (forgotten_at of a tombstone, `reclake forget`): null
    # for a new entry, and named, since MERGE's insert-all needs every target column
    new = new.select("*", *[F.lit(None).cast(f.dataType).alias(f.name)
                            for f in existing.schema.fields if f.name not in new.columns])
    new = new.coalesce(1)
    if lake.exists(spark, table):
        lake.merge_insert_new(new, table, [id_col])
    else:
        lake.write(new, table, mode="append")
    drop_index_collisions(spark, lake, table, id_col=id_col, idx_col=idx_col, batch_id=batch_id)
    return lake.count(spark, table, f"{S.FIRST_BATCH_ID} = {quote(batch_id)}")


class IndexCollision(RuntimeError):
    """Entries of this batch that share an id or an index with another batch's (two writers
    read the same max+1): they were removed, and the index step runs again (retry_conflicts
    retries it by this class's name)."""


def drop_index_collisions(spark: SparkSession, lake: Lake, table: str, *, id_col: str,
                          idx_col: str, batch_id: str) -> None:
    """The index check after this batch's commit. Delta refuses a MERGE whose snapshot another
    writer changed, but the max+1 was read before the MERGE began: a writer that committed in
    between gives the same indices out twice. So every batch checks its own new entries before
    it is marked done, removes those that collide with another batch's, and raises
    :class:`IndexCollision` to assign them again. Only a batch's own entries are ever removed,
    so a batch already done keeps its indices."""
    index = lake.read(spark, table)
    dup_idx = index.groupBy(idx_col).count().where(F.col("count") > 1).select(idx_col)
    dup_id = index.groupBy(id_col).count().where(F.col("count") > 1).select(id_col)
    mine = index.where(F.col(S.FIRST_BATCH_ID) == batch_id)
    bad = (mine.join(dup_idx, idx_col, "left_semi").select(id_col)
           .union(mine.join(dup_id, id_col, "left_semi").select(id_col)).distinct())
    bad = bad.cache()
    try:
        n = bad.count()
        if n == 0:
            return
        from delta.tables import DeltaTable

        (DeltaTable.forPath(spark, lake.path(table)).alias("t")
         .merge(bad.alias("s"), f"t.`{id_col}` = s.`{id_col}` AND "
                                f"t.`{S.FIRST_BATCH_ID}` = {quote(batch_id)}")
         .whenMatchedDelete().execute())
    finally:
        bad.unpersist()
    raise IndexCollision(f"{table}: {n} new entries shared an id or index with a concurrent "
                         f"batch's; removed, assigning them again")


def main(spark: SparkSession, cfg: Config) -> dict | None:
    """Ingest one batch; returns its ``audit/batches`` silver row as a dict (None when the batch
    was already ingested). A batch without rows, or with every row quarantined, is a warning, or
    with ``ingest.fail_on_empty`` an ``InputError`` (also on re-runs of that batch)."""
    preflight(cfg)
    ic = cfg.ingest
    lake = Lake(cfg.lake)
    reader = get_reader(ic.source_format)
    files = list_input_files(spark, ic.path)
    if not files:
        raise FileNotFoundError(f"no input files at {ic.path}")
    if not (ic.source_format == "generic" and ic.generic.format == "parquet"):
        check_text_files(spark, files, ic.encoding or "UTF-8")
    batch_id = ic.batch_id or batch_fingerprint(ic.source_format, files)
    log.info("batch %s: %d file(s), %s bytes, format %s", batch_id, len(files),
             f"{sum(f[1] for f in files):,}", ic.source_format)
    done = None if ic.force else batch_audit(spark, lake, batch_id)
    if done is not None:
        problem = empty_batch_problem(done, batch_id)
        if problem and ic.fail_on_empty:
            raise InputError(f"{problem} (already ingested; --force reprocesses it)")
        log.info("batch %s is already ingested (audit/batches); nothing to do. Use --force to "
                 "reprocess it.", batch_id)
        summary("ingest", tables=(), lake=lake.root,
                note=f"batch {batch_id} already ingested, nothing written")
        return None
    t_start = time.perf_counter()
    ingest_ts = datetime.now(timezone.utc).replace(tzinfo=None)

    raw, spec = reader(spark, ic.path, cfg)
    lineage = raw.select(
        *S.RAW_FIELDS, S.N_FIELDS, S.RAW, *[c for c in S.LINE_COLUMNS if c in raw.columns],
        F.lit(spec.name).alias(S.SOURCE), S.SOURCE_FILE,
        F.lit(batch_id).alias(S.BATCH_ID), F.lit(ingest_ts).cast(T.TimestampType()).alias(S.INGEST_TS),
    )
    key = pseudonym_key(cfg)
    if key is not None:
        lineage = pseudonymize_lineage(lineage, key, ic.max_id_length)
        log.info("user ids pseudonymised (keyed HMAC-SHA256, key from $%s)",
                 ic.pseudonym_key_env)
    # One parse of the input: the standardised rows are cached, and bronze, quarantine and
    # silver are all written from that cache.
    cached = standardize_events(lineage, spec=spec, cfg=cfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        std, file_headers = drop_file_headers(cached)
        audit = _write_batch(spark, lake, cfg, std, spec, batch_id, t_start,
                             file_headers=file_headers)
    except Exception as e:  # a file that breaks off mid-read fails the first write (bronze)
        why = read_failure(e)
        if why is None:
            raise
        raise InputError(f"batch {batch_id}: {why}; the batch was not ingested "
                         f"(bronze/events is unchanged). Replace the file and run again.") from None
    finally:
        cached.unpersist()
    problem = empty_batch_problem(audit, batch_id)
    if problem and ic.fail_on_empty:
        raise InputError(f"{problem} (ingest.fail_on_empty)")
    if problem:
        log.warning("%s; silver/events got nothing new. Set ingest.fail_on_empty=true to make "
                    "this an error.", problem)
    summary("ingest", tables=TABLES, lake=lake.root, seconds=audit["seconds"],
            batch=batch_id, rows_in=audit["rows_in"], clean_new=audit["rows_clean_new"],
            duplicate=audit["rows_duplicate"], quarantined=audit["rows_quarantined"],
            suppressed=audit["rows_suppressed"])
    return audit


def _write_batch(spark: SparkSession, lake: Lake, cfg: Config, std: DataFrame, spec: SourceSpec,
                 batch_id: str, t_start: float, *, file_headers: int = 0) -> dict:
    """Every table of one batch, in ``TABLES`` order. Each step is idempotent (rows of the batch
    replaced, insert-only MERGEs) and is run again when a concurrent writer commits first; the
    counts come from the tables (rows of this batch), not from the commits, so that a rerun after
    a crash, or a step that ran twice, records what an uninterrupted run records. The silver
    audit row is written last: it is what marks the batch done (readers of silver take only
    batches that have one, ``common.interactions.committed_events``)."""
    ic = cfg.ingest
    batch_pred = f"{S.BATCH_ID} = {quote(batch_id)}"

    def retry(step, what):
        return retry_conflicts(step, f"batch {batch_id}: {what}", attempts=ic.commit_retries,
                               log=log)

    suppressed = 0
    listed = None if ic.allow_suppressed else suppressed_users(spark, lake)
    if listed is not None:
        kept = drop_suppressed(std, listed)
        # both counts read the cached parse (std is built on it), not the input again
        suppressed = std.count() - kept.count()
        std = kept
        if suppressed:
            log.info("%s row(s) of users on audit/suppressed_users dropped (reclake forget; "
                     "ingest.allow_suppressed=true ingests them)", f"{suppressed:,}")
    elif ic.allow_suppressed and lake.exists(spark, L.AUDIT_SUPPRESSED_USERS):
        log.warning("ingest.allow_suppressed: rows of users erased by `reclake forget` are "
                    "ingested again")

    with timed(log, f"bronze/events <- {ic.source_format} {ic.path}") as info:
        bronze = std.select(*[f.name for f in S.BRONZE_SCHEMA.fields])
        # merge_schema: a bronze table of an older version lacks the user_id column
        retry(lambda: lake.replace_rows(bronze, L.BRONZE_EVENTS, batch_pred,
                                        partition_by=[S.BATCH_ID], merge_schema=True),
              L.BRONZE_EVENTS)
        info["rows"] = in_bronze = lake.count(spark, L.BRONZE_EVENTS, batch_pred)
    rows_in = in_bronze + suppressed
    retry(lambda: lake.record_audit(spark, {
        S.BATCH_ID: batch_id, S.STAGE: "bronze", S.SOURCE: spec.name, "rows_in": rows_in,
        "rows_out": in_bronze, "rows_suppressed": suppressed, "seconds": info["seconds"]}),
        L.AUDIT_BATCHES)

    with timed(log, "quarantine/events") as info:
        q = build_quarantine_events(std)
        retry(lambda: lake.replace_rows(q, L.QUARANTINE_EVENTS, batch_pred,
                                        partition_by=[S.BATCH_ID], merge_schema=True),
              L.QUARANTINE_EVENTS)
        reason_counts = {} if not lake.exists(spark, L.QUARANTINE_EVENTS) else {
            r[0]: r[1]
            for r in lake.read(spark, L.QUARANTINE_EVENTS).where(batch_pred)
            .select(F.explode(S.REASONS).alias("r")).groupBy("r").count().collect()
        }
        info["rows"] = quarantined = lake.count(spark, L.QUARANTINE_EVENTS, batch_pred)

    with timed(log, "silver/events") as info:
        clean = clean_events(std)
        dup_ids = duplicate_event_ids(clean).cache()
        n_dup_ids = dup_ids.count()
        # broadcast the repeated ids when they are few; else one full deduplicating shuffle
        silver = build_silver_events(clean, dup_ids if n_dup_ids <= BROADCAST_DUP_IDS else None)

        def write_silver():
            if not lake.exists(spark, L.SILVER_EVENTS):
                lake.write(silver, L.SILVER_EVENTS, mode="append", partition_by=[S.EVENT_DATE])
                return
            if ic.force:
                from delta.tables import DeltaTable

                DeltaTable.forPath(spark, lake.path(L.SILVER_EVENTS)).delete(batch_pred)
            lake.merge_insert_new(silver, L.SILVER_EVENTS, [S.EVENT_ID])

        retry(write_silver, L.SILVER_EVENTS)
        dup_ids.unpersist()
        # the batch's rows in silver: those this run inserted, and those an interrupted earlier
        # run of the same batch did (an event another batch brought first is its duplicate)
        info["new"] = new = lake.count(spark, L.SILVER_EVENTS, batch_pred)

    with timed(log, "silver/user_index, silver/item_index") as info:
        # every clean id of the batch is in silver now (inserted here or earlier), so the cached
        # clean rows give the same ids as re-reading silver, without the read
        for key, table, id_col, idx_col in (("new_users", L.SILVER_USER_INDEX, S.USER_ID, S.USER_IDX),
                                            ("new_items", L.SILVER_ITEM_INDEX, S.ITEM_ID, S.ITEM_IDX)):
            info[key] = retry(lambda t=table, i=id_col, x=idx_col: update_index(
                spark, lake, clean, table=t, id_col=i, idx_col=x, batch_id=batch_id), table)

    duplicate = rows_in - quarantined - new - suppressed
    audit = {
        S.BATCH_ID: batch_id, S.STAGE: "silver", S.SOURCE: spec.name,
        "rows_in": rows_in, "rows_out": new, "rows_clean_new": new,
        "rows_duplicate": duplicate, "rows_quarantined": quarantined,
        "rows_suppressed": suppressed,
        "details": {**reason_counts, "new_users": info["new_users"],
                    "new_items": info["new_items"], "file_headers": file_headers},
        "seconds": time.perf_counter() - t_start,
    }
    retry(lambda: lake.record_audit(spark, audit), L.AUDIT_BATCHES)
    log.info("batch %s: rows_in=%s = clean_new %s + duplicate %s + quarantined %s + suppressed "
             "%s; reasons %s", batch_id, f"{rows_in:,}", f"{new:,}", f"{duplicate:,}",
             f"{quarantined:,}", f"{suppressed:,}", reason_counts or "none")
    return audit


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("ingest"))
