"""Rendering a chunk's clean events in each output format: one column renderer per format, the
row -> line encoders, and the shared text columns built once per chunk.

    csv, jsonl, parquet   generic: user_id, item_id, behavior, value, ts, session_id, category_id
    taobao                UserBehavior.csv: no header; user_id,item_id,category_id,behavior,ts
    retailrocket          events.csv: timestamp,visitorid,event,itemid,transactionid
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import schema as S
from jobs.generate.sessions import DAY_S, Events
from jobs.generate.world import PURCHASE, RATING

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


# --- text fields -----------------------------------------------------------------------------------


def ids(idx: np.ndarray) -> pa.Array:
    # ids are 1-based decimal strings, like the integer ids of the real datasets
    return pc.cast(pa.array(idx + 1, pa.int64()), pa.string())


@functools.lru_cache(maxsize=1)
def _time_of_day() -> pa.Array:
    """``HH:MM:SSZ`` for every second of a day, indexed by second."""
    two = pa.array([f"{i:02d}" for i in range(60)])
    sec = np.arange(DAY_S)
    h, m, s = (two.take(pa.array(x)) for x in (sec // 3600, sec // 60 % 60, sec % 60))
    hms = pc.binary_join_element_wise(h, m, s, ":")
    return pc.binary_join_element_wise(hms, "Z", "")


def iso(ts: np.ndarray) -> pa.Array:
    """``2024-01-03T10:15:30Z`` strings: few distinct days, so format days once and look up."""
    day = ts // DAY_S
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
        _time_of_day().take(pa.array(ts % DAY_S)),
        "",
    )


def iso_second(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def money(cents: np.ndarray) -> pa.Array:
    """Cents as ``12.50`` / ``-3.05`` strings."""
    a = np.abs(cents)
    whole = pc.cast(pa.array(a // 100), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(a % 100), pa.string()), width=2, padding="0")
    text = pc.binary_join_element_wise(whole, frac, ".")
    sign = pa.array(np.where(cents < 0, "-", ""))
    return pc.binary_join_element_wise(sign, text, "")


def const(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


class ChunkText:
    """String columns of one chunk, built once and shared by every format."""

    def __init__(self, ev: Events):
        self.ev = ev

    @functools.cached_property
    def user(self) -> pa.Array:
        return ids(self.ev.user)

    @functools.cached_property
    def item(self) -> pa.Array:
        return ids(self.ev.item)

    @functools.cached_property
    def category(self) -> pa.Array:
        return ids(self.ev.category)

    @functools.cached_property
    def session(self) -> pa.Array:
        n = pc.cast(pa.array(self.ev.session), pa.string())
        return pc.binary_join_element_wise(f"s{self.ev.chunk}_", n, "")

    @functools.cached_property
    def value(self) -> pa.Array:
        ev = self.ev
        rated = ev.behavior == RATING
        present = (ev.cents > 0) | rated
        # format only the ~10% of events that carry a value, then spread them out with a take
        where = np.flatnonzero(present)
        stars = pc.cast(pa.array(ev.rating[where]), pa.string())
        text = pc.if_else(pa.array(rated[where]), stars, money(ev.cents[where]))
        slot = np.cumsum(present) - 1
        return text.take(pa.array(slot, mask=~present))

    @functools.cached_property
    def ts_iso(self) -> pa.Array:
        return iso(self.ev.ts)

    @functools.cached_property
    def ts_s(self) -> pa.Array:
        return pc.cast(pa.array(self.ev.ts), pa.string())

    @functools.cached_property
    def ts_ms(self) -> pa.Array:
        return pc.cast(pa.array(self.ev.ts * 1000), pa.string())


def canonical_table(ev: Events) -> pa.Table:
    """The chunk's clean events in ``GENERIC_SCHEMA``, canonical behaviour names."""
    text = ChunkText(ev)
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


# --- formats ---------------------------------------------------------------------------------------

USER, ITEM, BEHAVIOR, VALUE, TS = "user", "item", "behavior", "value", "ts"

# (format, text, rows, labels, chunk_events) -> field -> array of the format's clean rows
Renderer = Callable[["Format", ChunkText, np.ndarray, pa.Array, int], dict]


@dataclass(frozen=True)
class Format:
    name: str
    ext: str
    header: tuple[str, ...] | None  # file header line; None: no header
    fields: tuple[str, ...]  # fields of a row, in order
    roles: dict[str, str]  # role -> field, for the fields dirty rows corrupt
    labels: tuple[str | None, ...]  # behaviour code -> word in this format; None: not written
    ts_unit: str  # iso | s | ms | timestamp
    kinds: tuple[str, ...]  # dirty-row reason codes this format can carry
    render: Renderer  # the format's clean columns

    def rows_of(self, ev: Events) -> np.ndarray:
        """Indices of the chunk's events this format writes."""
        written = np.array([label is not None for label in self.labels])
        return np.flatnonzero(written[ev.behavior])

    def columns(self, text: ChunkText, rows: np.ndarray, chunk_events: int) -> dict:
        """Field -> array for the format's clean rows (strings; typed for parquet)."""
        words = pa.array([label or "" for label in self.labels])
        labels = words.take(pa.array(text.ev.behavior[rows]))
        return self.render(self, text, rows, labels, chunk_events)

    def render_ts(self, ts: np.ndarray) -> pa.Array:
        if self.ts_unit == "timestamp":
            return pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC"))
        if self.ts_unit == "iso":
            return iso(ts)
        return pc.cast(pa.array(ts * (1000 if self.ts_unit == "ms" else 1)), pa.string())


def _picker(text: ChunkText, rows: np.ndarray):
    everything = len(rows) == len(text.ev)
    take = pa.array(rows)
    return lambda a: a if everything else a.take(take)


def _render_generic(fmt: Format, text: ChunkText, rows, labels, chunk_events) -> dict:
    ev, pick = text.ev, _picker(text, rows)
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


def _render_taobao(fmt: Format, text: ChunkText, rows, labels, chunk_events) -> dict:
    pick = _picker(text, rows)
    return {
        "user_id": pick(text.user),
        "item_id": pick(text.item),
        "category_id": pick(text.category),
        "behavior": labels,
        "ts": pick(text.ts_s),
    }


def _render_retailrocket(fmt: Format, text: ChunkText, rows, labels, chunk_events) -> dict:
    ev, pick = text.ev, _picker(text, rows)
    # one transaction id per purchase, unique across chunks
    bought = ev.behavior[rows] == PURCHASE
    tid = pc.cast(pa.array(ev.chunk * chunk_events + rows), pa.string())
    return {
        "timestamp": pick(text.ts_ms),
        "visitorid": pick(text.user),
        "event": labels,
        "itemid": pick(text.item),
        "transactionid": pc.if_else(pa.array(bought), tid, pa.scalar(None, pa.string())),
    }


_GENERIC_ROLES = {
    USER: S.USER_ID,
    ITEM: S.ITEM_ID,
    BEHAVIOR: S.BEHAVIOR,
    VALUE: S.VALUE,
    TS: S.TS,
}
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

FORMAT_SPECS: dict[str, Format] = {
    name: Format(
        name=name,
        ext=name,
        header=GENERIC_COLUMNS if name == "csv" else None,
        fields=GENERIC_COLUMNS,
        roles=_GENERIC_ROLES,
        labels=S.CANONICAL_BEHAVIORS,
        ts_unit="timestamp" if name == "parquet" else "iso",
        kinds=_PARQUET_KINDS if name == "parquet" else S.REASON_CODES,
        render=_render_generic,
    )
    for name in ("csv", "jsonl", "parquet")
}
FORMAT_SPECS["taobao"] = Format(
    name="taobao",
    ext="csv",
    header=None,
    fields=_TAOBAO_FIELDS,
    roles={USER: "user_id", ITEM: "item_id", BEHAVIOR: "behavior", TS: "ts"},
    labels=("pv", "pv", "cart", "fav", "buy", None),  # rating events are not written
    ts_unit="s",
    kinds=_CSV_LIKE_KINDS,
    render=_render_taobao,
)
FORMAT_SPECS["retailrocket"] = Format(
    name="retailrocket",
    ext="csv",
    header=_RETAILROCKET_FIELDS,
    fields=_RETAILROCKET_FIELDS,
    roles={USER: "visitorid", ITEM: "itemid", BEHAVIOR: "event", TS: "timestamp"},
    labels=("view", "view", "addtocart", None, "transaction", None),  # no fav, no rating
    ts_unit="ms",
    kinds=_CSV_LIKE_KINDS,
    render=_render_retailrocket,
)
FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet", "taobao", "retailrocket")
assert tuple(FORMAT_SPECS) == FORMATS


# --- lines -----------------------------------------------------------------------------------------


def lines(fmt: Format, cols: dict, malformed: int = 0) -> pa.Array:
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


def write_lines(fh, rows: pa.Array) -> None:
    """Write binary lines, each followed by a newline, straight from the Arrow buffers."""
    rows = pc.binary_join_element_wise(rows, b"", b"\n").cast(pa.large_binary())
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)
    offsets = offsets[rows.offset : rows.offset + len(rows) + 1]
    fh.write(memoryview(rows.buffers()[2])[offsets[0] : offsets[-1]])
