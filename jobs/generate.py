"""Generate a deterministic synthetic behaviour log (csv, jsonl, parquet, Taobao, RetailRocket).

Pure NumPy + PyArrow, no Spark. Events are generated and written chunk by chunk
(``generate.chunk_events`` per chunk), so 10M events never sit in memory at once. Chunk ``i`` draws
from ``np.random.default_rng([seed, i])`` and covers the i-th slice of the time window, so the
output depends on the config alone and the part files are in time order, like a real log.

    spark-submit jobs/generate.py --events 1000000 --out ./demo-data
    spark-submit jobs/generate.py --events 10000000 --formats csv,taobao --dirty-rate 0.01
    reclake generate --events 100000 --formats csv,jsonl,parquet,taobao,retailrocket

Writes ``<out>/<format>/part-NNNNN.<ext>`` (one part per chunk) and ``<out>/<format>/_manifest.json``
(row counts, duplicates, dirty rows by reason code, behaviour counts, seed, files).

Formats:
    csv, jsonl, parquet   generic: user_id, item_id, behavior, value, ts, session_id, category_id
    taobao                UserBehavior.csv: no header; user_id,item_id,category_id,behavior,ts
                          (pv/cart/fav/buy, unix seconds; rating events are not written)
    retailrocket          events.csv: timestamp,visitorid,event,itemid,transactionid
                          (unix ms, view/addtocart/transaction; fav and rating not written)

With ``--dirty-rate r`` every format also gets round(r * rows) dirty rows, each bad in exactly one
way (reason codes from ``common.schema``, cycled evenly), and round(r * rows) exact duplicates of
clean rows at other positions in the file.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import schema as S
from common.config import Config, ConfigError, GenerateConfig

NEEDS_SPARK = False

FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet", "taobao", "retailrocket")
GENERIC_COLUMNS: tuple[str, ...] = (
    S.USER_ID,
    S.ITEM_ID,
    S.BEHAVIOR,
    S.VALUE,
    S.TS,
    S.SESSION_ID,
    S.CATEGORY_ID,
)
GENERIC_SCHEMA = pa.schema(
    [
        (S.USER_ID, pa.string()),
        (S.ITEM_ID, pa.string()),
        (S.BEHAVIOR, pa.string()),
        (S.VALUE, pa.float64()),
        (S.TS, pa.timestamp("us", tz="UTC")),
        (S.SESSION_ID, pa.string()),
        (S.CATEGORY_ID, pa.string()),
    ]
)
MANIFEST = "_manifest.json"

# behaviour codes are indices into S.CANONICAL_BEHAVIORS
_VIEW, _CLICK, _CART, _FAV, _PURCHASE, _RATING = range(6)
assert S.CANONICAL_BEHAVIORS[_FAV] == S.FAV and S.CANONICAL_BEHAVIORS[_RATING] == S.RATING_B

# --- behaviour model -----------------------------------------------------------------------------
_P_TASTE = 0.7  # share of views drawn from the user's preferred category groups
_P_CLICK, _P_CART, _P_PURCHASE, _P_FAV, _P_RATE = 0.35, 0.3, 0.5, 0.05, 0.3
_RATING_P = np.array([0.05, 0.08, 0.17, 0.42, 0.28])  # stars 1..5, mode at 4
_P_NEXT_VIEW = 0.25  # views per session ~ geometric, mean 4
_MAX_VIEWS = 50
# every view of a session can carry all six behaviours: the bound used to fit sessions in a window
_MAX_SESSION_EVENTS = _MAX_VIEWS * 6
_DWELL_VIEW_S, _DWELL_ACTION_S, _MAX_GAP_S = 45.0, 10.0, 600
# columns of the per-view behaviour matrix, in the order the events happen within a view
_VIEW_FLOW = np.array([_VIEW, _CLICK, _FAV, _CART, _PURCHASE, _RATING], dtype=np.int8)

_DAY_S = 86_400
_YEAR_2150_S = int(datetime(2150, 1, 1, tzinfo=timezone.utc).timestamp())
_BAD_ID = b"\xff\xfe"  # invalid UTF-8 in any position


# --- the world: users, items, categories (shared by every chunk) ---------------------------------


@dataclass(frozen=True)
class _World:
    user_cdf: np.ndarray  # session-start probability over user index, cumulative
    user_groups: np.ndarray  # (users, 2) preferred category groups; equal for one-group users
    item_cdf: np.ndarray  # global Zipf popularity over item index, cumulative
    group_items: np.ndarray  # item indices ordered by category group
    group_cdf: np.ndarray  # per-group popularity CDF of group_items, group g shifted into (g, g+1]
    item_category: np.ndarray  # category index of each item
    item_cents: np.ndarray  # price of each item in cents


def _cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    c /= c[-1]
    c[-1] = 1.0  # so a uniform draw in [0, 1) never falls past the end
    return c


@functools.lru_cache(maxsize=4)
def _world(seed: int, users: int, items: int, categories: int, zipf_a: float) -> _World:
    # a stream no chunk index can reach: chunks use [seed, i]
    rng = np.random.default_rng([seed, 2**40])
    cat_w = rng.lognormal(0.0, 1.0, categories)
    item_category = rng.choice(categories, size=items, p=cat_w / cat_w.sum())

    n_groups = max(1, round(math.sqrt(categories)))
    group_of_cat = rng.permutation(categories) % n_groups
    item_group = group_of_cat[item_category]

    # Zipf over ranks; a permutation decides which item holds which rank
    pop = np.empty(items)
    pop[rng.permutation(items)] = 1.0 / np.arange(1, items + 1) ** zipf_a

    group_items = np.argsort(item_group, kind="stable")
    g_sorted = item_group[group_items]
    csum = np.cumsum(pop[group_items])
    g_sizes = np.bincount(g_sorted, minlength=n_groups)
    g_end = np.cumsum(g_sizes)
    g_start = g_end - g_sizes
    before = np.where(g_start > 0, csum[np.maximum(g_start - 1, 0)], 0.0)
    total = csum[g_end[g_sorted] - 1] - before[g_sorted]
    within = (csum - before[g_sorted]) / total
    within[g_end[g_sizes > 0] - 1] = 1.0
    group_cdf = g_sorted + within

    non_empty = np.flatnonzero(g_sizes)
    user_groups = non_empty[rng.integers(len(non_empty), size=(users, 2))]
    one_group = rng.random(users) < 0.5
    user_groups[one_group, 1] = user_groups[one_group, 0]

    cat_price = rng.lognormal(3.0, 0.9, categories)
    price = cat_price[item_category] * rng.lognormal(0.0, 0.35, items)
    return _World(
        user_cdf=_cdf(rng.lognormal(0.0, 1.2, users)),  # heavy-tailed activity
        user_groups=user_groups,
        item_cdf=_cdf(pop),
        group_items=group_items,
        group_cdf=group_cdf,
        item_category=item_category,
        item_cents=np.maximum(np.rint(price * 100), 1).astype(np.int64),
    )


def _world_of(g: GenerateConfig) -> _World:
    return _world(g.seed, g.users, g.items, g.categories, g.zipf_a)


# --- config helpers -------------------------------------------------------------------------------


def window(g: GenerateConfig) -> tuple[int, int]:
    """The generated time window [start, end) in unix seconds (``generate.start`` read as UTC)."""
    text = g.start.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"generate.start must be an ISO date or datetime, got {g.start!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    t0 = int(dt.timestamp())
    return t0, t0 + g.days * _DAY_S


def n_chunks(g: GenerateConfig) -> int:
    """Number of chunks (and part files per format): ceil(events / chunk_events)."""
    return -(-g.events // g.chunk_events)


def validate(g: GenerateConfig) -> None:
    """Reject generate settings that cannot produce the promised output, naming the key."""
    for key in ("users", "items", "events", "days", "categories", "chunk_events"):
        if getattr(g, key) < 1:
            raise ConfigError(f"generate.{key} must be >= 1, got {getattr(g, key)}")
    if g.seed < 0:
        raise ConfigError(f"generate.seed must be >= 0, got {g.seed}")
    if g.zipf_a <= 0:
        raise ConfigError(f"generate.zipf_a must be > 0, got {g.zipf_a}")
    if not 0 <= g.dirty_rate <= 0.5:
        raise ConfigError(f"generate.dirty_rate must be in [0, 0.5], got {g.dirty_rate}")
    unknown = [f for f in g.formats if f not in FORMATS]
    if unknown or not g.formats:
        raise ConfigError(f"generate.formats must name some of {list(FORMATS)}, got {g.formats}")
    if g.days * _DAY_S // n_chunks(g) < _MAX_SESSION_EVENTS:
        raise ConfigError(
            f"generate.chunk_events={g.chunk_events} splits {g.days} day(s) into {n_chunks(g)} "
            f"chunks of under {_MAX_SESSION_EVENTS} s each; raise chunk_events or days"
        )
    window(g)


# --- one chunk of clean events --------------------------------------------------------------------


@dataclass(frozen=True)
class _Events:
    """Clean events of one chunk in time order, as integer arrays (indices are 0-based)."""

    chunk: int
    user: np.ndarray
    item: np.ndarray
    category: np.ndarray
    behavior: np.ndarray  # code into S.CANONICAL_BEHAVIORS
    cents: np.ndarray  # item price on cart and purchase events, else 0
    rating: np.ndarray  # stars on rating events, else 0
    ts: np.ndarray  # unix seconds
    session: np.ndarray  # session number within the chunk

    def __len__(self) -> int:
        return len(self.ts)

    def value(self) -> np.ndarray:
        """Price (cart, purchase) or stars (rating) as float64, NaN elsewhere."""
        v = np.full(len(self), np.nan)
        priced = self.cents > 0
        v[priced] = self.cents[priced] / 100
        rated = self.behavior == _RATING
        v[rated] = self.rating[rated]
        return v


def _sample_sessions(rng, world: _World, n: int, max_gap: int) -> dict[str, np.ndarray]:
    """Events of ``n`` sessions, grouped by session and in time order within each one.

    ``ts`` is the offset from the session's first event; the caller places sessions in time.
    """
    user = np.searchsorted(world.user_cdf, rng.random(n), side="right")
    n_views = np.minimum(rng.geometric(_P_NEXT_VIEW, n), _MAX_VIEWS)
    view_session = np.repeat(np.arange(n), n_views)
    nv = len(view_session)

    view_user = user[view_session]
    group = world.user_groups[view_user, (rng.random(nv) < 0.5).astype(np.intp)]
    in_group = np.searchsorted(world.group_cdf, group + rng.random(nv), side="right")
    by_taste = world.group_items[np.minimum(in_group, len(world.group_items) - 1)]
    by_pop = np.searchsorted(world.item_cdf, rng.random(nv), side="right")
    view_item = np.where(rng.random(nv) < _P_TASTE, by_taste, by_pop)

    flags = np.empty((nv, 6), dtype=bool)
    flags[:, 0] = True
    flags[:, 1] = rng.random(nv) < _P_CLICK
    flags[:, 2] = rng.random(nv) < _P_FAV
    flags[:, 3] = flags[:, 1] & (rng.random(nv) < _P_CART)
    flags[:, 4] = flags[:, 3] & (rng.random(nv) < _P_PURCHASE)
    flags[:, 5] = flags[:, 4] & (rng.random(nv) < _P_RATE)
    # row-major nonzero keeps sessions contiguous and each view's follow-ups right after it
    view_idx, step = np.nonzero(flags)
    behavior = _VIEW_FLOW[step]
    session = view_session[view_idx]
    m = len(session)

    dwell = np.where(behavior == _VIEW, _DWELL_VIEW_S, _DWELL_ACTION_S)
    gap = 1 + np.minimum(np.floor(rng.exponential(dwell)), max_gap - 1).astype(np.int64)
    first = np.ones(m, dtype=bool)
    first[1:] = session[1:] != session[:-1]
    gap[first] = 0
    csum = np.cumsum(gap)
    first_idx = np.flatnonzero(first)
    offset = csum - csum[first_idx][session]
    duration = offset[np.r_[first_idx[1:], m] - 1]

    item = view_item[view_idx]
    return {
        "user": user[session],
        "item": item,
        "behavior": behavior,
        "ts": offset,
        "session": session,
        "duration": duration,
        "rating": np.where(behavior == _RATING, rng.choice(5, m, p=_RATING_P) + 1, 0),
    }


def _unique_mask(user, item, ts, g: GenerateConfig) -> np.ndarray:
    """True at the first event of each (user, item, second).

    Two sessions of one user can overlap in time; a repeat of (user, item, second) would become an
    identical line in formats without session ids (Taobao, RetailRocket), so it is dropped.
    """
    t0, t1 = window(g)
    rel = ts - t0
    bu, bi, bt = g.users.bit_length(), g.items.bit_length(), (t1 - t0).bit_length()
    if bu + bi + bt <= 63:
        key = (((user.astype(np.int64) << bi) | item) << bt) | rel
        order = np.argsort(key, kind="stable")
        sk = key[order]
        dup = np.zeros(len(key), dtype=bool)
        dup[order[1:]] = sk[1:] == sk[:-1]
    else:
        order = np.lexsort((np.arange(len(ts)), rel, item, user))
        su, si, st = user[order], item[order], rel[order]
        dup = np.zeros(len(ts), dtype=bool)
        dup[order[1:]] = (su[1:] == su[:-1]) & (si[1:] == si[:-1]) & (st[1:] == st[:-1])
    return ~dup


def _chunk_events(g: GenerateConfig, chunk: int) -> _Events:
    chunks = n_chunks(g)
    if not 0 <= chunk < chunks:
        raise IndexError(f"chunk {chunk} out of range: {chunks} chunk(s)")
    world = _world_of(g)
    rng = np.random.default_rng([g.seed, chunk])
    target = min(g.chunk_events, g.events - chunk * g.chunk_events)

    t0, t1 = window(g)
    span = t1 - t0
    lo = t0 + span * chunk // chunks
    hi = t0 + span * (chunk + 1) // chunks
    # cap gaps so the longest possible session fits in the shortest chunk window
    max_gap = min(_MAX_GAP_S, (span // chunks - 1) // (_MAX_SESSION_EVENTS - 1))

    parts: list[dict[str, np.ndarray]] = []
    have, sessions = 0, 0
    while True:
        # ~6.3 events per session; overshoot a little so one batch is nearly always enough
        n = math.ceil((target - have) / 6.0) + 16
        s = _sample_sessions(rng, world, n, max_gap)
        start = lo + np.floor(rng.random(n) * (hi - lo - s["duration"])).astype(np.int64)
        s["ts"] = s["ts"] + start[s["session"]]
        s["session"] = s["session"] + sessions
        sessions += n
        parts.append(s)
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts[1:] else s
        keep = _unique_mask(cat["user"], cat["item"], cat["ts"], g)
        have = int(keep.sum())
        if have >= target:
            break
    # truncate in generation order (cuts the last session short), then sort into log order
    idx = np.flatnonzero(keep)[:target]
    idx = idx[np.argsort(cat["ts"][idx], kind="stable")]
    item = cat["item"][idx]
    behavior = cat["behavior"][idx]
    priced = (behavior == _CART) | (behavior == _PURCHASE)
    return _Events(
        chunk=chunk,
        user=cat["user"][idx],
        item=item,
        category=world.item_category[item],
        behavior=behavior,
        cents=np.where(priced, world.item_cents[item], 0),
        rating=cat["rating"][idx],
        ts=cat["ts"][idx],
        session=cat["session"][idx],
    )


def _ids(idx: np.ndarray) -> pa.Array:
    # ids are 1-based decimal strings, like the integer ids of the real datasets
    return pc.cast(pa.array(idx + 1, pa.int64()), pa.string())


def generate_chunk(cfg: Config, chunk_index: int) -> pa.Table:
    """Clean canonical events of one chunk, in time order.

    Columns (``GENERIC_SCHEMA``): user_id, item_id, category_id (decimal id strings), behavior
    (canonical name), value (price on cart/purchase, stars 1..5 on rating, else null), ts
    (timestamp[us, UTC]), session_id (``s<chunk>_<n>``). Exactly ``chunk_events`` rows except in
    the last chunk, which holds the rest of ``events``.
    """
    g = cfg.generate
    validate(g)
    ev = _chunk_events(g, chunk_index)
    text = _ChunkText(ev)
    v = ev.value()
    return pa.table(
        {
            S.USER_ID: text.user,
            S.ITEM_ID: text.item,
            S.BEHAVIOR: pa.array(S.CANONICAL_BEHAVIORS).take(pa.array(ev.behavior)),
            S.VALUE: pa.array(v, mask=np.isnan(v)),
            S.TS: pa.array(ev.ts * 1_000_000, pa.timestamp("us", tz="UTC")),
            S.SESSION_ID: text.session,
            S.CATEGORY_ID: text.category,
        },
        schema=GENERIC_SCHEMA,
    )


# --- rendering text fields ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _time_of_day() -> pa.Array:
    """``HH:MM:SSZ`` for every second of a day, indexed by second."""
    two = pa.array([f"{i:02d}" for i in range(60)])
    sec = np.arange(_DAY_S)
    h, m, s = (two.take(pa.array(x)) for x in (sec // 3600, sec // 60 % 60, sec % 60))
    hms = pc.binary_join_element_wise(h, m, s, ":")
    return pc.binary_join_element_wise(hms, "Z", "")


def _iso(ts: np.ndarray) -> pa.Array:
    """``2024-01-03T10:15:30Z`` strings: few distinct days, so format days once and look up."""
    day = ts // _DAY_S
    first = int(day.min()) if len(day) else 0
    # dirty rows put days in 1970 and 2150: a range of labels would be 65k long, so unique them
    if len(day) and int(day.max()) - first > 10_000:
        days, inverse = np.unique(day, return_inverse=True)
    else:
        days = np.arange(first, int(day.max()) + 1 if len(day) else first)
        inverse = day - first
    dates = np.datetime_as_string(days.astype("datetime64[D]")).astype(object) + "T"
    return pc.binary_join_element_wise(
        pa.array(dates, pa.string()).take(pa.array(inverse.reshape(-1))),
        _time_of_day().take(pa.array(ts % _DAY_S)),
        "",
    )


def _iso_second(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(cents: np.ndarray) -> pa.Array:
    """Cents as ``12.50`` / ``-3.05`` strings."""
    a = np.abs(cents)
    whole = pc.cast(pa.array(a // 100), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(a % 100), pa.string()), width=2, padding="0")
    text = pc.binary_join_element_wise(whole, frac, ".")
    sign = pa.array(np.where(cents < 0, "-", ""))
    return pc.binary_join_element_wise(sign, text, "")


class _ChunkText:
    """String columns of one chunk, built once and shared by every format."""

    def __init__(self, ev: _Events):
        self.ev = ev

    @functools.cached_property
    def user(self) -> pa.Array:
        return _ids(self.ev.user)

    @functools.cached_property
    def item(self) -> pa.Array:
        return _ids(self.ev.item)

    @functools.cached_property
    def category(self) -> pa.Array:
        return _ids(self.ev.category)

    @functools.cached_property
    def session(self) -> pa.Array:
        n = pc.cast(pa.array(self.ev.session), pa.string())
        return pc.binary_join_element_wise(f"s{self.ev.chunk}_", n, "")

    @functools.cached_property
    def value(self) -> pa.Array:
        ev = self.ev
        rated = ev.behavior == _RATING
        present = (ev.cents > 0) | rated
        # format only the ~10% of events that carry a value, then spread them out with a take
        where = np.flatnonzero(present)
        stars = pc.cast(pa.array(ev.rating[where]), pa.string())
        text = pc.if_else(pa.array(rated[where]), stars, _money(ev.cents[where]))
        slot = np.cumsum(present) - 1
        return text.take(pa.array(slot, mask=~present))

    @functools.cached_property
    def ts_iso(self) -> pa.Array:
        return _iso(self.ev.ts)

    @functools.cached_property
    def ts_s(self) -> pa.Array:
        return pc.cast(pa.array(self.ev.ts), pa.string())

    @functools.cached_property
    def ts_ms(self) -> pa.Array:
        return pc.cast(pa.array(self.ev.ts * 1000), pa.string())


# --- formats --------------------------------------------------------------------------------------

_USER, _ITEM, _BEHAVIOR, _VALUE, _TS = "user", "item", "behavior", "value", "ts"


@dataclass(frozen=True)
class _Format:
    name: str
    ext: str
    header: tuple[str, ...] | None  # file header line; None: no header
    fields: tuple[str, ...]  # fields of a row, in order
    roles: dict[str, str]  # role -> field, for the fields dirty rows corrupt
    labels: tuple[str | None, ...]  # behaviour code -> word in this format; None: not written
    ts_unit: str  # iso | s | ms | timestamp
    kinds: tuple[str, ...]  # dirty-row reason codes this format can carry


_GENERIC_ROLES = {
    _USER: S.USER_ID,
    _ITEM: S.ITEM_ID,
    _BEHAVIOR: S.BEHAVIOR,
    _VALUE: S.VALUE,
    _TS: S.TS,
}
_ALL_KINDS = S.REASON_CODES
# no value column, so no value kinds
_CSV_LIKE_KINDS = tuple(k for k in S.REASON_CODES if k not in (S.BAD_VALUE, S.VALUE_OUT_OF_RANGE))
# typed columns cannot hold unparseable text, broken rows or invalid UTF-8
_PARQUET_KINDS = (
    S.MISSING_USER,
    S.MISSING_ITEM,
    S.TS_OUT_OF_RANGE,
    S.UNKNOWN_BEHAVIOR,
    S.VALUE_OUT_OF_RANGE,
)

_TAOBAO_FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts")
_RETAILROCKET_FIELDS = ("timestamp", "visitorid", "event", "itemid", "transactionid")

_FORMAT_SPECS: dict[str, _Format] = {
    name: _Format(
        name=name,
        ext=name,
        header=GENERIC_COLUMNS if name == "csv" else None,
        fields=GENERIC_COLUMNS,
        roles=_GENERIC_ROLES,
        labels=S.CANONICAL_BEHAVIORS,
        ts_unit="timestamp" if name == "parquet" else "iso",
        kinds=_PARQUET_KINDS if name == "parquet" else _ALL_KINDS,
    )
    for name in ("csv", "jsonl", "parquet")
}
_FORMAT_SPECS["taobao"] = _Format(
    name="taobao",
    ext="csv",
    header=None,
    fields=_TAOBAO_FIELDS,
    roles={_USER: "user_id", _ITEM: "item_id", _BEHAVIOR: "behavior", _TS: "ts"},
    labels=("pv", "pv", "cart", "fav", "buy", None),
    ts_unit="s",
    kinds=_CSV_LIKE_KINDS,
)
_FORMAT_SPECS["retailrocket"] = _Format(
    name="retailrocket",
    ext="csv",
    header=_RETAILROCKET_FIELDS,
    fields=_RETAILROCKET_FIELDS,
    roles={_USER: "visitorid", _ITEM: "itemid", _BEHAVIOR: "event", _TS: "timestamp"},
    labels=("view", "view", "addtocart", None, "transaction", None),
    ts_unit="ms",
    kinds=_CSV_LIKE_KINDS,
)
assert tuple(_FORMAT_SPECS) == FORMATS


def _rows_of(fmt: _Format, ev: _Events) -> np.ndarray:
    """Indices of the chunk's events this format writes."""
    written = np.array([label is not None for label in fmt.labels])
    return np.flatnonzero(written[ev.behavior])


def _columns(fmt: _Format, text: _ChunkText, rows: np.ndarray, chunk_events: int) -> dict:
    """Field -> array for the format's clean rows (strings; typed for parquet)."""
    ev = text.ev
    everything = len(rows) == len(ev)
    take = pa.array(rows)

    def pick(a: pa.Array) -> pa.Array:
        return a if everything else a.take(take)

    labels = pa.array([label or "" for label in fmt.labels]).take(pa.array(ev.behavior[rows]))
    if fmt.name in ("csv", "jsonl", "parquet"):
        if fmt.ts_unit == "timestamp":
            v = ev.value()[rows]
            value = pa.array(v, mask=np.isnan(v))
            ts = pa.array(ev.ts[rows] * 1_000_000, pa.timestamp("us", tz="UTC"))
        else:
            value, ts = pick(text.value), pick(text.ts_iso)
        return {
            S.USER_ID: pick(text.user),
            S.ITEM_ID: pick(text.item),
            S.BEHAVIOR: labels,
            S.VALUE: value,
            S.TS: ts,
            S.SESSION_ID: pick(text.session),
            S.CATEGORY_ID: pick(text.category),
        }
    if fmt.name == "taobao":
        return {
            "user_id": pick(text.user),
            "item_id": pick(text.item),
            "category_id": pick(text.category),
            "behavior": labels,
            "ts": pick(text.ts_s),
        }
    # retailrocket: one transaction id per purchase, unique across chunks
    bought = ev.behavior[rows] == _PURCHASE
    tid = pc.cast(pa.array(ev.chunk * chunk_events + rows), pa.string())
    return {
        "timestamp": pick(text.ts_ms),
        "visitorid": pick(text.user),
        "event": labels,
        "itemid": pick(text.item),
        "transactionid": pc.if_else(pa.array(bought), tid, pa.scalar(None, pa.string())),
    }


def _render_ts(fmt: _Format, ts: np.ndarray) -> pa.Array:
    if fmt.ts_unit == "timestamp":
        return pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC"))
    if fmt.ts_unit == "iso":
        return _iso(ts)
    return pc.cast(pa.array(ts * (1000 if fmt.ts_unit == "ms" else 1)), pa.string())


def _const(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def _lines(fmt: _Format, cols: dict, malformed: int = 0) -> pa.Array:
    """Rows as binary lines without the newline.

    malformed=1 drops the last field (jsonl: the closing brace), 2 appends an extra field
    (jsonl: a key with no value), so every malformed line fails to parse in its own format.
    """
    fields = list(fmt.fields)
    if fmt.name == "jsonl":
        parts: list = []
        for i, f in enumerate(fields):
            v = cols[f].cast(pa.binary())
            if f != S.VALUE:  # ids, words and ISO times are JSON strings; value is a number
                v = pc.binary_join_element_wise(b'"', v, b'"', b"")
            parts += [
                (b"{" if i == 0 else b",") + json.dumps(f).encode() + b":",
                v.fill_null(b"null"),
            ]
        if malformed == 2:
            parts.append(b',"extra"')  # a key without a value
        if malformed != 1:
            parts.append(b"}")
        return pc.binary_join_element_wise(*parts, b"")
    if malformed == 1:
        fields = fields[:-1]
    arrays = [cols[f].cast(pa.binary()) for f in fields]
    if malformed == 2:
        arrays.append(b"x")
    return pc.binary_join_element_wise(*arrays, b",", null_handling="replace", null_replacement="")


# --- dirty rows -----------------------------------------------------------------------------------


def _dirty_rows(
    fmt: _Format, ev: _Events, rows: np.ndarray, cols: dict, first: int, count: int, rng
) -> tuple[list, dict[str, int]]:
    """``count`` dirty rows, the global dirty-row numbers ``first .. first+count-1``.

    Dirty row k has kind ``fmt.kinds[k % len(kinds)]`` so kinds stay balanced across chunks, and
    each is a clean row of this chunk with exactly one fault. Returns (tables or line arrays,
    {reason: rows}).
    """
    kinds = fmt.kinds
    numbers = np.arange(first, first + count)
    out: list = []
    counts = dict.fromkeys(kinds, 0)
    behavior = ev.behavior[rows]
    has_value = np.flatnonzero((ev.cents[rows] > 0) | (behavior == _RATING))
    for k, kind in enumerate(kinds):
        mine = numbers[numbers % len(kinds) == k]
        n = len(mine)
        counts[kind] = n
        if n == 0:
            continue
        # value faults need a row that carries a value, or the fault would not be the only oddity
        pool = has_value if kind in (S.BAD_VALUE, S.VALUE_OUT_OF_RANGE) else np.arange(len(rows))
        if len(pool) == 0:
            pool = np.arange(len(rows))
        # distinct base rows keep dirty rows distinct from each other
        base = pool[rng.choice(len(pool), n, replace=n > len(pool))]
        # sub-variants alternate with each kind's own occurrence number
        variant = (mine // len(kinds)) % 2
        dcols = {f: c.take(pa.array(base)) for f, c in cols.items()}
        role = fmt.roles
        if kind == S.MISSING_USER:
            dcols[role[_USER]] = pa.nulls(n, dcols[role[_USER]].type)
        elif kind == S.MISSING_ITEM:
            dcols[role[_ITEM]] = pa.nulls(n, dcols[role[_ITEM]].type)
        elif kind == S.BAD_TS:
            dcols[role[_TS]] = _const("not-a-time", n)
        elif kind == S.TS_OUT_OF_RANGE:
            in_year = rng.integers(_DAY_S, 364 * _DAY_S, n)
            dcols[role[_TS]] = _render_ts(fmt, np.where(variant == 0, 0, _YEAR_2150_S) + in_year)
        elif kind == S.UNKNOWN_BEHAVIOR:
            dcols[role[_BEHAVIOR]] = _const("teleport", n)
        elif kind == S.BAD_VALUE:
            # jsonl values are bare numbers; a quoted "abc" keeps the line valid JSON
            dcols[role[_VALUE]] = _const('"abc"' if fmt.name == "jsonl" else "abc", n)
        elif kind == S.VALUE_OUT_OF_RANGE:
            rated = behavior[base] == _RATING
            cents = ev.cents[rows][base]
            if fmt.ts_unit == "timestamp":
                dcols[role[_VALUE]] = pa.array(np.where(rated, 9.0, -cents / 100))
            else:
                dcols[role[_VALUE]] = pc.if_else(pa.array(rated), "9", _money(-cents))
        elif kind == S.BAD_ENCODING:
            item = dcols[role[_ITEM]].cast(pa.binary())
            dcols[role[_ITEM]] = pc.binary_join_element_wise(item, _BAD_ID, b"")
        if fmt.name == "parquet":
            out.append(pa.table(dcols, schema=GENERIC_SCHEMA))
        elif kind == S.MALFORMED:
            # half drop a field, half add one: lines built per variant, kept in base order
            parts = [
                _lines(
                    fmt,
                    {f: c.filter(pa.array(variant == v)) for f, c in dcols.items()},
                    malformed=1 + v,
                )
                for v in (0, 1)
            ]
            out.extend(parts)
        else:
            out.append(_lines(fmt, dcols))
    return out, counts


def _interleave(n_clean: int, n_extra: int, rng) -> np.ndarray:
    """Row order that keeps clean rows in order and scatters extra rows among them."""
    total = n_clean + n_extra
    is_extra = np.zeros(total, dtype=bool)
    is_extra[rng.choice(total, n_extra, replace=False)] = True
    order = np.empty(total, dtype=np.int64)
    order[~is_extra] = np.arange(n_clean)
    order[is_extra] = n_clean + rng.permutation(n_extra)
    return order


def _write_lines(fh, lines: pa.Array) -> None:
    lines = pc.binary_join_element_wise(lines, b"", b"\n").cast(pa.large_binary())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    offsets = offsets[lines.offset : lines.offset + len(lines) + 1]
    fh.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


# --- writing --------------------------------------------------------------------------------------


class _FormatWriter:
    """Writes one format's part files chunk by chunk and keeps its manifest counts."""

    def __init__(self, fmt: _Format, out: Path, g: GenerateConfig):
        self.fmt, self.g = fmt, g
        self.dir = out / fmt.name
        self.dir.mkdir(parents=True, exist_ok=True)
        # a previous run with more chunks would leave parts this manifest does not list
        for old in self.dir.glob("part-*"):
            old.unlink()
        (self.dir / MANIFEST).unlink(missing_ok=True)
        self.files: list[str] = []
        self.clean = self.duplicates = self.dirty = 0
        self.dirty_by_kind = dict.fromkeys(fmt.kinds, 0)
        self.behaviors = dict.fromkeys(S.CANONICAL_BEHAVIORS, 0)
        self.labels: dict[str, int] = {}

    def write_chunk(self, ev: _Events, text: _ChunkText) -> None:
        fmt, g = self.fmt, self.g
        rng = np.random.default_rng([g.seed, ev.chunk, 1 + FORMATS.index(fmt.name)])
        rows = _rows_of(fmt, ev)
        n = len(rows)
        # cumulative rounding: totals are round(rate * all rows) whatever the chunking
        n_dirty = round(g.dirty_rate * (self.clean + n)) - self.dirty
        n_dup = round(g.dirty_rate * (self.clean + n)) - self.duplicates

        cols = _columns(fmt, text, rows, g.chunk_events)
        dirty, counts = _dirty_rows(fmt, ev, rows, cols, self.dirty, n_dirty, rng)
        dup = pa.array(rng.choice(n, n_dup, replace=n_dup > n) if n_dup else [], pa.int64())
        order = pa.array(_interleave(n, n_dirty + n_dup, rng))

        name = f"part-{ev.chunk:05d}.{fmt.ext}"
        if fmt.name == "parquet":
            clean = pa.table(cols, schema=GENERIC_SCHEMA)
            table = pa.concat_tables([clean, *dirty, clean.take(dup)]).take(order)
            pq.write_table(table, self.dir / name, compression="snappy")
        else:
            clean = _lines(fmt, cols)
            lines = pa.concat_arrays([clean, *dirty, clean.take(dup)]).take(order)
            with open(self.dir / name, "wb") as fh:
                if fmt.header:
                    fh.write((",".join(fmt.header) + "\n").encode())
                _write_lines(fh, lines)

        self.files.append(name)
        self.clean += n
        self.dirty += n_dirty
        self.duplicates += n_dup
        for kind, c in counts.items():
            self.dirty_by_kind[kind] += c
        codes = np.bincount(ev.behavior[rows], minlength=len(S.CANONICAL_BEHAVIORS))
        for code, c in enumerate(codes):
            self.behaviors[S.CANONICAL_BEHAVIORS[code]] += int(c)
            label = fmt.labels[code]
            if label is not None:
                self.labels[label] = self.labels.get(label, 0) + int(c)

    def manifest(self) -> dict:
        g = self.g
        t0, t1 = window(g)
        m = {
            "format": self.fmt.name,
            "rows": self.clean + self.duplicates + self.dirty,
            "clean_rows": self.clean,
            "duplicates": self.duplicates,
            "dirty": self.dirty,
            "dirty_by_kind": self.dirty_by_kind,
            "behaviors": self.behaviors,
            "source_behaviors": self.labels,
            "seed": g.seed,
            "files": self.files,
            "header": list(self.fmt.header) if self.fmt.header else None,
            "events": g.events,
            "users": g.users,
            "items": g.items,
            "categories": g.categories,
            "dirty_rate": g.dirty_rate,
            "window": {"start": _iso_second(t0), "end": _iso_second(t1)},
        }
        (self.dir / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
        return m


def write_formats(
    cfg: Config,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Generate every chunk once and write it in each of ``cfg.generate.formats``.

    Args:
        out: output root (default ``cfg.generate.out``); format ``f`` goes to ``<out>/<f>/``.
        progress: called with one line per chunk (None: silent).

    Returns:
        {format: manifest}, the same dicts written to ``<out>/<format>/_manifest.json``.
    """
    g = cfg.generate
    validate(g)
    root = Path(out if out is not None else g.out)
    writers = [_FormatWriter(_FORMAT_SPECS[f], root, g) for f in dict.fromkeys(g.formats)]
    chunks = n_chunks(g)
    t_start = time.perf_counter()
    done = 0
    for i in range(chunks):
        ev = _chunk_events(g, i)
        text = _ChunkText(ev)
        for w in writers:
            w.write_chunk(ev, text)
        done += len(ev)
        if progress is not None:
            rate = _rate(done, time.perf_counter() - t_start)
            progress(f"generate: chunk {i + 1}/{chunks}, {done:,} events, {rate}")
    return {w.fmt.name: w.manifest() for w in writers}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `generate`; each sets the config key named by its dest."""

    def flag(name: str, key: str, metavar: str, help: str, type=str) -> None:
        p.add_argument(name, dest=key, type=type, default=None, metavar=metavar, help=help)

    flag("--out", "generate.out", "DIR", "output root (default ./demo-data)")
    flag("--users", "generate.users", "N", "number of users", int)
    flag("--items", "generate.items", "N", "number of items", int)
    flag("--events", "generate.events", "N", "clean events in total", int)
    flag("--days", "generate.days", "N", "length of the time window in days", int)
    flag("--start", "generate.start", "DATE", "window start, ISO date or datetime (UTC)")
    flag("--categories", "generate.categories", "N", "number of item categories", int)
    flag("--seed", "generate.seed", "N", "random seed", int)
    flag(
        "--dirty-rate",
        "generate.dirty_rate",
        "R",
        "share of dirty rows, and of exact duplicates, to inject (default 0)",
        float,
    )
    flag("--formats", "generate.formats", "LIST", f"comma-separated from {','.join(FORMATS)}")
    flag("--chunk-events", "generate.chunk_events", "N", "events per chunk and part file", int)


def _rate(events: int, seconds: float) -> str:
    r = events / max(seconds, 1e-9)
    return f"{r / 1e6:.2f}M events/s" if r >= 1e5 else f"{r / 1e3:.1f}k events/s"


def main(spark, cfg: Config) -> dict[str, dict]:
    """Write the synthetic log in every configured format; ``spark`` is unused (None)."""
    t0 = time.perf_counter()
    manifests = write_formats(cfg, progress=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - t0
    g = cfg.generate
    print(
        f"generate: {g.events:,} events in {seconds:.1f}s ({_rate(g.events, seconds)}) -> {g.out}",
        flush=True,
    )
    for m in manifests.values():
        print(
            f"  {m['format']:<12} {m['rows']:>12,} rows = {m['clean_rows']:,} clean "
            f"+ {m['duplicates']:,} duplicates + {m['dirty']:,} dirty ({len(m['files'])} files)",
            flush=True,
        )
    return manifests


if __name__ == "__main__":
    from jobs.cli import run_stage

    sys.exit(run_stage("generate"))
