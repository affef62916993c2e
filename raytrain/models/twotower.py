"""Two-tower recommender that fine-tunes a pretrained text encoder on behaviour data.

The item tower is a BERT-family encoder (the packaged all-MiniLM-L6-v2 by default): an item's
vector is the attention-masked mean of the encoder's last hidden states over its text's tokens,
L2-normalised (what sentence-transformers computes for MiniLM, so training starts from the
frozen model's vectors). The user tower is the normalised mean of the vectors of the user's last
``history`` items. Training: user history -> next item, softmax over the batch's next items
(in-batch negatives) at ``temperature``; a next item that occurs twice in a batch is not its own
negative. Only the batch's distinct items are encoded, once each.

``kind = "sequence"``: batches are the sequence windows of :func:`raytrain.data.sequence_windows`
(left-padded tokens, token = item_idx + 1, ``twotower.max_len`` long). Each step draws one target
position per window (a fresh draw every epoch, so a user's whole recent history trains the
model, not only its last transition); the positive is the target there and the user is the mean
of the ``history`` tokens up to it. The encoder fine-tunes at its own learning rate
(``twotower.lr``, :attr:`lr`), far below what embeddings trained from zero need.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from raytrain.models.base import RecModel


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(m, t, d) hidden states, (m, t) 0/1 mask -> (m, d) L2-normalised masked means (float32)."""
    m = mask[..., None].to(hidden.dtype)
    v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return F.normalize(v.float(), dim=-1)


def in_batch_loss(users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Softmax cross-entropy of row i's positive (column i) against the batch's other positives.
    ``users``, ``items``: (b, d) unit vectors; ``targets``: (b,) item ids (a repeated id is masked
    out of the other rows with that id)."""
    logits = users @ items.T / temperature
    dup = (targets[:, None] == targets[None, :]) & ~torch.eye(len(targets), dtype=torch.bool,
                                                              device=targets.device)
    logits = logits.masked_fill(dup, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(targets), device=logits.device))


def draw_positions(valid: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(b, L) bool, every row with a True -> (b,) one True column per row: uniform over the row's
    True columns (drawn on the CPU with ``generator``), or the last True one without it."""
    if generator is None:
        return valid.shape[1] - 1 - valid.flip(1).int().argmax(1)
    draw = torch.rand(valid.shape, generator=generator).to(valid.device)
    return draw.masked_fill(~valid, -1.0).argmax(1)


def history_at(seq: torch.Tensor, pos: torch.Tensor, h: int) -> torch.Tensor:
    """(b, L) tokens, (b,) positions -> (b, h) tokens ``seq[r, pos-h+1 .. pos]`` (0 left of the
    window's start)."""
    at = pos[:, None] - h + 1 + torch.arange(h, device=seq.device)
    return seq.gather(1, at.clamp(min=0)).masked_fill(at < 0, 0)


class TwoTower(RecModel):
    kind: ClassVar[str] = "sequence"

    def __init__(self, n_items: int, *, encoder: torch.nn.Module, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, history: int = 10, temperature: float = 0.05,
                 encode_batch: int = 256, lr: float | None = None):
        super().__init__()
        self.lr = lr
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] != n_items:
            raise ValueError(f"item tokens {tuple(input_ids.shape)} / mask "
                             f"{tuple(attention_mask.shape)} do not match {n_items} items")
        self.n_items, self.history, self.temperature = n_items, history, temperature
        self.encode_batch = encode_batch
        self.encoder = encoder
        self.register_buffer("input_ids", input_ids.long(), persistent=False)
        self.register_buffer("attention_mask", attention_mask.long(), persistent=False)
        self._catalogue: torch.Tensor | None = None  # eval-time cache of every item's vector

    def encode_items(self, idx: torch.Tensor) -> torch.Tensor:
        """(m,) item_idx -> (m, d) unit vectors (the trainable item tower)."""
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        width = max(int(mask.sum(1).max()), 1)  # trim the batch's common padding
        out = self.encoder(input_ids=ids[:, :width], attention_mask=mask[:, :width])
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return mean_pool(hidden, mask[:, :width])

    def _users(self, hist: torch.Tensor, vec_of) -> torch.Tensor:
        """(b, h) tokens (0: padding) -> (b, d) unit user vectors from ``vec_of(tokens)``."""
        keep = hist > 0
        v = vec_of(hist) * keep[..., None]
        return F.normalize(v.sum(1) / keep.sum(1, keepdim=True).clamp(min=1), dim=-1)

    def forward(self, batch, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """The scalar :meth:`loss` of ``batch`` (the call DDP's hooks see)."""
        return self.loss(batch, generator=generator)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """In-batch softmax loss: per window one target position (drawn with ``generator`` among
        the positions with a target; the last one without a generator) and the ``history``
        tokens up to it as the user (windows without a target are skipped)."""
        self._catalogue = None
        seq, target = batch["seq"], batch["target"]
        mask = batch.get("target_mask")
        valid = target > 0 if mask is None else mask.bool() & (target > 0)
        rows = torch.nonzero(valid.any(1)).squeeze(1)
        if len(rows) == 0:
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        seq, target, valid = seq[rows], target[rows], valid[rows]
        pos = draw_positions(valid, generator)
        hist = history_at(seq, pos, self.history)
        last = target.gather(1, pos[:, None]).squeeze(1)  # the positives, item_idx + 1
        tokens, inverse = torch.unique(torch.cat([hist.reshape(-1), last]), return_inverse=True)
        real = tokens > 0
        enc = self.encode_items(tokens[real] - 1)
        d = enc.shape[1]
        vec = enc.new_zeros((len(tokens), d)).index_copy(0, torch.nonzero(real).squeeze(1), enc)
        hv = vec[inverse[:hist.numel()]].view(*hist.shape, d)
        users = self._users(hist, lambda _: hv)
        items = vec[inverse[hist.numel():]]
        return in_batch_loss(users, items, last, self.temperature)

    @torch.no_grad()
    def catalogue(self) -> torch.Tensor:
        """(n_items, d) every item's vector (cached until the next training step)."""
        if self._catalogue is None:
            dev = self.input_ids.device
            parts = [self.encode_items(torch.arange(s, min(s + self.encode_batch, self.n_items),
                                                    device=dev))
                     for s in range(0, self.n_items, self.encode_batch)]
            self._catalogue = torch.cat(parts)
        return self._catalogue

    @torch.no_grad()
    def score_users(self, batch) -> torch.Tensor:
        """``seq`` (b, L) history tokens -> (b, n_items) cosine scores of the user vector (mean
        of the last ``history`` items) with every item."""
        cat = self.catalogue()
        hist = batch["seq"][:, -self.history:]
        pad = torch.cat([cat.new_zeros((1, cat.shape[1])), cat])  # token 0 -> a zero vector
        users = self._users(hist, lambda t: pad[t])
        return users @ cat.T

    def embeddings(self) -> dict[str, torch.Tensor]:
        return {"item": self.catalogue().detach().float().cpu()}
