"""Per (user, item) interactions from indexed events: the one place confidence is built.

``confidence = sum_b w_b * f(amount_b)`` (``confidence.*`` in the config). The transform stage
builds ``gold/interactions`` with it, the split stage rebuilds each temporal part with it (so no
event after a cutoff leaks into train), and tuning can rebuild confidence from the stored
per-behaviour columns with other weights.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.config import Config
from common.lake import Lake

SECONDS_PER_DAY = 86_400.0


def f_transform(x: Column, f: str) -> Column:
    """The confidence shaping function f (f(0) = 0 for all of them)."""
    if f == "linear":
        return x
    if f == "log1p":
        return F.log1p(x)
    if f == "sqrt":
        return F.sqrt(x)
    if f == "binary":
        return F.when(x > 0, 1.0).otherwise(0.0)
    raise ValueError(f"unknown confidence f {f!r}")


def index_events(events: DataFrame, user_index: DataFrame, item_index: DataFrame) -> DataFrame:
    """silver events + ``user_idx``, ``item_idx`` (inner join: every silver id has an index)."""
    S.require_columns(events, S.USER_ID, S.ITEM_ID, S.BEHAVIOR, S.TS, where="silver events")
    return events.join(user_index, S.USER_ID).join(item_index, S.ITEM_ID)


def build_interactions(events: DataFrame, *, cfg: Config, ref_ts=None) -> DataFrame:
    """Aggregate indexed events per (user_idx, item_idx).

    In: ``user_idx, item_idx, behavior, value, ts``. Out: ``user_idx, item_idx, n_events,
    cnt_<b>`` (raw counts), ``conf_<b>`` (= weights[b] * f(amount_b)), ``confidence`` (sum of the
    parts), ``rating`` (mean value of rating events), ``first_ts``, ``last_ts``.

    amount_b is the time-decayed event count (``count``), or the decayed sum / plain mean of the
    events' values (``sum_value`` / ``mean_value``), per ``confidence.amount``. With
    ``confidence.half_life_days`` each event is weighted by 0.5 ** (age / half_life), age measured
    back from ``ref_ts`` (default: the latest event).
    """
    S.require_columns(events, S.USER_IDX, S.ITEM_IDX, S.BEHAVIOR, S.VALUE, S.TS,
                      where="build_interactions")
    cc = cfg.confidence
    if cc.half_life_days:
        if ref_ts is None:
            ref_ts = events.agg(F.max(S.TS)).first()[0]
        age_days = (F.lit(ref_ts).cast("timestamp").cast("double") - F.col(S.TS).cast("double")) / SECONDS_PER_DAY
        decay = F.pow(F.lit(0.5), F.greatest(age_days, F.lit(0.0)) / cc.half_life_days)
    else:
        decay = F.lit(1.0)
    ev = events.withColumn("_d", decay)
    aggs = [F.count(F.lit(1)).alias("n_events"), F.min(S.TS).alias(S.FIRST_TS),
            F.max(S.TS).alias(S.LAST_TS)]
    is_b = {b: F.col(S.BEHAVIOR) == b for b in cfg.vocabulary}
    for b in cfg.vocabulary:
        aggs.append(F.count(F.when(is_b[b], 1)).alias(S.count_col(b)))
        how = cc.amount.get(b, "count")
        if how == "count":
            amt = F.sum(F.when(is_b[b], F.col("_d")))
        elif how == "sum_value":
            amt = F.sum(F.when(is_b[b], F.col(S.VALUE) * F.col("_d")))
        else:
            amt = F.avg(F.when(is_b[b], F.col(S.VALUE)))
        aggs.append(F.coalesce(amt, F.lit(0.0)).alias(f"_amt_{b}"))
    aggs.append(F.avg(F.when(is_b[S.RATING_B], F.col(S.VALUE))).alias(S.RATING))
    g = ev.groupBy(S.USER_IDX, S.ITEM_IDX).agg(*aggs)
    parts = {
        b: (F.lit(float(cc.weights.get(b, 0.0))) * f_transform(F.col(f"_amt_{b}"), cc.f))
        for b in cfg.vocabulary
    }
    conf = sum((parts[b] for b in cfg.vocabulary[1:]), parts[cfg.vocabulary[0]])
    return g.select(
        S.USER_IDX, S.ITEM_IDX, "n_events",
        *[S.count_col(b) for b in cfg.vocabulary],
        *[parts[b].cast("double").alias(S.conf_col(b)) for b in cfg.vocabulary],
        conf.cast("double").alias(S.CONFIDENCE),
        S.RATING, S.FIRST_TS, S.LAST_TS,
    )


def read_indexed_events(spark: SparkSession, lake: Lake) -> DataFrame:
    return index_events(
        lake.read(spark, L.SILVER_EVENTS),
        lake.read(spark, L.SILVER_USER_INDEX),
        lake.read(spark, L.SILVER_ITEM_INDEX),
    )
