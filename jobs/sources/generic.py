"""Generic events in CSV, JSON lines or Parquet, mapped through ``ingest.generic`` in config.

``ingest.generic.columns`` maps each canonical field (user_id, item_id, behavior, value, ts,
session_id, category_id, event_id) to the source's column name; unmapped fields are null.
Behaviour names are canonical already or mapped with ``ingest.behavior_map``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common import schema as S
from common.config import Config, ConfigError
from jobs.sources.base import (
    SPACE_CHARS,
    SourceSpec,
    count_fields_quoted,
    fields_to_raw,
    read_lines,
    split_quoted,
    strip_space,
)

_CORRUPT = "_corrupt_record"


def _spec(cfg: Config, expected: int) -> SourceSpec:
    return SourceSpec("generic", expected_fields=expected, ts_format=cfg.ingest.generic.ts_format)


def _default_behavior(cfg: Config, mapping: dict) -> dict:
    g = cfg.ingest.generic
    if S.BEHAVIOR not in g.columns:
        if not g.default_behavior:
            raise ConfigError(
                "ingest.generic.columns maps no 'behavior' column: set "
                "ingest.generic.default_behavior (e.g. 'view')"
            )
        mapping[S.BEHAVIOR] = F.lit(g.default_behavior)
    return mapping


def _check_mapping(cfg: Config, available: list[str]) -> None:
    cols = cfg.ingest.generic.columns
    unknown = sorted(set(cols) - set(S.RAW_FIELDS))
    if unknown:
        raise ConfigError(f"ingest.generic.columns: unknown canonical field(s) {unknown}")
    for need in (S.USER_ID, S.ITEM_ID):
        if need not in cols:
            raise ConfigError(f"ingest.generic.columns must map '{need}'")
    missing = sorted(src for src in cols.values() if src not in available)
    if missing:
        raise ConfigError(
            f"ingest.generic.columns names column(s) {missing} that the input lacks; "
            f"input columns: {available}"
        )


def read_generic(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    fmt = cfg.ingest.generic.format
    if fmt == "csv":
        return _read_csv(spark, path, cfg)
    if fmt == "jsonl":
        return _read_jsonl(spark, path, cfg)
    if fmt == "parquet":
        return _read_parquet(spark, path, cfg)
    raise ConfigError(f"ingest.generic.format must be csv|jsonl|parquet, got {fmt!r}")


def _read_csv(spark, path, cfg):
    g = cfg.ingest.generic
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    if g.header:
        head = lines.where(strip_space(F.col(S.RAW)) != "").select(S.RAW).limit(1).collect()
        if not head:
            raise FileNotFoundError(f"no lines under {path}")
        header_line = head[0][S.RAW].strip(SPACE_CHARS)
        names = [h.strip().strip('"') for h in header_line.split(g.delimiter)]
        header = strip_space(F.col(S.RAW)) == F.lit(header_line)
    else:
        # headerless: the mapping names columns by 0-based position ("0", "1", ...)
        try:
            width = max(int(v) for v in g.columns.values()) + 1
        except ValueError:
            raise ConfigError(
                "ingest.generic.header is false: map fields to column positions, e.g. user_id: '0'"
            ) from None
        names = [str(i) for i in range(width)]
        header = None
    _check_mapping(cfg, names)
    pos = {field: names.index(src) for field, src in g.columns.items()}
    df = fields_to_raw(
        lines,
        split_quoted(F.col(S.RAW), g.delimiter, len(names)),
        count_fields_quoted(F.col(S.RAW), g.delimiter),
        _default_behavior(cfg, dict(pos)),
        header=header,
    )
    return df, _spec(cfg, len(names))


def _read_jsonl(spark, path, cfg):
    g = cfg.ingest.generic
    _check_mapping(cfg, list(g.columns.values()))
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    srcs = sorted(set(g.columns.values()))
    ddl = ", ".join(f"`{c}` string" for c in srcs) + f", {_CORRUPT} string"
    parsed = F.from_json(
        S.RAW, ddl, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
    )
    df = lines.withColumn("_j", parsed)
    ok = F.col("_j").isNotNull() & F.col(f"_j.{_CORRUPT}").isNull()
    # one JSON object per line: 1 "field" when it parses, 0 when it does not
    fields = F.array(*[F.col(f"_j.`{c}`") for c in srcs])
    mapping = {field: srcs.index(src) for field, src in g.columns.items()}
    out = fields_to_raw(df, fields, F.when(ok, 1).otherwise(0), _default_behavior(cfg, mapping))
    return out, _spec(cfg, 1)


def _read_parquet(spark, path, cfg):
    g = cfg.ingest.generic
    df = spark.read.parquet(path)
    _check_mapping(cfg, df.columns)
    data_cols = list(df.columns)
    df = df.select(
        *[F.col(f"`{c}`") for c in data_cols],
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in data_cols])).alias(S.RAW),
        F.col("_metadata.file_path").alias(S.SOURCE_FILE),
    )
    srcs = sorted(set(g.columns.values()))
    fields = F.array(*[F.col(f"`{c}`").cast("string") for c in srcs])
    mapping = {field: srcs.index(src) for field, src in g.columns.items()}
    out = fields_to_raw(df, fields, F.lit(1), _default_behavior(cfg, mapping))
    return out, _spec(cfg, 1)
