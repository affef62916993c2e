"""Lake layout (table name -> path) and the Delta read/write helpers every job uses.

Table names are fixed: other jobs and tools (DuckDB, pandas via ``deltalake``, Ray Data) rely on
them. A table's name, its constant here and the function that builds it share one name
(``silver/events`` <- ``SILVER_EVENTS`` <- ``build_silver_events``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pyspark.sql import DataFrame, SparkSession

from common.errors import ConcurrentWriteError

BRONZE_EVENTS = "bronze/events"
QUARANTINE_EVENTS = "quarantine/events"
AUDIT_BATCHES = "audit/batches"
# reclake pipeline: one row per stage per invocation (done | skipped | failed, inputs, outputs)
AUDIT_PIPELINE = "audit/pipeline"
# reclake forget: the sha256 of each forgotten user's id; ingest drops their rows
AUDIT_SUPPRESSED_USERS = "audit/suppressed_users"
SILVER_EVENTS = "silver/events"
SILVER_USER_INDEX = "silver/user_index"
SILVER_ITEM_INDEX = "silver/item_index"
# item catalogue (reclake ingest-items): one row per item_id, metadata and the text models read
SILVER_ITEMS = "silver/items"
QUARANTINE_ITEMS = "quarantine/items"
GOLD_INTERACTIONS = "gold/interactions"
GOLD_USER_FEATURES = "gold/user_features"
GOLD_ITEM_FEATURES = "gold/item_features"
GOLD_SEQUENCES = "gold/sequences"
GOLD_SPLITS = "gold/splits"
GOLD_RECOMMENDATIONS = "gold/recommendations"
# a run's predicted probability of a behaviour on the held-out pairs (a model's task head)
GOLD_PREDICTIONS = "gold/predictions"
MODELS_ALS_USER_FACTORS = "models/als_user_factors"
MODELS_ALS_ITEM_FACTORS = "models/als_item_factors"
MODELS_RUNS = "models/runs"
# user / item embeddings of a deep-model run (raytrain): run_id, kind (user | item), idx, vector
MODELS_NCF_EMBEDDINGS = "models/ncf_embeddings"
MODELS_SASREC_EMBEDDINGS = "models/sasrec_embeddings"
MODELS_LIGHTGCN_EMBEDDINGS = "models/lightgcn_embeddings"
# text vectors of silver/items by the language model (reclake embed), one row per item and model
MODELS_TEXT_EMBEDDINGS = "models/text_embeddings"
# a text-model run's user vectors: weighted mean of the user's train items' text vectors
MODELS_USER_TEXT_PROFILES = "models/user_text_profiles"
METRICS_EVALUATION = "metrics/evaluation"
METRICS_TUNE_TRIALS = "metrics/tune_trials"  # every trial of every sweep (reclake tune)
METRICS_BEST_CONFIGS = "metrics/best_configs"  # the best config of each sweep, valid + test
INFLUENCE_EVENT_CONTRIBUTIONS = "influence/event_contributions"
INFLUENCE_BEHAVIOR_TYPE = "influence/behavior_type"
INFLUENCE_ITEMS = "influence/items"
INFLUENCE_USERS = "influence/users"
INFLUENCE_BEHAVIOR_SHAPLEY = "influence/behavior_shapley"
# not a Delta table: the Spark ML ALSModel of a run is saved under <this>/<run_id>
MODELS_ALS_MODEL = "models/als_model"

# Delta collects min/max statistics on the first 32 columns of every file it writes; on long raw
# strings that costs as much as the write itself. These tables keep statistics only where
# queries filter (set when the table is created; ALTER TABLE can change it later).
STATS_COLUMNS: dict[str, str] = {
    "bronze/events": "ingest_ts",
    "quarantine/events": "ingest_ts",
    "silver/events": "ts,behavior,batch_id",
}

ALL_TABLES: tuple[str, ...] = (
    BRONZE_EVENTS,
    QUARANTINE_EVENTS,
    AUDIT_BATCHES,
    AUDIT_PIPELINE,
    AUDIT_SUPPRESSED_USERS,
    SILVER_EVENTS,
    SILVER_USER_INDEX,
    SILVER_ITEM_INDEX,
    SILVER_ITEMS,
    QUARANTINE_ITEMS,
    GOLD_INTERACTIONS,
    GOLD_USER_FEATURES,
    GOLD_ITEM_FEATURES,
    GOLD_SEQUENCES,
    GOLD_SPLITS,
    GOLD_RECOMMENDATIONS,
    GOLD_PREDICTIONS,
    MODELS_ALS_USER_FACTORS,
    MODELS_ALS_ITEM_FACTORS,
    MODELS_RUNS,
    MODELS_NCF_EMBEDDINGS,
    MODELS_SASREC_EMBEDDINGS,
    MODELS_LIGHTGCN_EMBEDDINGS,
    MODELS_TEXT_EMBEDDINGS,
    MODELS_USER_TEXT_PROFILES,
    METRICS_EVALUATION,
    METRICS_TUNE_TRIALS,
    METRICS_BEST_CONFIGS,
    INFLUENCE_EVENT_CONTRIBUTIONS,
    INFLUENCE_BEHAVIOR_TYPE,
    INFLUENCE_ITEMS,
    INFLUENCE_USERS,
    INFLUENCE_BEHAVIOR_SHAPLEY,
)
# tables the demo does not write (the ablation is not part of it)
NOT_IN_DEMO: tuple[str, ...] = (INFLUENCE_BEHAVIOR_SHAPLEY, GOLD_PREDICTIONS,
                                AUDIT_SUPPRESSED_USERS)


def _is_uri(p: str) -> bool:
    return "://" in p


class Lake:
    """A lake rooted at a local path or a URI (``s3a://bucket/lake``, ``abfss://...``)."""

    def __init__(self, root: str):
        self.root = root if _is_uri(root) else os.path.abspath(root)

    def path(self, table: str) -> str:
        if table not in ALL_TABLES and table != MODELS_ALS_MODEL:
            raise KeyError(f"unknown lake table '{table}' (the catalogue: {', '.join(ALL_TABLES)})")
        return f"{self.root.rstrip('/')}/{table}"

    def exists(self, spark: SparkSession, table: str) -> bool:
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(spark, self.path(table))

    def read(
        self, spark: SparkSession, table: str, *, version: int | None = None, why: str = ""
    ) -> DataFrame:
        """The table, latest or (``version``) as of that Delta version (time travel).

        A pinned version that can no longer be read (its log entries expired, or VACUUM removed
        its data files) raises :class:`VersionNotReadable` naming the table, the version and
        ``why`` it was asked for, before any job reads a row."""
        if not self.exists(spark, table):
            raise FileNotFoundError(
                f"lake table '{table}' does not exist at {self.path(table)}; run the stage that "
                f"writes it first (see `reclake --help`)"
            )
        reader = spark.read.format("delta")
        if version is None:
            return reader.load(self.path(table))
        where = f"{table} version {version}" + (f" ({why})" if why else "")
        try:
            df = reader.option("versionAsOf", int(version)).load(self.path(table))
            missing = _missing_files(spark, df.inputFiles())
        except Exception as e:  # Delta's VersionNotFound / log-retention errors, via py4j
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VersionNotReadable(
                f"{where} is no longer readable: {first}; re-run the stage that pinned it"
            ) from e
        if missing:
            raise VersionNotReadable(
                f"{where} is no longer readable: {len(missing)} of its data files are gone "
                f"(VACUUM removed them), e.g. {missing[0]}; re-run the stage that pinned it"
            )
        return df

    def read_or_empty(self, spark: SparkSession, table: str, schema) -> DataFrame:
        if self.exists(spark, table):
            return spark.read.format("delta").load(self.path(table))
        return spark.createDataFrame([], schema)

    def write(
        self,
        df: DataFrame,
        table: str,
        *,
        mode: str = "overwrite",
        partition_by: Iterable[str] = (),
        replace_where: str | None = None,
        overwrite_schema: bool = False,
        merge_schema: bool = False,
    ) -> None:
        """Write a Delta table. ``replace_where`` atomically replaces only the matching rows
        (how re-runs of one batch / protocol / run replace their rows instead of duplicating)."""
        w = df.write.format("delta").mode(mode)
        parts = list(partition_by)
        if parts:
            w = w.partitionBy(*parts)
        if replace_where is not None:
            w = w.option("replaceWhere", replace_where)
        if overwrite_schema:
            w = w.option("overwriteSchema", "true")
        if merge_schema:
            w = w.option("mergeSchema", "true")
        if table in STATS_COLUMNS and not self.exists(df.sparkSession, table):
            w = w.option("delta.dataSkippingStatsColumns", STATS_COLUMNS[table])
        w.save(self.path(table))

    def replace_rows(
        self,
        df: DataFrame,
        table: str,
        where: str,
        *,
        partition_by: Iterable[str] = (),
        merge_schema: bool = False,
    ) -> None:
        """Atomically replace the rows matching ``where`` with ``df`` (creating the table on first
        write). How a re-run of one batch / protocol / run replaces its rows, never duplicates.
        ``merge_schema`` lets new columns in (a table written by an older version)."""
        if self.exists(df.sparkSession, table):
            self.write(df, table, mode="overwrite", replace_where=where, merge_schema=merge_schema)
        else:
            self.write(df, table, mode="append", partition_by=partition_by)

    def merge_insert_new(self, df: DataFrame, table: str, keys: Iterable[str]) -> None:
        """Insert rows whose key is not yet in the table (insert-only MERGE; idempotent)."""
        from delta.tables import DeltaTable

        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        target = DeltaTable.forPath(df.sparkSession, self.path(table))
        target.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute()

    def version(self, spark: SparkSession, table: str) -> int:
        """Latest commit version, -1 when the table does not exist yet."""
        return self.history_version(spark, table) if self.exists(spark, table) else -1

    def last_metrics(
        self, spark: SparkSession, table: str, since_version: int | None = None
    ) -> dict[str, int]:
        """Delta's operation metrics of the table's latest commit (``numOutputRows``,
        ``numTargetRowsInserted``, ...): row counts of a write without another Spark action.

        With ``since_version``, a table still at that version (Delta skips commits that change
        nothing, e.g. a MERGE that inserts no row) gives ``{}``."""
        from delta.tables import DeltaTable

        hist = DeltaTable.forPath(spark, self.path(table)).history(1)
        row = hist.select("version", "operationMetrics").first()
        if since_version is not None and row[0] <= since_version:
            return {}
        return {k: int(v) for k, v in (row[1] or {}).items() if v is not None and v.isdigit()}

    def record_audit(self, spark: SparkSession, row: dict) -> None:
        """Write one ``audit/batches`` row, replacing an earlier row of the same batch and stage."""
        from datetime import datetime, timezone

        from common import schema as S

        full = {f.name: row.get(f.name) for f in S.AUDIT_SCHEMA.fields}
        full["created_at"] = datetime.now(timezone.utc).replace(tzinfo=None)
        df = spark.createDataFrame([full], S.AUDIT_SCHEMA)
        where = f"{S.BATCH_ID} = {quote(row[S.BATCH_ID])} AND {S.STAGE} = {quote(row[S.STAGE])}"
        # merge_schema: an audit table of an older version lacks the newer count columns
        self.replace_rows(df, AUDIT_BATCHES, where, merge_schema=True)

    def history_version(self, spark: SparkSession, table: str) -> int:
        from delta.tables import DeltaTable

        return (
            DeltaTable.forPath(spark, self.path(table)).history(1).select("version").first()[0]
        )


    def count(self, spark: SparkSession, table: str, where: str) -> int:
        """Rows of ``table`` matching ``where`` (0 when the table does not exist)."""
        if not self.exists(spark, table):
            return 0
        return self.read(spark, table).where(where).count()

    def add_missing_columns(self, spark: SparkSession, table: str, schema) -> None:
        """``ALTER TABLE ADD COLUMNS`` for the fields of ``schema`` the table lacks (a table
        written by an older version), so that MERGE and replaceWhere can write them."""
        if not self.exists(spark, table):
            return
        have = set(self.read(spark, table).columns)
        missing = [f for f in schema.fields if f.name not in have]
        if missing:
            cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
            spark.sql(f"ALTER TABLE delta.`{self.path(table)}` ADD COLUMNS ({cols})")


# the Delta errors of a commit that lost a race with another writer (by class and error class);
# the losing step can be run again as it is: every ingest write is idempotent
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException",
              "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
              "MetadataChangedException", "ProtocolChangedException", "ConcurrentWriteException",
              "DELTA_CONCURRENT_", "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED",
              "IndexCollision")


def is_write_conflict(e: BaseException) -> bool:
    """Whether ``e`` is Delta refusing a commit because another writer committed first."""
    text = f"{type(e).__name__} {e}"
    return any(c in text for c in _CONFLICTS)


def retry_conflicts(step, what: str, *, attempts: int = 8, base_s: float = 0.5, log=None):
    """``step()``, run again (jittered exponential backoff) while Delta refuses its commit for a
    concurrent writer's (optimistic concurrency: the step re-reads the table each time). After
    ``attempts`` tries, :class:`ConcurrentWriteError` saying which table and why."""
    import random
    import time

    for attempt in range(1, attempts + 1):
        try:
            return step()
        except Exception as e:
            if not is_write_conflict(e):
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            if attempt == attempts:
                raise ConcurrentWriteError(
                    f"{what}: another writer committed first on each of {attempts} tries "
                    f"({first}); nothing of this step was committed: run it again") from None
            wait = base_s * 2 ** (attempt - 1) * (0.5 + random.random())
            if log is not None:
                log.warning("%s: a concurrent writer committed first (%s); retry %d/%d in "
                            "%.1f s", what, first, attempt, attempts - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


class VersionNotReadable(FileNotFoundError):
    """A pinned table version that time travel can no longer reach. Re-run the stage that
    recorded the version (e.g. the model stage) to pin the current one."""


def _missing_files(spark: SparkSession, files: list[str]) -> list[str]:
    """Those of ``files`` (URIs, as ``DataFrame.inputFiles()`` lists them) that do not exist."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    missing = []
    for f in files:
        p = jvm.org.apache.hadoop.fs.Path(f)
        if not p.getFileSystem(conf).exists(p):
            missing.append(f)
    return missing


def quote(value: str) -> str:
    """SQL string literal for replaceWhere predicates."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
