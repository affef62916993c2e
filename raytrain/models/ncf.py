"""NeuMF (He et al., WWW 2017): a GMF branch and an MLP branch with their own embeddings, fused
by one linear layer into a logit; trained with BCE over the positive and sampled negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.models.base import RecModel


class NeuMF(RecModel):
    kind = "pairs"

    def __init__(self, n_users: int, n_items: int, *, dim_gmf: int = 32, dim_mlp: int = 32,
                 layers: Sequence[int] = (64, 32, 16), dropout: float = 0.0,
                 item_chunk: int = 8192):
        super().__init__()
        self.n_users, self.n_items, self.item_chunk = n_users, n_items, item_chunk
        self.user_gmf = nn.Embedding(n_users, dim_gmf)
        self.item_gmf = nn.Embedding(n_items, dim_gmf)
        self.user_mlp = nn.Embedding(n_users, dim_mlp)
        self.item_mlp = nn.Embedding(n_items, dim_mlp)
        mlp, width = [], 2 * dim_mlp
        for h in layers:
            mlp += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*mlp)
        self.out = nn.Linear(dim_gmf + width, 1)
        for e in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(e.weight, std=0.01)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def logits(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """(b,) users and (b,) items -> (b,) logits."""
        g = self.user_gmf(user_idx) * self.item_gmf(item_idx)
        m = self.mlp(torch.cat([self.user_mlp(user_idx), self.item_mlp(item_idx)], dim=-1))
        return self.out(torch.cat([g, m], dim=-1)).squeeze(-1)

    def forward(self, batch, item_idx: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(batch, dict):
            return self.loss(batch, generator=generator)
        return self.logits(batch, item_idx)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """BCE: ``user_idx`` (b,), ``item_idx`` (b,) label 1, ``neg_items`` (b, n) label 0."""
        u, pos, neg = batch["user_idx"], batch["item_idx"], batch["neg_items"]
        items = torch.cat([pos[:, None], neg], dim=1)  # (b, 1 + n)
        users = u[:, None].expand_as(items)
        logit = self.logits(users.reshape(-1), items.reshape(-1)).float()
        label = torch.zeros_like(logit).view(items.shape)
        label[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logit, label.reshape(-1))

    def score_users(self, batch) -> torch.Tensor:
        """``user_idx`` (b,) -> (b, n_items) logits (items scored in chunks)."""
        u = batch["user_idx"]
        out = []
        for s in range(0, self.n_items, self.item_chunk):
            items = torch.arange(s, min(self.n_items, s + self.item_chunk), device=u.device)
            uu = u[:, None].expand(-1, len(items)).reshape(-1)
            ii = items[None, :].expand(len(u), -1).reshape(-1)
            out.append(self.logits(uu, ii).float().view(len(u), len(items)))
        return torch.cat(out, dim=1)

    def embeddings(self) -> dict[str, torch.Tensor]:
        """GMF and MLP embeddings side by side (user: dim_gmf + dim_mlp)."""
        return {"user": torch.cat([self.user_gmf.weight, self.user_mlp.weight], 1).detach(),
                "item": torch.cat([self.item_gmf.weight, self.item_mlp.weight], 1).detach()}
