"""raytrain/data: pinned Delta reads with Ray Data (time travel, unreadable versions, clear errors),
the CSR indexes of TrainData against a dict reference, negatives (never a train item, reproducible
per (seed, epoch, rank)), the train-only sequences (no held-out item leaks into an input sequence;
temporal drops post-cutoff events) against a Python reference, windows and worker batches.

Tiny Delta tables are written with delta-rs in the layout the Spark stages write (gold/splits
partitioned by protocol; gold/sequences oldest first); no Spark is involved."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from common import lake as L
from common import schema as S
from common.config import ConfigError
from common.lake import Lake, VersionNotReadable
from raytrain import data as D

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
SPLITS_SCHEMA = pa.schema([
    (S.PROTOCOL, pa.string()), (S.SPLIT, pa.string()), (S.USER_IDX, pa.int32()),
    (S.ITEM_IDX, pa.int32()), (S.CONFIDENCE, pa.float64()), (S.TS, pa.timestamp("us", tz="UTC")),
    (S.count_col(S.VIEW), pa.int64()), (S.conf_col(S.VIEW), pa.float64())])
SEQ_SCHEMA = pa.schema([
    (S.USER_IDX, pa.int32()), ("item_seq", pa.list_(pa.int32())),
    ("behavior_seq", pa.list_(pa.string())), ("ts_seq", pa.list_(pa.timestamp("us", tz="UTC"))),
    ("length", pa.int32()), ("n_events", pa.int64())])


def _hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def _row(protocol, split, u, i, conf=1.0, ts=0.0):
    return {S.PROTOCOL: protocol, S.SPLIT: split, S.USER_IDX: u, S.ITEM_IDX: i,
            S.CONFIDENCE: conf, S.TS: _hours(ts), S.count_col(S.VIEW): 1,
            S.conf_col(S.VIEW): conf}


def write_splits(root: str, rows: list[dict], *, mode: str = "append", schema=SPLITS_SCHEMA):
    from deltalake import write_deltalake

    write_deltalake(f"{root}/{L.GOLD_SPLITS}", pa.Table.from_pylist(rows, schema), mode=mode,
                    partition_by=[S.PROTOCOL])


def write_sequences(root: str, events: dict[int, list[tuple[int, str, float]]], max_len=50):
    """``events``: user -> [(item, behaviour, hour)], any order; written oldest first, the last
    ``max_len`` kept (as ``build_sequences`` does)."""
    from deltalake import write_deltalake

    rows = []
    for u, evs in sorted(events.items()):
        evs = sorted(evs, key=lambda e: e[2])
        last = evs[-max_len:]
        rows.append({S.USER_IDX: u, "item_seq": [e[0] for e in last],
                     "behavior_seq": [e[1] for e in last], "ts_seq": [_hours(e[2]) for e in last],
                     "length": len(last), "n_events": len(evs)})
    write_deltalake(f"{root}/{L.GOLD_SEQUENCES}", pa.Table.from_pylist(rows, SEQ_SCHEMA))


def _cfg(make_cfg, protocol="stratified", **kw):
    return make_cfg(split__protocol=protocol, **kw)


def _rows_of(ds) -> list[dict]:
    return sorted(ds.take_all(), key=lambda r: tuple(str(v) for v in r.values()))


# --- pinned reads -------------------------------------------------------------------------------


def test_pinned_version_reads_old_rows_after_a_second_write(ray_local, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_splits(lake.root, [_row("stratified", S.TRAIN, 0, 1), _row("temporal", S.TRAIN, 5, 6)])
    write_splits(lake.root, [_row("stratified", S.TRAIN, 2, 3)], mode="overwrite")
    assert D.pin_versions(lake, [L.GOLD_SPLITS]) == {L.GOLD_SPLITS: 1}

    cols = [S.USER_IDX, S.ITEM_IDX]
    old = D.read_table(lake, L.GOLD_SPLITS, 0, columns=cols, filter_protocol="stratified")
    assert old.take_all() == [{S.USER_IDX: 0, S.ITEM_IDX: 1}]
    assert _rows_of(D.read_table(lake, L.GOLD_SPLITS, 0, columns=cols)) == [
        {S.USER_IDX: 0, S.ITEM_IDX: 1}, {S.USER_IDX: 5, S.ITEM_IDX: 6}]
    new = D.read_table(lake, L.GOLD_SPLITS, 1, columns=cols, filter_protocol="stratified")
    assert new.take_all() == [{S.USER_IDX: 2, S.ITEM_IDX: 3}]
    assert D.read_table(lake, L.GOLD_SPLITS, 1, filter_protocol="temporal").count() == 0


def test_unreadable_versions_raise_version_not_readable(ray_local, tmp_path):
    from deltalake import DeltaTable

    lake = Lake(str(tmp_path / "lake"))
    write_splits(lake.root, [_row("stratified", S.TRAIN, 0, 1)])
    write_splits(lake.root, [_row("stratified", S.TRAIN, 2, 3)], mode="overwrite")
    with pytest.raises(VersionNotReadable, match=r"gold/splits version 7 is not readable"):
        D.read_table(lake, L.GOLD_SPLITS, 7)
    dt = DeltaTable(lake.path(L.GOLD_SPLITS))
    removed = dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    del dt
    assert removed  # version 0's file
    with pytest.raises(VersionNotReadable, match=r"version 0 is no longer readable: 1 of its "
                                                 r"data files are gone \(VACUUM"):
        D.read_table(lake, L.GOLD_SPLITS, 0, filter_protocol="stratified")
    assert D.read_table(lake, L.GOLD_SPLITS, 1).count() == 1


def test_missing_tables_name_the_stage_that_writes_them(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(FileNotFoundError, match=r"'gold/splits'.*`reclake split --protocol "
                                                r"temporal`"):
        D.pin_versions(lake, [L.GOLD_SPLITS], protocol="temporal")
    write_splits(lake.root, [_row("stratified", S.TRAIN, 0, 1)])
    with pytest.raises(FileNotFoundError, match=r"'gold/sequences'.*`reclake transform`"):
        D.pin_versions(lake, [L.GOLD_SPLITS, L.GOLD_SEQUENCES])
    with pytest.raises(FileNotFoundError, match=r"`reclake transform`"):
        D.read_table(lake, L.GOLD_SEQUENCES, 0)


# --- TrainData -----------------------------------------------------------------------------------


def _random_split_rows(rng, n_users=30, n_items=25):
    """Random rows of two protocols; pairs distinct per protocol; some train rows with
    confidence 0 (no positive signal: neither seen nor a train example)."""
    rows = []
    for protocol in ("stratified", "leave_last_out"):
        for u in range(n_users - (protocol == "leave_last_out") * 3):
            items = rng.permutation(n_items)[:rng.integers(2, 12)]
            for j, i in enumerate(items):
                split = S.TRAIN if j < len(items) - 2 else str(rng.choice([S.VALID, S.TEST]))
                conf = 0.0 if (split == S.TRAIN and rng.random() < 0.1) else float(j + 1)
                rows.append(_row(protocol, split, u, int(i), conf, ts=j))
    return rows


def _reference_index(rows, protocol, split, positive_only=False):
    ref: dict[int, set] = {}
    for r in rows:
        if r[S.PROTOCOL] == protocol and r[S.SPLIT] == split and (
                not positive_only or r[S.CONFIDENCE] > 0):
            ref.setdefault(r[S.USER_IDX], set()).add(r[S.ITEM_IDX])
    return ref


def test_train_data_csr_matches_a_dict_reference(ray_local, make_cfg):
    rng = np.random.default_rng(3)
    cfg = _cfg(make_cfg, "leave_last_out")
    lake = Lake(cfg.lake)
    rows = _random_split_rows(rng)
    # a test-only item beyond every train index: n_items must cover it
    rows.append(_row("leave_last_out", S.TEST, 1, 40))
    write_splits(lake.root, rows)
    versions = D.pin_versions(lake, [L.GOLD_SPLITS])
    data, pairs = D.load_train_data(lake, cfg, versions)

    mine = [r for r in rows if r[S.PROTOCOL] == "leave_last_out"]
    assert data.n_users == max(r[S.USER_IDX] for r in mine) + 1 == 27
    assert data.n_items == 41 and data.protocol == "leave_last_out"
    assert data.inputs == {L.GOLD_SPLITS: 0}
    for name, split, pos in (("seen", S.TRAIN, True), ("valid", S.VALID, False),
                             ("test", S.TEST, False)):
        indptr, indices = getattr(data, f"{name}_indptr"), getattr(data, f"{name}_indices")
        assert indptr.dtype == np.int64 and indptr.shape == (data.n_users + 1,)
        assert indices.dtype == np.int32
        ref = _reference_index(rows, "leave_last_out", split, positive_only=pos)
        for u in range(data.n_users):
            row = indices[indptr[u]:indptr[u + 1]]
            assert row.tolist() == sorted(ref.get(u, ())), (name, u)
    users = np.array([5, 0, 26])
    assert [s.tolist() for s in data.seen_of(users)] == [
        sorted(_reference_index(rows, "leave_last_out", S.TRAIN, True).get(int(u), ()))
        for u in users]
    tp = {(r[S.USER_IDX], r[S.ITEM_IDX], r[S.CONFIDENCE]) for r in mine
          if r[S.SPLIT] == S.TRAIN and r[S.CONFIDENCE] > 0}
    got = {(r[S.USER_IDX], r[S.ITEM_IDX], r[S.CONFIDENCE]) for r in pairs.take_all()}
    assert got == tp and pairs.count() == len(tp)
    u, i = data.train_pairs()
    assert set(zip(u.tolist(), i.tolist(), strict=True)) == {(a, b) for a, b, _ in tp}
    back = pickle.loads(pickle.dumps(data))
    assert np.array_equal(back.seen_indices, data.seen_indices) and back.n_items == 41


def test_protocol_without_valid_part_gives_an_empty_valid_index(ray_local, make_cfg):
    cfg = _cfg(make_cfg, "stratified")
    write_splits(cfg.lake, [_row("stratified", S.TRAIN, 0, 0), _row("stratified", S.TRAIN, 1, 1),
                            _row("stratified", S.TEST, 1, 2)])
    data, _ = D.load_train_data(Lake(cfg.lake), cfg, {L.GOLD_SPLITS: 0})
    assert data.valid_indptr.tolist() == [0, 0, 0] and data.valid_indices.size == 0
    assert data.test_indptr.tolist() == [0, 0, 1] and data.test_indices.tolist() == [2]


@pytest.mark.parametrize("case, message", [
    ("no_rows", r"no rows; run `reclake split --protocol temporal`"),
    ("empty_train", r"the train part is empty"),
    ("negative", r"user_idx has negative values"),
    ("non_integer", r"item_idx has non-integer values \(e.g. 1.5\)"),
    ("all_items", r"1 user\(s\) \(e.g. user_idx 0\) have a train row for every one of the 2"),
    ("leak", r"1 pair\(s\) are in train and in test, e.g. \(1, 1\)"),
])
def test_load_train_data_clear_errors(ray_local, make_cfg, case, message):
    cfg = _cfg(make_cfg, "temporal")
    base = [_row("temporal", S.TRAIN, 0, 0), _row("temporal", S.TRAIN, 1, 1),
            _row("temporal", S.TEST, 0, 1)]
    schema = SPLITS_SCHEMA
    rows = {
        "no_rows": [_row("stratified", S.TRAIN, 0, 0)],
        "empty_train": [_row("temporal", S.TRAIN, 0, 0, conf=0.0), _row("temporal", S.TEST, 0, 1)],
        "negative": base + [_row("temporal", S.TRAIN, -1, 0)],
        "non_integer": base + [_row("temporal", S.TRAIN, 2, 1.5)],
        "all_items": base[:2] + [_row("temporal", S.TRAIN, 0, 1)],
        "leak": base + [_row("temporal", S.TEST, 1, 1)],
    }[case]
    if case == "non_integer":
        schema = schema.set(schema.get_field_index(S.ITEM_IDX), pa.field(S.ITEM_IDX, pa.float64()))
    write_splits(cfg.lake, rows, schema=schema)
    with pytest.raises(ConfigError, match=message):
        D.load_train_data(Lake(cfg.lake), cfg, {L.GOLD_SPLITS: 0})


# --- negatives ------------------------------------------------------------------------------------


def _train_data(seen: dict[int, list[int]], n_users: int, n_items: int) -> D.TrainData:
    users = np.array([u for u, its in seen.items() for _ in its], dtype=np.int64)
    items = np.array([i for its in seen.values() for i in its], dtype=np.int64)
    indptr, indices = D.build_csr(users, items, n_users)
    empty = np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    return D.TrainData(n_users=n_users, n_items=n_items, protocol="stratified", inputs={},
                       seen_indptr=indptr, seen_indices=indices, valid_indptr=empty[0],
                       valid_indices=empty[1], test_indptr=empty[0], test_indices=empty[1])


def test_in_rows_matches_python_membership():
    rng = np.random.default_rng(0)
    seen = {u: sorted(rng.permutation(50)[:rng.integers(0, 30)].tolist()) for u in range(20)}
    data = _train_data(seen, 20, 50)
    rows, vals = rng.integers(0, 20, 5000), rng.integers(0, 50, 5000)
    got = D.in_rows(data.seen_indptr, data.seen_indices, rows, vals)
    assert got.tolist() == [int(v) in seen[int(r)] for r, v in zip(rows, vals, strict=True)]


def test_negatives_avoid_train_items_and_are_reproducible_per_epoch_and_rank():
    n_items = 40
    # user 2 has seen all but 3 items: rejection alone rarely succeeds, the fallback takes over
    seen = {0: [1, 5, 7], 1: list(range(0, 40, 2)), 2: [i for i in range(40) if i not in (3, 17,
                                                                                         31)],
            3: []}
    data = _train_data(seen, 4, n_items)
    users = np.repeat(np.arange(4), 500)
    negs = D.sample_negatives(users, 6, data, D.epoch_rng(42, 0, 0))
    assert negs.shape == (2000, 6) and negs.dtype == np.int64
    assert ((negs >= 0) & (negs < n_items)).all()
    for u in range(4):
        assert not set(negs[users == u].ravel().tolist()) & set(seen[u])
    # uniform over the unseen items: user 2's three items each near 1/3 of 3000 draws
    counts = np.bincount(negs[users == 2].ravel(), minlength=n_items)[[3, 17, 31]]
    assert counts.sum() == 3000 and (np.abs(counts - 1000) < 120).all(), counts
    assert np.array_equal(negs, D.sample_negatives(users, 6, data, D.epoch_rng(42, 0, 0)))
    assert not np.array_equal(negs, D.sample_negatives(users, 6, data, D.epoch_rng(42, 1, 0)))
    assert not np.array_equal(negs, D.sample_negatives(users, 6, data, D.epoch_rng(42, 0, 1)))
    assert D.sample_negatives(np.zeros(0, np.int64), 3, data, D.epoch_rng(1, 0, 0)).shape == (0, 3)


# --- windows --------------------------------------------------------------------------------------


def test_sequence_windows_pad_left_shift_targets_and_mask_by_behaviour():
    rows = {"seq": [np.array([5, 6, 7, 8]), np.array([3, 4]), np.array([9, 10, 11, 12, 13, 14])],
            "beh": [np.array([1, 5, 1, 5]), np.array([5, 1]), np.array([1, 1, 5, 1, 5, 1])]}
    w = D.sequence_windows(rows, 4)
    assert {k: v.shape for k, v in w.items()} == {k: (3, 4) for k in
                                                  ("seq", "beh", "target", "target_mask")}
    assert w["seq"].tolist() == [[0, 5, 6, 7], [0, 0, 0, 3], [10, 11, 12, 13]]
    assert w["beh"].tolist() == [[0, 1, 5, 1], [0, 0, 0, 5], [1, 5, 1, 5]]
    assert w["target"].tolist() == [[0, 6, 7, 8], [0, 0, 0, 4], [11, 12, 13, 14]]
    assert w["target_mask"].tolist() == [[False, True, True, True], [False, False, False, True],
                                         [True, True, True, True]]
    w5 = D.sequence_windows(rows, 4, target_behavior_id=5)
    assert w5["target_mask"].tolist() == [[False, True, False, True],
                                          [False, False, False, False],
                                          [True, False, True, False]]
    assert w5["target"].tolist() == w["target"].tolist()
    h = D.history_windows(rows, 4)
    assert h["seq"].tolist() == [[5, 6, 7, 8], [0, 0, 3, 4], [11, 12, 13, 14]]
    assert h["beh"].tolist() == [[1, 5, 1, 5], [0, 0, 5, 1], [5, 1, 5, 1]]
    with pytest.raises(ValueError, match="same length"):
        D.sequence_windows({"seq": [np.array([1, 2])], "beh": [np.array([1])]}, 4)


# --- train-only sequences ----------------------------------------------------------------------


def _reference_train_sequences(events, split_rows, protocol, vocab, keep_last):
    """Pure Python: keep (u, i, t) iff (u, i) is a train pair of the protocol and t <= its ts."""
    train_ts = {(r[S.USER_IDX], r[S.ITEM_IDX]): r[S.TS] for r in split_rows
                if r[S.PROTOCOL] == protocol and r[S.SPLIT] == S.TRAIN}
    out = {}
    for u, evs in events.items():
        kept = [(i + 1, vocab.index(b) + 1) for i, b, h in sorted(evs, key=lambda e: e[2])
                if (u, i) in train_ts and _hours(h) <= train_ts[(u, i)]][-keep_last:]
        if len(kept) >= 2:
            out[u] = ([t for t, _ in kept], [b for _, b in kept])
    return out


def _planted_sequence_lake(root):
    """User 0: train items 1, 2 (2 viewed twice), valid 3, test 4, all of them in the events.
    User 1: train 5; test 6 (two events): one train event left -> dropped. User 2: train 1, 7;
    test 2. Temporal: the same events, cutoff at hour 10: user 0's item 2 has one event after it
    (train ts = hour 3, event at hour 12); item 4 is first seen after the cutoff (test)."""
    events = {0: [(1, S.VIEW, 0), (2, S.VIEW, 1), (3, S.CART, 2), (2, S.PURCHASE, 3),
                  (4, S.VIEW, 11), (2, S.VIEW, 12)],
              1: [(5, S.VIEW, 0), (6, S.VIEW, 1), (6, S.PURCHASE, 2)],
              2: [(1, S.VIEW, 0), (7, S.CLICK, 1), (2, S.VIEW, 13)]}
    rows = []
    for p in ("stratified", "leave_last_out"):
        rows += [_row(p, S.TRAIN, 0, 1, ts=0), _row(p, S.TRAIN, 0, 2, ts=12),
                 _row(p, S.VALID, 0, 3, ts=2), _row(p, S.TEST, 0, 4, ts=11),
                 _row(p, S.TRAIN, 1, 5, ts=0), _row(p, S.TEST, 1, 6, ts=2),
                 _row(p, S.TRAIN, 2, 1, ts=0), _row(p, S.TRAIN, 2, 7, ts=1),
                 _row(p, S.TEST, 2, 2, ts=13)]
    rows += [_row("temporal", S.TRAIN, 0, 1, ts=0), _row("temporal", S.TRAIN, 0, 2, ts=3),
             _row("temporal", S.TRAIN, 0, 3, ts=2), _row("temporal", S.TEST, 0, 4, ts=11),
             _row("temporal", S.TRAIN, 1, 5, ts=0), _row("temporal", S.TRAIN, 1, 6, ts=2),
             _row("temporal", S.TRAIN, 2, 1, ts=0), _row("temporal", S.TRAIN, 2, 7, ts=1),
             _row("temporal", S.TEST, 2, 2, ts=13)]
    write_splits(root, rows)
    write_sequences(root, events)
    return events, rows


def _sequences(ds) -> dict[int, tuple[list, list]]:
    return {int(r[S.USER_IDX]): (list(r["seq"]), list(r["beh"])) for r in ds.take_all()}


@pytest.mark.parametrize("protocol", ["leave_last_out", "stratified"])
def test_held_out_items_never_reach_an_input_sequence(ray_local, make_cfg, protocol):
    cfg = _cfg(make_cfg, protocol, sasrec__max_len=4)
    lake = Lake(cfg.lake)
    events, rows = _planted_sequence_lake(cfg.lake)
    versions = D.pin_versions(lake, [L.GOLD_SPLITS, L.GOLD_SEQUENCES])
    data, _ = D.load_train_data(lake, cfg, versions)
    seqs = _sequences(D.load_sequences(lake, cfg, versions, data))
    vocab = list(cfg.vocabulary)
    view, purchase, click = (vocab.index(b) + 1 for b in (S.VIEW, S.PURCHASE, S.CLICK))
    # items + 1; user 0's held-out items 3 and 4 are gone, user 1 is dropped (1 train event)
    assert seqs == {0: ([2, 3, 3, 3], [view, view, purchase, view]),
                    2: ([2, 8], [view, click])}
    for u, (tokens, _) in seqs.items():
        held = set(data.valid_of(np.array([u]))[0].tolist()) | set(
            data.test_of(np.array([u]))[0].tolist())
        assert held and not held & {t - 1 for t in tokens}, (u, held, tokens)
    assert seqs == _reference_train_sequences(events, rows, protocol, vocab, 5)


def test_temporal_drops_events_after_the_pairs_train_ts(ray_local, make_cfg):
    cfg = _cfg(make_cfg, "temporal", sasrec__max_len=10)
    lake = Lake(cfg.lake)
    events, rows = _planted_sequence_lake(cfg.lake)
    versions = D.pin_versions(lake, [L.GOLD_SPLITS, L.GOLD_SEQUENCES])
    data, _ = D.load_train_data(lake, cfg, versions)
    seqs = _sequences(D.load_sequences(lake, cfg, versions, data))
    # user 0: item 2's event at hour 12 (after its train ts, hour 3) and test item 4 are dropped
    assert {u: s for u, (s, _) in seqs.items()} == {0: [2, 3, 4, 3], 1: [6, 7, 7], 2: [2, 8]}
    assert seqs == _reference_train_sequences(events, rows, "temporal", list(cfg.vocabulary), 11)


def test_train_sequences_match_the_reference_on_random_data(ray_local, make_cfg):
    rng = np.random.default_rng(11)
    cfg = _cfg(make_cfg, "temporal", sasrec__max_len=5)
    vocab = list(cfg.vocabulary)
    events, rows = {}, []
    cut = 50.0
    for u in range(25):
        evs = [(int(rng.integers(0, 12)), vocab[int(rng.integers(0, 5))], float(h))
               for h in np.sort(rng.choice(100, size=int(rng.integers(1, 15)), replace=False))]
        events[u] = evs
        before = {}
        for i, _, h in evs:
            if h < cut:
                before[i] = max(before.get(i, -1.0), h)
        rows += [_row("temporal", S.TRAIN, u, i, ts=h) for i, h in before.items()]
        rows += [_row("temporal", S.TEST, u, i, ts=h) for i, _, h in evs
                 if h >= cut and i not in before][:1]
    rows.append(_row("temporal", S.TEST, 0, 30))  # n_items beyond every event's item
    lake = Lake(cfg.lake)
    write_splits(cfg.lake, rows)
    write_sequences(cfg.lake, events, max_len=12)
    versions = D.pin_versions(lake, [L.GOLD_SPLITS, L.GOLD_SEQUENCES])
    data, _ = D.load_train_data(lake, cfg, versions)
    got = _sequences(D.load_sequences(lake, cfg, versions, data, materialize=False))
    # the reference sees the 12 events gold/sequences keeps, as the job does
    kept = {u: sorted(e, key=lambda x: x[2])[-12:] for u, e in events.items()}
    ref = _reference_train_sequences(kept, rows, "temporal", vocab, 6)
    assert got == ref and len(ref) > 5


# --- worker-side batches --------------------------------------------------------------------------


def test_pairs_and_sequence_batches_from_a_dataset_and_a_data_iterator(ray_local):
    import ray.data
    import torch

    seen = {u: [(u + k) % 12 for k in range(3)] for u in range(10)}
    data = _train_data(seen, 10, 12)
    pairs = ray.data.from_arrow(pa.table({
        S.USER_IDX: pa.array([u for u, its in seen.items() for _ in its], pa.int32()),
        S.ITEM_IDX: pa.array([i for its in seen.values() for i in its], pa.int32()),
        S.CONFIDENCE: pa.array([1.0] * 30)}))
    batches = list(D.pairs_batches(pairs, batch_size=8, data=data, n_neg=3,
                                   rng=D.epoch_rng(1, 0, 0), local_shuffle_seed=5))
    assert [len(b[S.USER_IDX]) for b in batches] == [8, 8, 8, 6]
    got = set()
    for b in batches:
        assert set(b) == {S.USER_IDX, S.ITEM_IDX, "neg_items"}
        assert all(v.dtype == torch.int64 for v in b.values())
        assert b["neg_items"].shape == (len(b[S.USER_IDX]), 3)
        for u, i, negs in zip(b[S.USER_IDX].tolist(), b[S.ITEM_IDX].tolist(),
                              b["neg_items"].tolist(), strict=True):
            got.add((u, i))
            assert not set(negs) & set(seen[u])
    assert got == {(u, i) for u, its in seen.items() for i in its}

    seqs = ray.data.from_arrow(pa.table({
        S.USER_IDX: pa.array([0, 1, 2], pa.int32()),
        "seq": pa.array([[1, 2, 3], [4, 5], [6, 7, 8, 9]], pa.list_(pa.int32())),
        "beh": pa.array([[1, 1, 5], [5, 1], [1, 5, 1, 5]], pa.list_(pa.int16()))}))
    out = list(D.sequence_batches(seqs.iterator(), batch_size=2, max_len=3, target_behavior_id=5,
                                  local_shuffle_buffer_size=0))
    assert [b["seq"].shape for b in out] == [(2, 3), (1, 3)]
    assert out[0]["seq"].dtype == torch.int64 and out[0]["target_mask"].dtype == torch.bool
    allb = {k: torch.cat([b[k] for b in out]).tolist() for k in out[0]}
    assert allb["seq"] == [[0, 1, 2], [0, 0, 4], [6, 7, 8]]
    assert allb["target"] == [[0, 2, 3], [0, 0, 5], [7, 8, 9]]
    assert allb["target_mask"] == [[False, False, True], [False, False, False],
                                   [True, False, True]]
