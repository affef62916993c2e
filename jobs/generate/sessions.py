"""Sessions and the event stream: the time window, chunks, and one chunk's clean events.

A session belongs to one user (drawn by activity), holds a geometric number of views of items the
world draws for that user, and each view may go on down the funnel view -> click -> cart ->
purchase -> rating (fav on the side). Click and cart rates rise with the user's affinity for the
item's taste cluster (``generate.taste_funnel``), scaled so a user's mean rates stay the base ones.

With ``generate.behavior_signal`` set, each view, click, fav or cart of behaviour b on item i is
followed, with probability ``behavior_signal[b]``, by a purchase of ``partner(i)`` (world.py) after
that view's own follow-ups: the planted dependence of purchases on earlier behaviours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from common import schema as S
from common.config import ConfigError, GenerateConfig
from jobs.generate.world import CART, CLICK, FAV, PURCHASE, RATING, VIEW, World, world_of

P_CLICK, P_CART, P_PURCHASE, P_RATE = 0.35, 0.3, 0.5, 0.3  # fav: generate.fav_rate
RATING_P = np.array([0.05, 0.08, 0.17, 0.42, 0.28])  # stars 1..5, mode at 4
P_NEXT_VIEW = 0.25  # views per session ~ geometric, mean 4
MAX_VIEWS = 50
# every view of a session can carry all six behaviours: the bound used to fit sessions in a window
MAX_SESSION_EVENTS = MAX_VIEWS * 6
DWELL_VIEW_S, DWELL_ACTION_S, MAX_GAP_S = 45.0, 10.0, 600
# columns of the per-view behaviour matrix, in the order the events happen within a view
VIEW_FLOW = np.array([VIEW, CLICK, FAV, CART, PURCHASE, RATING], dtype=np.int8)
# behaviours that can trigger a planted purchase: the first four columns of VIEW_FLOW
TRIGGERS = VIEW_FLOW[:4]
TRIGGER_NAMES = tuple(S.CANONICAL_BEHAVIORS[b] for b in TRIGGERS)
# with behavior_signal, four more columns: the planted purchases each trigger may add
PLANTED_FLOW = np.concatenate([VIEW_FLOW, np.full(4, PURCHASE, dtype=np.int8)])
STEP_TRIGGER = np.concatenate([np.full(6, -1, dtype=np.int8), TRIGGERS])
DAY_S = 86_400


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
    return t0, t0 + g.days * DAY_S


def signal(g: GenerateConfig) -> np.ndarray:
    """``behavior_signal`` as probabilities over TRIGGERS (0 where a behaviour is not named)."""
    return np.array([float(g.behavior_signal.get(b, 0.0)) for b in TRIGGER_NAMES])


def max_session_events(g: GenerateConfig) -> int:
    """The most events one session can hold: the bound used to fit sessions in a chunk window.
    With ``behavior_signal`` a view can also carry one planted purchase per positive trigger."""
    if not g.behavior_signal:
        return MAX_SESSION_EVENTS
    return MAX_VIEWS * (6 + int((signal(g) > 0).sum()))


def n_chunks(g: GenerateConfig) -> int:
    """Number of chunks (and part files per format): ceil(events / chunk_events)."""
    return -(-g.events // g.chunk_events)


@dataclass(frozen=True)
class Events:
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
    trigger: np.ndarray  # on a planted purchase the code of the behaviour behind it, else -1

    def __len__(self) -> int:
        return len(self.ts)

    def value(self) -> np.ndarray:
        """Price (cart, purchase) or stars (rating) as float64, NaN elsewhere."""
        v = np.full(len(self), np.nan)
        priced = self.cents > 0
        v[priced] = self.cents[priced] / 100
        rated = self.behavior == RATING
        v[rated] = self.rating[rated]
        return v


def _funnel_lift(world: World, user: np.ndarray, item: np.ndarray, lift: float) -> np.ndarray:
    """(1 + lift * affinity) / (1 + lift * focus): above 1 on the user's own clusters, mean ~1
    over the user's taste-drawn views."""
    return (1 + lift * world.affinity(user, item)) / (1 + lift * world.user_focus[user])


def sample_sessions(rng, world: World, n: int, max_gap: int, g: GenerateConfig) -> dict:
    """Events of ``n`` sessions, grouped by session and in time order within each one.

    ``ts`` is the offset from the session's first event; the caller places sessions in time.
    ``trigger`` is the behaviour code behind a planted purchase (``behavior_signal``), else -1.
    """
    user = np.searchsorted(world.user_cdf, rng.random(n), side="right")
    n_views = np.minimum(rng.geometric(P_NEXT_VIEW, n), MAX_VIEWS)
    view_session = np.repeat(np.arange(n), n_views)
    nv = len(view_session)

    view_user = user[view_session]
    view_item = world.draw_items(rng, view_user, g.taste_share)
    lift = _funnel_lift(world, view_user, view_item, g.taste_funnel)

    planted = bool(g.behavior_signal)
    flags = np.empty((nv, 10 if planted else 6), dtype=bool)
    flags[:, 0] = True
    flags[:, 1] = rng.random(nv) < np.minimum(P_CLICK * lift, 1.0)
    flags[:, 2] = rng.random(nv) < g.fav_rate * lift
    flags[:, 3] = flags[:, 1] & (rng.random(nv) < np.minimum(P_CART * lift, 1.0))
    flags[:, 4] = flags[:, 3] & (rng.random(nv) < P_PURCHASE)
    flags[:, 5] = flags[:, 4] & (rng.random(nv) < P_RATE)
    if planted:  # off, no draw: the default output stays what it was
        flags[:, 6:] = flags[:, :4] & (rng.random((nv, 4)) < signal(g))
    # row-major nonzero keeps sessions contiguous and each view's follow-ups right after it
    view_idx, step = np.nonzero(flags)
    behavior = PLANTED_FLOW[step]
    session = view_session[view_idx]
    m = len(session)

    dwell = np.where(behavior == VIEW, DWELL_VIEW_S, DWELL_ACTION_S)
    gap = 1 + np.minimum(np.floor(rng.exponential(dwell)), max_gap - 1).astype(np.int64)
    first = np.ones(m, dtype=bool)
    first[1:] = session[1:] != session[:-1]
    gap[first] = 0
    csum = np.cumsum(gap)
    first_idx = np.flatnonzero(first)
    offset = csum - csum[first_idx][session]
    duration = offset[np.r_[first_idx[1:], m] - 1]

    item = view_item[view_idx]
    trigger = STEP_TRIGGER[step]
    if planted:
        item = np.where(trigger >= 0, world.item_partner[item], item)
    return {
        "user": user[session],
        "item": item,
        "behavior": behavior,
        "ts": offset,
        "session": session,
        "duration": duration,
        "rating": np.where(behavior == RATING, rng.choice(5, m, p=RATING_P) + 1, 0),
        "trigger": trigger,
    }


def _events_per_session(g: GenerateConfig) -> float:
    """A slight underestimate of the mean events per session: 6.0 at the base rates (~6.3), plus
    ~4 views times the extra events per view of ``fav_rate`` and ``behavior_signal``."""
    p_view, p_click, p_fav, p_cart = signal(g)
    extra = (g.fav_rate - GenerateConfig.fav_rate
             + p_view + P_CLICK * p_click + g.fav_rate * p_fav + P_CLICK * P_CART * p_cart)
    return 6.0 + 4.0 * max(extra, 0.0)


def unique_mask(user, item, ts, g: GenerateConfig) -> np.ndarray:
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


def chunk_events(g: GenerateConfig, chunk: int) -> Events:
    """Clean events of chunk ``chunk``: ``chunk_events`` of them (the last chunk: the rest), drawn
    from ``np.random.default_rng([seed, chunk])`` inside the chunk's slice of the window."""
    chunks = n_chunks(g)
    if not 0 <= chunk < chunks:
        raise IndexError(f"chunk {chunk} out of range: {chunks} chunk(s)")
    world = world_of(g)
    rng = np.random.default_rng([g.seed, chunk])
    target = min(g.chunk_events, g.events - chunk * g.chunk_events)

    t0, t1 = window(g)
    span = t1 - t0
    lo = t0 + span * chunk // chunks
    hi = t0 + span * (chunk + 1) // chunks
    # cap gaps so the longest possible session fits in the shortest chunk window
    max_gap = min(MAX_GAP_S, (span // chunks - 1) // (max_session_events(g) - 1))
    per_session = _events_per_session(g)

    parts: list[dict[str, np.ndarray]] = []
    have, sessions = 0, 0
    while True:
        # overshoot a little so one batch is nearly always enough
        n = math.ceil((target - have) / per_session) + 16
        s = sample_sessions(rng, world, n, max_gap, g)
        start = lo + np.floor(rng.random(n) * (hi - lo - s["duration"])).astype(np.int64)
        s["ts"] = s["ts"] + start[s["session"]]
        s["session"] = s["session"] + sessions
        sessions += n
        parts.append(s)
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts[1:] else s
        keep = unique_mask(cat["user"], cat["item"], cat["ts"], g)
        have = int(keep.sum())
        if have >= target:
            break
    # truncate in generation order (cuts the last session short), then sort into log order
    idx = np.flatnonzero(keep)[:target]
    idx = idx[np.argsort(cat["ts"][idx], kind="stable")]
    item = cat["item"][idx]
    behavior = cat["behavior"][idx]
    priced = (behavior == CART) | (behavior == PURCHASE)
    return Events(
        chunk=chunk,
        user=cat["user"][idx],
        item=item,
        category=world.item_category[item],
        behavior=behavior,
        cents=np.where(priced, world.item_cents[item], 0),
        rating=cat["rating"][idx],
        ts=cat["ts"][idx],
        session=cat["session"][idx],
        trigger=cat["trigger"][idx],
    )
