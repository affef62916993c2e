"""Logging with per-stage row counts and timings."""

from __future__ import annotations

import logging
import sys
import time
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
