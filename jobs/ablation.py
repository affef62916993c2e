"""Behaviour-type importance by ablation: Shapley values of auxiliary behaviours for a target.

    reclake influence ablation --protocol temporal [--run-id ablation-taobao]
    spark-submit jobs/influence.py ablation --protocol temporal

On one split (temporal recommended: the train side is aggregated from events before the cutoff
only, so no auxiliary event after it can leak), for every subset S of the auxiliary behaviour
types (those with a non-zero part in train, the target excluded; Taobao: view, cart, fav -> 8
subsets) ALS is retrained on confidence = conf_<target> + Σ_{b∈S} conf_b with each seed of
``influence.ablation_seeds``; v(S) is the mean NDCG@K on the test pairs that hold the target
(purchases), over the users with such pairs and any train history (users a subset leaves without
history count 0). Every subset recommends from the same candidates (items the user has in train
under any behaviour excluded). Shapley value of b:

    φ_b = Σ_{S ⊆ A∖{b}} |S|! (m − |S| − 1)! / m! · (v(S ∪ {b}) − v(S)),   Σ_b φ_b = v(A) − v(∅)

with percentile confidence intervals from ``influence.bootstrap`` resamples of the users.
Written to ``influence/behavior_shapley`` (kind ``shapley`` per behaviour with its 95% interval;
kind ``subset`` per S with v(S) and ± one standard deviation over seeds in ci_low / ci_high).
"""

from __future__ import annotations

import itertools
import math
import time
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import lake as L
from common import metrics as M
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger
from jobs.models.als import fit_als, recommend_als
from jobs.models.topk import seen_items

log = get_logger("ablation")

SHAPLEY_SCHEMA = T.StructType([
    T.StructField(S.RUN_ID, T.StringType(), False),
    T.StructField(S.PROTOCOL, T.StringType(), False),
    T.StructField(S.TARGET, T.StringType(), False),
    T.StructField("kind", T.StringType(), False),  # shapley | subset
    T.StructField(S.BEHAVIOR, T.StringType(), False),  # a behaviour, or the subset "view+cart"
    T.StructField(S.VALUE, T.DoubleType()),  # φ_b, or v(S)
    T.StructField("ci_low", T.DoubleType()),
    T.StructField("ci_high", T.DoubleType()),
    T.StructField("v_all", T.DoubleType()),
    T.StructField("v_empty", T.DoubleType()),
    T.StructField("n_users", T.LongType()),
    T.StructField("n_seeds", T.IntegerType()),
    T.StructField(S.K, T.IntegerType()),
    T.StructField(S.CREATED_AT, T.TimestampType(), False),
    # the Delta version of every table the ablation read (gold/splits)
    T.StructField("inputs", T.MapType(T.StringType(), T.LongType())),
])


def all_subsets(players: list[str]) -> list[tuple[str, ...]]:
    return [c for r in range(len(players) + 1) for c in itertools.combinations(players, r)]


def shapley_values(v: dict[frozenset, float], players: list[str]) -> dict[str, float]:
    """Exact Shapley values from the value of every subset (keys: frozensets of players)."""
    m = len(players)
    out = {}
    for b in players:
        others = [p for p in players if p != b]
        total = 0.0
        for r in range(m):
            w = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
            for sub in itertools.combinations(others, r):
                s = frozenset(sub)
                total += w * (v[s | {b}] - v[s])
        out[b] = float(total)
    return out


def subset_train(train: DataFrame, *, target: str, subset: tuple[str, ...]) -> DataFrame:
    """``user_idx, item_idx, confidence`` = conf_<target> + Σ conf_<b in subset>, rows > 0."""
    conf = F.col(S.conf_col(target))
    for b in subset:
        conf = conf + F.col(S.conf_col(b))
    return train.select(S.USER_IDX, S.ITEM_IDX, conf.alias(S.CONFIDENCE)).where(
        F.col(S.CONFIDENCE) > 0)


def main(spark: SparkSession, cfg: Config) -> dict:
    ic = cfg.influence
    lake = Lake(cfg.lake)
    protocol, target = cfg.split.protocol, ic.ablation_target
    run_id = cfg.run.run_id or f"ablation-{protocol}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    k = cfg.recommend.k
    inputs = {L.GOLD_SPLITS: lake.version(spark, L.GOLD_SPLITS)}  # pinned for the whole run
    splits = lake.read(spark, L.GOLD_SPLITS, version=inputs[L.GOLD_SPLITS]).where(
        F.col(S.PROTOCOL) == protocol)
    if S.conf_col(target) not in splits.columns:
        raise ConfigError(f"{L.GOLD_SPLITS} has no {S.conf_col(target)}; re-run `reclake split`")
    train = splits.where(F.col(S.SPLIT) == S.TRAIN).cache()
    present = [b for b in cfg.vocabulary if S.conf_col(b) in splits.columns and b != target]
    maxes = train.agg(*[F.max(S.conf_col(b)).alias(b) for b in present]).first()
    aux = [b for b in present if (maxes[b] or 0) > 0]
    truth = splits.where((F.col(S.SPLIT) == S.TEST) & (F.col(S.count_col(target)) > 0)).select(
        S.USER_IDX, S.ITEM_IDX)
    users = (truth.select(S.USER_IDX).distinct()
             .join(train.select(S.USER_IDX).distinct(), S.USER_IDX).toPandas()[S.USER_IDX]
             .to_numpy())
    if len(users) == 0:
        raise ConfigError(f"no test pairs with '{target}' for users with train history in "
                          f"protocol '{protocol}'")
    users.sort()
    truth = truth.join(spark.createDataFrame([(int(u),) for u in users], f"{S.USER_IDX} int"),
                       S.USER_IDX)
    seen = seen_items(train.select(S.USER_IDX, S.ITEM_IDX))
    subsets = all_subsets(aux)
    seeds = list(ic.ablation_seeds)
    print(f"ablation {run_id}: target {target}, auxiliary {aux} -> {len(subsets)} subsets x "
          f"{len(seeds)} seeds = {len(subsets) * len(seeds)} ALS fits; {len(users):,} users")
    values = np.zeros((len(subsets), len(seeds), len(users)))
    t0 = time.perf_counter()
    for s_i, sub in enumerate(subsets):
        data = subset_train(train, target=target, subset=sub).cache()
        if data.limit(1).count() == 0:
            data.unpersist()
            continue  # nothing to learn from: NDCG 0 for everyone
        for seed_i, seed in enumerate(seeds):
            c = cfg.with_(**{"als.seed": seed})
            model = fit_als(spark, data, cfg=c, checkpoint_dir=f"{lake.root}/_checkpoints")
            recs = recommend_als(model, seen, cfg=c)
            nd = M.user_metrics(recs, truth, k=k, metrics=("ndcg",)).toPandas()
            pos = np.searchsorted(users, nd[S.USER_IDX].to_numpy())
            values[s_i, seed_i, pos] = nd["ndcg"].to_numpy()
        data.unpersist()
        log.info("subset %s: NDCG@%d %.4f (%d/%d, %.0fs)", "+".join(sub) or "(target only)", k,
                 values[s_i].mean(), s_i + 1, len(subsets), time.perf_counter() - t0)
    train.unpersist()
    per_user = values.mean(axis=1)  # (subsets, users): seeds averaged
    key = [frozenset(s) for s in subsets]

    def phi(cols: np.ndarray) -> dict[str, float]:
        v = dict(zip(key, per_user[:, cols].mean(axis=1), strict=True))
        return shapley_values(v, aux)

    point = phi(np.arange(len(users)))
    rng = np.random.default_rng(0)
    boots = [phi(rng.integers(0, len(users), len(users))) for _ in range(ic.bootstrap)]
    v_sub = per_user.mean(axis=1)
    v_all, v_empty = float(v_sub[-1]), float(v_sub[0])
    created = datetime.now(timezone.utc).replace(tzinfo=None)
    common = dict(run_id=run_id, protocol=protocol, target=target, v_all=v_all, v_empty=v_empty,
                  n_users=len(users), n_seeds=len(seeds), k=k, created_at=created,
                  inputs=inputs)
    rows = []
    for b in aux:
        lo, hi = np.percentile([bt[b] for bt in boots], [2.5, 97.5]) if boots else (None, None)
        rows.append({**common, "kind": "shapley", S.BEHAVIOR: b, S.VALUE: point[b],
                     "ci_low": float(lo) if lo is not None else None,
                     "ci_high": float(hi) if hi is not None else None})
    seed_sd = values.mean(axis=2).std(axis=1)
    for s_i, sub in enumerate(subsets):
        rows.append({**common, "kind": "subset", S.BEHAVIOR: "+".join(sub) or "(target only)",
                     S.VALUE: float(v_sub[s_i]), "ci_low": float(v_sub[s_i] - seed_sd[s_i]),
                     "ci_high": float(v_sub[s_i] + seed_sd[s_i])})
    df = spark.createDataFrame([tuple(r[f.name] for f in SHAPLEY_SCHEMA.fields) for r in rows],
                               SHAPLEY_SCHEMA)
    lake.replace_rows(df, L.INFLUENCE_BEHAVIOR_SHAPLEY, f"{S.RUN_ID} = {quote(run_id)}",
                      merge_schema=True)
    print(f"NDCG@{k} on test '{target}': all auxiliary {v_all:.4f}, target only {v_empty:.4f}")
    for r in rows[: len(aux)]:
        print(f"  Shapley {r[S.BEHAVIOR]:<8} {r[S.VALUE]:+.4f}  95% CI [{r['ci_low']:+.4f}, "
              f"{r['ci_high']:+.4f}]")
    return {"run_id": run_id, "shapley": point, "v_all": v_all, "v_empty": v_empty,
            "n_users": len(users), "seconds": time.perf_counter() - t0}
