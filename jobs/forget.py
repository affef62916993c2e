"""Forget users (GDPR-style erasure): remove their rows from every lake table, tombstone their index entries, VACUUM the history, and suppress them in later ingests.

    reclake forget --user-id alice@example.com --user-id 1042
    spark-submit jobs/forget.py --lake s3a://bucket/lake --user-id 1042

Ids are given as the source has them; under ``ingest.pseudonymize`` each is mapped through the
same keyed HMAC (``jobs.ingest.pseudonym``, key from the environment) to the pseudonym the lake
holds. For each user, in this order (so that a crash at any point leaves what a rerun needs to
find the rest):

1. ``audit/suppressed_users`` gets the sha256 of the id as stored (never the id itself), with
   ``completed_at`` null until step 5: from now on ``reclake ingest`` drops the user's rows
   before bronze and counts them as ``rows_suppressed`` (``--allow-suppressed`` ingests them).
2. ``bronze/events`` and ``quarantine/events``: every line whose parsed ``user_id`` is the user,
   and every line equal to one of the user's lines in silver (the lineage of lines written
   before bronze kept ``user_id``).
3. ``silver/events`` by ``user_id``; by ``user_idx``: gold/interactions, user_features,
   sequences, splits, recommendations, predictions, models/als_user_factors,
   models/user_text_profiles, influence/event_contributions, influence/users; and the
   ``kind = 'user'`` rows of models/{ncf,sasrec,lightgcn}_embeddings.
4. ``silver/user_index``: the entry stays, TOMBSTONED: ``user_id`` becomes
   ``forgotten:<user_idx>`` and ``forgotten_at`` is set (the column is added to an older index),
   so ``max + 1`` never hands the idx out again, and a user let in again later gets a new one.
5. ``VACUUM`` with zero retention (Delta's retention check lifted for this stage only, as
   ``reclake maintain`` does) on every table of steps 2-4, so that no older readable version
   holds the user; then ``completed_at`` is set.

Each removal is one MERGE: atomic per table, and its commit names no id (a DELETE predicate
with the ids as literals would keep them in the Delta log). The stage is idempotent: a user
whose forget completed and who is nowhere in the lake is reported and nothing is written; one
whose forget was interrupted is finished. An id found neither in the lake nor among the
forgotten ends the stage before any write with one ``error:`` line and exit code 2 (a typo must
not pass as an erasure).

Known limitations, by design:

- Item-level aggregates hold no user id and are left as they are: gold/item_features,
  influence/items, influence/behavior_type, influence/behavior_shapley, metrics/*, models/runs,
  audit/batches counts and the item factors of trained models. They still include the user's
  past contribution until the next ``transform`` / model fit / ``influence`` rerun.
- Raw files on disk (the ingest input) are not the lake's concern: delete them at the source.
- Delta's log keeps min/max statistics of the files each older commit added; a table with
  statistics on ``user_id`` (silver/user_index) may keep the id there until the log entries
  expire (``delta.logRetentionDuration``, 30 days by default). Under ``ingest.pseudonymize``
  that is only the pseudonym. Bronze, quarantine and silver/events keep no statistics on it.
- Lines quarantined before quarantine/events kept ``user_id`` carry no parsed id: they are found
  only where the same line also reached silver, which a quarantined line does not.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.errors import InputError
from common.lake import Lake, retry_conflicts
from common.log import get_logger, summary
from jobs.ingest import pseudonym, pseudonym_key
from jobs.maintain import retention_check_lifted, vacuum
from jobs.sources.base import SPACE_CHARS

log = get_logger("forget")

# the tables rows of a user are removed from by its user_idx: table -> (idx column, condition on
# the target row beyond the idx)
BY_USER_IDX: dict[str, tuple[str, str | None]] = {
    L.GOLD_INTERACTIONS: (S.USER_IDX, None),
    L.GOLD_USER_FEATURES: (S.USER_IDX, None),
    L.GOLD_SEQUENCES: (S.USER_IDX, None),
    L.GOLD_SPLITS: (S.USER_IDX, None),
    L.GOLD_RECOMMENDATIONS: (S.USER_IDX, None),
    L.GOLD_PREDICTIONS: (S.USER_IDX, None),
    L.MODELS_ALS_USER_FACTORS: (S.IDX, None),
    L.MODELS_NCF_EMBEDDINGS: (S.IDX, "t.kind = 'user'"),
    L.MODELS_SASREC_EMBEDDINGS: (S.IDX, "t.kind = 'user'"),
    L.MODELS_LIGHTGCN_EMBEDDINGS: (S.IDX, "t.kind = 'user'"),
    L.MODELS_USER_TEXT_PROFILES: (S.USER_IDX, None),
    L.INFLUENCE_EVENT_CONTRIBUTIONS: (S.USER_IDX, None),
    L.INFLUENCE_USERS: (S.USER_IDX, None),
}
# bronze and quarantine: by the lines themselves (raw); silver/events by user_id
BY_LINE: tuple[str, ...] = (L.BRONZE_EVENTS, L.QUARANTINE_EVENTS)
# every table that can hold a user's rows, in the order they are cleared (the index last: it
# maps the user to the user_idx every later table is cleared by)
TABLES: tuple[str, ...] = (*BY_LINE, L.SILVER_EVENTS, *BY_USER_IDX, L.SILVER_USER_INDEX)
REPORT_COLUMNS = ("table", "rows_removed", "files_vacuumed", "version")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user-id", dest="forget.user_ids", action="append", default=None,
                   required=True, metavar="ID",
                   help="a user id as the source has it (repeatable)")


def preflight(cfg: Config) -> None:
    ids = lake_user_ids(cfg)
    if not ids:
        raise ConfigError("--user-id is required (or set forget.user_ids in the config)")


def lake_user_ids(cfg: Config) -> list[str]:
    """The given ids as the lake stores them: stripped like ingest strips fields, then the
    keyed pseudonym under ``ingest.pseudonymize``; order kept, repeats and blanks dropped."""
    key = pseudonym_key(cfg)
    out: list[str] = []
    for raw in cfg.forget.user_ids:
        v = str(raw).strip(SPACE_CHARS)
        if not v:
            continue
        v = pseudonym(key, v) if key is not None else v
        if v not in out:
            out.append(v)
    return out


def id_sha256(stored_id: str) -> str:
    """The suppression key of a stored user id (as ``jobs.ingest.user_sha256`` computes it)."""
    return hashlib.sha256(stored_id.encode("utf-8")).hexdigest()


def label(stored_id: str) -> str:
    """How progress lines name a user: a prefix of the suppression hash, never the id."""
    return f"user {id_sha256(stored_id)[:12]}"


# --- pure transforms ------------------------------------------------------------------------------


def user_lines(tables: dict[str, DataFrame], ids: DataFrame) -> DataFrame:
    """The distinct ``raw`` lines of the users in ``ids`` (column ``user_id``), with their
    ``user_id``, over the tables given (bronze, quarantine, silver/events: each with ``raw``
    and, where it has one, ``user_id``)."""
    parts = [df.join(F.broadcast(ids), S.USER_ID, "left_semi").select(S.USER_ID, S.RAW)
             for df in tables.values() if S.USER_ID in df.columns]
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.where(F.col(S.RAW).isNotNull()).distinct()


def tombstone_values(now: datetime) -> dict:
    """The MERGE update of a tombstoned ``silver/user_index`` entry (target alias ``t``):
    ``user_id`` -> ``forgotten:<user_idx>``, ``forgotten_at`` -> ``now``; ``user_idx`` kept."""
    return {S.USER_ID: F.concat(F.lit(S.TOMBSTONE_PREFIX), F.col(f"t.{S.USER_IDX}").cast("string")),
            S.FORGOTTEN_AT: F.lit(now).cast(T.TimestampType())}


# --- I/O -------------------------------------------------------------------------------------------


def _existing(spark: SparkSession, lake: Lake, tables) -> dict[str, DataFrame]:
    return {t: lake.read(spark, t) for t in tables if lake.exists(spark, t)}


def _suppressed(spark: SparkSession, lake: Lake, hashes: list[str]) -> dict[str, dict]:
    """sha256 -> its audit/suppressed_users row, for those of ``hashes`` listed."""
    if not lake.exists(spark, L.AUDIT_SUPPRESSED_USERS):
        return {}
    rows = (lake.read(spark, L.AUDIT_SUPPRESSED_USERS)
            .where(F.col(S.USER_SHA256).isin(hashes)).collect())
    return {r[S.USER_SHA256]: r.asDict() for r in rows}


def _suppress(spark: SparkSession, lake: Lake, hashes: list[str], now: datetime) -> None:
    """List ``hashes`` in audit/suppressed_users with ``completed_at`` null (a user let in again
    and now forgotten again is reopened)."""
    from delta.tables import DeltaTable

    df = spark.createDataFrame([(h, now, None) for h in hashes], S.SUPPRESSED_USERS_SCHEMA)
    if not lake.exists(spark, L.AUDIT_SUPPRESSED_USERS):
        lake.write(df, L.AUDIT_SUPPRESSED_USERS, mode="append")
        return
    (DeltaTable.forPath(spark, lake.path(L.AUDIT_SUPPRESSED_USERS)).alias("t")
     .merge(df.alias("s"), f"t.{S.USER_SHA256} = s.{S.USER_SHA256}")
     .whenMatchedUpdate(set={S.FORGOTTEN_AT: f"s.{S.FORGOTTEN_AT}", S.COMPLETED_AT: "null"})
     .whenNotMatchedInsertAll().execute())


def _complete(spark: SparkSession, lake: Lake, hashes: list[str], now: datetime) -> None:
    from delta.tables import DeltaTable

    src = spark.createDataFrame([(h,) for h in hashes], f"{S.USER_SHA256} string")
    (DeltaTable.forPath(spark, lake.path(L.AUDIT_SUPPRESSED_USERS)).alias("t")
     .merge(src.alias("s"), f"t.{S.USER_SHA256} = s.{S.USER_SHA256}")
     .whenMatchedUpdate(set={S.COMPLETED_AT: F.lit(now).cast(T.TimestampType())}).execute())


def _delete_matching(spark: SparkSession, lake: Lake, table: str, source: DataFrame,
                     on: str) -> int:
    """One MERGE deleting the rows of ``table`` (alias ``t``) that match ``source`` (alias ``s``)
    on ``on``: atomic, and its commit holds the condition, not the values. Tables with deletion
    vectors are purged (REORG), so the rows leave the data files and VACUUM can drop the old
    ones. Returns the rows deleted."""
    from delta.tables import DeltaTable

    before = lake.version(spark, table)
    dt = DeltaTable.forPath(spark, lake.path(table))
    retry_conflicts(lambda: dt.alias("t").merge(F.broadcast(source).alias("s"), on)
                    .whenMatchedDelete().execute(), f"forget: {table}", log=log)
    removed = lake.last_metrics(spark, table, since_version=before).get(
        "numTargetRowsDeleted", 0)
    props = dict(dt.detail().first()["properties"] or {})
    if removed and props.get("delta.enableDeletionVectors", "false").lower() == "true":
        spark.sql(f"REORG TABLE delta.`{lake.path(table)}` APPLY (PURGE)")
    return removed


def _tombstone(spark: SparkSession, lake: Lake, ids: DataFrame, now: datetime) -> int:
    from delta.tables import DeltaTable

    table = L.SILVER_USER_INDEX
    lake.add_missing_columns(spark, table, T.StructType(
        [T.StructField(S.FORGOTTEN_AT, T.TimestampType())]))
    before = lake.version(spark, table)
    retry_conflicts(lambda: DeltaTable.forPath(spark, lake.path(table)).alias("t")
                    .merge(F.broadcast(ids).alias("s"), f"t.{S.USER_ID} = s.{S.USER_ID}")
                    .whenMatchedUpdate(set=tombstone_values(now)).execute(),
                    f"forget: {table}", log=log)
    return lake.last_metrics(spark, table, since_version=before).get("numTargetRowsUpdated", 0)


def data_files(spark: SparkSession, path: str) -> int:
    """Data files under a table's folder (its ``_delta_log`` and hidden files not counted)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    n = 0
    it = fs.listFiles(hpath, True)
    while it.hasNext():
        rel = it.next().getPath().toString()[len(str(hpath.toUri().toString())):]
        if not any(part.startswith(("_", ".")) for part in rel.split("/") if part):
            n += 1
    return n


def format_report(rows: list[dict]) -> str:
    grid = [list(REPORT_COLUMNS)] + [[f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])
                                      for c in REPORT_COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(REPORT_COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(spark: SparkSession, cfg: Config) -> dict:
    """Forget the users of ``forget.user_ids``; returns ``{"forgotten", "already", "tables":
    [{table, rows_removed, files_vacuumed, version}]}``."""
    preflight(cfg)
    lake = Lake(cfg.lake)
    t0 = time.perf_counter()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    ids = lake_user_ids(cfg)
    hashes = {i: id_sha256(i) for i in ids}
    id_df = spark.createDataFrame([(i,) for i in ids], f"{S.USER_ID} string")

    # what the lake holds of them: lines (bronze, quarantine, silver) and index entries
    line_tables = _existing(spark, lake, (*BY_LINE, L.SILVER_EVENTS))
    for t in BY_LINE:
        if t in line_tables and S.USER_ID not in line_tables[t].columns:
            log.warning("%s predates its user_id column: its lines are found through silver "
                        "only (quarantined ones are not)", t)
    lines = user_lines(line_tables, id_df).collect() if line_tables else []
    index = (lake.read(spark, L.SILVER_USER_INDEX)
             .join(F.broadcast(id_df), S.USER_ID, "left_semi")
             .select(S.USER_ID, S.USER_IDX).collect()
             if lake.exists(spark, L.SILVER_USER_INDEX) else [])
    in_lake = {r[S.USER_ID] for r in lines} | {r[S.USER_ID] for r in index}
    listed = _suppressed(spark, lake, list(hashes.values()))
    done = [i for i in ids if i not in in_lake and (listed.get(hashes[i]) or {}).get(
        S.COMPLETED_AT) is not None]
    unfinished = [i for i in ids if i not in in_lake and hashes[i] in listed and i not in done]
    unknown = [n for n, i in enumerate(ids, 1) if i not in in_lake and hashes[i] not in listed]
    if unknown:
        raise InputError(
            f"--user-id #{', #'.join(map(str, unknown))} of {len(ids)}: no such user in the lake "
            f"at {lake.root} (no index entry, no line) and not forgotten before; nothing was "
            f"written. Check the id as the source spells it"
            + (" (ingest.pseudonymize is on: the raw id, not the pseudonym)"
               if cfg.ingest.pseudonymize else ""))
    for i in done:
        log.info("%s: already forgotten (audit/suppressed_users, completed); nothing to do",
                 label(i))
    todo = [i for i in ids if i in in_lake] + unfinished
    if not todo:
        print(f"reclake forget: every one of the {len(ids)} user(s) is already forgotten; "
              f"nothing to remove, nothing written")
        summary("forget", tables=(), lake=lake.root, seconds=time.perf_counter() - t0,
                note="already forgotten, nothing written", users=len(ids), forgotten=0,
                already=len(done))
        return {"forgotten": 0, "already": len(done), "tables": []}
    for i in unfinished:
        log.info("%s: an earlier forget did not finish; finishing it", label(i))
    for i in todo:
        if i in in_lake:
            log.info("%s: %d line(s) in bronze/quarantine/silver, user_idx %s", label(i),
                     sum(r[S.USER_ID] == i for r in lines),
                     [r[S.USER_IDX] for r in index if r[S.USER_ID] == i] or "none")

    _suppress(spark, lake, [hashes[i] for i in todo], now)
    log.info("audit/suppressed_users: %d user(s) listed; later ingests drop their rows", len(todo))
    raws = spark.createDataFrame([(r[S.RAW],) for r in lines], f"{S.RAW} string")
    idx = spark.createDataFrame([(r[S.USER_IDX],) for r in index], f"{S.USER_IDX} int")
    removed: dict[str, int] = {}
    present = [t for t in TABLES if lake.exists(spark, t)]
    for n, table in enumerate(present, 1):
        if table in BY_LINE:
            rows = _delete_matching(spark, lake, table, raws, f"t.{S.RAW} = s.{S.RAW}")
        elif table == L.SILVER_EVENTS:
            rows = _delete_matching(spark, lake, table, id_df, f"t.{S.USER_ID} = s.{S.USER_ID}")
        elif table == L.SILVER_USER_INDEX:
            rows = _tombstone(spark, lake, id_df, now)
        else:
            col, extra = BY_USER_IDX[table]
            on = f"t.{col} = s.{S.USER_IDX}" + (f" AND {extra}" if extra else "")
            rows = _delete_matching(spark, lake, table, idx, on) if index else 0
        removed[table] = rows
        what = "entries tombstoned" if table == L.SILVER_USER_INDEX else "rows removed"
        log.info("[%d/%d] %s: %s %s", n, len(present), table, f"{rows:,}", what)

    report = []
    with retention_check_lifted(spark, 0.0):
        for table in present:
            files = data_files(spark, lake.path(table))
            vacuum(spark, lake, table, 0.0)
            gone = files - data_files(spark, lake.path(table))
            report.append({"table": table, "rows_removed": removed[table],
                           "files_vacuumed": gone, "version": lake.version(spark, table)})
            log.info("%s: VACUUM (0 h) removed %s file(s)", table, f"{gone:,}")
    _complete(spark, lake, [hashes[i] for i in todo], now)
    print(format_report(report))
    print("(silver/user_index: rows_removed counts entries tombstoned, kept with their user_idx)")
    summary("forget", tables=[r["table"] for r in report if r["rows_removed"]], lake=lake.root,
            seconds=time.perf_counter() - t0, users=len(ids), forgotten=len(todo),
            already=len(done), rows_removed=sum(v for t, v in removed.items()
                                                if t != L.SILVER_USER_INDEX),
            tombstoned=removed.get(L.SILVER_USER_INDEX, 0),
            files_vacuumed=sum(r["files_vacuumed"] for r in report))
    return {"forgotten": len(todo), "already": len(done), "tables": report}


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("forget"))
