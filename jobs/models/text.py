"""Content models: items known by their text, so items without any interaction can be recommended.

- ``text``: each user's *text profile* is the weighted mean of the unit text vectors of the items
  in their train history (``models/text_embeddings``, written by ``reclake embed``); the weight of
  an item is its train ``confidence``, which already carries the behaviour weights
  (``confidence.weights``) and the recency decay (``confidence.half_life_days``) of the
  transform. Items are scored by cosine similarity to the profile; exact top-K over the
  candidate items, seen items removed. ``text.features: category`` uses a multi-hot vector of the
  item's category path (genres on MovieLens) instead: the content baseline without a language
  model. Profiles go to ``models/user_text_profiles``. ``text.scoring: mapped`` learns instead a
  ridge map (``text.ridge``) from the warm items' vectors to their ALS item factors (fitted on
  the same train rows, ``als.*``), predicts every item's factors from its text and scores them
  with the user's ALS factors: the attribute-to-feature mapping of Gantner et al. (2010), which
  carries over what the collaborative model learnt (popularity and taste) to items it never saw.
- ``random``: a seeded uniform random ranking of the candidates per user (the floor every
  cold-start model must clear, measured exactly like the others).
- ``hybrid``: warm items (with train rows) ranked by a collaborative model (``hybrid.warm_model``:
  ALS or popularity), cold items (without train rows) by the text model. The mixing rule: of the
  K slots, ``c = round(hybrid.cold_share * K)`` go to the user's best cold items (when the user
  has a text profile and there are cold candidates), placed at ranks ``round(j * (K + 1) /
  (c + 1))`` for j = 1..c (spread through the list, the first one near the top); the warm model's
  list fills the other ranks in its own order. Scores are not comparable across the two models,
  so the merged list's ``score`` is rank-derived, ``1 - (rank - 1) / K``.

Candidates (``recommend.candidates``): ``all`` items of the protocol's ``gold/splits``, ``cold``
(those without train rows: the cold-start lists of the ``cold_items`` protocol) or ``warm``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common import lake as L
from common import schema as S
from common.config import Config
from common.lake import quote
from common.log import get_logger
from common.models import Recommender, TrainContext
from common.topk import top_k_scores
from jobs.models.topk import SEEN, TOPK_SCHEMA, _topk_rows, recommend_dot

log = get_logger("text")

FEATURES = "features"
PROFILE_SCHEMA = T.StructType(
    [
        T.StructField(S.USER_IDX, T.IntegerType(), False),
        T.StructField(S.N_ITEMS, T.IntegerType(), False),
        T.StructField(S.VECTOR, T.ArrayType(T.FloatType(), False), False),
    ]
)


# --- the maths (numpy; tests/reference/text.py is the plain-Python reference) -------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def positions(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each ``wanted`` id in ascending ``sorted_ids``, whether it is there at all)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == wanted


def weighted_profiles(users: np.ndarray, items: np.ndarray, weights: np.ndarray,
                      item_ids: np.ndarray, vectors: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: the ``weights``-weighted mean of the vectors of their ``items``, unit length.

    ``item_ids`` ascending with their ``vectors`` rows; rows whose item has no vector are skipped.
    Returns (user ids ascending, number of items with a vector, profiles (n_users, d) float32).
    Users none of whose items has a vector are left out."""
    pos, known = positions(item_ids, items)
    users, pos, w = users[known], pos[known], weights[known].astype(np.float64)
    order = np.argsort(users, kind="stable")
    users, pos, w = users[order], pos[order], w[order]
    if len(users) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int32),
                np.zeros((0, vectors.shape[1]), np.float32))
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sums = np.add.reduceat(vectors[pos].astype(np.float64) * w[:, None], starts, axis=0)
    counts = np.diff(np.r_[starts, len(users)]).astype(np.int32)
    return users[starts], counts, unit_rows(sums).astype(np.float32)


def ridge_map(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """W minimising ||x W - y||^2 + lam ||W||^2: (d_x, d_y) float64, by the normal equations
    (x is items x text dims: small d_x)."""
    x64 = x.astype(np.float64)
    return np.linalg.solve(x64.T @ x64 + lam * np.eye(x.shape[1]), x64.T @ y.astype(np.float64))


def hybrid_slots(k: int, c: int) -> list[int]:
    """The 1-based ranks the ``c`` cold items take in a list of ``k``: ``round(j (k+1) / (c+1))``
    for j = 1..c (half-up, distinct)."""
    return [int(np.floor(j * (k + 1) / (c + 1) + 0.5)) for j in range(1, c + 1)]


def merge_hybrid(warm: list[int], cold: list[int], k: int, c: int) -> list[int]:
    """One user's list: cold items at :func:`hybrid_slots`, warm items in the other ranks in
    order; when either side runs short the other fills the remaining ranks. Items in both lists
    are kept once (at their first rank)."""
    slots = set(hybrid_slots(k, min(c, len(cold)))) if c else set()
    out: list[int] = []
    wi = ci = 0
    while len(out) < k and (wi < len(warm) or ci < len(cold)):
        want_cold = (len(out) + 1) in slots
        if (want_cold and ci < len(cold)) or wi >= len(warm):
            item, ci = cold[ci], ci + 1
        else:
            item, wi = warm[wi], wi + 1
        if item not in out:
            out.append(item)
    return out


# --- item vectors --------------------------------------------------------------------------------


def _embedding_vectors(ctx: TrainContext, cfg: Config) -> pd.DataFrame:
    """``item_idx, vector`` of the configured language model's vectors (item_idx from
    silver/item_index, so vectors embedded before an item's first event are used)."""
    if not ctx.lake.exists(ctx.spark, L.MODELS_TEXT_EMBEDDINGS):
        raise FileNotFoundError(
            f"{L.MODELS_TEXT_EMBEDDINGS} does not exist; run `reclake ingest-items` and "
            f"`reclake embed` first (or use text.features=category)")
    emb = ctx.read(L.MODELS_TEXT_EMBEDDINGS)
    have = sorted(r[0] for r in emb.select(S.MODEL).distinct().collect())
    from raytrain.embed import pick_text_model

    name = pick_text_model(cfg, have)
    index = ctx.read(L.SILVER_ITEM_INDEX)
    rows = emb.where(F.col(S.MODEL) == name).select(S.ITEM_ID, S.VECTOR).join(
        index, S.ITEM_ID).select(S.ITEM_IDX, S.VECTOR).toPandas()
    log.info("item vectors: %s items with %s vectors (and an item_idx)", f"{len(rows):,}", name)
    return rows


def _category_vectors(ctx: TrainContext) -> pd.DataFrame:
    """``item_idx, vector``: multi-hot over every category path element of silver/items."""
    if not ctx.lake.exists(ctx.spark, L.SILVER_ITEMS):
        raise FileNotFoundError(f"{L.SILVER_ITEMS} does not exist; run `reclake ingest-items` "
                                f"first")
    items = ctx.read(L.SILVER_ITEMS).join(ctx.read(L.SILVER_ITEM_INDEX).withColumnRenamed(
        S.ITEM_IDX, "_idx"), S.ITEM_ID).select(
        F.col("_idx").alias(S.ITEM_IDX), S.CATEGORY_PATH).toPandas()
    vocab = sorted({c for path in items[S.CATEGORY_PATH] if path is not None for c in path})
    col = {c: i for i, c in enumerate(vocab)}
    mat = np.zeros((len(items), max(1, len(vocab))), np.float32)
    for r, path in enumerate(items[S.CATEGORY_PATH]):
        for c in path if path is not None else ():
            mat[r, col[c]] = 1.0
    log.info("category vectors: %s items over %d categories", f"{len(items):,}", len(vocab))
    return pd.DataFrame({S.ITEM_IDX: items[S.ITEM_IDX], S.VECTOR: list(mat)})


def candidate_items(ctx: TrainContext, train: DataFrame, which: str) -> np.ndarray:
    """Ascending ``item_idx`` a model may recommend: every item of the protocol's gold/splits
    (``all``), those without train rows (``cold``) or those with (``warm``)."""
    splits = ctx.read(L.GOLD_SPLITS).where(F.col(S.PROTOCOL) == ctx.protocol)
    every = splits.select(S.ITEM_IDX).distinct()
    warm = train.select(S.ITEM_IDX).distinct()
    chosen = {"all": every, "warm": warm,
              "cold": every.join(warm, S.ITEM_IDX, "left_anti")}[which]
    return np.sort(np.array([r[0] for r in chosen.collect()], dtype=np.int64))


# --- models --------------------------------------------------------------------------------------


class _Refit:
    """``load`` by refitting on the tables the run pinned (each model here is a deterministic
    function of them: seeded, exact)."""

    @classmethod
    def load(cls, spark, lake, record, cfg):
        from common.splits import model_train_rows

        model = cls(record.config(cfg))
        ctx = TrainContext(spark=spark, lake=lake, cfg=model.cfg, run_id=record.run_id,
                           inputs=dict(record.inputs))
        model.fit(ctx, model_train_rows(ctx.read(L.GOLD_SPLITS), cfg=model.cfg))
        return model


class TextRecommender(_Refit, Recommender):
    """Users' text profiles against item vectors (module docstring)."""

    name = "text"
    sections = ("text",)

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.item_ids = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, 1), np.float32)
        self.profiles: DataFrame | None = None
        self.candidates = np.zeros(0, np.int64)

    def fit(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        t = time.perf_counter()
        vec = (_embedding_vectors(ctx, self.cfg) if self.cfg.text.features == "embedding"
               else _category_vectors(ctx))
        vec = vec.sort_values(S.ITEM_IDX)
        self.item_ids = vec[S.ITEM_IDX].to_numpy(np.int64)
        self.vectors = unit_rows(np.stack(vec[S.VECTOR].to_numpy()).astype(np.float32)
                                 if len(vec) else np.zeros((0, 1), np.float32))
        cand = candidate_items(ctx, train, self.cfg.recommend.candidates)
        scorable = np.isin(cand, self.item_ids)
        if (~scorable).any():
            log.info("%s of %s candidate items have no vector and are never recommended",
                     f"{int((~scorable).sum()):,}", f"{len(cand):,}")
        self.candidates = cand[scorable]
        if self.cfg.text.scoring == "mapped":
            return {"fit": time.perf_counter() - t, **self._fit_mapped(ctx, train)}
        self.profiles = self._profiles(ctx, train).cache()
        n = self.profiles.count()
        log.info("text profiles for %s users (%s candidate items, %s)", f"{n:,}",
                 f"{len(self.candidates):,}", self.cfg.recommend.candidates)
        return {"fit": time.perf_counter() - t}

    def _fit_mapped(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        """ALS on the train rows; a ridge map (``text.ridge``) from the warm items' vectors to
        their ALS item factors; every vector-holding item's factors predicted from its text. The
        users are ALS's user factors (``profiles``, column ``vector``)."""
        from jobs.models.als import ALSRecommender

        t = time.perf_counter()
        als = ALSRecommender(self.cfg)
        als.fit(ctx, train)
        items = als.model.itemFactors.toPandas()
        ids = items["id"].to_numpy(np.int64)
        fac = np.stack(items["features"].to_numpy()).astype(np.float32) if len(items) else \
            np.zeros((0, self.cfg.als.rank), np.float32)
        pos, ok = positions(self.item_ids, ids)
        w = ridge_map(self.vectors[pos[ok]], fac[ok], self.cfg.text.ridge)
        self.vectors = (self.vectors.astype(np.float64) @ w).astype(np.float32)
        log.info("text -> ALS factors: ridge %.3g on %s warm items with vectors (rank %d)",
                 self.cfg.text.ridge, f"{int(ok.sum()):,}", self.cfg.als.rank)
        self.profiles = als.model.userFactors.select(
            F.col("id").cast("int").alias(S.USER_IDX),
            F.lit(0).cast("int").alias(S.N_ITEMS),
            F.col("features").cast("array<float>").alias(S.VECTOR)).cache()
        self.profiles.count()
        return {"als_and_map": time.perf_counter() - t}

    def _profiles(self, ctx: TrainContext, train: DataFrame) -> DataFrame:
        """``user_idx, n_items, vector`` by :func:`weighted_profiles`, computed where the train
        rows are (users hashed to partitions, the item vectors broadcast)."""
        bc = ctx.spark.sparkContext.broadcast((self.item_ids, self.vectors))

        def profiles(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            ids, vecs = bc.value
            parts = list(batches)
            if not parts:
                return
            pdf = pd.concat(parts, ignore_index=True)
            users, counts, prof = weighted_profiles(
                pdf[S.USER_IDX].to_numpy(np.int64), pdf[S.ITEM_IDX].to_numpy(np.int64),
                pdf[S.CONFIDENCE].to_numpy(np.float64), ids, vecs)
            yield pd.DataFrame({S.USER_IDX: users.astype(np.int32), S.N_ITEMS: counts,
                                S.VECTOR: list(prof)})

        rows = train.select(S.USER_IDX, S.ITEM_IDX, S.CONFIDENCE).repartition(
            ctx.spark.sparkContext.defaultParallelism, S.USER_IDX)
        return rows.mapInPandas(profiles, PROFILE_SCHEMA)

    def recommend(self, ctx: TrainContext, users: DataFrame, *, k: int) -> DataFrame:
        rc = self.cfg.recommend
        pos = np.searchsorted(self.item_ids, self.candidates)
        with_profile = users.join(
            self.profiles.select(S.USER_IDX, F.col(S.VECTOR).alias(FEATURES)), S.USER_IDX)
        return recommend_dot(with_profile, self.candidates, self.vectors[pos], k=k,
                             user_batch=rc.user_batch, item_block=rc.item_block)

    def save(self, ctx: TrainContext) -> tuple[dict[str, str], list[str]]:
        if self.cfg.text.scoring == "mapped":  # users are ALS factors, not text profiles
            return {}, []
        rows = self.profiles.select(F.lit(ctx.run_id).alias(S.RUN_ID), S.USER_IDX, S.N_ITEMS,
                                    S.VECTOR)
        ctx.lake.replace_rows(rows, L.MODELS_USER_TEXT_PROFILES, f"{S.RUN_ID} = {quote(ctx.run_id)}")
        return {}, [L.MODELS_USER_TEXT_PROFILES]


class RandomRecommender(_Refit, Recommender):
    """A seeded uniform random ranking of the candidate items per user (the floor)."""

    name = "random"
    sections = ()

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.candidates = np.zeros(0, np.int64)

    def params(self) -> dict:
        return {**super().params(), "split.seed": self.cfg.split.seed}

    def fit(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        t = time.perf_counter()
        self.candidates = candidate_items(ctx, train, self.cfg.recommend.candidates)
        return {"fit": time.perf_counter() - t}

    def recommend(self, ctx: TrainContext, users: DataFrame, *, k: int) -> DataFrame:
        bc = ctx.spark.sparkContext.broadcast(self.candidates)
        seed, step = self.cfg.split.seed, self.cfg.recommend.user_batch

        def rec(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            ids = bc.value
            for pdf in batches:
                for start in range(0, len(pdf), step):
                    part = pdf.iloc[start:start + step]
                    u = part[S.USER_IDX].to_numpy(np.int64)
                    # one generator per user: a user's ranking depends on the seed and the user
                    scores = np.stack([np.random.default_rng([seed, int(x)]).random(len(ids))
                                       for x in u]).astype(np.float32)
                    seen = [s if s is not None else () for s in part[SEEN].to_numpy()]
                    counts, items, sc = top_k_scores(scores, ids, seen, k)
                    yield _topk_rows(u, counts, items, sc)

        return users.select(S.USER_IDX, SEEN).mapInPandas(rec, TOPK_SCHEMA)


class HybridRecommender(_Refit, Recommender):
    """Warm items by ``hybrid.warm_model``, cold items by the text model (module docstring)."""

    name = "hybrid"
    sections = ("hybrid", "text")

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        from common import models

        self.warm = models.create(cfg, cfg.hybrid.warm_model)
        self.cold = TextRecommender(cfg.with_(**{"recommend.candidates": "cold"}))

    def params(self) -> dict:
        return {**super().params(), **self.warm.params()}

    def fit(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        secs = {f"warm_{k}": v for k, v in self.warm.fit(ctx, train).items()}
        secs.update({f"cold_{k}": v for k, v in self.cold.fit(ctx, train).items()})
        return secs

    def recommend(self, ctx: TrainContext, users: DataFrame, *, k: int) -> DataFrame:
        c = int(np.floor(self.cfg.hybrid.cold_share * k + 0.5))
        warm = self.warm.recommend(ctx, users, k=k).select(
            S.USER_IDX, S.RANK, S.ITEM_IDX, F.lit(False).alias("_cold"))
        parts = warm
        if c and len(self.cold.candidates):
            cold = self.cold.recommend(ctx, users, k=c).select(
                S.USER_IDX, S.RANK, S.ITEM_IDX, F.lit(True).alias("_cold"))
            parts = warm.unionByName(cold)

        def merge(pdf: pd.DataFrame) -> pd.DataFrame:
            pdf = pdf.sort_values(S.RANK)
            items = merge_hybrid(pdf.loc[~pdf["_cold"], S.ITEM_IDX].tolist(),
                                 pdf.loc[pdf["_cold"], S.ITEM_IDX].tolist(), k, c)
            ranks = np.arange(1, len(items) + 1, dtype=np.int32)
            return pd.DataFrame({S.USER_IDX: np.full(len(items), pdf[S.USER_IDX].iloc[0],
                                                     np.int32),
                                 S.RANK: ranks, S.ITEM_IDX: np.array(items, np.int32),
                                 S.SCORE: 1.0 - (ranks - 1) / k})

        return parts.groupBy(S.USER_IDX).applyInPandas(merge, TOPK_SCHEMA)

    def save(self, ctx: TrainContext) -> tuple[dict[str, str], list[str]]:
        a1, w1 = self.warm.save(ctx)
        a2, w2 = self.cold.save(ctx)
        return {**a1, **a2}, [*w1, *w2]
