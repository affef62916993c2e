"""MovieLens readers: ml-100k ``u.data``, ml-1m/10m ``ratings.dat``, ml-latest/20m/25m ``ratings.csv``.

All are explicit ratings: behaviour ``rating``, value = the rating, ts = unix seconds.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common import schema as S
from common.config import Config
from jobs.sources.base import (
    SourceSpec,
    count_fields_quoted,
    fields_to_raw,
    read_lines,
    split_plain,
    split_quoted,
)


def _mapping() -> dict:
    return {S.USER_ID: 0, S.ITEM_ID: 1, S.VALUE: 2, S.TS: 3, S.BEHAVIOR: F.lit(S.RATING_B)}


def read_movielens_100k(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    """``u.data``: ``user \\t item \\t rating \\t unix_ts``, no header, latin-1."""
    lines = read_lines(spark, path, cfg.ingest.encoding or "ISO-8859-1")
    f = split_plain(F.col(S.RAW), "\t")
    df = fields_to_raw(lines, f, F.size(f), _mapping())
    return df, SourceSpec("movielens-100k", expected_fields=4, ts_format="epoch_s")


def read_movielens_dat(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    """``ratings.dat`` (ML-1M / ML-10M): ``UserID::MovieID::Rating::Timestamp``, no header."""
    lines = read_lines(spark, path, cfg.ingest.encoding or "ISO-8859-1")
    f = split_plain(F.col(S.RAW), "::")
    df = fields_to_raw(lines, f, F.size(f), _mapping())
    return df, SourceSpec("movielens-dat", expected_fields=4, ts_format="epoch_s")


def read_movielens_csv(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    """``ratings.csv`` (ml-latest, ml-20m, ml-25m): header ``userId,movieId,rating,timestamp``."""
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    df = fields_to_raw(
        lines,
        split_quoted(F.col(S.RAW), ",", 4),
        count_fields_quoted(F.col(S.RAW), ","),
        _mapping(),
        header_first_field="userId",
    )
    return df, SourceSpec("movielens-csv", expected_fields=4, ts_format="epoch_s")
