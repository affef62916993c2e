"""The deep models as plain torch modules, and a registry by name.

    net = build("sasrec", n_users=..., n_items=..., cfg=cfg, n_behaviors=len(cfg.vocabulary))
"""

from __future__ import annotations

from common.config import Config, ConfigError
from raytrain.models.base import RecModel
from raytrain.models.lightgcn import LightGCN, normalized_adjacency
from raytrain.models.ncf import NeuMF
from raytrain.models.sasrec import SASRec

MODELS: dict[str, type[RecModel]] = {"ncf": NeuMF, "sasrec": SASRec, "lightgcn": LightGCN}
KINDS: dict[str, str] = {name: cls.kind for name, cls in MODELS.items()}

__all__ = ["KINDS", "MODELS", "LightGCN", "NeuMF", "RecModel", "SASRec", "build",
           "normalized_adjacency"]


def build(name: str, *, n_users: int, n_items: int, cfg: Config, n_behaviors: int = 6,
          graph=None, item_text=None) -> RecModel:
    """The model ``name`` (a key of MODELS) sized for ``n_users`` x ``n_items``, its settings
    from ``cfg.ncf`` / ``cfg.sasrec`` / ``cfg.lightgcn``. ``n_behaviors``: behaviour ids
    1..n_behaviors (SASRec only); ``graph``: (user_idx, item_idx) train pair arrays (LightGCN
    only, required); ``item_text``: (n_items, text_dim) text vectors that NeuMF / SASRec initialise
their item embeddings from (``<model>.item_init: text``). An unknown name, or LightGCN without a
graph, is a ConfigError."""
    if name not in MODELS:
        raise ConfigError(f"unknown deep model {name!r}; known: {', '.join(sorted(MODELS))}")
    if name == "ncf":
        c = cfg.ncf
        return NeuMF(n_users, n_items, dim_gmf=c.dim_gmf, dim_mlp=c.dim_mlp, layers=c.layers,
                     dropout=c.dropout, item_text=item_text,
                     task_weight=c.task_weight if c.task_target else 0.0)
    if name == "lightgcn":
        if graph is None:
            raise ConfigError("lightgcn needs the train graph (user_idx, item_idx)")
        c = cfg.lightgcn
        return LightGCN(n_users, n_items, graph=graph, dim=c.dim, layers=c.layers, reg=c.reg)
    c = cfg.sasrec
    return SASRec(n_items, n_behaviors=n_behaviors, max_len=c.max_len, dim=c.dim, heads=c.heads,
                  blocks=c.blocks, dropout=c.dropout, loss=c.loss, negatives=c.negatives,
                  behavior_embedding=c.behavior_embedding, n_users=n_users,
                  item_text=item_text)
