"""Generate a deterministic synthetic behaviour log (csv, jsonl, parquet, Taobao, RetailRocket).

Pure NumPy + PyArrow, no Spark. Events are generated and written chunk by chunk
(``generate.chunk_events`` per chunk), so 10M events never sit in memory at once. Chunk ``i`` draws
from ``np.random.default_rng([seed, i])`` and covers the i-th slice of the time window, so the
output depends on the config alone and the part files are in time order, like a real log.

    spark-submit jobs/generate/__main__.py --events 1000000 --out ./demo-data
    python -m jobs.generate --events 10000000 --formats csv,taobao --dirty-rate 0.01
    reclake generate --events 100000 --formats csv,jsonl,parquet,taobao,retailrocket

The world has learnable structure (``world.py``): Zipf item popularity, plus users whose views
follow a mixture over ``generate.taste_clusters`` taste clusters of categories, each cluster with
its own Zipf ranking of its items, and click / cart rates that rise on the user's own clusters.
Optionally (``--behavior-signal cart=0.9,fav=0.4,view=0``, off by default) purchases depend on
earlier behaviours: an event of behaviour b on item i is followed in its session, with probability
p_b, by a purchase of ``partner(i)``, a fixed seeded other item of i's category (``world.py``).

    reclake generate --behavior-signal cart=0.9,fav=0.4,view=0 --fav-rate 0.2

Also writes the item catalogue ``<out>/items/items.csv`` (``catalogue.py``: titles and category
paths whose words follow the taste clusters, so item text carries the planted structure).

Writes ``<out>/<format>/part-NNNNN.<ext>`` (one part per chunk) and ``<out>/<format>/_manifest.json``
(row counts, duplicates, dirty rows by reason code, behaviour counts, seed, files, and the planted
structure's parameters under ``planted``, with ``planted_purchases``: the planted purchases
written per triggering behaviour).

Formats:
    csv, jsonl, parquet   generic: user_id, item_id, behavior, value, ts, session_id, category_id
    taobao                UserBehavior.csv: no header; user_id,item_id,category_id,behavior,ts
                          (pv/cart/fav/buy, unix seconds; rating events are not written)
    retailrocket          events.csv: timestamp,visitorid,event,itemid,transactionid
                          (unix ms, view/addtocart/transaction; fav and rating not written)

With ``--dirty-rate r`` every format also gets round(r * rows) dirty rows, each bad in exactly one
way (reason codes from ``common.schema``, cycled evenly), and round(r * rows) exact duplicates of
clean rows at other positions in the file.

Modules: ``world`` (users, items, categories, tastes), ``sessions`` (window, chunks, sessions and
events), ``render`` (one renderer per format, line encoding), ``dirty`` (dirty rows, duplicates),
``manifest``, ``write`` (chunks -> part files).
"""

from __future__ import annotations

import argparse
import time

from common.config import Config
from jobs.generate.catalogue import write_catalogue
from jobs.generate.manifest import MANIFEST
from jobs.generate.render import FORMATS, GENERIC_COLUMNS, GENERIC_SCHEMA
from jobs.generate.sessions import TRIGGER_NAMES, n_chunks, window
from jobs.generate.world import planted_structure
from jobs.generate.write import generate_chunk, rate, validate, write_formats

NEEDS_SPARK = False

__all__ = [
    "FORMATS",
    "GENERIC_COLUMNS",
    "GENERIC_SCHEMA",
    "MANIFEST",
    "NEEDS_SPARK",
    "add_arguments",
    "generate_chunk",
    "main",
    "n_chunks",
    "parse_behavior_signal",
    "planted_structure",
    "validate",
    "window",
    "write_formats",
]


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
    flag("--taste-clusters", "generate.taste_clusters", "N", "taste clusters of categories", int)
    flag("--taste-share", "generate.taste_share", "R",
         "share of views drawn from the user's taste clusters (the rest by popularity)", float)
    flag("--fav-rate", "generate.fav_rate", "R", "base rate of a fav on a view (default 0.05)",
         float)
    flag("--behavior-signal", "generate.behavior_signal", "B=P,...",
         "planted purchases: P(an event of behaviour B on item i is followed by a purchase of "
         f"partner(i)), B in {','.join(TRIGGER_NAMES)}, e.g. cart=0.9,fav=0.4,view=0",
         parse_behavior_signal)


def parse_behavior_signal(text: str) -> dict[str, float]:
    """``cart=0.9,fav=0.4,view=0`` -> ``{"cart": 0.9, "fav": 0.4, "view": 0.0}`` (an empty text:
    off). Ranges are checked with the rest of the config (``write.validate``)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        b, sep, p = (x.strip() for x in part.partition("="))
        if not sep or not b:
            raise argparse.ArgumentTypeError(
                f"{part!r} must look like BEHAVIOR=PROBABILITY (e.g. cart=0.9)")
        if b not in TRIGGER_NAMES:
            raise argparse.ArgumentTypeError(
                f"{b!r} cannot trigger a planted purchase; use some of {', '.join(TRIGGER_NAMES)}")
        if b in out:
            raise argparse.ArgumentTypeError(f"{b!r} is given twice")
        try:
            out[b] = float(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {p!r} is not a number") from None
    return out


def main(spark, cfg: Config) -> dict[str, dict]:
    """Write the synthetic log in every configured format; ``spark`` is unused (None)."""
    t0 = time.perf_counter()
    manifests = write_formats(cfg, progress=lambda line: print(line, flush=True))
    g = cfg.generate
    items = write_catalogue(g)
    seconds = time.perf_counter() - t0
    print(
        f"generate: {g.events:,} events in {seconds:.1f}s ({rate(g.events, seconds)}) -> {g.out}",
        flush=True,
    )
    for m in manifests.values():
        print(
            f"  {m['format']:<12} {m['rows']:>12,} rows = {m['clean_rows']:,} clean "
            f"+ {m['duplicates']:,} duplicates + {m['dirty']:,} dirty ({len(m['files'])} files)",
            flush=True,
        )
    print(f"  {'items':<12} {g.items:>12,} items (titles, categories) -> {items}", flush=True)
    return manifests
