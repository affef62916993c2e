"""Delta writes without Spark (delta-rs), for the Ray jobs: the same tables, schemas and
replace-by-run semantics as the Spark stages, so ``reclake evaluate`` and later jobs read a deep
model's rows exactly like an ALS run's.

Schemas come from the Spark definitions (``common.schema``, ``common.runs``) converted to Arrow,
so the two writers cannot drift apart. A replace is one Delta commit (``mode="overwrite"`` with a
predicate, delta-rs' replaceWhere): readers see the old rows or the new, never half.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

import pyarrow as pa

from common import lake as L
from common import schema as S
from common.config import ConfigError
from common.lake import Lake, quote
from common.runs import RunRecord


def arrow_type(dt) -> pa.DataType:
    """A Spark SQL type -> the Arrow type Delta stores it as."""
    from pyspark.sql import types as T

    simple = {T.StringType: pa.string(), T.IntegerType: pa.int32(), T.LongType: pa.int64(),
              T.DoubleType: pa.float64(), T.FloatType: pa.float32(), T.BooleanType: pa.bool_(),
              T.TimestampType: pa.timestamp("us", tz="UTC"), T.DateType: pa.date32()}
    for cls, at in simple.items():
        if isinstance(dt, cls):
            return at
    if isinstance(dt, T.ArrayType):
        return pa.list_(arrow_type(dt.elementType))
    if isinstance(dt, T.MapType):
        return pa.map_(arrow_type(dt.keyType), arrow_type(dt.valueType))
    if isinstance(dt, T.StructType):
        return pa.struct([pa.field(f.name, arrow_type(f.dataType), f.nullable) for f in dt])
    raise TypeError(f"no Arrow type for Spark type {dt.simpleString()}")


def arrow_schema(struct) -> pa.Schema:
    return pa.schema([pa.field(f.name, arrow_type(f.dataType), f.nullable) for f in struct])


def recommendations_schema() -> pa.Schema:
    """``gold/recommendations``: run_id, model, protocol, user_idx, rank, item_idx, score."""
    return pa.schema(
        [pa.field(c, pa.string(), False) for c in (S.RUN_ID, S.MODEL, S.PROTOCOL)]
        + [pa.field(c, pa.int32(), False) for c in (S.USER_IDX, S.RANK, S.ITEM_IDX)]
        + [pa.field(S.SCORE, pa.float64(), False)])


def embeddings_schema() -> pa.Schema:
    """``models/<model>_embeddings``: run_id, kind (user | item), idx, vector (array<float>)."""
    return pa.schema([pa.field(S.RUN_ID, pa.string(), False), pa.field("kind", pa.string(), False),
                      pa.field(S.IDX, pa.int32(), False),
                      pa.field("vector", pa.list_(pa.float32()), False)])


def embeddings_table(model: str) -> str:
    table = f"models/{model}_embeddings"
    if table not in L.ALL_TABLES:
        raise KeyError(f"no embeddings table for model {model!r} in the catalogue")
    return table


def _storage(lake: Lake) -> str:
    return lake.root


def exists(lake: Lake, table: str) -> bool:
    path = lake.path(table)
    if "://" in path:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(path)
    return os.path.isdir(os.path.join(path, "_delta_log"))


def version(lake: Lake, table: str) -> int:
    """Latest commit version, -1 when the table does not exist yet."""
    if not exists(lake, table):
        return -1
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table))
    v = dt.version()
    del dt  # release the delta-rs reader (its thread pool can abort the process at exit)
    return int(v)


def _check_spark_readable(table: str, schema: pa.Schema) -> None:
    """Refuse schemas that make delta-rs write a protocol Spark's Delta cannot open: a timestamp
    without a time zone turns on ``timestampNtz`` (writer version 7), and with writer features
    listed Spark also wants ``invariants`` listed for every NOT NULL column, which delta-rs omits
    (DELTA_FEATURES_PROTOCOL_METADATA_MISMATCH)."""
    naive = [f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.tz is None]
    if naive:
        raise ValueError(f"{table}: timestamp column(s) {naive} have no time zone; the lake stores "
                         "timestamps as UTC (pa.timestamp('us', tz='UTC')) so Spark can read them")


def _flat(t: pa.DataType) -> str:
    """A column type as compared against a table's: nested types only by kind (their child
    names differ between writers), large and small strings alike."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_nested(t):
        return "list" if pa.types.is_list(t) or pa.types.is_large_list(t) else str(t.id)
    return str(t)


def check_writable(lake: Lake, table: str, schema: pa.Schema) -> list[str]:
    """The columns ``schema`` adds to the existing ``table`` (written as a schema merge); a
    ConfigError, before anything is written, when the table holds a column ``schema`` lacks or
    one of another type (a table written by an older version of reclake)."""
    if not exists(lake, table):
        return []
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table))
    have = pa.schema(dt.schema().to_arrow())
    del dt
    changed = [f"{f.name} ({have.field(f.name).type} in the table, {f.type} now)"
               for f in schema if f.name in have.names
               and _flat(have.field(f.name).type) != _flat(f.type)]
    dropped = [n for n in have.names if n not in schema.names]
    if changed or dropped:
        raise ConfigError(
            f"{table} at {lake.path(table)} was written with another schema ("
            + "; ".join(([f"changed: {', '.join(changed)}"] if changed else [])
                        + ([f"not written any more: {', '.join(dropped)}"] if dropped else []))
            + "), probably by an older reclake; move it aside (or delete it) and rerun: the "
              "stage recreates it")
    return [f.name for f in schema if f.name not in have.names]


def replace_rows(lake: Lake, table: str, data: pa.Table | pa.RecordBatchReader, where: str, *,
                 partition_by: Iterable[str] | None = None) -> int:
    """Atomically replace the rows matching ``where`` with ``data`` (creating the table on first
    write); returns the table's new version."""
    from deltalake import write_deltalake

    _check_spark_readable(table, data.schema)
    path = lake.path(table)
    if exists(lake, table):
        added = check_writable(lake, table, data.schema)
        write_deltalake(path, data, mode="overwrite", predicate=where,
                        schema_mode="merge" if added else None)
    else:
        write_deltalake(path, data, mode="append", partition_by=list(partition_by or []) or None)
    return version(lake, table)


def run_where(run_id: str) -> str:
    return f"{S.RUN_ID} = {quote(run_id)}"


def write_run(lake: Lake, record: RunRecord) -> None:
    """``common.runs.write_run`` without Spark: the run's row in ``models/runs``."""
    from common.runs import runs_schema

    row = record.to_row()
    columns = {k: [dict(v) if isinstance(v, Mapping) else v] for k, v in row.items()}
    for k, v in columns.items():
        if isinstance(v[0], dict):
            columns[k] = [list(v[0].items())]
    replace_rows(lake, L.MODELS_RUNS, pa.Table.from_pydict(columns, arrow_schema(runs_schema())),
                 run_where(record.run_id))


def write_evaluation(lake: Lake, rows: list[dict], *, run_id: str, target: str) -> int:
    """``metrics/evaluation`` rows of one run and target (``jobs.evaluate`` row dicts)."""
    sch = arrow_schema(S.EVALUATION_SCHEMA)
    table = pa.Table.from_pylist([{f.name: r[f.name] for f in sch} for r in rows], sch)
    return replace_rows(lake, L.METRICS_EVALUATION, table,
                        f"{run_where(run_id)} AND {S.TARGET} = {quote(target)}")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
