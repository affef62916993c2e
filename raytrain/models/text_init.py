"""Item embeddings initialised from text vectors through a learned projection.

``E[i] = W t_i + r_i``: ``t_i`` is item i's (frozen) language-model vector
(``models/text_embeddings``, unit length), ``W`` a learned ``text_dim -> dim`` projection and
``r_i`` a learned per-item residual that starts at zero. At the first step items that read alike
sit close together, so a sequence model starts from the catalogue's semantics instead of noise and
can still move any item away from its text. Items without a vector get a random residual (as a
plain embedding would) and no text part.

A drop-in for ``nn.Embedding`` in the models: ``module(idx)`` and ``module.weight`` (the whole
table, recomputed from W and r on each access, so the optimiser trains W and r).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TextItemEmbedding(nn.Module):
    """``n`` rows of ``dim`` (row 0 the padding row when ``padding``: item_idx j is row j + 1)."""

    def __init__(self, text: np.ndarray, dim: int, *, padding: bool, std: float):
        super().__init__()
        text = np.asarray(text, dtype=np.float32)
        has = np.linalg.norm(text, axis=1) > 0
        if padding:
            text = np.vstack([np.zeros((1, text.shape[1]), np.float32), text])
            has = np.r_[False, has]
        self.padding = padding
        self.register_buffer("text", torch.from_numpy(text))
        self.proj = nn.Linear(text.shape[1], dim, bias=False)
        # unit text vectors: W with N(0, std^2) entries gives rows of the plain init's scale
        nn.init.normal_(self.proj.weight, std=std)
        self.residual = nn.Parameter(torch.zeros(text.shape[0], dim))
        with torch.no_grad():
            no_text = torch.from_numpy(~has)
            self.residual[no_text] = torch.randn(int(no_text.sum()), dim) * std
            if padding:
                self.residual[0].zero_()

    @property
    def weight(self) -> torch.Tensor:
        w = self.proj(self.text) + self.residual
        if self.padding:  # the padding row stays exactly zero
            w = torch.cat([torch.zeros_like(w[:1]), w[1:]])
        return w

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)
