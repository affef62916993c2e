"""The interface every deep model implements (plain torch; no Ray, no Spark)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class RecModel(nn.Module):
    """A recommender module.

    - ``forward(batch, generator=None)`` with a dict is the training loss (a scalar), so DDP's
      hooks see the call; every parameter gets a gradient from every loss call.
    - ``score_users(batch) -> (b, n_items)`` float32 scores over the whole catalogue, column j =
      item_idx j (what the exact top-K and validation rank).
    - ``embeddings() -> {"user": (n_users, d), "item": (n_items, d)}`` (SASRec: items only).
    """

    kind: ClassVar[str]  # "pairs" | "sequence" | "graph"
    #: the model's own learning rate, overriding ``train.lr`` (None: ``train.lr``); a pretrained
    #: encoder fine-tunes at a far smaller rate than embeddings trained from zero
    lr: float | None = None

    def loss(self, batch: dict[str, torch.Tensor], *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def score_users(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def embeddings(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError
