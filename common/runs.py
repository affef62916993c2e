"""The typed run record of ``models/runs``: one dataclass, one writer, one reader.

A run is one fit of one registered model on one protocol's split. Its record says what was
trained (model, protocol, typed params), on what (the Delta version of every lake table the run
read, ``inputs``), what it wrote (``outputs``: the version of every table it wrote, and
``artefacts``: paths of files outside tables) and how it went (counts, seconds). Every job
downstream of a run (evaluate, influence, the Ray jobs) reads its inputs through
:meth:`RunRecord.read`, i.e. at the versions recorded here, so re-running ``split`` or an ingest
after training changes nothing about a finished run::

    rec = read_run(spark, lake, "als-20240101T000000-ab12")
    splits = rec.read(spark, lake, L.GOLD_SPLITS)       # gold/splits as the run saw it
    run_cfg = rec.config(cfg)                           # cfg with the run's own params

``params`` keep their types (int, float, bool, str, lists) as JSON in one string column; the
reader gives them back as Python values, and :meth:`RunRecord.config` applies them to a config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from common.lake import Lake

PARAMS, INPUTS, OUTPUTS, ARTEFACTS, COUNTS, SECONDS = (
    "params", "inputs", "outputs", "artefacts", "counts", "seconds")


def runs_schema():
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField(S.RUN_ID, T.StringType(), False),
        T.StructField(S.MODEL, T.StringType(), False),
        T.StructField(S.PROTOCOL, T.StringType(), False),
        T.StructField(S.DATASET, T.StringType()),
        T.StructField(PARAMS, T.StringType(), False),  # JSON object: dotted key -> typed value
        T.StructField(INPUTS, T.MapType(T.StringType(), T.LongType()), False),
        T.StructField(OUTPUTS, T.MapType(T.StringType(), T.LongType()), False),
        T.StructField(ARTEFACTS, T.MapType(T.StringType(), T.StringType()), False),
        T.StructField(COUNTS, T.MapType(T.StringType(), T.LongType()), False),
        T.StructField(SECONDS, T.MapType(T.StringType(), T.DoubleType()), False),
        T.StructField(S.CREATED_AT, T.TimestampType(), False),
    ])


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    model: str
    protocol: str
    dataset: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # "als.rank" -> 64
    inputs: Mapping[str, int] = field(default_factory=dict)  # "gold/splits" -> Delta version
    outputs: Mapping[str, int] = field(default_factory=dict)  # tables written -> version
    artefacts: Mapping[str, str] = field(default_factory=dict)  # "spark_model" -> path
    counts: Mapping[str, int] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    created_at: datetime | None = None

    def param(self, key: str) -> Any:
        """A recorded param by dotted key; a clear error when the run did not record it."""
        if key not in self.params:
            raise ConfigError(
                f"run {self.run_id!r} ({self.model}) has no param {key!r} in {L.MODELS_RUNS} "
                f"(recorded: {sorted(self.params)})"
            )
        return self.params[key]

    def config(self, base: Config) -> Config:
        """``base`` with this run's model, protocol and recorded params applied: the settings the
        run was trained with, whatever the current config says."""
        return base.with_(**self.params, **{
            "run.model": self.model, "run.run_id": self.run_id, "split.protocol": self.protocol})

    def version(self, table: str) -> int:
        """The version of ``table`` the run read or wrote."""
        for recorded in (self.inputs, self.outputs):
            if table in recorded:
                return int(recorded[table])
        raise ConfigError(
            f"run {self.run_id!r} recorded no version of {table!r} (inputs: {dict(self.inputs)}, "
            f"outputs: {dict(self.outputs)}); re-run the model stage to record one"
        )

    def read(self, spark: SparkSession, lake: Lake, table: str) -> DataFrame:
        """``table`` at the version this run recorded (time travel); a clear error when that
        version is no longer readable."""
        return lake.read(spark, table, version=self.version(table),
                         why=f"recorded by run {self.run_id!r}")

    def to_row(self) -> dict:
        created = self.created_at or datetime.now(timezone.utc).replace(tzinfo=None)
        return {
            S.RUN_ID: self.run_id, S.MODEL: self.model, S.PROTOCOL: self.protocol,
            S.DATASET: self.dataset, PARAMS: json.dumps(_plain(self.params), sort_keys=True),
            INPUTS: dict(self.inputs), OUTPUTS: dict(self.outputs),
            ARTEFACTS: dict(self.artefacts), COUNTS: {k: int(v) for k, v in self.counts.items()},
            SECONDS: {k: float(v) for k, v in self.seconds.items()}, S.CREATED_AT: created,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        return cls(
            run_id=row[S.RUN_ID], model=row[S.MODEL], protocol=row[S.PROTOCOL],
            dataset=row[S.DATASET], params=json.loads(row[PARAMS]),
            inputs=dict(row[INPUTS] or {}), outputs=dict(row[OUTPUTS] or {}),
            artefacts=dict(row[ARTEFACTS] or {}), counts=dict(row[COUNTS] or {}),
            seconds=dict(row[SECONDS] or {}), created_at=row[S.CREATED_AT],
        )


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _check_schema(spark: SparkSession, lake: Lake) -> None:
    have = {f.name: f.dataType.simpleString() for f in lake.read(spark, L.MODELS_RUNS).schema}
    if have != {f.name: f.dataType.simpleString() for f in runs_schema().fields}:
        raise ConfigError(
            f"{lake.path(L.MODELS_RUNS)} was written by an older reclake (params as a string "
            f"map, no table versions). Move it aside and re-run the model stages "
            f"(`reclake fit ...`) so every run records the table versions it read"
        )


def write_run(spark: SparkSession, lake: Lake, record: RunRecord) -> None:
    """Write (or replace) the run's row in ``models/runs``."""
    from common.lake import quote

    if lake.exists(spark, L.MODELS_RUNS):
        _check_schema(spark, lake)
    df = spark.createDataFrame([record.to_row()], runs_schema())
    lake.replace_rows(df, L.MODELS_RUNS, f"{S.RUN_ID} = {quote(record.run_id)}")


def _missing_run(run_id: str, have: list[str]) -> ConfigError:
    shown = ", ".join(sorted(have)[:10]) + (f" (and {len(have) - 10} more)" if len(have) > 10
                                            else "")
    return ConfigError(f"no run {run_id!r} in {L.MODELS_RUNS}; runs: {shown or 'none'}")


def _no_runs_table(lake: Lake) -> FileNotFoundError:
    return FileNotFoundError(
        f"{L.MODELS_RUNS} does not exist at {lake.path(L.MODELS_RUNS)}: train a model first "
        f"(`reclake fit --model als`)")


def read_run(spark: SparkSession, lake: Lake, run_id: str) -> RunRecord:
    """The record of ``run_id``; clear errors when the table or the run does not exist."""
    from pyspark.sql import functions as F

    if not lake.exists(spark, L.MODELS_RUNS):
        raise _no_runs_table(lake)
    _check_schema(spark, lake)
    runs = lake.read(spark, L.MODELS_RUNS)
    rows = runs.where(F.col(S.RUN_ID) == run_id).collect()
    if not rows:
        raise _missing_run(run_id, [r[0] for r in runs.select(S.RUN_ID).collect()])
    return RunRecord.from_row(rows[0].asDict())


def check_run_exists(lake: Lake, run_id: str) -> None:
    """The same existence check without Spark (``deltalake``), so a CLI stage can refuse an
    unknown run id before the JVM starts. Only local lakes are checked (object stores need the
    cluster's credentials: the Spark-side reader checks those)."""
    import os

    path = lake.path(L.MODELS_RUNS)
    if "://" in lake.root:
        return
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        raise _no_runs_table(lake)
    from deltalake import DeltaTable

    table = DeltaTable(path)
    ids = table.to_pyarrow_table(columns=[S.RUN_ID]).column(S.RUN_ID).to_pylist()
    del table  # release the delta-rs reader before the process goes on to start Spark
    if run_id not in ids:
        raise _missing_run(run_id, ids)
