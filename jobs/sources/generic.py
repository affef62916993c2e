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
from common.errors import InputError
from common.log import get_logger
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
log = get_logger("ingest")


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


def _check_mapping(cfg: Config, available: list[str], where: str = "the input") -> dict:
    """The mapping restricted to the columns ``available`` (field -> source column): a mapped
    field of ``ingest.generic.optional`` whose column is absent is left out (null), with a
    warning; any other absent column is a ``ConfigError`` naming it and what is there."""
    g = cfg.ingest.generic
    cols = g.columns
    unknown = sorted(set(cols) - set(S.RAW_FIELDS))
    if unknown:
        raise ConfigError(f"ingest.generic.columns: unknown canonical field(s) {unknown}")
    for need in (S.USER_ID, S.ITEM_ID):
        if need not in cols:
            raise ConfigError(f"ingest.generic.columns must map '{need}'")
    absent = {f: src for f, src in cols.items() if src not in available}
    required = sorted(src for f, src in absent.items() if f not in g.optional)
    if required:
        raise ConfigError(
            f"ingest.generic.columns names column(s) {required} that {where} lacks; its columns: "
            f"{available}. Map the fields to the columns it has, or list them in "
            f"ingest.generic.optional to read them as null where absent")
    if absent:
        log.warning("%s has no column %s: %s read as null there (ingest.generic.optional)",
                    where, sorted(absent.values()), sorted(absent))
    return {f: src for f, src in cols.items() if f not in absent}


def read_generic(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    fmt = cfg.ingest.generic.format
    if fmt == "csv":
        return _read_csv(spark, path, cfg)
    if fmt == "jsonl":
        return _read_jsonl(spark, path, cfg)
    if fmt == "parquet":
        return _read_parquet(spark, path, cfg)
    raise ConfigError(f"ingest.generic.format must be csv|jsonl|parquet, got {fmt!r}")


def _header_line(raw: str) -> str:
    return raw.strip(SPACE_CHARS)


def _file_headers(lines: DataFrame) -> dict[str, str]:
    """Each file's first non-blank line (its header), by file: one aggregate over the lines."""
    first = (lines.where(strip_space(F.col(S.RAW)) != "")
             .groupBy(S.SOURCE_FILE)
             .agg(F.min_by(S.RAW, F.struct(S.LINE_BLOCK, S.LINE_POS)).alias("_h"))
             .collect())
    return {r[S.SOURCE_FILE]: _header_line(r["_h"]) for r in first}


def _read_csv(spark, path, cfg):
    g = cfg.ingest.generic
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    if not g.header:
        # headerless: the mapping names columns by 0-based position ("0", "1", ...)
        try:
            width = max(int(v) for v in g.columns.values()) + 1
        except ValueError:
            raise ConfigError(
                "ingest.generic.header is false: map fields to column positions, e.g. user_id: '0'"
            ) from None
        names = [str(i) for i in range(width)]
        cols = _check_mapping(cfg, names)
        pos = {field: names.index(src) for field, src in cols.items()}
        df = fields_to_raw(lines, split_quoted(F.col(S.RAW), g.delimiter, width),
                           count_fields_quoted(F.col(S.RAW), g.delimiter),
                           _default_behavior(cfg, dict(pos)))
        return df, _spec(cfg, width)

    # Each file's own header: files of one batch may differ (a column added, dropped or moved:
    # schema drift); the positions of the mapped columns are taken per header.
    if len(set(lines.inputFiles())) > 1:
        by_file = _file_headers(lines)
    else:
        head = lines.where(strip_space(F.col(S.RAW)) != "").select(S.RAW).limit(1).collect()
        by_file = {"": _header_line(head[0][S.RAW])} if head else {}
    if not by_file:
        raise FileNotFoundError(f"no lines under {path}")
    headers = sorted(set(by_file.values()))
    layouts = []  # per distinct header: (names, field -> position)
    for h in headers:
        names = [x.strip().strip('"') for x in h.split(g.delimiter)]
        files = sorted(f.rsplit("/", 1)[-1] for f, fh in by_file.items() if fh == h)
        where = (f"the input (header {h!r})" if len(headers) == 1
                 else f"{', '.join(files[:3])}{' and more' if len(files) > 3 else ''} "
                      f"(header {h!r})")
        cols = _check_mapping(cfg, names, where)
        layouts.append((names, {field: names.index(src) for field, src in cols.items()}))
    width = max(len(names) for names, _ in layouts)
    fields = split_quoted(F.col(S.RAW), g.delimiter, width)
    count = count_fields_quoted(F.col(S.RAW), g.delimiter)
    header = strip_space(F.col(S.RAW)).isin(headers)
    if len(layouts) == 1:
        (names, pos), = layouts
        df = fields_to_raw(lines, fields, count, _default_behavior(cfg, dict(pos)), header=header)
        return df, _spec(cfg, len(names))
    log.warning("the batch's files have %d different headers (schema drift): each file is "
                "read by its own", len(headers))
    # which layout a line's file has (a literal map of file -> layout: files are few)
    lay = F.create_map(*[F.lit(x) for f, h in by_file.items() for x in (f, headers.index(h))])
    which = lay[F.col(S.SOURCE_FILE)]
    mapping: dict = {}
    for field in S.RAW_FIELDS:
        expr = None
        for k, (_, pos) in enumerate(layouts):
            if field in pos:
                at = F.try_element_at(F.col("_f"), F.lit(pos[field] + 1))
                expr = (F.when(which == k, at) if expr is None else expr.when(which == k, at))
        if expr is not None:
            mapping[field] = expr
    # a line has the expected number of fields when it has its own file's header's; the spec's
    # check compares with `width`, so such lines count as `width`, others as what they have
    # (or -1 where that happens to equal `width`)
    own = F.element_at(F.array(*[F.lit(len(n)) for n, _ in layouts]), which + 1)
    n_fields = F.when(count == own, F.lit(width)).when(count == width, F.lit(-1)).otherwise(count)
    df = fields_to_raw(lines, fields, n_fields, _default_behavior(cfg, mapping), header=header)
    return df, _spec(cfg, width)


def _read_jsonl(spark, path, cfg):
    g = cfg.ingest.generic
    _check_mapping(cfg, list(g.columns.values()))  # a key absent from a line is null there
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
    # files with more or fewer columns, or a column widened (int -> long), merge into one schema;
    # a column whose type changed incompatibly (a number in one file, a string in another) is a
    # clear error before anything is written
    try:
        df = spark.read.option("mergeSchema", "true").parquet(path)
    except Exception as e:
        msg = str(e)
        if "CANNOT_MERGE" not in msg and "incompatible" not in msg.lower():
            raise
        first = next((ln for ln in msg.splitlines() if ln.strip()), msg)[:400]
        raise InputError(
            f"the Parquet files under {path} do not agree on their columns' types ({first}); "
            f"ingest the files of each schema as a batch of their own, or rewrite them with one "
            f"type. Nothing was written.") from None
    cols = _check_mapping(cfg, df.columns)
    data_cols = list(df.columns)
    df = df.select(
        *[F.col(f"`{c}`") for c in data_cols],
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in data_cols])).alias(S.RAW),
        F.col("_metadata.file_path").alias(S.SOURCE_FILE),
    )
    srcs = sorted(set(cols.values()))
    fields = F.array(*[F.col(f"`{c}`").cast("string") for c in srcs])
    mapping = {field: srcs.index(src) for field, src in cols.items()}
    out = fields_to_raw(df, fields, F.lit(1), _default_behavior(cfg, mapping))
    return out, _spec(cfg, 1)
