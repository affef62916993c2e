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
from common.config import Config, ConfigError
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
    return (events.join(user_index.select(S.USER_ID, S.USER_IDX), S.USER_ID)
            .join(item_index.select(S.ITEM_ID, S.ITEM_IDX), S.ITEM_ID))


def _decay(ts: Column, ref_ts, half_life_days: float) -> Column:
    """0.5 ** (age / half_life), age in days from ``ts`` back from ``ref_ts`` (never negative)."""
    age_days = (F.lit(ref_ts).cast("timestamp").cast("double") - ts.cast("double")) / SECONDS_PER_DAY
    return F.pow(F.lit(0.5), F.greatest(age_days, F.lit(0.0)) / half_life_days)


def _confidence_parts(amounts: dict[str, Column], cfg: Config) -> dict[str, Column]:
    """``conf_<b>`` = weights[b] * f(amount_b) per behaviour and ``confidence`` (their sum), by
    column name.

    The one formula both :func:`build_interactions` and :func:`rebuild_confidence` use, so that
    the rebuild from stored amounts reproduces the build bit for bit."""
    cc = cfg.confidence
    parts = {
        b: F.lit(float(cc.weights.get(b, 0.0))) * f_transform(amounts[b], cc.f)
        for b in cfg.vocabulary
    }
    conf = sum((parts[b] for b in cfg.vocabulary[1:]), parts[cfg.vocabulary[0]])
    out = {S.conf_col(b): parts[b].cast("double") for b in cfg.vocabulary}
    out[S.CONFIDENCE] = conf.cast("double")
    return out


def build_interactions(events: DataFrame, *, cfg: Config, ref_ts=None) -> DataFrame:
    """Aggregate indexed events per (user_idx, item_idx).

    In: ``user_idx, item_idx, behavior, value, ts``. Out: ``user_idx, item_idx, n_events,
    cnt_<b>`` (raw counts), ``conf_<b>`` (= weights[b] * f(amount_b)), ``amt_<b>`` (the
    undecayed amount, double, 0.0 without such events), ``confidence`` (sum of the parts),
    ``rating`` (mean value of rating events), ``first_ts``, ``last_ts``.

    amount_b is the time-decayed event count (``count``), or the decayed sum / plain mean of the
    events' values (``sum_value`` / ``mean_value``), per ``confidence.amount``. With
    ``confidence.half_life_days`` each event is weighted by 0.5 ** (age / half_life), age measured
    back from ``ref_ts`` (default: the latest event); a mean value is never decayed.
    """
    S.require_columns(events, S.USER_IDX, S.ITEM_IDX, S.BEHAVIOR, S.VALUE, S.TS,
                      where="build_interactions")
    cc = cfg.confidence
    if cc.half_life_days:
        if ref_ts is None:
            ref_ts = events.agg(F.max(S.TS)).first()[0]
        decay = _decay(F.col(S.TS), ref_ts, cc.half_life_days)
    else:
        decay = None
    ev = events.withColumn("_d", decay) if decay is not None else events
    aggs = [F.count(F.lit(1)).alias("n_events"), F.min(S.TS).alias(S.FIRST_TS),
            F.max(S.TS).alias(S.LAST_TS)]
    is_b = {b: F.col(S.BEHAVIOR) == b for b in cfg.vocabulary}
    amounts: dict[str, Column] = {}  # the amount f is applied to: decayed when configured
    for b in cfg.vocabulary:
        aggs.append(F.count(F.when(is_b[b], 1)).alias(S.count_col(b)))
        how = cc.amount.get(b, "count")
        if how == "count":
            amt = F.count(F.when(is_b[b], 1)).cast("double")
            decayed = F.sum(F.when(is_b[b], F.col("_d"))) if decay is not None else None
        elif how == "sum_value":
            amt = F.sum(F.when(is_b[b], F.col(S.VALUE)))
            decayed = (F.sum(F.when(is_b[b], F.col(S.VALUE) * F.col("_d")))
                       if decay is not None else None)
        else:
            amt = F.avg(F.when(is_b[b], F.col(S.VALUE)))
            decayed = None
        aggs.append(F.coalesce(amt.cast("double"), F.lit(0.0)).alias(S.amount_col(b)))
        if decayed is not None:
            aggs.append(F.coalesce(decayed, F.lit(0.0)).alias(f"_amt_{b}"))
            amounts[b] = F.col(f"_amt_{b}")
        else:
            amounts[b] = F.col(S.amount_col(b))
    aggs.append(F.avg(F.when(is_b[S.RATING_B], F.col(S.VALUE))).alias(S.RATING))
    g = ev.groupBy(S.USER_IDX, S.ITEM_IDX).agg(*aggs)
    conf = _confidence_parts(amounts, cfg)
    return g.select(
        S.USER_IDX, S.ITEM_IDX, "n_events",
        *[S.count_col(b) for b in cfg.vocabulary],
        *[conf[S.conf_col(b)].alias(S.conf_col(b)) for b in cfg.vocabulary],
        *[S.amount_col(b) for b in cfg.vocabulary],
        conf[S.CONFIDENCE].alias(S.CONFIDENCE),
        S.RATING, S.FIRST_TS, S.LAST_TS,
    )


def rebuild_confidence(rows: DataFrame, *, cfg: Config, ref_ts=None) -> DataFrame:
    """Recompute ``conf_<b>`` and ``confidence`` from stored amounts with ``cfg.confidence``'s
    weights, f and half-life, without re-reading events (a tuning trial's confidence).

    In: gold/splits or gold/interactions rows with ``amt_<b>`` for every behaviour of non-zero
    weight and, with a half-life, ``ts`` (gold/splits) or ``last_ts`` (gold/interactions). Out:
    the same rows and columns, ``conf_<b>`` (every behaviour of the vocabulary; 0.0 for a
    zero-weight one without ``amt_<b>``) and ``confidence`` replaced by
    weights[b] * f(amt_b * decay) and their sum.

    decay = 0.5 ** (age_days / half_life), age from the row's ``ts`` back to ``ref_ts`` (default:
    the latest ``ts`` of ``rows``); 1 without ``confidence.half_life_days``. A
    ``mean_value`` behaviour is never decayed, as in :func:`build_interactions`.

    Approximation: :func:`build_interactions` decays each event by its own age, this rebuild
    decays a pair's whole amount by the age of its *last* event. The two agree exactly when every
    event of a pair has the same age (one event per pair, or no half-life); otherwise older
    events count for more here than in the build. Without a half-life the rebuild reproduces
    build_interactions' ``conf_<b>`` and ``confidence`` bit for bit. The default ``ref_ts`` is the
    latest row of ``rows``: to match a build made with another reference (the temporal split
    builds each part against its own latest event), pass it. ``confidence.amount`` must be the
    one the rows were built with: the stored amounts are a count, sum or mean already.

    Raises ConfigError when a behaviour of non-zero weight has no ``amt_<b>`` column (a table
    written before amounts were stored: re-run ``reclake transform`` and ``reclake split``).
    """
    cc = cfg.confidence
    missing = [S.amount_col(b) for b in cfg.vocabulary
               if float(cc.weights.get(b, 0.0)) != 0.0 and S.amount_col(b) not in rows.columns]
    if missing:
        raise ConfigError(
            f"rebuild_confidence: missing column(s) {missing} for behaviours of non-zero weight; "
            "re-run `reclake transform` and `reclake split` to store per-behaviour amounts"
        )
    decay = None
    if cc.half_life_days:
        ts_col = S.TS if S.TS in rows.columns else S.LAST_TS
        S.require_columns(rows, ts_col, where="rebuild_confidence (with a half-life)")
        if ref_ts is None:
            ref_ts = rows.agg(F.max(ts_col)).first()[0]
        decay = _decay(F.col(ts_col), ref_ts, cc.half_life_days)
    amounts: dict[str, Column] = {}
    for b in cfg.vocabulary:
        if S.amount_col(b) not in rows.columns:  # zero weight: the part is 0 whatever f is
            amounts[b] = F.lit(0.0)
            continue
        amt = F.col(S.amount_col(b))
        if decay is not None and cc.amount.get(b, "count") != "mean_value":
            amt = amt * decay
        amounts[b] = amt
    # withColumns replaces conf_<b> / confidence in place and keeps every other column as it is
    return rows.withColumns(_confidence_parts(amounts, cfg))


def committed_events(spark: SparkSession, lake: Lake) -> DataFrame:
    """``silver/events`` of the batches that finished: those with an ``audit/batches`` silver
    row, which ingest writes last. A batch that was killed, or is being written right now, has
    rows in silver but no such row yet, and is left out until it finishes. A lake whose silver
    was not written by ingest (no bronze or silver audit row at all: built by hand, by a test)
    is read whole."""
    events = lake.read(spark, L.SILVER_EVENTS)
    if not lake.exists(spark, L.AUDIT_BATCHES):
        return events
    by_ingest = lake.read(spark, L.AUDIT_BATCHES).where(F.col(S.STAGE).isin("bronze", "silver"))
    if by_ingest.isEmpty():
        return events
    done = by_ingest.where(F.col(S.STAGE) == "silver").select(S.BATCH_ID).distinct()
    return events.join(F.broadcast(done), S.BATCH_ID, "left_semi")


def read_indexed_events(spark: SparkSession, lake: Lake) -> DataFrame:
    return index_events(
        committed_events(spark, lake),
        lake.read(spark, L.SILVER_USER_INDEX),
        lake.read(spark, L.SILVER_ITEM_INDEX),
    )
