"""The model interface every recommender implements, and the registry from name to model.

A model is fitted on one protocol's train split, recommends top-K with the user's train items
excluded, saves its artefacts to the lake and loads them back, and describes its params. The
``fit`` stage (``reclake fit --model NAME``), evaluation, influence and tuning find models here by
name, so adding a model is one class and one :func:`register` line::

    register("ncf", "raytrain.models.ncf:NeuMFRecommender")   # imported on first use

Entries are ``"module:Class"`` strings, imported on first use, so listing names or validating a
config never imports Spark ML, torch or Ray.

The interface speaks Spark DataFrames for the lake side (train rows in, recommendations out);
Ray models convert at their boundary (``ray.data`` reads the same tables at the versions the
:class:`TrainContext` pins).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from common.config import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from common.config import Config
    from common.lake import Lake
    from common.runs import RunRecord


@dataclass
class TrainContext:
    """What a model's ``fit`` and ``recommend`` get: the session, the lake, the config and the
    run, and the Delta version of every table read so far (``inputs``, recorded in the run)."""

    spark: SparkSession
    lake: Lake
    cfg: Config
    run_id: str
    inputs: dict[str, int] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return self.cfg.split.protocol

    def read(self, table: str) -> DataFrame:
        """``table`` pinned at its current version on first read (later reads, and every job
        downstream of the run, see that same version)."""
        if table not in self.inputs:
            self.inputs[table] = self.lake.version(self.spark, table)
        return self.lake.read(self.spark, table, version=self.inputs[table],
                              why=f"pinned by run {self.run_id!r}")


class Recommender(ABC):
    """One registered model. ``cfg`` is the whole config; a model reads its own section(s)."""

    name: ClassVar[str]
    #: config sections whose keys are the model's params (recorded typed in the run record)
    sections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def params(self) -> dict[str, Any]:
        """Dotted config key -> typed value for every key of the model's sections and of
        ``recommend`` (what the run record stores and :meth:`RunRecord.config` re-applies)."""
        from common.config import to_dict

        out: dict[str, Any] = {}
        for section in (*self.sections, "recommend"):
            for key, value in to_dict(getattr(self.cfg, section)).items():
                out[f"{section}.{key}"] = value
        return out

    @abstractmethod
    def fit(self, ctx: TrainContext, train: DataFrame) -> dict[str, float]:
        """Fit on ``train`` (``user_idx, item_idx, confidence``, confidence > 0). Returns
        seconds per step (``{"fit": 12.3}``)."""

    @abstractmethod
    def recommend(self, ctx: TrainContext, users: DataFrame, *, k: int) -> DataFrame:
        """Top-``k`` per row of ``users`` (``user_idx, seen``: array<int> of items to exclude,
        empty when nothing is excluded): ``user_idx, rank, item_idx, score``, ranks 1..k by
        score descending, ties by item_idx ascending, seen items never returned."""

    def predictions(self, ctx: TrainContext) -> DataFrame | None:
        """Point predictions of held-out pairs for ``gold/predictions`` (``target, user_idx,
        item_idx, prediction``; e.g. explicit ALS's rating of every test pair that has one), or
        None (the default: the model only ranks)."""
        return None

    def save(self, ctx: TrainContext) -> tuple[dict[str, str], list[str]]:
        """Write the fitted artefacts. Returns (artefact name -> path of files outside tables,
        lake tables written with rows for this run). Default: nothing to save."""
        return {}, []

    @classmethod
    def load(cls, spark: SparkSession, lake: Lake, record: RunRecord, cfg: Config) -> Recommender:
        """The fitted model of a finished run, from what :meth:`save` wrote."""
        raise NotImplementedError(f"model {cls.name!r} cannot be loaded back")


# --- registry -------------------------------------------------------------------------------------

_REGISTRY: dict[str, str | type[Recommender]] = {
    "als": "jobs.models.als:ALSRecommender",
    "popularity": "jobs.models.popularity:PopularityRecommender",
    # deep models trained by Ray Train (raytrain/train.py); no Spark in their training path
    "ncf": "raytrain.recommender:NeuMFRecommender",
    "sasrec": "raytrain.recommender:SASRecRecommender",
    "lightgcn": "raytrain.recommender:LightGCNRecommender",
    # fine-tunes the text encoder (embed.*) on behaviour data: user history -> next item
    "twotower": "raytrain.recommender:TwoTowerRecommender",
    # content models over item text (models/text_embeddings) and the random floor
    "text": "jobs.models.text:TextRecommender",
    "hybrid": "jobs.models.text:HybridRecommender",
    "random": "jobs.models.text:RandomRecommender",
}
#: where a model trains: "spark" (fit/recommend on DataFrames inside the fit stage) or "ray"
#: (the whole run is ``raytrain.train.train_run``; ``reclake fit`` hands over without a JVM)
SPARK, RAY = "spark", "ray"
_RUNTIME: dict[str, str] = {"ncf": RAY, "sasrec": RAY, "lightgcn": RAY, "twotower": RAY}


def register(name: str, target: str | type[Recommender], *, runtime: str = SPARK) -> None:
    """Register a model under ``name``: a class, or ``"module:Class"`` imported on first use."""
    if name in _REGISTRY and _REGISTRY[name] != target:
        raise ValueError(f"model {name!r} is already registered as {_REGISTRY[name]!r}")
    if runtime not in (SPARK, RAY):
        raise ValueError(f"runtime must be {SPARK!r} or {RAY!r}, got {runtime!r}")
    _REGISTRY[name] = target
    _RUNTIME[name] = runtime


def runtime(name: str) -> str:
    """``"spark"`` or ``"ray"``: where the registered model ``name`` trains (no import)."""
    check_name(name)
    return _RUNTIME.get(name, SPARK)


def names() -> list[str]:
    return sorted(_REGISTRY)


def check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(names())}")


def get(name: str) -> type[Recommender]:
    """The model class registered as ``name`` (a clear error listing the registered names)."""
    check_name(name)
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = target
    return target


def create(cfg: Config, name: str | None = None) -> Recommender:
    return get(name or cfg.run.model)(cfg)


def registered() -> Mapping[str, str | type[Recommender]]:
    return dict(_REGISTRY)
