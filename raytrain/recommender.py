"""The Ray Train models in the model registry (``common/models.py``): ``ncf``, ``sasrec``,
``lightgcn``, ``twotower``.

They register with ``runtime="ray"``: a run of one of them is :func:`raytrain.train.train_run`
from start to end (Ray Data reads of the pinned tables, Ray Train on the workers, top-K and
embeddings written with delta-rs), so ``reclake fit --model ncf`` and ``reclake train --model ncf``
are one path and neither starts a JVM. These classes describe the model to the rest of the
system: its config sections (the params recorded in ``models/runs``) and its lake tables.
"""

from __future__ import annotations

from typing import ClassVar

from common import lake as L
from common.config import ConfigError
from common.models import Recommender


class RayRecommender(Recommender):
    """A model whose whole run happens in :func:`raytrain.train.train_run`."""

    kind: ClassVar[str]  # "pairs" | "sequence" | "graph" (see raytrain/models)
    embeddings_table: ClassVar[str]

    def _spark_path(self, *_args, **_kwargs):
        raise ConfigError(
            f"model {self.name!r} trains on Ray, not inside a Spark stage: run "
            f"`reclake train --model {self.name}` (or `reclake fit --model {self.name}`, the same "
            f"path)")

    fit = _spark_path
    recommend = _spark_path


class NeuMFRecommender(RayRecommender):
    name = "ncf"
    kind = "pairs"
    sections = ("train", "ncf")
    embeddings_table = L.MODELS_NCF_EMBEDDINGS


class SASRecRecommender(RayRecommender):
    name = "sasrec"
    kind = "sequence"
    sections = ("train", "sasrec")
    embeddings_table = L.MODELS_SASREC_EMBEDDINGS


class LightGCNRecommender(RayRecommender):
    name = "lightgcn"
    kind = "graph"
    sections = ("train", "lightgcn")
    embeddings_table = L.MODELS_LIGHTGCN_EMBEDDINGS


class TwoTowerRecommender(RayRecommender):
    """Fine-tunes the text encoder; its item vectors go to models/text_embeddings (model
    ``<embed model>+ft:<run_id>``), where the text and hybrid models can use them."""

    name = "twotower"
    kind = "sequence"
    sections = ("train", "twotower", "embed")
    embeddings_table = L.MODELS_TEXT_EMBEDDINGS
