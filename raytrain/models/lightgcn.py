"""LightGCN (He et al., SIGIR 2020): ego embeddings propagated over the symmetric-normalised
user-item graph of the train split, the mean over layers 0..L as the representation; BPR loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raytrain.models.base import RecModel


def normalized_adjacency(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int,
                         n_items: int) -> torch.Tensor:
    """A_hat = D^-1/2 A D^-1/2 of the bipartite graph (users 0..n_users-1, then items), as a
    sparse COO float32 (n_users + n_items)^2. Duplicate edges count once; isolated nodes have
    zero rows."""
    key = np.unique(np.asarray(user_idx, np.int64) * n_items + np.asarray(item_idx, np.int64))
    u, i = key // n_items, key % n_items + n_users
    n = n_users + n_items
    deg = np.bincount(np.concatenate([u, i]), minlength=n).astype(np.float64)
    inv = np.zeros(n)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
    vals = (inv[rows] * inv[cols]).astype(np.float32)
    return torch.sparse_coo_tensor(np.stack([rows, cols]), vals, (n, n),
                                   check_invariants=False).coalesce()


class LightGCN(RecModel):
    """LightGCN over ``n_users`` x ``n_items``; ``graph`` = (user_idx, item_idx) train pairs
    (int arrays of equal length). The normalised adjacency is a non-persistent buffer (it moves
    with ``.to(device)``, is not in the state dict, and DDP neither broadcasts nor syncs it).
    ``forward(batch)`` is :meth:`loss`."""

    kind = "graph"

    def __init__(self, n_users: int, n_items: int, *, graph: tuple[np.ndarray, np.ndarray],
                 dim: int = 64, layers: int = 3, reg: float = 1e-4):
        super().__init__()
        self.n_users, self.n_items, self.layers, self.reg = n_users, n_items, layers, reg
        self.ego = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.ego.weight, std=0.1)
        self.register_buffer("adj", normalized_adjacency(*graph, n_users, n_items),
                             persistent=False)
        # DDP cannot broadcast a sparse tensor ("No support for sparse tensors") and every rank
        # builds the same graph anyway: have DDP leave it alone whatever broadcast_buffers says
        self._ddp_params_and_buffers_to_ignore = ["adj"]

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (n_users, dim), items (n_items, dim)) float32: the mean of E_0..E_L with
        E_0 the ego embeddings and E_{l+1} = A_hat E_l, computed in float32 with autocast off
        (sparse products have no reduced-precision kernels on CPU)."""
        with torch.autocast(self.ego.weight.device.type, enabled=False):
            e = self.ego.weight.float()
            total = e
            for _ in range(self.layers):
                e = torch.sparse.mm(self.adj, e)
                total = total + e
            out = total / (self.layers + 1)
        return out[: self.n_users], out[self.n_users:]

    def forward(self, batch, *, generator=None) -> torch.Tensor:
        """The scalar :meth:`loss` of ``batch`` (the call DDP's hooks see)."""
        return self.loss(batch, generator=generator)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """Scalar BPR: ``user_idx`` (b,), ``item_idx`` (b,), ``neg_items`` (b, n); the mean over
        the b * n (user, positive, negative) triples of -log sigmoid(s_pos - s_neg) plus
        reg * (|e_u|^2 + |e_pos|^2 + |e_neg|^2) / 2 on layer-0 (ego) rows. The reg term is the
        paper's per-triple one averaged over the same triples, so with n = 1 it is exactly
        reg * (sum of the batch's squared norms) / 2 / b. ``generator`` is unused."""
        users, items = self.propagate()
        u, pos, neg = batch["user_idx"], batch["item_idx"], batch["neg_items"]
        eu = users[u]
        s_pos = (eu * items[pos]).sum(-1, keepdim=True)
        s_neg = (eu[:, None, :] * items[neg]).sum(-1)
        bpr = F.softplus(s_neg - s_pos).mean()  # -log sigmoid(s_pos - s_neg)
        e0 = self.ego.weight
        l2 = (e0[u].pow(2).sum() + e0[self.n_users + pos].pow(2).sum()
              + e0[self.n_users + neg].pow(2).sum() / neg.shape[1]) / 2 / len(u)
        return bpr + self.reg * l2

    def _eval_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``propagate()``, cached in eval mode until the weights change (scoring many user
        batches propagates once)."""
        if self.training or torch.is_grad_enabled():
            return self.propagate()
        key = (self.ego.weight._version, self.ego.weight.data_ptr())
        if getattr(self, "_cache", None) is None or self._cache[0] != key:
            self._cache = (key, self.propagate())
        return self._cache[1]

    def score_users(self, batch) -> torch.Tensor:
        """``user_idx`` (b,) -> (b, n_items) float32: propagated user . propagated item."""
        users, items = self._eval_embeddings()
        with torch.autocast(users.device.type, enabled=False):
            return users[batch["user_idx"]] @ items.T

    def embeddings(self) -> dict[str, torch.Tensor]:
        """{"user": (n_users, dim), "item": (n_items, dim)} float32, detached: the propagated
        (layer-mean) embeddings, whose dot product is the score."""
        with torch.no_grad():
            users, items = self.propagate()
        return {"user": users.detach(), "item": items.detach()}
