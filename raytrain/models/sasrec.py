"""SASRec (Kang & McAuley, ICDM 2018) with a behaviour-type embedding.

Tokens are item_idx + 1 (0 = padding), sequences left-padded (the latest event at position L-1).
The input at each position is sqrt(dim) * E_item[token] + E_pos[position] (+ E_beh[behaviour]
when ``behavior_embedding``), then dropout, ``blocks`` pre-LN transformer blocks with causal
self-attention and a point-wise feed-forward net, and a final LayerNorm. Padded positions are
zeroed after every block, so padding never reaches a real position. The item embedding is shared
by input and output: the logit of item i at a position is h . E_item[i + 1]. With ``item_text``
(``sasrec.item_init: text``) E_item is initialised from the items' text vectors through a learned
projection (``text_init.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.models.base import RecModel
from raytrain.models.text_init import TextItemEmbedding


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
    """SASRec over ``n_items`` items (tokens 1..n_items) and ``n_behaviors`` behaviour ids
    (1..n_behaviors; 0 = padding). ``forward(batch)`` is :meth:`loss`; ``n_users`` is accepted
    for the registry's uniform signature and unused (a user is its sequence)."""

    kind = "sequence"

    def __init__(self, n_items: int, *, n_behaviors: int, max_len: int = 50, dim: int = 64,
                 heads: int = 2, blocks: int = 2, dropout: float = 0.2, loss: str = "full",
                 negatives: int = 100, behavior_embedding: bool = True, n_users: int = 0,
                 item_text=None):
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
        if item_text is not None:  # (n_items, text_dim): text-initialised (text_init.py)
            self.item = TextItemEmbedding(item_text, dim, padding=True, std=dim ** -0.5)

    def hidden(self, seq: torch.Tensor, beh: torch.Tensor) -> torch.Tensor:
        """``seq``, ``beh`` (b, L) LongTensors, L <= max_len, left-padded with 0 -> (b, L, dim)
        sequence representation; padded positions are 0, and position t sees only 0..t."""
        b, n = seq.shape
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len {self.max_len}")
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
        """The scalar :meth:`loss` of ``batch`` (the call DDP's hooks see)."""
        return self.loss(batch, generator=generator)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """Scalar next-item loss: ``seq``, ``beh``, ``target`` (b, L) tokens (0: no target),
        optional ``target_mask`` (b, L) bool (default target > 0; a masked position with
        target 0 never counts), averaged over the counted positions. ``full``: cross-entropy
        over the whole catalogue; ``sampled``: softmax over the positive and ``negatives``
        uniform items drawn with ``generator``, one draw shared by the batch's positions (a
        negative equal to a position's positive is masked out there). A batch with no counted position gives 0 (still connected to every parameter)."""
        h = self.hidden(batch["seq"], batch["beh"])
        target = batch["target"]
        mask = batch.get("target_mask")
        mask = target > 0 if mask is None else mask.bool() & (target > 0)
        if not mask.any():
            return h.sum() * 0.0
        hs, ts = h[mask], target[mask]  # (m, d), (m,) tokens
        if self.loss_kind == "full":
            logits = hs @ self.item.weight[1:].T  # (m, n_items)
            return F.cross_entropy(logits.float(), ts - 1)
        # drawn where the generator lives (the trainer's is a CPU one), then moved
        gen_device = generator.device if generator is not None else ts.device
        # one set of negatives shared by the batch's positions: (m, n) logits from one matmul,
        # where per-position negatives would gather an (m, n, d) tensor (gigabytes at n = 1000)
        neg = torch.randint(1, self.n_items + 1, (self.negatives,), generator=generator,
                            device=gen_device).to(ts.device)
        pos = (hs.float() * self.item(ts).float()).sum(-1, keepdim=True)  # (m, 1)
        negl = (hs.float() @ self.item(neg).float().T).masked_fill(neg[None, :] == ts[:, None],
                                                                   float("-inf"))
        logits = torch.cat([pos, negl], dim=1)  # the positive first
        return F.cross_entropy(logits, torch.zeros(len(ts), dtype=torch.long, device=ts.device))

    def score_users(self, batch) -> torch.Tensor:
        """``seq``, ``beh`` (b, L) -> (b, n_items) float32 scores of the next item after the
        last position (L-1); column j = item_idx j = token j + 1. The product runs in float32
        even under autocast, so close scores do not tie in the top-K."""
        h = self.hidden(batch["seq"], batch["beh"])[:, -1]
        with torch.autocast(h.device.type, enabled=False):
            return h.float() @ self.item.weight[1:].float().T

    def embeddings(self) -> dict[str, torch.Tensor]:
        """{"item": (n_items, dim)} float32, detached: the shared input / output item
        embedding (row j = item_idx j)."""
        return {"item": self.item.weight[1:].detach().float()}
