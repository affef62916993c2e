"""Last.fm HetRec 2011 ``user_artists.dat``: header ``userID\\tartistID\\tweight``.

The weight is a play count (value). The file has no timestamps: every row gets
``ingest.default_ts`` (documented default 2000-01-01T00:00:00Z) instead of being rejected. The raw
behaviour is ``play``, mapped to ``view`` unless ``ingest.behavior_map`` says otherwise (e.g.
``{play: play}`` with ``behaviors.extras: [play]`` and ``confidence.amount.play: sum_value``).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common import schema as S
from common.config import Config
from jobs.sources.base import SourceSpec, fields_to_raw, read_lines, split_plain

BEHAVIORS = {"play": S.VIEW}


def read_lastfm_hetrec(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    f = split_plain(F.col(S.RAW), "\t")
    mapping = {
        S.USER_ID: 0,
        S.ITEM_ID: 1,
        S.VALUE: 2,
        S.BEHAVIOR: F.lit("play"),
        S.TS: F.lit(cfg.ingest.default_ts),
    }
    df = fields_to_raw(lines, f, F.size(f), mapping, header_first_field="userID")
    return df, SourceSpec("lastfm-hetrec", expected_fields=3, ts_format="iso", behavior_map=BEHAVIORS)
