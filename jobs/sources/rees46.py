"""REES46 eCommerce behaviour data (Kaggle "eCommerce behavior data from multi category store").

Header ``event_time,event_type,product_id,category_id,category_code,brand,price,user_id,
user_session``; ``event_time`` like ``2019-10-01 00:00:00 UTC``; value = price. ``remove_from_cart``
is not a canonical behaviour: add it to ``behaviors.extras`` to keep those rows, otherwise they are
quarantined as ``unknown_behavior`` (never silently dropped).
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
    split_quoted,
)

BEHAVIORS = {"view": S.VIEW, "cart": S.CART, "purchase": S.PURCHASE}


def read_rees46(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    mapping = {
        S.TS: 0,
        S.BEHAVIOR: 1,
        S.ITEM_ID: 2,
        S.CATEGORY_ID: 3,
        S.VALUE: 6,
        S.USER_ID: 7,
        S.SESSION_ID: 8,
    }
    df = fields_to_raw(
        lines,
        split_quoted(F.col(S.RAW), ",", 9),
        count_fields_quoted(F.col(S.RAW), ","),
        mapping,
        header_first_field="event_time",
    )
    return df, SourceSpec("rees46", expected_fields=9, ts_format="iso", behavior_map=BEHAVIORS)
