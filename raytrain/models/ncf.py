"""NeuMF (He et al., WWW 2017): a GMF branch and an MLP branch with their own embeddings, fused
by one linear layer into a logit; trained with BCE over the positive and sampled negatives.

Multi-task (``ncf.task_target``): a second linear head on the same fused representation predicts
whether the user performs the target behaviour on the item (purchase; rating >= 4 on MovieLens
with ``ncf.task_min_value``), trained jointly on the positive pairs with weight
``ncf.task_weight``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.models.base import RecModel
from raytrain.models.text_init import TextItemEmbedding


class NeuMF(RecModel):
    """NeuMF over ``n_users`` x ``n_items``: ``forward(user_idx (b,), item_idx (b,)) -> (b,)``
    logits; ``forward(batch)`` is :meth:`loss`. ``score_pairs`` bounds the (user, item) pairs
    scored at once by :meth:`score_users` (its working memory ~ score_pairs * the MLP widths)."""

    kind = "pairs"

    def __init__(self, n_users: int, n_items: int, *, dim_gmf: int = 32, dim_mlp: int = 32,
                 layers: Sequence[int] = (64, 32, 16), dropout: float = 0.0,
                 score_pairs: int = 1 << 18, item_text=None, task_weight: float = 0.0):
        super().__init__()
        self.n_users, self.n_items, self.score_pairs = n_users, n_items, score_pairs
        self.dim_gmf, self.dim_mlp = dim_gmf, dim_mlp
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
        # multi-task: P(the target behaviour | user, item) from the same fused representation
        self.task_weight = task_weight
        self.task = nn.Linear(dim_gmf + width, 1) if task_weight > 0 else None
        for e in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(e.weight, std=0.01)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if item_text is not None:  # (n_items, text_dim): both item tables text-initialised
            self.item_gmf = TextItemEmbedding(item_text, dim_gmf, padding=False, std=0.01)
            self.item_mlp = TextItemEmbedding(item_text, dim_mlp, padding=False, std=0.01)

    def fused(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """(b,) users and (b,) items -> (b, dim_gmf + last layer) GMF and MLP outputs side by
        side: what the ranking and the task head read."""
        g = self.user_gmf(user_idx) * self.item_gmf(item_idx)
        m = self.mlp(torch.cat([self.user_mlp(user_idx), self.item_mlp(item_idx)], dim=-1))
        return torch.cat([g, m], dim=-1)

    def logits(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """(b,) users and (b,) items -> (b,) logits."""
        return self.out(self.fused(user_idx, item_idx)).squeeze(-1)

    def task_logits(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """(b,) -> (b,) logits of the task head: will the user perform the target behaviour on
        the item (given an interaction)? A model built without a task head raises."""
        if self.task is None:
            raise ValueError("this NeuMF has no task head (ncf.task_target is unset)")
        return self.task(self.fused(user_idx, item_idx)).squeeze(-1)

    def forward(self, batch, item_idx: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``forward(batch_dict)``: the scalar loss; ``forward(user_idx, item_idx)``: (b,)
        logits."""
        if isinstance(batch, dict):
            return self.loss(batch, generator=generator)
        return self.logits(batch, item_idx)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """Scalar BCE-with-logits, the mean over all b * (1 + n) terms: ``user_idx`` (b,),
        ``item_idx`` (b,) label 1, ``neg_items`` (b, n) label 0. ``generator`` is unused (the
        negatives come in the batch)."""
        u, pos, neg = batch["user_idx"], batch["item_idx"], batch["neg_items"]
        items = torch.cat([pos[:, None], neg], dim=1)  # (b, 1 + n)
        users = u[:, None].expand_as(items)
        logit = self.logits(users.reshape(-1), items.reshape(-1)).float()
        label = torch.zeros_like(logit).view(items.shape)
        label[:, 0] = 1.0
        loss = F.binary_cross_entropy_with_logits(logit, label.reshape(-1))
        if self.task is not None and "task_label" in batch:
            # joint training: + task_weight * BCE of the target behaviour on the positive pairs
            t = self.task_logits(u, pos).float()
            loss = loss + self.task_weight * F.binary_cross_entropy_with_logits(
                t, batch["task_label"].float())
        return loss

    def score_users(self, batch) -> torch.Tensor:
        """``user_idx`` (b,) -> (b, n_items) float32 logits, the same as ``forward`` on every
        (user, item) pair. Items go in chunks of ``score_pairs // b``; the first MLP layer is
        split into its user and item halves (W [u; i] = W_u u + W_i i), so each is applied once
        per user and once per item instead of once per pair."""
        u = batch["user_idx"]
        w = self.out.weight[0]
        w_gmf, w_mlp = w[: self.dim_gmf], w[self.dim_gmf:]
        ug = self.user_gmf(u) * w_gmf  # (b, dim_gmf): GMF's share of the output layer folded in
        um = self.user_mlp(u)
        first = self.mlp[0] if len(self.mlp) else None
        if first is not None:
            uh = F.linear(um, first.weight[:, : self.dim_mlp], first.bias)  # (b, layers[0])
        step = max(1, self.score_pairs // max(1, len(u)))
        out = []
        for s in range(0, self.n_items, step):
            items = torch.arange(s, min(self.n_items, s + step), device=u.device)
            im = self.item_mlp(items)
            if first is None:  # no hidden layers: the MLP branch is the concatenation itself
                m = torch.cat([um[:, None].expand(-1, len(items), -1),
                               im[None].expand(len(u), -1, -1)], dim=-1)
            else:
                m = self.mlp[1:](uh[:, None, :] + F.linear(im, first.weight[:, self.dim_mlp:]))
            logit = ug @ self.item_gmf(items).T + m @ w_mlp + self.out.bias
            out.append(logit.float())
        return torch.cat(out, dim=1)

    def embeddings(self) -> dict[str, torch.Tensor]:
        """{"user": (n_users, dim_gmf + dim_mlp), "item": (n_items, dim_gmf + dim_mlp)}: the GMF
        and MLP embeddings side by side, float32, detached. NeuMF scores are not their dot
        product (the MLP branch is not bilinear); they are for inspection, not retrieval."""
        user = torch.cat([self.user_gmf.weight, self.user_mlp.weight], 1)
        item = torch.cat([self.item_gmf.weight, self.item_mlp.weight], 1)
        return {"user": user.detach().float(), "item": item.detach().float()}
