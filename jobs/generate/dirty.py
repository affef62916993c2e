"""Dirty rows and exact duplicates injected among a chunk's clean rows.

Dirty row k (numbered across the whole run) has kind ``fmt.kinds[k % len(kinds)]``, so kinds stay
balanced whatever the chunking, and is a clean row of its chunk with exactly one fault (reason
codes from ``common.schema``). Duplicates are exact copies of clean rows, scattered elsewhere.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import schema as S
from jobs.generate.render import (
    BEHAVIOR,
    GENERIC_SCHEMA,
    ITEM,
    TS,
    USER,
    VALUE,
    Format,
    const,
    lines,
    money,
)
from jobs.generate.sessions import DAY_S, Events
from jobs.generate.world import RATING

YEAR_2150_S = int(datetime(2150, 1, 1, tzinfo=timezone.utc).timestamp())
BAD_ID = b"\xff\xfe"  # invalid UTF-8 in any position


def dirty_rows(
    fmt: Format, ev: Events, rows: np.ndarray, cols: dict, first: int, count: int, rng
) -> tuple[list, dict[str, int]]:
    """``count`` dirty rows, the global dirty-row numbers ``first .. first+count-1``.

    Returns (tables (parquet) or line arrays, {reason: rows}).
    """
    kinds = fmt.kinds
    numbers = np.arange(first, first + count)
    out: list = []
    counts = dict.fromkeys(kinds, 0)
    behavior = ev.behavior[rows]
    has_value = np.flatnonzero((ev.cents[rows] > 0) | (behavior == RATING))
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
            dcols[role[USER]] = pa.nulls(n, dcols[role[USER]].type)
        elif kind == S.MISSING_ITEM:
            dcols[role[ITEM]] = pa.nulls(n, dcols[role[ITEM]].type)
        elif kind == S.BAD_TS:
            dcols[role[TS]] = const("not-a-time", n)
        elif kind == S.TS_OUT_OF_RANGE:
            in_year = rng.integers(DAY_S, 364 * DAY_S, n)
            dcols[role[TS]] = fmt.render_ts(np.where(variant == 0, 0, YEAR_2150_S) + in_year)
        elif kind == S.UNKNOWN_BEHAVIOR:
            dcols[role[BEHAVIOR]] = const("teleport", n)
        elif kind == S.BAD_VALUE:
            # jsonl values are bare numbers; a quoted "abc" keeps the line valid JSON
            dcols[role[VALUE]] = const('"abc"' if fmt.name == "jsonl" else "abc", n)
        elif kind == S.VALUE_OUT_OF_RANGE:
            rated = behavior[base] == RATING
            cents = ev.cents[rows][base]
            if fmt.ts_unit == "timestamp":
                dcols[role[VALUE]] = pa.array(np.where(rated, 9.0, -cents / 100))
            else:
                dcols[role[VALUE]] = pc.if_else(pa.array(rated), "9", money(-cents))
        elif kind == S.BAD_ENCODING:
            item = dcols[role[ITEM]].cast(pa.binary())
            dcols[role[ITEM]] = pc.binary_join_element_wise(item, BAD_ID, b"")
        if fmt.name == "parquet":
            out.append(pa.table(dcols, schema=GENERIC_SCHEMA))
        elif kind == S.MALFORMED:
            # half drop a field, half add one: lines built per variant, kept in base order
            parts = [
                lines(
                    fmt,
                    {f: c.filter(pa.array(variant == v)) for f, c in dcols.items()},
                    malformed=1 + v,
                )
                for v in (0, 1)
            ]
            out.extend(parts)
        else:
            out.append(lines(fmt, dcols))
    return out, counts


def duplicate_rows(n_clean: int, n_dup: int, rng) -> pa.Array:
    """Indices of the clean rows to repeat (distinct while there are enough rows)."""
    return pa.array(rng.choice(n_clean, n_dup, replace=n_dup > n_clean) if n_dup else [], pa.int64())


def interleave(n_clean: int, n_extra: int, rng) -> np.ndarray:
    """Row order that keeps clean rows in order and scatters extra rows among them."""
    total = n_clean + n_extra
    is_extra = np.zeros(total, dtype=bool)
    is_extra[rng.choice(total, n_extra, replace=False)] = True
    order = np.empty(total, dtype=np.int64)
    order[~is_extra] = np.arange(n_clean)
    order[is_extra] = n_clean + rng.permutation(n_extra)
    return order
