"""The popularity baseline as a registered model: items ranked by the share of train users who
have them (``common.metrics.item_popularity``), the same list for everyone minus what they have
seen. Every model is judged against it."""

from __future__ import annotations

import time

import pandas as pd
from pyspark.sql import DataFrame

from common import metrics as M
from common import schema as S
from common.models import Recommender, TrainContext
from jobs.models.topk import recommend_global_order


class PopularityRecommender(Recommender):
    name = "popularity"

    def __init__(self, cfg, ranked: pd.DataFrame | None = None):
        super().__init__(cfg)
        self.ranked = ranked  # item_idx, score; best first (score desc, item asc)

    def fit(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        t = time.perf_counter()
        pop = M.item_popularity(train).toPandas()
        self.ranked = pop.rename(columns={M.POPULARITY: S.SCORE}).sort_values(
            [S.SCORE, S.ITEM_IDX], ascending=[False, True])[[S.ITEM_IDX, S.SCORE]]
        return {"fit": time.perf_counter() - t}

    def recommend(self, ctx: TrainContext, users: DataFrame, *, k: int) -> DataFrame:
        return recommend_global_order(users, self.ranked, k=k)

    @classmethod
    def load(cls, spark, lake, record, cfg) -> PopularityRecommender:
        """Refit from the train split the run pinned: the ranking is a pure function of it."""
        from common import lake as L
        from common.splits import train_split

        model = cls(record.config(cfg))
        splits = record.read(spark, lake, L.GOLD_SPLITS)
        model.fit(None, train_split(splits, protocol=record.protocol))
        return model
