"""Reading one protocol's parts out of ``gold/splits`` (written by the split stage)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from common import schema as S

if TYPE_CHECKING:
    from common.config import Config


def train_parts(fold_valid: bool) -> tuple[str, ...]:
    """The parts a model trains on: train, plus valid for the refit after a sweep
    (``split.fold_valid``)."""
    return (S.TRAIN, S.VALID) if fold_valid else (S.TRAIN,)


def train_split(splits: DataFrame, *, protocol: str, fold_valid: bool = False) -> DataFrame:
    """``gold/splits`` -> the protocol's train rows (and valid rows with ``fold_valid``)
    ``user_idx, item_idx, confidence`` with confidence > 0 (implicit models read r > 0 as a
    positive; r <= 0 would be no signal)."""
    S.require_columns(splits, S.PROTOCOL, S.SPLIT, S.USER_IDX, S.ITEM_IDX, S.CONFIDENCE,
                      where="gold/splits")
    return splits.where(
        (F.col(S.PROTOCOL) == protocol) & F.col(S.SPLIT).isin(*train_parts(fold_valid))
        & (F.col(S.CONFIDENCE) > 0)
    ).select(
        F.col(S.USER_IDX).cast("int").alias(S.USER_IDX),
        F.col(S.ITEM_IDX).cast("int").alias(S.ITEM_IDX),
        F.col(S.CONFIDENCE).cast("double").alias(S.CONFIDENCE),
    )


def train_params(cfg: Config) -> dict:
    """The settings that shaped :func:`model_train_rows`, for a run's params: whether valid was
    folded in and, when confidence was rebuilt, the weights, f and decay it was rebuilt with (the
    stored column's settings are the transform's, recorded by its table version)."""
    out: dict = {"split.fold_valid": bool(cfg.split.fold_valid)}
    c = cfg.confidence
    if c.rebuild:
        out.update({"confidence.rebuild": True, "confidence.f": c.f,
                    "confidence.half_life_days": c.half_life_days,
                    **{f"confidence.weights.{b}": float(w) for b, w in sorted(c.weights.items())}})
    return out


def model_train_history(splits: DataFrame, *, cfg: Config) -> DataFrame:
    """The ``gold/splits`` rows (every column) a Spark model of ``cfg`` fits on: the protocol's
    train part (and valid under ``split.fold_valid``) with confidence > 0, ``conf_<b>`` and
    ``confidence`` rebuilt from the stored ``amt_<b>`` with ``cfg.confidence`` first when
    ``confidence.rebuild`` (a tuning trial's weights; decay measured back from the latest of
    these rows). What influence explains a run with: the same rows and parts it trained on."""
    rows = splits.where((F.col(S.PROTOCOL) == cfg.split.protocol)
                        & F.col(S.SPLIT).isin(*train_parts(cfg.split.fold_valid)))
    if cfg.confidence.rebuild:
        from common.interactions import rebuild_confidence

        rows = rebuild_confidence(rows, cfg=cfg)
    return rows.where(F.col(S.CONFIDENCE) > 0)


def model_train_rows(splits: DataFrame, *, cfg: Config) -> DataFrame:
    """What a Spark model fits on: :func:`model_train_history` as :func:`train_split`'s
    ``user_idx, item_idx, confidence``."""
    return train_split(model_train_history(splits, cfg=cfg), protocol=cfg.split.protocol,
                       fold_valid=cfg.split.fold_valid)
