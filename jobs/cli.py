"""`reclake` command line: global flags, then one subcommand per stage.

    reclake [--lake PATH] [--config FILE] [--master URL] [--set key=value ...] STAGE [stage flags]

Every stage is also ``spark-submit jobs/<stage>.py [same flags]``: each stage module ends with
``if __name__ == "__main__": sys.exit(run_stage("<stage>"))``.

A stage module provides ``add_arguments(parser)`` whose arguments use a dotted config key as
``dest`` (``dest="generate.users"``) so a flag is nothing but a config override, and
``main(spark, cfg)``. Modules with ``NEEDS_SPARK = False`` get ``spark=None``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from common.config import ConfigError, load_config

STAGES: dict[str, str] = {
    "generate": "jobs.generate",
    "ingest": "jobs.ingest",
    "transform": "jobs.transform",
    "split": "jobs.split",
    "als": "jobs.als",
    "evaluate": "jobs.evaluate",
    "influence": "jobs.influence",
    "demo": "jobs.demo",
}


def _global_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reclake",
        add_help=add_help,
        description="Recommendations and behaviour-influence analysis on a Delta lake.",
    )
    p.add_argument("--lake", dest="lake", default=None, help="lake root (default ./lake)")
    p.add_argument("--config", dest="_config", default=None, help="YAML config file")
    p.add_argument(
        "--master", dest="spark.master", default=None, help="Spark master (default local[2])"
    )
    p.add_argument(
        "--set",
        dest="_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set confidence.f=linear (repeatable)",
    )
    return p


def _add_stage_parser(sub, name: str):
    module = importlib.import_module(STAGES[name])
    sp = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(sp)
    return module


def parse(argv: Sequence[str] | None) -> tuple[object, argparse.Namespace]:
    parser = _global_parser()
    sub = parser.add_subparsers(dest="_stage", required=True, metavar="STAGE")
    modules = {name: _add_stage_parser(sub, name) for name in STAGES}
    ns = parser.parse_args(argv)
    return modules[ns._stage], ns


def config_from_namespace(ns: argparse.Namespace):
    values = {
        k: v for k, v in vars(ns).items() if not k.startswith("_") and v is not None
    }
    return load_config(ns._config, overrides=ns._overrides, values=values)


def execute(module, cfg) -> int:
    """Run a stage; configuration and missing-input problems end with one clear line, exit 2."""
    stage = module.__name__.rsplit(".", 1)[-1]
    spark = None
    try:
        if getattr(module, "NEEDS_SPARK", True):
            from common.spark import get_spark

            spark = get_spark(cfg)
        module.main(spark, cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"reclake {stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    module, ns = parse(argv)
    try:
        cfg = config_from_namespace(ns)
    except ConfigError as e:
        print(f"reclake: config error: {e}", file=sys.stderr)
        return 2
    return execute(module, cfg)


def run_stage(stage: str, argv: Sequence[str] | None = None) -> int:
    """Entry for ``spark-submit jobs/<stage>.py [global and stage flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _global_parser()
    module = importlib.import_module(STAGES[stage])
    module.add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_namespace(ns)
    except ConfigError as e:
        print(f"{stage}: config error: {e}", file=sys.stderr)
        return 2
    return execute(module, cfg)


if __name__ == "__main__":
    sys.exit(main())
