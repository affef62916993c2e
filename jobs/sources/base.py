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


# Every Unicode White_Space character, and the invisible format characters that come along with
# copied ids (zero-width space and joiners, direction marks, word joiner, BOM): a field of only
# these is missing, and they never start or end an id
SPACE_CHARS = ("\t\n\u000b\f\r \u0085\u00a0\u1680\u180e"
               + "".join(chr(c) for c in range(0x2000, 0x2010))
               + "\u2028\u2029\u202f\u205f\u2060\u3000\ufeff")
# ASCII-compatible single-byte encodings Spark's decode() reads: lines are split on their bytes
_BYTE_ENCODINGS = {"iso88591": "ISO-8859-1", "latin1": "ISO-8859-1", "l1": "ISO-8859-1",
                   "usascii": "US-ASCII", "ascii": "US-ASCII"}


def _norm_encoding(encoding: str) -> str:
    return encoding.replace("-", "").replace("_", "").lower()


def read_lines(spark: SparkSession, path: str, encoding: str = "UTF-8") -> DataFrame:
    """Every line of the files under ``path``, blank ones included, as ``raw`` plus its
    ``source_file`` and its place in the file (``schema.LINE_BLOCK``, ``schema.LINE_POS``).

    UTF-8 and single-byte encodings (latin-1 MovieLens, ASCII) go through the text reader (the
    fastest line reader, and one that keeps blank lines): undecodable UTF-8 bytes become
    U+FFFD, which standardisation flags as ``bad_encoding``. Other encodings (UTF-16) use the
    CSV reader with a separator and quote that never occur, so that the whole line is one column
    and the ``encoding`` option applies; that reader skips blank lines. All handle LF, CRLF and CR
    endings, directories and globs.
    """
    enc = _norm_encoding(encoding)
    if enc in ("utf8", "utf") or enc in _BYTE_ENCODINGS:
        value = F.col("value")
        text = (F.make_valid_utf8(value) if enc in ("utf8", "utf")
                else F.decode(value.cast("binary"), _BYTE_ENCODINGS[enc]))
        df = spark.read.text(path).select(text.alias(S.RAW), *_line_place())
        return df
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
    return df.select(S.RAW, *_line_place())


def _line_place() -> list[Column]:
    """``source_file`` and the line's place in it: a file split is read in order into one
    partition, so (split start, increasing id) orders a file's lines."""
    return [F.col("_metadata.file_path").alias(S.SOURCE_FILE),
            F.col("_metadata.file_block_start").alias(S.LINE_BLOCK),
            F.monotonically_increasing_id().alias(S.LINE_POS)]


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
    header: Column | None = None,
) -> DataFrame:
    """Project split fields onto the canonical raw-field columns.

    ``mapping`` maps each canonical field to a 0-based position in ``fields``, a literal Column
    (e.g. the constant behaviour ``rating`` of MovieLens) or None (absent in this format).
    Header lines (first field equal to ``header_first_field``, case-insensitive, or where
    ``header`` holds) are kept and flagged (``schema.IS_HEADER``): ingest drops each file's first
    one and quarantines any other, so that every line of the input is accounted for. Fields are
    stripped of whitespace of every Unicode kind; a field of nothing else is null.
    """
    df = lines.withColumn("_f", fields).withColumn(S.N_FIELDS, n_fields.cast("int"))
    is_header = F.lit(False) if header is None else header
    if header_first_field is not None:
        first = F.lower(strip_space(F.col("_f")[0]))
        is_header = is_header | F.coalesce(first == header_first_field.lower(), F.lit(False))
    cols = []
    for name in S.RAW_FIELDS:
        spec = mapping.get(name)
        if spec is None:
            c = F.lit(None).cast("string")
        elif isinstance(spec, int):
            c = F.try_element_at("_f", F.lit(spec + 1))
        else:
            c = spec.cast("string")
        cols.append(blank_to_null(c).alias(name))
    place = [F.col(c) if c in df.columns else F.lit(None).cast("long").alias(c)
             for c in (S.LINE_BLOCK, S.LINE_POS)]
    return df.select(*cols, S.N_FIELDS, S.RAW, S.SOURCE_FILE, *place,
                     is_header.alias(S.IS_HEADER))


def strip_space(c: Column) -> Column:
    """``c`` without leading or trailing whitespace of any Unicode kind (``SPACE_CHARS``)."""
    return F.trim(c, F.lit(SPACE_CHARS))


def blank_to_null(c: Column) -> Column:
    """``c`` stripped (``strip_space``); null when nothing is left."""
    t = strip_space(c)
    return F.when(t != "", t)


# --- what a file holds, by its first bytes -------------------------------------------------------

SNIFF_BYTES = 8192
# magic bytes -> (format, the name endings under which Spark's text readers decompress it)
_MAGIC: tuple[tuple[bytes, str, tuple[str, ...]], ...] = (
    (b"\x1f\x8b", "gzip", (".gz", ".gzip")),
    (b"BZh", "bzip2", (".bz2",)),
    (b"\x28\xb5\x2f\xfd", "zstd", (".zst",)),
    (b"\xfd7zXZ\x00", "xz", ()),
    (b"\x04\x22\x4d\x18", "lz4", (".lz4",)),
    (b"PK\x03\x04", "zip", ()),
    (b"PAR1", "Parquet", ()),
    (b"\xff\x06\x00\x00sNaPpY", "snappy", (".snappy",)),
)
_COMPRESSED_SUFFIXES = {s for _, _, sfx in _MAGIC for s in sfx} | {".deflate", ".xz", ".zip"}


def head_bytes(spark: SparkSession, path: str, n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes of a file, through the Hadoop FileSystem (local, s3a, abfss)."""
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    stream = hpath.getFileSystem(spark._jsc.hadoopConfiguration()).open(hpath)
    try:
        return bytes(stream.readNBytes(n))
    finally:
        stream.close()


def content_problem(name: str, head: bytes, encoding: str) -> str | None:
    """Why a text reader cannot read a file whose name is ``name`` and whose first bytes are
    ``head`` (compressed under a name Spark does not decompress, an archive, Parquet, binary);
    None when it reads as text."""
    lower = name.lower()
    for magic, fmt, suffixes in _MAGIC:
        if not head.startswith(magic):
            continue
        if suffixes and lower.endswith(suffixes):
            return None  # Spark decompresses it by its name
        if fmt == "Parquet":
            return (f"{name} is a Parquet file, not text: use --source-format generic with "
                    f"ingest.generic.format: parquet")
        if suffixes:
            return (f"{name} is {fmt}-compressed but its name does not end in "
                    f"{' or '.join(suffixes)}; Spark picks the codec by the name, so it would read "
                    f"compressed bytes as lines: rename it to {name}{suffixes[0]} or decompress it")
        return f"{name} is a {fmt} archive, which Spark's text readers cannot open: unpack it first"
    for suffix in sorted(_COMPRESSED_SUFFIXES):
        if lower.endswith(suffix) and head:
            return (f"{name} ends in {suffix} but does not hold {suffix[1:]} data (its first bytes "
                    f"are {head[:8].hex(' ')}): a mislabelled or corrupt file")
    enc = _norm_encoding(encoding)
    if enc.startswith(("utf16", "utf32")):
        return None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return (f"{name} starts with a UTF-16 byte-order mark: pass --encoding UTF-16 "
                f"(read as {encoding} it would be quarantined line by line as bad_encoding)")
    if b"\x00" in head:
        at = head.index(b"\x00")
        return (f"{name} holds binary data (a NUL byte at offset {at}), not {encoding} text: "
                f"wrong file, or a format reclake does not read as lines")
    return None


def check_text_files(spark: SparkSession, files: list[tuple[str, int, int]],
                     encoding: str) -> None:
    """Refuse, before anything is written, input files that a line reader would turn into junk
    lines: the first problem per file, all files at once (``InputError``)."""
    from common.errors import InputError

    problems = [p for path, size, _ in files if size > 0
                for p in [content_problem(path.rsplit("/", 1)[-1], head_bytes(spark, path),
                                          encoding)] if p]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                           else "")
        raise InputError(f"{len(problems)} of {len(files)} input file(s) cannot be read as text: "
                         f"{shown}. Nothing was written.")


# what Spark's readers raise on a truncated or corrupt compressed file (the Java exception text)
_CORRUPT_MARKERS = ("Unexpected end of input stream", "EOFException", "Not in GZIP format",
                    "invalid block type", "invalid distance", "incorrect header check",
                    "invalid stored block", "Corrupt input data", "ZstdIOException",
                    "Premature end of")


def read_failure(e: BaseException) -> str | None:
    """One line on why reading an input failed, when ``e`` is a truncated or corrupt file (a
    gzip cut short, a bad block); None for any other error."""
    text = str(e)
    marker = next((m for m in _CORRUPT_MARKERS if m in text), None)
    if marker is None or not ("FAILED_READ_FILE" in text or "reading file" in text):
        return None
    found = re.search(r"reading file (\S+?)\.?(?:\s|$)", text)
    where = f" {found.group(1)}" if found else ""
    cause = next((ln.strip() for ln in text.splitlines() if marker in ln), marker)
    return f"input file{where} is truncated or corrupt ({cause[:200]})"
