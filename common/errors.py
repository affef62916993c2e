"""Errors a stage reports as one line (``reclake STAGE: error: ...``, exit code 2), no traceback.

``ConfigError`` (common/config.py) covers configuration and arguments; ``FileNotFoundError`` a
missing input or table; ``InputError`` input that exists but cannot be used;
``ConcurrentWriteError`` a write that kept losing to other writers of the same table (exit 3:
run it again).
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used, e.g. a batch with no rows, or with every row quarantined, when
    ``ingest.fail_on_empty`` is set."""


class ConcurrentWriteError(RuntimeError):
    """A write that kept losing to other writers of the same table after every retry; nothing of
    the losing step was committed and the stage can be run again as it is."""
