"""The data layer of the Ray Train deep recommenders: gold Delta tables read with Ray Data at pinned
versions (delta-rs, no Spark and no JVM in the training path), and training examples built on the
workers.

    versions = pin_versions(lake, [L.GOLD_SPLITS, L.GOLD_SEQUENCES])   # before Ray starts
    data, pairs = load_train_data(lake, cfg, versions)                 # TrainData + train pairs
    seqs = load_sequences(lake, cfg, versions, data)                   # SASRec only
    # on a worker, per epoch:
    rng = epoch_rng(cfg.train.seed, epoch, rank)
    for batch in pairs_batches(shard, batch_size=..., data=data, n_neg=4, rng=rng): ...
    for batch in sequence_batches(shard, batch_size=..., max_len=50, target_behavior_id=None): ...

What is in memory and what streams:

- On the driver and on every worker, :class:`TrainData` (passed in ``train_loop_config``): the
  user -> train-items index as CSR (4 bytes per train pair + 8 per user), and the valid and test
  truth as CSR (4 bytes per held-out pair + 8 per user each). The driver builds it from the
  protocol's ``user_idx, item_idx`` and a one-byte part code per row (10 bytes per row of the
  protocol while it is built). Embedding tables and optimiser state are the trainer's.
- On every map task of :func:`load_sequences`: the train pair -> train ``ts`` lookup (two sorted
  int64 arrays, 16 bytes per train pair; built once on the driver, shipped once per task process
  through the object store with the map function).
- Streamed (Ray Data blocks, sharded across workers): the train pairs (``user_idx, item_idx,
  confidence``) and the train sequences (``user_idx, seq, beh``: 6 bytes per kept event + list
  offsets). :func:`load_sequences` materialises the sequences in the object store (it spills to
  disk) because the trainer reads them twice (training, then validation / scoring histories).

Negatives are drawn uniformly from the items the user has no train row for; a user whose train
rows cover the whole catalogue can be neither given a negative nor recommended anything, so
:func:`load_train_data` refuses such data (``ConfigError``) rather than train on false negatives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import lake as L
from common import schema as S
from common.config import Config, ConfigError
from common.lake import Lake, VersionNotReadable
from common.log import get_logger
from common.splits import train_parts

if TYPE_CHECKING:
    import ray.data

log = get_logger("raytrain.data")

# the command that writes each table the Ray path reads (for "run it first" messages)
WRITERS: dict[str, str] = {
    L.GOLD_SPLITS: "reclake split --protocol {protocol}",
    L.GOLD_SEQUENCES: "reclake transform",
}
# part codes of gold/splits' `split` column on the driver (one byte per row)
_PART_CODES: dict[str, int] = {S.TRAIN: 0, S.VALID: 1, S.TEST: 2}
SEQ, BEH, TARGET, TARGET_MASK = "seq", "beh", "target", "target_mask"
NEG_ITEMS = "neg_items"
# rejection rounds before the sampler draws the rest from each user's unseen items directly
_REJECTION_ROUNDS = 16


# --- pinned reads -------------------------------------------------------------------------------


def _missing_table(lake: Lake, table: str, protocol: str | None = None) -> FileNotFoundError:
    cmd = WRITERS.get(table)
    how = (f"run `{cmd.format(protocol=protocol or '<protocol>')}` first" if cmd
           else "run the stage that writes it first (see `reclake --help`)")
    return FileNotFoundError(f"lake table '{table}' does not exist at {lake.path(table)}; {how}")


def _is_delta(path: str, storage_options: Mapping[str, str] | None) -> bool:
    if "://" not in path:
        return os.path.isdir(os.path.join(path, "_delta_log"))
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(path, storage_options=dict(storage_options or {}) or None)


def pin_versions(lake: Lake, tables: Sequence[str], *, protocol: str | None = None,
                 storage_options: Mapping[str, str] | None = None) -> dict[str, int]:
    """The current Delta version of each of ``tables`` (table name -> version), read with
    delta-rs (local paths and object-store URIs; ``storage_options`` as ``deltalake`` takes them).

    A missing table raises ``FileNotFoundError`` naming the command that writes it (``protocol``
    fills in ``reclake split --protocol P``)."""
    from deltalake import DeltaTable

    out: dict[str, int] = {}
    for table in tables:
        path = lake.path(table)
        if not _is_delta(path, storage_options):
            raise _missing_table(lake, table, protocol)
        dt = DeltaTable(path, storage_options=dict(storage_options or {}) or None)
        try:
            out[table] = int(dt.version())
        finally:
            del dt  # release the delta-rs reader (its thread pool can abort the process at exit)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_table(lake: Lake, table: str, version: int, *, columns: Sequence[str] | None = None,
               filter_protocol: str | None = None, predicate: pc.Expression | None = None,
               storage_options: Mapping[str, str] | None = None) -> ray.data.Dataset:
    """``table`` as of Delta ``version``, as a lazy Ray Data Dataset (``ray.data.read_delta``).

    ``columns``: the columns to read (default all). ``filter_protocol``: only that protocol's rows
    (``protocol`` is gold/splits' partition column: its files are pruned by partition value, the
    filter runs in the Parquet scan). ``predicate``: a further pyarrow filter expression applied
    in the scan. A version that cannot be read (never written, its log expired, or VACUUM
    removed its files) raises :class:`common.lake.VersionNotReadable` before any row is read."""
    import pyarrow.fs as pafs
    import ray.data
    from deltalake import DeltaTable

    path = lake.path(table)
    opts = dict(storage_options or {}) or None
    if not _is_delta(path, storage_options):
        raise _missing_table(lake, table, filter_protocol)
    where = f"{table} version {version}"
    try:
        dt = DeltaTable(path, version=int(version), storage_options=opts)
    except Exception as e:  # delta-rs: a version beyond the log, or whose log entries expired
        raise VersionNotReadable(
            f"{where} is not readable at {path}: {_first_line(e)}; re-run the stage that pinned "
            f"it (a new run pins the current version)") from e
    try:
        names = dt.schema().to_arrow().names
        want = list(columns) if columns is not None else names
        missing_cols = [c for c in want if c not in names]
        if missing_cols:
            raise ValueError(f"missing column(s) {missing_cols} in {where}; have {names}")
        pruning = None
        if filter_protocol is not None:
            if S.PROTOCOL not in names:
                raise ValueError(f"{where} has no '{S.PROTOCOL}' column to filter on")
            if S.PROTOCOL in dt.metadata().partition_columns:
                pruning = [(S.PROTOCOL, "=", filter_protocol)]
        ds = dt.to_pyarrow_dataset(file_pruning_predicate=pruning)
        paths = [f.path for f in ds.get_fragments()]
        gone = [p for p, info in zip(paths, ds.filesystem.get_file_info(paths), strict=True)
                if info.type == pafs.FileType.NotFound]
        del ds
    finally:
        del dt
    if gone:
        raise VersionNotReadable(
            f"{where} is no longer readable: {len(gone)} of its data files are gone (VACUUM "
            f"removed them), e.g. {gone[0]}; re-run the stage that pinned it (a new run pins the "
            f"current version)")
    expr = None
    if filter_protocol is not None:
        expr = pc.field(S.PROTOCOL) == filter_protocol
    if predicate is not None:
        expr = predicate if expr is None else expr & predicate
    kwargs: dict[str, Any] = {"filter": expr} if expr is not None else {}
    return ray.data.read_delta(path, version=int(version), storage_options=opts,
                               columns=list(columns) if columns is not None else None, **kwargs)


def load_item_text(lake: Lake, cfg: Config, versions: Mapping[str, int], n_items: int
                   ) -> np.ndarray:
    """(n_items, text_dim) float32: row j the text vector of item_idx j (``models/text_embeddings``
    joined with ``silver/item_index`` on item_id, both at their pinned versions), zero where an
    item has none. The model: :func:`raytrain.embed.pick_text_model`."""
    from deltalake import DeltaTable

    def arrow(table: str, columns: list[str]) -> pa.Table:
        dt = DeltaTable(lake.path(table), version=int(versions[table]))
        try:
            return dt.to_pyarrow_table(columns=columns)
        finally:
            del dt

    emb = arrow(L.MODELS_TEXT_EMBEDDINGS, [S.ITEM_ID, S.MODEL, S.VECTOR])
    from raytrain.embed import pick_text_model

    name = pick_text_model(cfg, emb.column(S.MODEL).to_pylist())
    emb = emb.filter(pc.equal(emb.column(S.MODEL), name))
    index = arrow(L.SILVER_ITEM_INDEX, [S.ITEM_ID, S.ITEM_IDX])
    # Arrow joins refuse list columns: look the ids up instead
    pos = pc.index_in(emb.column(S.ITEM_ID), value_set=index.column(S.ITEM_ID))
    found = pc.is_valid(pos).to_numpy(zero_copy_only=False)
    idx = index.column(S.ITEM_IDX).to_numpy()[pos.to_numpy(zero_copy_only=False)[found]
                                              .astype(np.int64)]
    emb = emb.filter(pa.array(found))
    vec = np.stack(emb.column(S.VECTOR).to_numpy(zero_copy_only=False)).astype(np.float32) \
        if emb.num_rows else np.zeros((0, 1), np.float32)
    keep = idx < n_items
    out = np.zeros((n_items, vec.shape[1]), np.float32)
    out[idx[keep]] = vec[keep]
    log.info("text-initialised item embeddings: %s of %s items have a %s vector",
             f"{int(keep.sum()):,}", f"{n_items:,}", name)
    return out


def item_texts(lake: Lake, versions: Mapping[str, int], n_items: int
               ) -> tuple[list[str | None], list[str]]:
    """Per item_idx 0..n_items-1: its item_id (None: not in ``silver/item_index``) and its text
    from ``silver/items`` ("" where the item has no metadata row), both at their pinned
    versions."""
    from deltalake import DeltaTable

    def arrow(table: str, columns: list[str]) -> pa.Table:
        if table not in versions:
            raise ConfigError(f"no pinned version of {table} (pin_versions first)")
        dt = DeltaTable(lake.path(table), version=int(versions[table]))
        try:
            return dt.to_pyarrow_table(columns=columns)
        finally:
            del dt

    index = arrow(L.SILVER_ITEM_INDEX, [S.ITEM_ID, S.ITEM_IDX])
    items = arrow(L.SILVER_ITEMS, [S.ITEM_ID, S.TEXT])
    idx = index.column(S.ITEM_IDX).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = idx < n_items
    ids: list[str | None] = [None] * n_items
    for j, item_id in zip(idx[keep].tolist(), pc.filter(index.column(S.ITEM_ID), pa.array(keep))
                          .to_pylist(), strict=True):
        ids[j] = item_id
    text_of = dict(zip(items.column(S.ITEM_ID).to_pylist(), items.column(S.TEXT).to_pylist(),
                       strict=True))
    texts = [text_of.get(i) or "" if i is not None else "" for i in ids]
    missing = sum(1 for t in texts if not t)
    if missing:
        log.info("%s of %s items have no text in %s (their tower sees an empty text)",
                 f"{missing:,}", f"{n_items:,}", L.SILVER_ITEMS)
    return ids, texts


def load_item_tokens(lake: Lake, cfg: Config, versions: Mapping[str, int], n_items: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int32, attention_mask int8), each (n_items, twotower.max_tokens): row j item_idx
    j's text (:func:`item_texts`) tokenised by the tokenizer of ``embed.*``'s model (offline,
    the model's weights checked against their pin first), padded and cut to max_tokens."""
    from raytrain.embed import _offline, model_spec, verify_weights

    _, texts = item_texts(lake, versions, n_items)
    spec = model_spec(cfg)
    verify_weights(spec.model_dir, spec.expected_sha256)
    _offline()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model_dir, local_files_only=True)
    out = tok(texts, padding="max_length", truncation=True, max_length=cfg.twotower.max_tokens,
              return_tensors="np")
    cut = int(np.sum(out["attention_mask"][:, -1] > 0))
    log.info("item texts tokenised by %s: %s items, %d tokens each (%s cut at the limit)",
             spec.name, f"{n_items:,}", cfg.twotower.max_tokens, f"{cut:,}")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int8)


def window_len(cfg: Config) -> int:
    """Events per sequence window of the run's sequence model (``<model>.max_len``)."""
    return cfg.twotower.max_len if cfg.run.model == "twotower" else cfg.sasrec.max_len


# --- the user -> items index ----------------------------------------------------------------------


def _rows_of(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    users = np.asarray(users, dtype=np.int64)
    if users.size and (users.min() < 0 or users.max() >= len(indptr) - 1):
        raise IndexError(f"user index out of range [0, {len(indptr) - 1})")
    return [indices[indptr[u]:indptr[u + 1]] for u in users.tolist()]


@dataclass(frozen=True, eq=False)
class TrainData:
    """What every worker needs besides its shard: sizes, the pinned inputs, and three CSR indexes
    of the protocol's rows in ``gold/splits`` (row = user_idx, sorted item_idx per row):

    - ``seen_*``: the train items (confidence > 0; what the models learn from, what negatives and
      recommendations exclude); ``valid_*`` / ``test_*``: the truth of those parts (empty CSR,
      ``indptr`` all zero, when the protocol has no such part).

    ``n_users`` / ``n_items`` are the largest index + 1 over every row of the protocol, so
    valid / test indices fit the embedding tables. Small and picklable (NumPy arrays only)."""

    n_users: int
    n_items: int
    protocol: str
    inputs: dict[str, int]
    seen_indptr: np.ndarray  # int64 (n_users + 1,)
    seen_indices: np.ndarray  # int32, sorted within each user
    valid_indptr: np.ndarray
    valid_indices: np.ndarray
    test_indptr: np.ndarray
    test_indices: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    # (n_items, text_dim) float32 text vectors (zero rows: no vector), for <model>.item_init: text
    item_text: np.ndarray | None = None
    # (input_ids, attention_mask) of every item's text, (n_items, max_tokens) each: the two-tower
    # model's encoder input (load_item_tokens)
    item_tokens: tuple[np.ndarray, np.ndarray] | None = None

    def seen_of(self, users: np.ndarray) -> list[np.ndarray]:
        """Per user of ``users``, its sorted train items (int32 views into the index)."""
        return _rows_of(self.seen_indptr, self.seen_indices, users)

    def valid_of(self, users: np.ndarray) -> list[np.ndarray]:
        return _rows_of(self.valid_indptr, self.valid_indices, users)

    def test_of(self, users: np.ndarray) -> list[np.ndarray]:
        return _rows_of(self.test_indptr, self.test_indices, users)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user_idx, item_idx) int64 arrays of every train pair, grouped by user (the graph)."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.seen_indptr))
        return users, self.seen_indices.astype(np.int64)


def build_csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (``indptr`` int64 (n_users + 1,), ``indices`` int32 sorted within each row) of the
    pairs; pairs must be distinct."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((items, users))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order].astype(np.int32)


def _index_column(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """``values`` as int64, or a ConfigError when they are not non-negative integers."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.floor(values))
        if bad.any():
            raise ConfigError(f"{where}: {name} has non-integer values (e.g. "
                              f"{values[bad][0].item()!r}); indices must be integers (re-run "
                              f"`reclake transform`)")
    elif values.dtype.kind not in "iu":
        raise ConfigError(f"{where}: {name} is not an integer column (dtype {values.dtype})")
    out = values.astype(np.int64)
    if out.size and out.min() < 0:
        raise ConfigError(f"{where}: {name} has negative values (e.g. {out[out < 0][0]}); "
                          f"indices start at 0 (re-run `reclake transform`)")
    return out


def _encode_parts(batch: pa.Table) -> pa.Table:
    """Map task: gold/splits rows -> ``user_idx, item_idx, _part`` (int8 code), ``_pos``
    (confidence > 0), so the driver receives ints only."""
    split = batch.column(S.SPLIT)
    part = pa.array(np.full(batch.num_rows, -1, dtype=np.int8))
    for name, code in _PART_CODES.items():
        part = pc.if_else(pc.fill_null(pc.equal(split, name), False), pa.scalar(code, pa.int8()),
                          part)
    pos = pc.fill_null(pc.greater(batch.column(S.CONFIDENCE), 0), False)
    return pa.table({S.USER_IDX: batch.column(S.USER_IDX), S.ITEM_IDX: batch.column(S.ITEM_IDX),
                     "_part": part, "_pos": pos})


def _collect(ds: ray.data.Dataset, cols: Sequence[str]) -> dict[str, np.ndarray]:
    """The columns of ``ds`` as NumPy arrays on the driver (one concatenation per column)."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cols}
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):
        for c in cols:
            parts[c].append(np.asarray(b[c]))
    return {c: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for c, v in parts.items()}


def _check_distinct(users: np.ndarray, items: np.ndarray, n_items: int, what: str,
                    where: str) -> np.ndarray:
    keys = np.sort(users * n_items + items)
    dup = keys[1:][keys[1:] == keys[:-1]]
    if dup.size:
        u, i = divmod(int(dup[0]), n_items)
        raise ConfigError(f"{where}: {dup.size} duplicate (user_idx, item_idx) rows in the {what} "
                          f"part, e.g. ({u}, {i}); re-run the split stage")
    return keys


def load_train_data(lake: Lake, cfg: Config, versions: Mapping[str, int], *,
                    storage_options: Mapping[str, str] | None = None
                    ) -> tuple[TrainData, ray.data.Dataset]:
    """Read ``cfg.split.protocol``'s rows of ``gold/splits`` at ``versions[gold/splits]``.

    Returns the :class:`TrainData` (built on the driver from ``user_idx, item_idx`` and the part of
    every row) and the lazy train pairs Dataset ``user_idx, item_idx, confidence`` (train rows with
    confidence > 0), to be sharded across workers.

    ConfigError: the protocol has no rows (run ``reclake split --protocol P``), no train row with
    confidence > 0, indices that are not non-negative integers, duplicate pairs within a part, a
    pair in train and in valid / test, a user whose train items are the whole catalogue."""
    protocol = cfg.split.protocol
    if L.GOLD_SPLITS not in versions:
        raise ConfigError(f"no pinned version of {L.GOLD_SPLITS} (pin_versions first)")
    version = int(versions[L.GOLD_SPLITS])
    where = f"{L.GOLD_SPLITS} version {version}, protocol '{protocol}'"
    rows = read_table(lake, L.GOLD_SPLITS, version,
                      columns=[S.USER_IDX, S.ITEM_IDX, S.SPLIT, S.CONFIDENCE],
                      filter_protocol=protocol, storage_options=storage_options)
    got = _collect(rows.map_batches(_encode_parts, batch_format="pyarrow"),
                   [S.USER_IDX, S.ITEM_IDX, "_part", "_pos"])
    if got["_part"].size == 0:
        raise ConfigError(f"{where}: no rows; run `reclake split --protocol {protocol}` first")
    users = _index_column(got[S.USER_IDX], S.USER_IDX, where)
    items = _index_column(got[S.ITEM_IDX], S.ITEM_IDX, where)
    part, pos = got["_part"], got["_pos"].astype(bool)
    del got
    if cfg.split.fold_valid:  # the refit after a sweep: valid rows train too, nothing validates
        part[part == _PART_CODES[S.VALID]] = _PART_CODES[S.TRAIN]
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    train = part == _PART_CODES[S.TRAIN]
    seen = train & pos
    if not seen.any():
        raise ConfigError(f"{where}: the train part is empty (no train row with confidence > 0, "
                          f"of {int(train.sum())} train rows); re-run `reclake split --protocol "
                          f"{protocol}`")
    train_keys = _check_distinct(users[train], items[train], n_items, S.TRAIN, where)
    csr: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "seen": build_csr(users[seen], items[seen], n_users)}
    for name in (S.VALID, S.TEST):
        m = part == _PART_CODES[name]
        keys = _check_distinct(users[m], items[m], n_items, name, where)
        both = np.intersect1d(train_keys, keys, assume_unique=True)
        if both.size:
            u, i = divmod(int(both[0]), n_items)
            raise ConfigError(f"{where}: {both.size} pair(s) are in train and in {name}, e.g. "
                              f"({u}, {i}); re-run `reclake split --protocol {protocol}`")
        csr[name] = build_csr(users[m], items[m], n_users)
    full = np.flatnonzero(np.diff(csr["seen"][0]) >= n_items)
    if full.size:
        raise ConfigError(
            f"{where}: {full.size} user(s) (e.g. user_idx {int(full[0])}) have a train row for "
            f"every one of the {n_items} items: no negative to sample and nothing to recommend; "
            f"drop them upstream or add items")
    counts = {"rows_train": int(train.sum()), "rows_valid": int((part == 1).sum()),
              "rows_test": int((part == 2).sum()), "rows_other": int((part < 0).sum()),
              "train_pairs": int(seen.sum()),
              "train_users": int((np.diff(csr["seen"][0]) > 0).sum())}
    log.info("%s: %d users x %d items, %s", where, n_users, n_items,
             " ".join(f"{k}={v:,}" for k, v in counts.items()))
    data = TrainData(
        n_users=n_users, n_items=n_items, protocol=protocol, inputs=dict(versions),
        seen_indptr=csr["seen"][0], seen_indices=csr["seen"][1],
        valid_indptr=csr[S.VALID][0], valid_indices=csr[S.VALID][1],
        test_indptr=csr[S.TEST][0], test_indices=csr[S.TEST][1], counts=counts)
    pairs = read_table(lake, L.GOLD_SPLITS, version,
                       columns=[S.USER_IDX, S.ITEM_IDX, S.CONFIDENCE, *task_columns(cfg)],
                       filter_protocol=protocol,
                       predicate=(pc.field(S.SPLIT).isin(list(train_parts(cfg.split.fold_valid)))
                                  & (pc.field(S.CONFIDENCE) > 0)),
                       storage_options=storage_options)
    return data, pairs


# --- the multi-task label ----------------------------------------------------------------------


def task_name(cfg: Config) -> str | None:
    """The multi-task label's name (``purchase``, ``rating>=4``); None when off."""
    c = cfg.ncf
    if c.task_target is None:
        return None
    return c.task_target if c.task_min_value is None else f"{c.task_target}>={c.task_min_value:g}"


def task_columns(cfg: Config) -> list[str]:
    """The gold/splits column the label is read from: ``amt_<b>`` with a threshold, else
    ``cnt_<b>``; none when the task is off."""
    c = cfg.ncf
    if c.task_target is None:
        return []
    return [S.amount_col(c.task_target) if c.task_min_value is not None
            else S.count_col(c.task_target)]


def task_labels(columns: Mapping[str, np.ndarray], cfg: Config) -> np.ndarray:
    """float32 0/1 labels of rows (``columns`` holding :func:`task_columns`): amt >= threshold,
    or count > 0; nulls are 0."""
    (col,) = task_columns(cfg)
    x = np.asarray(columns[col], dtype=np.float64)
    x = np.nan_to_num(x, nan=0.0)
    m = cfg.ncf.task_min_value
    return ((x >= m) if m is not None else (x > 0)).astype(np.float32)


# --- negatives ----------------------------------------------------------------------------------


def epoch_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The generator of one (seed, epoch, rank): the same examples on a re-run or a resume."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(rank)]))


def in_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray,
            values: np.ndarray) -> np.ndarray:
    """Whether ``values[j]`` is in CSR row ``rows[j]`` (rows sorted): a vectorised binary search
    within each row's segment (``np.searchsorted`` per row, without a per-pair key array)."""
    rows = np.asarray(rows, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    lo, end = indptr[rows].copy(), indptr[rows + 1]
    hi = end.copy()
    if indices.size == 0:
        return np.zeros(values.shape, dtype=bool)
    last = indices.size - 1
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        right = active & (indices[np.minimum(mid, last)] < values)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return (lo < end) & (indices[np.minimum(lo, last)] == values)


def sample_negatives(users: np.ndarray, n_neg: int, data: TrainData,
                     rng: np.random.Generator) -> np.ndarray:
    """(len(users), n_neg) int64 items, each uniform over [0, n_items) minus the user's train
    items (independent draws, so a user's row may repeat an item). Rejection sampling, vectorised;
    the few draws still rejected after a few rounds (users who have seen most of the catalogue)
    come from the user's unseen items directly, which is the same distribution."""
    users = np.asarray(users, dtype=np.int64)
    out = rng.integers(0, data.n_items, size=(users.size, n_neg), dtype=np.int64)
    if users.size == 0 or n_neg == 0:
        return out
    rows = np.broadcast_to(users[:, None], out.shape)
    bad = np.flatnonzero(in_rows(data.seen_indptr, data.seen_indices, rows.ravel(), out.ravel()))
    flat = out.reshape(-1)
    for _ in range(_REJECTION_ROUNDS):
        if bad.size == 0:
            return out
        flat[bad] = rng.integers(0, data.n_items, size=bad.size, dtype=np.int64)
        hit = in_rows(data.seen_indptr, data.seen_indices, rows.ravel()[bad], flat[bad])
        bad = bad[hit]
    for u in np.unique(rows.ravel()[bad]):
        at = bad[rows.ravel()[bad] == u]
        unseen = np.setdiff1d(np.arange(data.n_items), data.seen_of(np.array([u]))[0])
        if unseen.size == 0:
            raise ValueError(f"user {u} has seen all {data.n_items} items: no negative to draw")
        flat[at] = unseen[rng.integers(0, unseen.size, size=at.size)]
    return out


# --- sequences ----------------------------------------------------------------------------------


def _micros(arr: pa.Array) -> np.ndarray:
    """Timestamps (any unit, with or without a zone) as int64 microseconds since the epoch."""
    t = arr.type
    return arr.cast(pa.timestamp("us", t.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _column(batch: pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def restrict_to_train(batch: pa.Table, *, keys: np.ndarray, train_ts: np.ndarray, n_users: int,
                      n_items: int, vocabulary: Sequence[str], keep_last: int) -> pa.Table:
    """Map task over ``gold/sequences`` rows (``user_idx, item_seq, behavior_seq, ts_seq``, oldest
    first) -> ``user_idx, seq, beh`` of the train part only.

    Event (u, i, t) is kept iff (u, i) is a train pair (``keys`` = sorted u * n_items + i) and
    t <= that pair's train ``ts`` (``train_ts``, aligned with ``keys``). The last ``keep_last`` kept
    events of each user remain; ``seq`` = item_idx + 1 (0 is padding), ``beh`` = 1 + position of
    the behaviour in ``vocabulary``. Users with fewer than 2 kept events are dropped."""
    n_rows = batch.num_rows
    items_l, beh_l, ts_l = (_column(batch, c) for c in ("item_seq", "behavior_seq", "ts_seq"))
    row_users = np.asarray(_column(batch, S.USER_IDX).to_numpy(zero_copy_only=False),
                           dtype=np.int64)
    parent = np.asarray(pc.list_parent_indices(items_l).to_numpy(zero_copy_only=False),
                        dtype=np.int64)
    items = np.asarray(pc.list_flatten(items_l).to_numpy(zero_copy_only=False), dtype=np.int64)
    ts = _micros(pc.list_flatten(ts_l))
    beh_names = pc.list_flatten(beh_l)
    beh = pc.index_in(beh_names, value_set=pa.array(list(vocabulary), pa.string()))
    if beh.null_count:
        unknown = pc.unique(pc.filter(beh_names, pc.is_null(beh))).to_pylist()
        raise ValueError(f"gold/sequences has behaviours outside the vocabulary: {unknown[:5]} "
                         f"(add them to behaviors.extras)")
    beh_ids = beh.to_numpy(zero_copy_only=False).astype(np.int16) + 1
    if not (items.size == ts.size == beh_ids.size == parent.size):
        raise ValueError("gold/sequences: item_seq, behavior_seq and ts_seq differ in length")

    if keys.size == 0:
        raise ValueError("restrict_to_train needs at least one train pair")
    ev_users = row_users[parent]
    ok = (items >= 0) & (items < n_items) & (ev_users >= 0) & (ev_users < n_users)
    key = np.where(ok, ev_users * n_items + items, -1)
    pos = np.minimum(np.searchsorted(keys, key), keys.size - 1)
    keep = ok & (keys[pos] == key) & (ts <= train_ts[pos])

    p = parent[keep]
    counts = np.bincount(p, minlength=n_rows)
    start = np.cumsum(counts) - counts
    rank = np.arange(p.size) - start[p]
    tail = rank >= counts[p] - keep_last
    p = p[tail]
    lens = np.minimum(counts, keep_last)
    kept_rows = lens >= 2
    sel = kept_rows[p]
    offsets = np.concatenate([[0], np.cumsum(lens[kept_rows])]).astype(np.int32)
    tokens = (items[keep][tail][sel] + 1).astype(np.int32)
    behs = beh_ids[keep][tail][sel]
    return pa.table({
        S.USER_IDX: pa.array(row_users[kept_rows].astype(np.int32)),
        SEQ: pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens)),
        BEH: pa.ListArray.from_arrays(pa.array(offsets), pa.array(behs)),
    })


def train_ts_lookup(lake: Lake, version: int, protocol: str, n_items: int, *,
                    storage_options: Mapping[str, str] | None = None, fold_valid: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys u * n_items + i, train ts in int64 microseconds) of every train pair of the
    protocol in ``gold/splits`` at ``version`` (16 bytes per train pair; valid pairs count as
    train with ``fold_valid``)."""
    ds = read_table(lake, L.GOLD_SPLITS, version, columns=[S.USER_IDX, S.ITEM_IDX, S.TS],
                    filter_protocol=protocol,
                    predicate=pc.field(S.SPLIT).isin(list(train_parts(fold_valid))),
                    storage_options=storage_options)

    def encode(batch: pa.Table) -> pa.Table:
        u = pc.cast(batch.column(S.USER_IDX), pa.int64())
        i = pc.cast(batch.column(S.ITEM_IDX), pa.int64())
        ts = _column(batch, S.TS)
        return pa.table({"key": pc.add(pc.multiply(u, n_items), i),
                         "ts": pa.array(_micros(ts))})

    got = _collect(ds.map_batches(encode, batch_format="pyarrow"), ["key", "ts"])
    order = np.argsort(got["key"], kind="stable")
    return got["key"][order].astype(np.int64), got["ts"][order].astype(np.int64)


def load_sequences(lake: Lake, cfg: Config, versions: Mapping[str, int], data: TrainData, *,
                   materialize: bool = True,
                   storage_options: Mapping[str, str] | None = None) -> ray.data.Dataset:
    """``gold/sequences`` at ``versions[gold/sequences]`` restricted to the train part of
    ``data.protocol`` (see :func:`restrict_to_train`): rows ``user_idx`` (int32), ``seq``
    (item_idx + 1, oldest first, the last :func:`window_len` + 1), ``beh`` (1 + vocabulary
    position). Users with fewer than 2 train events are dropped (counted in the log).

    For temporal this drops the events of train pairs after the cutoff; for stratified and
    leave_last_out every event of a held-out pair. ``materialize`` (default) executes the read so
    the kept / dropped users are counted and the trainer's two passes read the lake once."""
    for t in (L.GOLD_SPLITS, L.GOLD_SEQUENCES):
        if t not in versions:
            raise ConfigError(f"no pinned version of {t} (pin_versions first)")
    max_len = window_len(cfg)
    if cfg.sequences.max_len < max_len + 1:
        log.info("sequences.max_len=%d keeps fewer events than %s.max_len + 1 = %d: windows "
                 "are at most %d events long", cfg.sequences.max_len,
                 "twotower" if cfg.run.model == "twotower" else "sasrec", max_len + 1,
                 cfg.sequences.max_len)
    keys, train_ts = train_ts_lookup(lake, int(versions[L.GOLD_SPLITS]), data.protocol,
                                     data.n_items, storage_options=storage_options,
                                     fold_valid=cfg.split.fold_valid)
    ds = read_table(lake, L.GOLD_SEQUENCES, int(versions[L.GOLD_SEQUENCES]),
                    columns=[S.USER_IDX, "item_seq", "behavior_seq", "ts_seq"],
                    storage_options=storage_options)
    out = ds.map_batches(restrict_to_train, batch_format="pyarrow", fn_kwargs={
        "keys": keys, "train_ts": train_ts, "n_users": data.n_users, "n_items": data.n_items,
        "vocabulary": tuple(cfg.vocabulary), "keep_last": max_len + 1})
    if not materialize:
        return out
    out = out.materialize()
    kept = out.count()
    train_users = np.unique(keys // data.n_items).size
    log.info("%s version %d, protocol '%s': %d users with a train sequence, %d train users "
             "dropped (fewer than 2 train events)", L.GOLD_SEQUENCES,
             versions[L.GOLD_SEQUENCES], data.protocol, kept, max(train_users - kept, 0))
    return out


def _ragged(rows: Mapping[str, Any], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A column of variable-length rows -> (flat int64 values, row starts, row lengths)."""
    vals = [np.asarray(r, dtype=np.int64).ravel() for r in rows[key]]
    lens = np.fromiter((v.size for v in vals), dtype=np.int64, count=len(vals))
    flat = np.concatenate(vals) if vals else np.zeros(0, dtype=np.int64)
    return flat, np.cumsum(lens) - lens, lens


def _seq_beh(rows: Mapping[str, Any]):
    seq, starts, lens = _ragged(rows, SEQ)
    beh, _, blens = _ragged(rows, BEH)
    if not np.array_equal(lens, blens):
        raise ValueError("every row's seq and beh must have the same length")
    return seq, beh, starts, lens


def _place(n: np.ndarray, width: int):
    """Rows, columns and in-row offsets that right-align n[r] values in a (b, width) matrix."""
    row = np.repeat(np.arange(n.size), n)
    k = np.arange(row.size) - np.repeat(np.cumsum(n) - n, n)
    return row, width - n[row] + k, k


def sequence_windows(rows: Mapping[str, Any], max_len: int,
                     target_behavior_id: int | None = None) -> dict[str, np.ndarray]:
    """Training windows of a batch of sequences (``rows["seq"]``, ``rows["beh"]``: per row the
    tokens and behaviour ids, oldest first). Out, each (b, max_len), left-padded with 0:
    ``seq`` = tokens[:-1] and ``beh`` its behaviours (the last max_len of them), ``target`` =
    tokens[1:] (the next token at every position), ``target_mask`` = target > 0 and, with
    ``target_behavior_id``, the target event's behaviour is that one. int64, mask bool."""
    flat, beh, starts, lens = _seq_beh(rows)
    b = lens.size
    n = np.minimum(np.maximum(lens - 1, 0), max_len)
    row, col, k = _place(n, max_len)
    src = starts[row] + lens[row] - 1 - n[row] + k  # input positions; targets are src + 1
    out = {name: np.zeros((b, max_len), dtype=np.int64) for name in (SEQ, BEH, TARGET)}
    out[SEQ][row, col] = flat[src]
    out[BEH][row, col] = beh[src]
    out[TARGET][row, col] = flat[src + 1]
    mask = np.zeros((b, max_len), dtype=bool)
    mask[row, col] = flat[src + 1] > 0
    if target_behavior_id is not None:
        mask[row, col] &= beh[src + 1] == target_behavior_id
    out[TARGET_MASK] = mask
    return out


def history_windows(rows: Mapping[str, Any], max_len: int) -> dict[str, np.ndarray]:
    """Scoring windows: each row's last ``max_len`` tokens (its whole train history, nothing held
    back as a target), left-padded with 0: ``seq``, ``beh`` (b, max_len) int64."""
    flat, beh, starts, lens = _seq_beh(rows)
    n = np.minimum(lens, max_len)
    row, col, k = _place(n, max_len)
    src = starts[row] + lens[row] - n[row] + k
    out = {name: np.zeros((lens.size, max_len), dtype=np.int64) for name in (SEQ, BEH)}
    out[SEQ][row, col] = flat[src]
    out[BEH][row, col] = beh[src]
    return out


# --- worker-side batches --------------------------------------------------------------------------


def _iter_numpy(shard, *, batch_size: int, prefetch_batches: int,
                local_shuffle_seed: int | None, local_shuffle_buffer_size: int | None,
                columns: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """``shard`` (a DataIterator from ``get_dataset_shard`` or a Dataset) in NumPy batches,
    shuffled within a local buffer (default 4 batches; 0 turns shuffling off)."""
    buf = 4 * batch_size if local_shuffle_buffer_size is None else local_shuffle_buffer_size
    kwargs: dict[str, Any] = {}
    if buf > 0:
        kwargs = {"local_shuffle_buffer_size": buf, "local_shuffle_seed": local_shuffle_seed}
    for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy",
                                prefetch_batches=prefetch_batches, **kwargs):
        missing = [c for c in columns if c not in b]
        if missing:
            raise ValueError(f"missing column(s) {missing} in the train dataset; have {list(b)}")
        yield b


def pairs_batches(shard, *, batch_size: int, data: TrainData, n_neg: int,
                  rng: np.random.Generator, prefetch_batches: int = 1,
                  local_shuffle_seed: int | None = None,
                  local_shuffle_buffer_size: int | None = None,
                  task_cfg: Config | None = None) -> Iterator[dict]:
    """Batches of train pairs with sampled negatives: dicts of torch LongTensors ``user_idx`` (b,),
    ``item_idx`` (b,), ``neg_items`` (b, n_neg) (from ``rng``, batch after batch); with
    ``task_cfg`` (a config whose ``ncf.task_target`` is set) also ``task_label`` (b,) float32
    (:func:`task_labels`)."""
    import torch

    for b in _iter_numpy(shard, batch_size=batch_size, prefetch_batches=prefetch_batches,
                         local_shuffle_seed=local_shuffle_seed,
                         local_shuffle_buffer_size=local_shuffle_buffer_size,
                         columns=(S.USER_IDX, S.ITEM_IDX)):
        users = np.asarray(b[S.USER_IDX], dtype=np.int64)
        items = np.asarray(b[S.ITEM_IDX], dtype=np.int64)
        negs = sample_negatives(users, n_neg, data, rng)
        out = {S.USER_IDX: torch.from_numpy(users), S.ITEM_IDX: torch.from_numpy(items),
               NEG_ITEMS: torch.from_numpy(negs)}
        if task_cfg is not None:
            out["task_label"] = torch.from_numpy(task_labels(b, task_cfg))
        yield out


def sequence_batches(shard, *, batch_size: int, max_len: int, target_behavior_id: int | None,
                     prefetch_batches: int = 1, local_shuffle_seed: int | None = None,
                     local_shuffle_buffer_size: int | None = None) -> Iterator[dict]:
    """Batches of training windows (:func:`sequence_windows`) as torch tensors: ``seq``, ``beh``,
    ``target`` (LongTensor (b, max_len)) and ``target_mask`` (BoolTensor (b, max_len))."""
    import torch

    for b in _iter_numpy(shard, batch_size=batch_size, prefetch_batches=prefetch_batches,
                         local_shuffle_seed=local_shuffle_seed,
                         local_shuffle_buffer_size=local_shuffle_buffer_size,
                         columns=(SEQ, BEH)):
        w = sequence_windows(b, max_len, target_behavior_id)
        yield {k: torch.from_numpy(v) for k, v in w.items()}
