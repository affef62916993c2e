"""Logging with per-stage row counts and timings, and the one summary line each stage ends with."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger("reclake")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(h)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name)


@contextmanager
def timed(log: logging.Logger, what: str):
    """Log start and end of a piece of work with its wall time; yields a dict for extra counts."""
    info: dict = {}
    t0 = time.perf_counter()
    log.info("%s ...", what)
    try:
        yield info
    finally:
        info["seconds"] = time.perf_counter() - t0
        extra = " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                         for k, v in info.items() if k != "seconds")
        log.info("%s done in %.1fs %s", what, info["seconds"], extra)


def summary(stage: str, *, tables: Iterable[str], lake: str, seconds: float | None = None,
            note: str | None = None, **counts: int | float | str) -> str:
    """Print (stdout) and return the one line a stage ends with: what it wrote, and where::

        summary("ingest", tables=[L.BRONZE_EVENTS, L.SILVER_EVENTS], lake=cfg.lake,
                seconds=12.3, rows_in=1000, clean_new=990)
        # reclake ingest: done in 12.3s (rows_in=1,000 clean_new=990); tables bronze/events,
        #   silver/events in /abs/lake

    ``note`` (e.g. "batch already ingested, nothing written") replaces "done"."""
    root = lake if "://" in lake else os.path.abspath(lake)
    head = note or "done"
    if seconds is not None:
        head += f" in {seconds:.1f}s"
    if counts:
        head += " (" + " ".join(
            f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
            for k, v in counts.items()) + ")"
    names = ", ".join(tables)
    line = f"reclake {stage}: {head}; tables {names or 'none'} in {root}"
    print(line, flush=True)
    return line
