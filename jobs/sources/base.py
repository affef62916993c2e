"""Shared machinery of the raw-format readers.

A reader turns files of one real-world format into *raw fields*: one row per data line, every
canonical field as a string (or null), the number of fields found on the line, the line itself
(``raw``, kept for audit and quarantine) and the file it came from. Typing and validation happen
once, for every format alike, in ``jobs.ingest.standardize_events``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from common import schema as S

# A value that never occurs in real data, so that empty fields stay distinguishable from absent ones
_NEVER = "\u0000\u0000"


@dataclass(frozen=True)
class SourceSpec:
    """What the standardiser needs to know about a format."""

    name: str
    expected_fields: int  # -1: the reader checks structure itself (JSON, Parquet)
    ts_format: str = "auto"  # auto | epoch_s | epoch_ms | iso | none | a Spark datetime pattern
    behavior_map: Mapping[str, str] = field(default_factory=dict)  # raw (lower-case) -> canonical
    header_first_field: str | None = None  # lines whose first field equals this are headers


def read_lines(spark: SparkSession, path: str, encoding: str = "UTF-8") -> DataFrame:
    """Every non-blank line of the files under ``path`` as ``raw`` plus its ``source_file``.

    UTF-8 input goes through the text reader (the fastest line reader); undecodable bytes become
    U+FFFD, which standardisation flags as ``bad_encoding``. Other encodings (latin-1 MovieLens)
    use the CSV reader with a separator and quote that never occur, so that the whole line is
    one column and the ``encoding`` option applies. Both handle LF, CRLF and CR endings,
    directories and globs.
    """
    if encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf"):
        df = spark.read.text(path).select(
            F.make_valid_utf8("value").alias(S.RAW), F.col("_metadata.file_path").alias(S.SOURCE_FILE)
        )
        return df.where(F.col(S.RAW) != "")
    df = (
        spark.read.options(
            sep="\u0001",
            quote="\u0000",
            escape="\u0000",
            header=False,
            encoding=encoding,
            ignoreLeadingWhiteSpace=False,
            ignoreTrailingWhiteSpace=False,
            mode="PERMISSIVE",
            nullValue=_NEVER,
            multiLine=False,
        )
        .schema(f"{S.RAW} string")
        .csv(path)
    )
    return df.select(S.RAW, F.col("_metadata.file_path").alias(S.SOURCE_FILE))


def split_plain(raw: Column, delimiter_regex: str) -> Column:
    """Fields of a line with no quoting (tab / ``::`` / Taobao comma)."""
    return F.split(raw, delimiter_regex, -1)


def count_fields_quoted(raw: Column, delimiter: str) -> Column:
    """Number of fields of a CSV line, quotes respected (``"x, y"`` is one field)."""
    delim = re.escape(delimiter)
    unquoted = F.regexp_replace(raw, r'"([^"]|"")*"', "Q")
    # most lines hold no quote: skip the regex replace for them
    return F.when(raw.contains('"'), F.size(F.split(unquoted, delim, -1))).otherwise(
        F.size(F.split(raw, delim, -1))
    )


def split_quoted(raw: Column, delimiter: str, n: int) -> Column:
    """The fields of a CSV line as an array (at least the first ``n``), quotes respected."""
    ddl = ", ".join(f"f{i} string" for i in range(n))
    parsed = F.from_csv(raw, ddl, {"sep": delimiter, "nullValue": _NEVER, "mode": "PERMISSIVE"})
    # the CSV parser only where a quote needs it: a plain split is several times cheaper
    return F.when(raw.contains('"'), F.array(*[parsed[f"f{i}"] for i in range(n)])).otherwise(
        F.split(raw, re.escape(delimiter), -1)
    )


def fields_to_raw(
    lines: DataFrame,
    fields: Column,
    n_fields: Column,
    mapping: Mapping[str, int | Column | None],
    header_first_field: str | None = None,
) -> DataFrame:
    """Project split fields onto the canonical raw-field columns.

    ``mapping`` maps each canonical field to a 0-based position in ``fields``, a literal Column
    (e.g. the constant behaviour ``rating`` of MovieLens) or None (absent in this format).
    Header lines (first field equal to ``header_first_field``, case-insensitive) are dropped.
    """
    df = lines.withColumn("_f", fields).withColumn(S.N_FIELDS, n_fields.cast("int"))
    if header_first_field is not None:
        first = F.lower(F.trim(F.col("_f")[0]))
        df = df.where(first.isNull() | (first != header_first_field.lower()))
    cols = []
    for name in S.RAW_FIELDS:
        spec = mapping.get(name)
        if spec is None:
            c = F.lit(None).cast("string")
        elif isinstance(spec, int):
            c = F.try_element_at("_f", F.lit(spec + 1))
        else:
            c = spec.cast("string")
        cols.append(_blank_to_null(c).alias(name))
    return df.select(*cols, S.N_FIELDS, S.RAW, S.SOURCE_FILE)


def _blank_to_null(c: Column) -> Column:
    t = F.trim(c)
    return F.when(t != "", t)
