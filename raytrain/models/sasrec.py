"""SASRec (Kang & McAuley, ICDM 2018) with a behaviour-type embedding.

Tokens are item_idx + 1 (0 = padding), sequences left-padded (the latest event at position L-1).
The input at each position is sqrt(dim) * E_item[token] + E_pos[position] (+ E_beh[behaviour]
when ``behavior_embedding``), then dropout, ``blocks`` pre-LN transformer blocks with causal
self-attention and a point-wise feed-forward net, and a final LayerNorm. Padded positions are
zeroed after every block, so padding never reaches a real position. The item embedding is shared
by input and output: the logit of item i at a position is h . E_item[i + 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.models.base import RecModel


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q = self.ln1(x)
        a, _ = self.attn(q, q, q, attn_mask=mask, need_weights=False)
        x = (x + a) * keep
        x = (x + self.ffn(self.ln2(x))) * keep
        return x


class SASRec(RecModel):
    kind = "sequence"

    def __init__(self, n_items: int, *, n_behaviors: int, max_len: int = 50, dim: int = 64,
                 heads: int = 2, blocks: int = 2, dropout: float = 0.2, loss: str = "full",
                 negatives: int = 100, behavior_embedding: bool = True, n_users: int = 0):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, dim
        self.loss_kind, self.negatives = loss, negatives
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.beh = nn.Embedding(n_behaviors + 1, dim, padding_idx=0) if behavior_embedding \
            else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.ln = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def hidden(self, seq: torch.Tensor, beh: torch.Tensor) -> torch.Tensor:
        """``seq``, ``beh`` (b, L), L <= max_len -> (b, L, dim); padded positions are 0."""
        b, n = seq.shape
        keep = (seq > 0).unsqueeze(-1).to(self.item.weight.dtype)
        positions = torch.arange(self.max_len - n, self.max_len, device=seq.device)
        x = self.item(seq) * math.sqrt(self.dim) + self.pos(positions)[None]
        if self.beh is not None:
            x = x + self.beh(beh)
        x = self.drop(x) * keep
        # blocked (query, key): the future, and padded keys; a padded query keeps only itself
        # (its output is zeroed anyway), so no row is fully blocked
        pad = seq == 0
        eye = torch.eye(n, dtype=torch.bool, device=seq.device)
        blocked = torch.triu(torch.ones(n, n, dtype=torch.bool, device=seq.device), 1)[None] \
            | pad[:, None, :]
        blocked = blocked & ~(eye[None] & pad[:, :, None])
        heads = self.blocks[0].attn.num_heads if len(self.blocks) else 1
        mask = blocked.repeat_interleave(heads, dim=0)  # (b * heads, L, L)
        for blk in self.blocks:
            x = blk(x, mask, keep)
        return self.ln(x) * keep

    def forward(self, batch, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loss(batch, generator=generator)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """Next-item loss at the positions of ``target_mask`` (default target > 0): full softmax
        over the catalogue, or sampled softmax against ``negatives`` uniform items."""
        h = self.hidden(batch["seq"], batch["beh"])
        target = batch["target"]
        mask = batch.get("target_mask")
        mask = target > 0 if mask is None else mask & (target > 0)
        hs, ts = h[mask], target[mask]  # (m, d), (m,) tokens
        if self.beh is not None and not mask.any():
            return h.sum() * 0.0 + self.beh.weight.sum() * 0.0
        if self.loss_kind == "full":
            logits = hs.float() @ self.item.weight[1:].float().T  # (m, n_items)
            loss = F.cross_entropy(logits, ts - 1)
        else:
            neg = torch.randint(1, self.n_items + 1, (len(ts), self.negatives),
                                generator=generator).to(ts.device)
            cand = torch.cat([ts[:, None], neg], dim=1)
            logits = (hs[:, None, :].float() * self.item(cand).float()).sum(-1)
            logits[:, 1:] = logits[:, 1:].masked_fill(neg == ts[:, None], float("-inf"))
            loss = F.cross_entropy(logits, torch.zeros(len(ts), dtype=torch.long,
                                                       device=ts.device))
        # every parameter in the graph every call (DDP without find_unused_parameters)
        return loss + 0.0 * self.item.weight[0].sum()

    def score_users(self, batch) -> torch.Tensor:
        """``seq``, ``beh`` (b, L) -> (b, n_items) scores from the last position."""
        h = self.hidden(batch["seq"], batch["beh"])[:, -1]
        return (h.float() @ self.item.weight[1:].float().T)

    def embeddings(self) -> dict[str, torch.Tensor]:
        return {"item": self.item.weight[1:].detach()}
