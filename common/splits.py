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


def model_train_rows(splits: DataFrame, *, cfg: Config) -> DataFrame:
    """What a Spark model fits on: :func:`train_split` of ``cfg.split.protocol`` (with valid rows
    under ``split.fold_valid``), confidence rebuilt from the stored ``amt_<b>`` with
    ``cfg.confidence`` first when ``confidence.rebuild`` (a tuning trial's weights; decay measured
    back from the latest of these rows)."""
    protocol, fold = cfg.split.protocol, cfg.split.fold_valid
    if cfg.confidence.rebuild:
        from common.interactions import rebuild_confidence

        splits = rebuild_confidence(
            splits.where((F.col(S.PROTOCOL) == protocol)
                         & F.col(S.SPLIT).isin(*train_parts(fold))), cfg=cfg)
    return train_split(splits, protocol=protocol, fold_valid=fold)
