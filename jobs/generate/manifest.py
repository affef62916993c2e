"""The per-format manifest, ``<out>/<format>/_manifest.json``: row counts (clean, duplicates,
dirty by reason code), behaviour counts (canonical and in the format's own words), the settings,
the part files, and the planted structure (tastes; with ``generate.behavior_signal``, the planted
purchases written per triggering behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import schema as S
from common.config import GenerateConfig
from jobs.generate.render import Format, iso_second
from jobs.generate.sessions import TRIGGER_NAMES, TRIGGERS, window
from jobs.generate.world import planted_structure

MANIFEST = "_manifest.json"


class Tally:
    """Counts of one format's rows, added chunk by chunk."""

    def __init__(self, fmt: Format):
        self.fmt = fmt
        self.files: list[str] = []
        self.clean = self.duplicates = self.dirty = 0
        self.dirty_by_kind = dict.fromkeys(fmt.kinds, 0)
        self.behaviors = dict.fromkeys(S.CANONICAL_BEHAVIORS, 0)
        self.labels: dict[str, int] = {}
        self.planted = dict.fromkeys(TRIGGER_NAMES, 0)

    def add(self, name: str, behavior: np.ndarray, n_dup: int, dirty: dict[str, int],
            trigger: np.ndarray) -> None:
        """One part file: its name, the behaviour codes of its clean rows, its duplicates, dirty
        rows by kind, and its clean rows' triggers (``Events.trigger``: -1 but on planted
        purchases)."""
        self.files.append(name)
        self.clean += len(behavior)
        self.duplicates += n_dup
        for kind, c in dirty.items():
            self.dirty_by_kind[kind] += c
            self.dirty += c
        codes = np.bincount(behavior, minlength=len(S.CANONICAL_BEHAVIORS))
        for code, c in enumerate(codes):
            self.behaviors[S.CANONICAL_BEHAVIORS[code]] += int(c)
            label = self.fmt.labels[code]
            if label is not None:
                self.labels[label] = self.labels.get(label, 0) + int(c)
        for code, b in zip(TRIGGERS, TRIGGER_NAMES, strict=True):
            self.planted[b] += int((trigger == code).sum())


def manifest(tally: Tally, g: GenerateConfig) -> dict:
    """The manifest of one format's finished run."""
    t0, t1 = window(g)
    return {
        "format": tally.fmt.name,
        "rows": tally.clean + tally.duplicates + tally.dirty,
        "clean_rows": tally.clean,
        "duplicates": tally.duplicates,
        "dirty": tally.dirty,
        "dirty_by_kind": tally.dirty_by_kind,
        "behaviors": tally.behaviors,
        "source_behaviors": tally.labels,
        "seed": g.seed,
        "files": tally.files,
        "header": list(tally.fmt.header) if tally.fmt.header else None,
        "events": g.events,
        "users": g.users,
        "items": g.items,
        "categories": g.categories,
        "dirty_rate": g.dirty_rate,
        "window": {"start": iso_second(t0), "end": iso_second(t1)},
        "planted": {**planted_structure(g), "planted_purchases": tally.planted},
    }


def write_manifest(directory: Path, m: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
