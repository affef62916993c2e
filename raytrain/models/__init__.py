"""The deep models as plain torch modules, and a registry by name.

    net = build("sasrec", n_users=..., n_items=..., cfg=cfg, n_behaviors=len(cfg.vocabulary))
"""

from __future__ import annotations

import numpy as np

from common.config import Config, ConfigError
from raytrain.models.base import RecModel
from raytrain.models.lightgcn import LightGCN, normalized_adjacency
from raytrain.models.ncf import NeuMF
from raytrain.models.sasrec import SASRec
from raytrain.models.twotower import TwoTower

MODELS: dict[str, type[RecModel]] = {"ncf": NeuMF, "sasrec": SASRec, "lightgcn": LightGCN,
                                     "twotower": TwoTower}
KINDS: dict[str, str] = {name: cls.kind for name, cls in MODELS.items()}

__all__ = ["KINDS", "MODELS", "LightGCN", "NeuMF", "RecModel", "SASRec", "TwoTower", "build",
           "build_for", "load_text_encoder", "normalized_adjacency"]


def build(name: str, *, n_users: int, n_items: int, cfg: Config, n_behaviors: int = 6,
          graph=None, item_text=None, item_tokens=None) -> RecModel:
    """The model ``name`` (a key of MODELS) sized for ``n_users`` x ``n_items``, its settings
    from ``cfg.ncf`` / ``cfg.sasrec`` / ``cfg.lightgcn``. ``n_behaviors``: behaviour ids
    1..n_behaviors (SASRec only); ``graph``: (user_idx, item_idx) train pair arrays (LightGCN
    only, required); ``item_text``: (n_items, text_dim) text vectors that NeuMF / SASRec initialise
their item embeddings from (``<model>.item_init: text``); ``item_tokens``: (input_ids,
attention_mask) of every item's text (two-tower only, required; its encoder is ``embed.*``'s
model, loaded here after the sha check). An unknown name, or LightGCN without a graph, is a
ConfigError."""
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
    if name == "twotower":
        if item_tokens is None:
            raise ConfigError("twotower needs the item texts' tokens (raytrain.data.load_item_tokens)")
        import torch

        c = cfg.twotower
        ids, mask = item_tokens
        return TwoTower(n_items, encoder=load_text_encoder(cfg),
                        input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
                        attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
                        history=c.history, temperature=c.temperature,
                        encode_batch=c.encode_batch, lr=c.lr)
    c = cfg.sasrec
    return SASRec(n_items, n_behaviors=n_behaviors, max_len=c.max_len, dim=c.dim, heads=c.heads,
                  blocks=c.blocks, dropout=c.dropout, loss=c.loss, negatives=c.negatives,
                  behavior_embedding=c.behavior_embedding, n_users=n_users,
                  item_text=item_text)


def build_for(cfg: Config, data) -> RecModel:
    """:func:`build` of ``cfg.run.model`` sized and fed from a :class:`raytrain.data.TrainData`."""
    name = cfg.run.model
    return build(name, n_users=data.n_users, n_items=data.n_items, cfg=cfg,
                 n_behaviors=len(cfg.vocabulary),
                 graph=data.train_pairs() if KINDS.get(name) == "graph" else None,
                 item_text=data.item_text, item_tokens=data.item_tokens)


def load_text_encoder(cfg: Config):
    """The transformer under ``embed.*``'s sentence-transformers model (weights checked against
    their pin, loaded offline on the CPU), without its pooler: the two-tower item tower pools the
    token states itself, and DDP refuses parameters that get no gradient."""
    from raytrain.embed import load_model, model_spec

    spec = model_spec(cfg)
    st = load_model(spec.model_dir, expected_sha256=spec.expected_sha256, device="cpu")
    encoder = st[0].auto_model
    if hasattr(encoder, "pooler"):
        encoder.pooler = None
    encoder.train()
    return encoder
