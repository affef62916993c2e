"""Errors a stage reports as one line (``reclake STAGE: error: ...``, exit code 2), no traceback.

``ConfigError`` (common/config.py) covers configuration and arguments; ``FileNotFoundError`` a
missing input or table; ``InputError`` input that exists but cannot be used.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used, e.g. a batch with no rows, or with every row quarantined, when
    ``ingest.fail_on_empty`` is set."""
