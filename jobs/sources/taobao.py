"""Taobao UserBehavior.csv: ``user,item,category,behavior,unix_ts``, no header.

Behaviours pv / cart / fav / buy map to view / cart / fav / purchase. The original data holds a few
timestamps outside its 2017-11-25..12-03 window; they are kept unless they fall outside
``ingest.ts_min`` / ``ingest.ts_max``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common import schema as S
from common.config import Config
from jobs.sources.base import SourceSpec, fields_to_raw, read_lines, split_plain

BEHAVIORS = {"pv": S.VIEW, "cart": S.CART, "fav": S.FAV, "buy": S.PURCHASE}


def read_taobao(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    f = split_plain(F.col(S.RAW), ",")
    mapping = {S.USER_ID: 0, S.ITEM_ID: 1, S.CATEGORY_ID: 2, S.BEHAVIOR: 3, S.TS: 4}
    df = fields_to_raw(lines, f, F.size(f), mapping, header_first_field="user_id")
    return df, SourceSpec("taobao", expected_fields=5, ts_format="epoch_s", behavior_map=BEHAVIORS)
