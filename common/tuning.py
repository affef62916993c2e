"""Search spaces, trial records and best configs of ``reclake tune`` (no Ray, no Spark here).

A search-space file (``configs/tune/<model>.yaml``) names config keys and their distributions::

    space:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      ncf.dim_gmf: {choice: [16, 32, 64]}
      ncf.layers: {choice: [[64, 32, 16], [128, 64, 32]]}
      confidence.weights.cart: {uniform: [0.0, 8.0]}     # ALS: behaviour weights
      confidence.half_life_days: {choice: [null, 7, 30]}
    baseline:                 # optional: one point evaluated first (e.g. uniform weights)
      confidence.weights.cart: 1.0
    fixed:                    # optional: keys every trial, the refit and --from-best use
      confidence.weights.purchase: 1.0

Distributions: ``uniform [lo, hi]``, ``loguniform [lo, hi]``, ``quniform [lo, hi, q]``,
``randint [lo, hi)`` and ``choice [values]`` (values that are not scalars, such as layer lists,
reach the searcher as JSON strings and are decoded before the trial applies them). Every key
must be a config key (``confidence.weights.<b>`` entries included) and every value it can take
must pass the config's validation: both are checked before anything starts.

``metrics/tune_trials`` holds every trial of a sweep; ``metrics/best_configs`` the best config
per sweep (model, dataset, protocol), its valid score and, after the refit on train + valid,
its test score. ``reclake train|als --from-best`` applies the latest one (:func:`apply_best`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import schema as S
from common.config import Config, ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "quniform", "randint", "choice")
REPO_ROOT = Path(__file__).resolve().parents[1]
#: config sections a model's sweep may change
TUNABLE_SECTIONS: dict[str, tuple[str, ...]] = {
    "als": ("als", "confidence"),
    "ncf": ("train", "ncf"),
    "sasrec": ("train", "sasrec"),
    "lightgcn": ("train", "lightgcn"),
}
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One searched key: its distribution and arguments (``choice``: the values)."""

    key: str
    kind: str
    args: tuple

    @property
    def encoded(self) -> bool:
        """Whether the values reach the searcher as JSON strings (non-scalar choices)."""
        return self.kind == "choice" and any(not isinstance(v, _SCALARS) for v in self.args)

    def values_to_check(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if self.kind == "randint":
            return [int(lo), int(hi) - 1]
        return [lo, hi]


@dataclass(frozen=True)
class Space:
    path: str
    params: tuple[Param, ...]
    baseline: Mapping[str, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # set for every trial

    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def decode(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """A searcher's sample -> config overrides (JSON-encoded choices decoded)."""
        enc = {p.key for p in self.params if p.encoded}
        return {k: json.loads(v) if k in enc and isinstance(v, str) else v
                for k, v in sampled.items()}

    def encode(self, point: Mapping[str, Any]) -> dict[str, Any]:
        enc = {p.key for p in self.params if p.encoded}
        return {k: json.dumps(v) if k in enc else v for k, v in point.items()}


def default_space_path(model: str) -> str:
    return str(REPO_ROOT / "configs" / "tune" / f"{model}.yaml")


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"{where}: {key} must be one of {{{'|'.join(DISTRIBUTIONS)}: ...}}, "
                          f"got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: {key}: unknown distribution {kind!r} "
                          f"(known: {', '.join(DISTRIBUTIONS)})")
    args = _as_list(args)
    if kind == "choice":
        if not args:
            raise ConfigError(f"{where}: {key}: choice needs at least one value")
        return Param(key, kind, tuple(args))
    need = 3 if kind == "quniform" else 2
    if len(args) != need or not all(isinstance(a, (int, float)) for a in args):
        raise ConfigError(f"{where}: {key}: {kind} takes {need} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise ConfigError(f"{where}: {key}: {kind} needs lo < hi"
                          + (" and lo > 0" if kind == "loguniform" else "") + f", got {args!r}")
    return Param(key, kind, tuple(args))


def load_space(path: str, *, model: str, cfg: Config) -> Space:
    """Parse and check a search-space file for ``model`` against ``cfg`` (keys exist, are in the
    model's sections, every value passes validation)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"search-space file {path} does not exist (tune.space / --space; "
                                f"the repo ships configs/tune/<model>.yaml)")
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, Mapping) or not isinstance(doc.get("space"), Mapping) \
            or not doc["space"]:
        raise ConfigError(f"{path}: needs a non-empty 'space:' mapping of config keys")
    unknown = sorted(set(doc) - {"space", "baseline", "fixed"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown} (space, baseline, fixed)")
    params = tuple(parse_param(str(k), v, path) for k, v in doc["space"].items())
    baseline = dict(doc.get("baseline") or {})
    sections = TUNABLE_SECTIONS.get(model)
    if sections is None:
        raise ConfigError(f"tune supports {', '.join(TUNABLE_SECTIONS)}; got model {model!r}")
    for p in params:
        if p.key.split(".", 1)[0] not in sections:
            hint = (" (deep models read confidence only as > 0: behaviour weights are ALS's)"
                    if p.key.startswith("confidence.") else "")
            raise ConfigError(f"{path}: {p.key} is not a {model} key; a {model} sweep may change "
                              f"{', '.join(s + '.*' for s in sections)}{hint}")
        for v in p.values_to_check():
            check_override(cfg, p.key, v, where=path)
    if baseline and set(baseline) != {p.key for p in params}:
        missing = sorted({p.key for p in params} - set(baseline))
        extra = sorted(set(baseline) - {p.key for p in params})
        raise ConfigError(f"{path}: the baseline must give every key of the space and no other"
                          + (f"; missing {missing}" if missing else "")
                          + (f"; not in the space {extra}" if extra else ""))
    for k, v in baseline.items():
        check_override(cfg, k, v, where=f"{path} baseline")
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"{path}: 'fixed:' must map config keys to values")
    fixed = {str(k): v for k, v in fixed.items()}
    both = sorted(set(fixed) & {p.key for p in params})
    if both:
        raise ConfigError(f"{path}: {both} both searched and fixed; keep one")
    for k, v in fixed.items():
        if k.split(".", 1)[0] not in sections:
            raise ConfigError(f"{path}: fixed {k} is not a {model} key")
        check_override(cfg, k, v, where=f"{path} fixed")
    return Space(path=path, params=params, baseline=baseline, fixed=fixed)


def check_override(cfg: Config, key: str, value: Any, *, where: str) -> None:
    try:
        cfg.with_(**{key: value})
    except ConfigError as e:
        raise ConfigError(f"{where}: {key}={value!r}: {e}") from e


# --- tables ---------------------------------------------------------------------------------------

def tune_trials_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("sweep_id", pa.string(), False), pa.field(S.MODEL, pa.string(), False),
        pa.field(S.DATASET, pa.string()), pa.field(S.PROTOCOL, pa.string(), False),
        pa.field("trial_id", pa.string(), False), pa.field("status", pa.string(), False),
        pa.field("params", pa.string()),  # JSON: config key -> value
        pa.field(S.METRIC, pa.string(), False),
        pa.field("best_value", pa.float64()), pa.field("best_iteration", pa.int32()),
        pa.field("iterations", pa.int32()),
        pa.field("history", pa.list_(pa.struct([("iteration", pa.int32()),
                                                 ("value", pa.float64())]))),
        pa.field("seconds", pa.float64()), pa.field("error", pa.string()),
        pa.field("baseline", pa.bool_()),
        pa.field(S.CREATED_AT, pa.timestamp("us", tz="UTC")),
    ])


def best_configs_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("sweep_id", pa.string(), False), pa.field(S.MODEL, pa.string(), False),
        pa.field(S.DATASET, pa.string()), pa.field(S.PROTOCOL, pa.string(), False),
        pa.field("trial_id", pa.string(), False),
        pa.field("params", pa.string(), False),  # JSON: config key -> value (refit settings)
        pa.field(S.METRIC, pa.string(), False), pa.field("target", pa.string()),
        pa.field("valid_value", pa.float64()),
        pa.field("test_value", pa.float64()),  # after the refit on train + valid
        pa.field("refit_run_id", pa.string()),
        # the space's baseline point (when it has one): its params, valid and refit test values
        pa.field("baseline_params", pa.string()), pa.field("baseline_value", pa.float64()),
        pa.field("baseline_test_value", pa.float64()),
        # a sweep of behaviour weights: the best config with every weight 1, refit and tested
        pa.field("uniform_weights_test_value", pa.float64()),
        pa.field("trials", pa.int32()),
        pa.field("seconds", pa.float64()), pa.field("inputs", pa.string()),  # JSON versions
        pa.field(S.CREATED_AT, pa.timestamp("us", tz="UTC")),
    ])


def read_best(lake, *, model: str, dataset: str, protocol: str) -> dict | None:
    """The latest ``metrics/best_configs`` row of (model, dataset, protocol), or None."""
    from common import lake as L

    path = lake.path(L.METRICS_BEST_CONFIGS)
    if "://" not in path and not os.path.isdir(os.path.join(path, "_delta_log")):
        return None
    from deltalake import DeltaTable

    dt = DeltaTable(path)
    try:
        t = dt.to_pyarrow_table(filters=[(S.MODEL, "=", model), (S.DATASET, "=", dataset),
                                         (S.PROTOCOL, "=", protocol)])
    finally:
        del dt
    if t.num_rows == 0:
        return None
    rows = sorted(t.to_pylist(), key=lambda r: r[S.CREATED_AT])
    return rows[-1]


def apply_best(cfg: Config, lake) -> Config:
    """``cfg`` with the best config of the latest sweep of its (model, dataset, protocol)
    applied (``run.from_best``); a ConfigError when there is none."""
    model, protocol = cfg.run.model, cfg.split.protocol
    dataset = cfg.run.dataset or cfg.ingest.source_format
    best = read_best(lake, model=model, dataset=dataset, protocol=protocol)
    if best is None:
        raise ConfigError(f"--from-best: no best config for model {model!r}, dataset "
                          f"{dataset!r}, protocol {protocol!r} in metrics/best_configs; run "
                          f"`reclake tune --model {model} --protocol {protocol}` first")
    params = json.loads(best["params"])
    print(f"from best config of sweep {best['sweep_id']} (valid {best[S.METRIC]} "
          f"{best['valid_value']:.4f}): " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return cfg.with_(**params)
