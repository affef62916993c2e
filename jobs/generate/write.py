"""Generating every chunk once and writing it in each configured format."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.config import Config, ConfigError, GenerateConfig
from jobs.generate.dirty import dirty_rows, duplicate_rows, interleave
from jobs.generate.manifest import MANIFEST, Tally, manifest, write_manifest
from jobs.generate.render import (
    FORMAT_SPECS,
    FORMATS,
    GENERIC_SCHEMA,
    ChunkText,
    Format,
    canonical_table,
    lines,
    write_lines,
)
from jobs.generate.sessions import (
    DAY_S,
    TRIGGER_NAMES,
    Events,
    chunk_events,
    max_session_events,
    n_chunks,
    window,
)


def validate(g: GenerateConfig) -> None:
    """Reject generate settings that cannot produce the promised output, naming the key."""
    for key in ("users", "items", "events", "days", "categories", "chunk_events", "taste_clusters"):
        if getattr(g, key) < 1:
            raise ConfigError(f"generate.{key} must be >= 1, got {getattr(g, key)}")
    if g.seed < 0:
        raise ConfigError(f"generate.seed must be >= 0, got {g.seed}")
    for key in ("zipf_a", "taste_concentration"):
        if getattr(g, key) <= 0:
            raise ConfigError(f"generate.{key} must be > 0, got {getattr(g, key)}")
    if not 0 <= g.taste_share <= 1:
        raise ConfigError(f"generate.taste_share must be in [0, 1], got {g.taste_share}")
    if g.taste_funnel < 0:
        raise ConfigError(f"generate.taste_funnel must be >= 0, got {g.taste_funnel}")
    if not 0 <= g.fav_rate <= 1:
        raise ConfigError(f"generate.fav_rate must be in [0, 1], got {g.fav_rate}")
    for b, p in g.behavior_signal.items():
        if b not in TRIGGER_NAMES:
            raise ConfigError(
                f"generate.behavior_signal.{b}: '{b}' cannot trigger a planted purchase; "
                f"use some of {', '.join(TRIGGER_NAMES)}"
            )
        if not 0 <= p <= 1:
            raise ConfigError(f"generate.behavior_signal.{b} must be a probability in [0, 1], "
                              f"got {p}")
    if g.behavior_signal and g.items < 2:
        raise ConfigError("generate.behavior_signal needs generate.items >= 2 (a partner item "
                          "is never the item itself)")
    if not 0 <= g.dirty_rate <= 0.5:
        raise ConfigError(f"generate.dirty_rate must be in [0, 0.5], got {g.dirty_rate}")
    unknown = [f for f in g.formats if f not in FORMATS]
    if unknown or not g.formats:
        raise ConfigError(f"generate.formats must name some of {list(FORMATS)}, got {g.formats}")
    longest = max_session_events(g)
    if g.days * DAY_S // n_chunks(g) < longest:
        raise ConfigError(
            f"generate.chunk_events={g.chunk_events} splits {g.days} day(s) into {n_chunks(g)} "
            f"chunks of under {longest} s each; raise chunk_events or days"
        )
    window(g)


def generate_chunk(cfg: Config, chunk_index: int) -> pa.Table:
    """Clean canonical events of one chunk, in time order.

    Columns (``GENERIC_SCHEMA``): user_id, item_id, category_id (decimal id strings), behavior
    (canonical name), value (price on cart/purchase, stars 1..5 on rating, else null), ts
    (timestamp[us, UTC]), session_id (``s<chunk>_<n>``). Exactly ``chunk_events`` rows except in
    the last chunk, which holds the rest of ``events``.
    """
    validate(cfg.generate)
    return canonical_table(chunk_events(cfg.generate, chunk_index))


class FormatWriter:
    """Writes one format's part files chunk by chunk and keeps its manifest counts."""

    def __init__(self, fmt: Format, out: Path, g: GenerateConfig):
        self.fmt, self.g = fmt, g
        self.dir = out / fmt.name
        self.dir.mkdir(parents=True, exist_ok=True)
        # a previous run with more chunks would leave parts this manifest does not list
        for old in self.dir.glob("part-*"):
            old.unlink()
        (self.dir / MANIFEST).unlink(missing_ok=True)
        self.tally = Tally(fmt)

    def write_chunk(self, ev: Events, text: ChunkText) -> None:
        fmt, g, tally = self.fmt, self.g, self.tally
        rng = np.random.default_rng([g.seed, ev.chunk, 1 + FORMATS.index(fmt.name)])
        rows = fmt.rows_of(ev)
        n = len(rows)
        # cumulative rounding: totals are round(rate * all rows) whatever the chunking
        n_dirty = round(g.dirty_rate * (tally.clean + n)) - tally.dirty
        n_dup = round(g.dirty_rate * (tally.clean + n)) - tally.duplicates

        cols = fmt.columns(text, rows, g.chunk_events)
        dirty, counts = dirty_rows(fmt, ev, rows, cols, tally.dirty, n_dirty, rng)
        dup = duplicate_rows(n, n_dup, rng)
        order = pa.array(interleave(n, n_dirty + n_dup, rng))

        name = f"part-{ev.chunk:05d}.{fmt.ext}"
        if fmt.name == "parquet":
            clean = pa.table(cols, schema=GENERIC_SCHEMA)
            table = pa.concat_tables([clean, *dirty, clean.take(dup)]).take(order)
            pq.write_table(table, self.dir / name, compression="snappy")
        else:
            clean = lines(fmt, cols)
            out = pa.concat_arrays([clean, *dirty, clean.take(dup)]).take(order)
            with open(self.dir / name, "wb") as fh:
                if fmt.header:
                    fh.write((",".join(fmt.header) + "\n").encode())
                write_lines(fh, out)
        tally.add(name, ev.behavior[rows], n_dup, counts, ev.trigger[rows])

    def finish(self) -> dict:
        m = manifest(self.tally, self.g)
        write_manifest(self.dir, m)
        return m


def rate(events: int, seconds: float) -> str:
    r = events / max(seconds, 1e-9)
    return f"{r / 1e6:.2f}M events/s" if r >= 1e5 else f"{r / 1e3:.1f}k events/s"


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
    writers = [FormatWriter(FORMAT_SPECS[f], root, g) for f in dict.fromkeys(g.formats)]
    chunks = n_chunks(g)
    t_start = time.perf_counter()
    done = 0
    for i in range(chunks):
        ev = chunk_events(g, i)
        text = ChunkText(ev)
        for w in writers:
            w.write_chunk(ev, text)
        done += len(ev)
        if progress is not None:
            speed = rate(done, time.perf_counter() - t_start)
            progress(f"generate: chunk {i + 1}/{chunks}, {done:,} events, {speed}")
    return {w.fmt.name: w.finish() for w in writers}
