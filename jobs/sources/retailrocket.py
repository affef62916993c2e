"""RetailRocket events.csv: header ``timestamp,visitorid,event,itemid,transactionid``.

Timestamps are unix **milliseconds**; events view / addtocart / transaction map to view / cart /
purchase. The transaction id stays in ``raw``.
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

BEHAVIORS = {"view": S.VIEW, "addtocart": S.CART, "transaction": S.PURCHASE}


def read_retailrocket(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, SourceSpec]:
    lines = read_lines(spark, path, cfg.ingest.encoding or "UTF-8")
    mapping = {S.TS: 0, S.USER_ID: 1, S.BEHAVIOR: 2, S.ITEM_ID: 3}
    df = fields_to_raw(
        lines,
        split_quoted(F.col(S.RAW), ",", 5),
        count_fields_quoted(F.col(S.RAW), ","),
        mapping,
        header_first_field="timestamp",
    )
    spec = SourceSpec("retailrocket", expected_fields=5, ts_format="epoch_ms", behavior_map=BEHAVIORS)
    return df, spec
