"""Spark MLlib ALS (``implicitPrefs=True``) on gold's ``confidence``, as a registered model.

The rating is the train split's ``confidence``, so behaviour weights flow into the model
(c = 1 + alpha * confidence). With ``als.explicit_behavior`` (``rating``) it is explicit ALS
instead (``implicitPrefs=False``) on that behaviour's amount (``amt_rating``: the mean rating of
the pair) over the train pairs that have it, and it also predicts the rating of every test pair
that has one (``gold/predictions``, target ``rating:<behaviour>``, clipped to the train ratings'
range; pairs whose user or item has no train rating get none), which ``reclake evaluate`` scores
by RMSE and MAE. ``save`` writes ``models/als_user_factors`` and
``models/als_item_factors`` (run_id, idx, factors) and, with ``als.save_model``, the Spark
``ALSModel`` under ``models/als_model/<run_id>``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, quote
from common.log import get_logger
from common.models import Recommender, TrainContext
from common.runs import RunRecord
from common.splits import train_parts
from jobs.models.topk import recommend_dot, recommend_dot_blocked

log = get_logger("als")

SPARK_MODEL = "spark_model"  # artefact name of the saved ALSModel


def make_als(*, cfg: Config):
    """The configured (unfitted) MLlib ALS estimator."""
    from pyspark.ml.recommendation import ALS

    a = cfg.als
    return ALS(
        rank=a.rank, maxIter=a.max_iter, regParam=a.reg_param, alpha=a.alpha,
        implicitPrefs=a.explicit_behavior is None, nonnegative=a.nonnegative, seed=a.seed,
        numUserBlocks=a.num_user_blocks, numItemBlocks=a.num_item_blocks,
        checkpointInterval=a.checkpoint_interval, coldStartStrategy="drop",
        userCol=S.USER_IDX, itemCol=S.ITEM_IDX,
        ratingCol=S.CONFIDENCE if a.explicit_behavior is None else RATING,
    )


RATING = "rating"  # the explicit model's rating column (amt_<explicit_behavior>)
RATING_TARGET_PREFIX = "rating:"  # gold/predictions target of explicit ratings


def rating_target(behavior: str) -> str:
    return f"{RATING_TARGET_PREFIX}{behavior}"


def rated_pairs(splits: DataFrame, *, protocol: str, parts: tuple[str, ...],
                behavior: str) -> DataFrame:
    """``user_idx, item_idx, rating`` of the protocol's ``parts`` rows that have ``behavior``
    (``cnt_<b> > 0``), the rating being ``amt_<b>``."""
    missing = [c for c in (S.count_col(behavior), S.amount_col(behavior))
               if c not in splits.columns]
    if missing:
        raise ConfigError(f"explicit ALS (als.explicit_behavior={behavior!r}): gold/splits has "
                          f"no {missing}; re-run transform and split with '{behavior}' in the "
                          "behaviour vocabulary")
    return splits.where(
        (F.col(S.PROTOCOL) == protocol) & F.col(S.SPLIT).isin(*parts)
        & (F.col(S.count_col(behavior)) > 0) & F.col(S.amount_col(behavior)).isNotNull()
    ).select(F.col(S.USER_IDX).cast("int").alias(S.USER_IDX),
             F.col(S.ITEM_IDX).cast("int").alias(S.ITEM_IDX),
             F.col(S.amount_col(behavior)).cast("double").alias(RATING))


def factor_rows(factors: DataFrame, *, run_id: str) -> DataFrame:
    """ALSModel ``userFactors`` / ``itemFactors`` (id, features) -> ``run_id, idx, factors``."""
    return factors.select(
        F.lit(run_id).alias(S.RUN_ID),
        F.col("id").cast("int").alias(S.IDX),
        F.col("features").cast("array<float>").alias(S.FACTORS),
    )


def recommend_als(model, users: DataFrame, *, cfg: Config) -> DataFrame:
    """Top-k for every user of ``users`` (``user_idx, seen``) that has factors."""
    rc = cfg.recommend
    spark = users.sparkSession
    users = model.userFactors.select(F.col("id").alias(S.USER_IDX), "features").join(
        users, S.USER_IDX, "left")
    item_bytes = model.rank * 4 * model.itemFactors.count()
    if item_bytes <= rc.broadcast_max_mb * 2**20:
        items = model.itemFactors.toPandas()
        ids = items["id"].to_numpy(np.int64)
        fac = (np.stack(items["features"].to_numpy()).astype(np.float32) if len(items)
               else np.zeros((0, model.rank), np.float32))
        return recommend_dot(users, ids, fac, k=rc.k, user_batch=rc.user_batch,
                             item_block=rc.item_block)
    n_blocks = int(np.ceil(item_bytes / (rc.broadcast_max_mb * 2**20)))
    log.info("item factors %.0f MiB > recommend.broadcast_max_mb: %d item blocks",
             item_bytes / 2**20, n_blocks)
    return recommend_dot_blocked(spark, users, model.itemFactors, k=rc.k,
                                 user_batch=rc.user_batch, item_block=rc.item_block,
                                 n_blocks=n_blocks)


def fit_als(spark: SparkSession, train: DataFrame, *, cfg: Config, checkpoint_dir: str):
    """The fitted ``ALSModel`` (a checkpoint dir is always set: long lineage overflows the
    stack)."""
    if not spark.sparkContext.getCheckpointDir():
        spark.sparkContext.setCheckpointDir(checkpoint_dir)
    return make_als(cfg=cfg).fit(train)


class ALSRecommender(Recommender):
    name = "als"
    sections = ("als",)

    def __init__(self, cfg: Config, model=None):
        super().__init__(cfg)
        self.model = model

    def fit(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        t = time.perf_counter()
        behavior = self.cfg.als.explicit_behavior
        if behavior is not None:
            train = rated_pairs(ctx.read(L.GOLD_SPLITS), protocol=ctx.protocol,
                                parts=train_parts(self.cfg.split.fold_valid), behavior=behavior)
            n, lo, hi = train.agg(F.count(F.lit(1)), F.min(RATING), F.max(RATING)).first()
            if n == 0:
                raise ConfigError(f"explicit ALS: no train pair of protocol {ctx.protocol!r} has "
                                  f"'{behavior}' (als.explicit_behavior); is it in the data?")
            self._rating_range = (float(lo), float(hi))  # predictions are clipped to it
        self.model = fit_als(ctx.spark, train, cfg=self.cfg,
                             checkpoint_dir=f"{ctx.lake.root}/_checkpoints")
        return {"fit": time.perf_counter() - t}

    def predictions(self, ctx: TrainContext) -> DataFrame | None:
        """Explicit ALS: the predicted rating of every test pair with a rating whose user and
        item have train ratings, clipped to the train ratings' [min, max]."""
        behavior = self.cfg.als.explicit_behavior
        if behavior is None:
            return None
        test = rated_pairs(ctx.read(L.GOLD_SPLITS), protocol=ctx.protocol, parts=(S.TEST,),
                           behavior=behavior)
        lo, hi = self._rating_range
        pred = self.model.transform(test.select(S.USER_IDX, S.ITEM_IDX))  # cold pairs dropped
        return pred.select(
            F.lit(rating_target(behavior)).alias(S.TARGET), S.USER_IDX, S.ITEM_IDX,
            F.least(F.greatest(F.col("prediction").cast("double"), F.lit(lo)),
                    F.lit(hi)).alias(S.PREDICTION))

    def recommend(self, ctx: TrainContext, users: DataFrame, *, k: int) -> DataFrame:
        return recommend_als(self.model, users, cfg=self.cfg.with_(**{"recommend.k": k}))

    def save(self, ctx: TrainContext) -> tuple[dict[str, str], list[str]]:
        """Both factor tables and (``als.save_model``) the Spark model, written concurrently
        (each is small and mostly commit latency)."""
        lake, run_id = ctx.lake, ctx.run_id
        where = f"{S.RUN_ID} = {quote(run_id)}"
        writes = [
            lambda: lake.replace_rows(factor_rows(self.model.userFactors, run_id=run_id),
                                      L.MODELS_ALS_USER_FACTORS, where),
            lambda: lake.replace_rows(factor_rows(self.model.itemFactors, run_id=run_id),
                                      L.MODELS_ALS_ITEM_FACTORS, where),
        ]
        artefacts = {}
        if self.cfg.als.save_model:
            path = f"{lake.path(L.MODELS_ALS_MODEL)}/{run_id}"
            writes.append(lambda: self.model.write().overwrite().save(path))
            artefacts[SPARK_MODEL] = path
        with ThreadPoolExecutor(len(writes)) as pool:
            for f in [pool.submit(w) for w in writes]:
                f.result()
        return artefacts, [L.MODELS_ALS_USER_FACTORS, L.MODELS_ALS_ITEM_FACTORS]

    @classmethod
    def load(cls, spark: SparkSession, lake: Lake, record: RunRecord,
             cfg: Config) -> ALSRecommender:
        from pyspark.ml.recommendation import ALSModel

        path = record.artefacts.get(SPARK_MODEL)
        if not path:
            raise ConfigError(f"run {record.run_id!r} saved no Spark model (als.save_model was "
                              f"false); its factors are in {L.MODELS_ALS_USER_FACTORS}")
        return cls(record.config(cfg), ALSModel.load(path))
