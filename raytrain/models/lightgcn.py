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
    kind = "graph"

    def __init__(self, n_users: int, n_items: int, *, graph: tuple[np.ndarray, np.ndarray],
                 dim: int = 64, layers: int = 3, reg: float = 1e-4):
        super().__init__()
        self.n_users, self.n_items, self.layers, self.reg = n_users, n_items, layers, reg
        self.ego = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.ego.weight, std=0.1)
        self.register_buffer("adj", normalized_adjacency(*graph, n_users, n_items),
                             persistent=False)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-mean (users (n_users, d), items (n_items, d)), in float32."""
        with torch.autocast(self.ego.weight.device.type, enabled=False):
            e = self.ego.weight.float()
            total = e
            for _ in range(self.layers):
                e = torch.sparse.mm(self.adj, e)
                total = total + e
            out = total / (self.layers + 1)
        return out[: self.n_users], out[self.n_users:]

    def forward(self, batch, *, generator=None) -> torch.Tensor:
        return self.loss(batch, generator=generator)

    def loss(self, batch, *, generator=None) -> torch.Tensor:
        """BPR of ``item_idx`` over each of ``neg_items`` (b, n) + reg * L2 of layer-0 rows."""
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
        users, items = self._eval_embeddings()
        return users[batch["user_idx"]] @ items.T

    def embeddings(self) -> dict[str, torch.Tensor]:
        users, items = self.propagate()
        return {"user": users.detach(), "item": items.detach()}
