"""`reclake` command line: global flags, then one subcommand per stage.

    reclake [global flags] STAGE [stage flags]       (global flags may also follow STAGE)
    global: --lake PATH --config FILE --master URL --set key=value ... --verbose

Every stage is also ``spark-submit jobs/<stage>.py [same flags]``: each stage module ends with
``if __name__ == "__main__": sys.exit(run_stage("<stage>"))``.

The stage-module protocol:

- ``add_arguments(parser)``: arguments use a dotted config key as ``dest``
  (``dest="generate.users"``) so a flag is nothing but a config override. ``required=True`` on such
  a flag shows it as required in the usage, and is satisfied by the flag or by the config file /
  ``--set`` (checked once the config is merged, before Spark starts).
- ``preflight(cfg)`` (optional): checks that need no Spark (a known source format, a path given);
  raise ``ConfigError`` / ``FileNotFoundError`` and the stage stops before the JVM starts.
- ``main(spark, cfg)``. Modules with ``NEEDS_SPARK = False`` get ``spark=None`` (``NEEDS_SPARK``
  may also be a function of the config: ``fit`` of a Ray model starts no JVM).

A stage's help line is the first sentence of its module docstring. Bad input (argument, config,
missing input, an ``InputError`` such as an empty batch under ``fail_on_empty``) ends with one
``reclake STAGE: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from common.config import ConfigError, load_config
from common.errors import ConcurrentWriteError, InputError

EXIT_BAD_INPUT = 2
EXIT_CONFLICT = 3  # another writer kept committing first: nothing half-written, run again

STAGES: dict[str, str] = {
    "generate": "jobs.generate",
    "ingest": "jobs.ingest",
    "ingest-items": "jobs.ingest_items",
    "transform": "jobs.transform",
    "split": "jobs.split",
    "fit": "jobs.fit",
    "als": "jobs.als",
    "train": "raytrain.train",
    "tune": "raytrain.tune",
    "embed": "raytrain.embed",
    "evaluate": "jobs.evaluate",
    "influence": "jobs.influence",
    "maintain": "jobs.maintain",
    "forget": "jobs.forget",
    "pipeline": "jobs.pipeline",
    "demo": "jobs.demo",
}


class StageParser(argparse.ArgumentParser):
    """ArgumentParser whose ``required=True`` on a config-key flag (dest with a dot) is checked
    against the merged config rather than the command line, so ``--set run.run_id=R`` or a config
    file satisfy it too; the usage still shows the flag as required."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config_required: list[argparse.Action] = []

    def adopt_config_flags(self) -> None:
        """Once the stage's arguments are added (argument groups included): a config-key flag
        with ``required=True`` is enforced after config merging instead of by argparse, and a
        value flag without a metavar shows its key's last part (``RUN_ID``, not ``RUN.RUN_ID``)."""
        for action in self._actions:  # argparse keeps every action here, groups' too
            if "." not in action.dest:
                continue
            if action.required:
                action.required = False
                self.config_required.append(action)
            if action.metavar is None and action.nargs != 0:
                action.metavar = action.dest.rsplit(".", 1)[-1].upper()

    def _shown_required(self, fmt):
        for a in self.config_required:
            a.required = True
        try:
            return fmt()
        finally:
            for a in self.config_required:
                a.required = False

    def format_usage(self) -> str:
        return self._shown_required(super().format_usage)

    def format_help(self) -> str:
        return self._shown_required(super().format_help)


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    para = re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0]
    para = " ".join(para.split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", para, maxsplit=1)[0]


def _first_paragraph(doc: str | None) -> str:
    return " ".join(re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0].split())


def _add_global_options(p: argparse.ArgumentParser, *, after_stage: bool = False) -> None:
    """The global flags. After the stage name they default to SUPPRESS, so that a flag given
    before the stage is not reset by the stage's parser; ``--set`` there collects separately and
    is applied after the ones given before the stage."""
    unset = argparse.SUPPRESS if after_stage else None
    g = p.add_argument_group("global options") if after_stage else p
    g.add_argument("--lake", dest="lake", default=unset, metavar="PATH",
                   help="lake root (default ./lake)")
    g.add_argument("--config", dest="_config", default=unset, metavar="FILE",
                   help="YAML config file (configs/default.yaml lists every key)")
    g.add_argument("--master", dest="spark.master", default=unset, metavar="URL",
                   help="Spark master (default local[2])")
    g.add_argument("--set", dest="_overrides_after" if after_stage else "_overrides",
                   action="append", default=unset if after_stage else [], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set confidence.f=linear (repeatable)")
    g.add_argument("--verbose", dest="spark.verbose", action="store_const", const=True,
                   default=unset,
                   help="show Ivy resolution, Spark's start-up log and its warnings")


def _global_parser(add_help: bool = True) -> StageParser:
    p = StageParser(
        prog="reclake",
        add_help=add_help,
        description="Recommendations and behaviour-influence analysis on a Delta lake.",
    )
    _add_global_options(p)
    return p


def _required(parser: StageParser) -> tuple[tuple[str, str], ...]:
    return tuple((a.dest, a.option_strings[0]) for a in parser.config_required)


def _add_stage_parser(sub, name: str):
    module = importlib.import_module(STAGES[name])
    sp = sub.add_parser(name, help=first_sentence(module.__doc__),
                        description=_first_paragraph(module.__doc__))
    module.add_arguments(sp)
    sp.adopt_config_flags()
    _add_global_options(sp, after_stage=True)
    sp.set_defaults(_required=_required(sp))
    return module


def parse(argv: Sequence[str] | None) -> tuple[object, argparse.Namespace]:
    parser = _global_parser()
    sub = parser.add_subparsers(dest="_stage", required=True, metavar="STAGE")
    modules = {name: _add_stage_parser(sub, name) for name in STAGES}
    ns = parser.parse_args(argv)
    return modules[ns._stage], ns


def _get_dotted(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def config_from_namespace(ns: argparse.Namespace):
    """The merged config: file, then ``--set`` (before, then after the stage), then flags; a
    ``required=True`` config flag left unset by all of them is a ConfigError naming the flag."""
    values = {k: v for k, v in vars(ns).items() if not k.startswith("_") and v is not None}
    overrides = [*getattr(ns, "_overrides", []), *getattr(ns, "_overrides_after", [])]
    cfg = load_config(getattr(ns, "_config", None), overrides=overrides, values=values)
    for dest, flag in getattr(ns, "_required", ()):
        if _get_dotted(cfg, dest) is None:
            raise ConfigError(f"{flag} is required (or set {dest} in the config)")
    return cfg


def _stage_name(module) -> str:
    """The command name of a stage module (``jobs.ingest_items`` -> ``ingest-items``)."""
    by_module = {m: name for name, m in STAGES.items()}
    return by_module.get(module.__name__, module.__name__.rsplit(".", 1)[-1])


def execute(module, cfg) -> int:
    """Run a stage: its preflight checks, then Spark (unless ``NEEDS_SPARK = False``), then
    ``main`` inside a checkpoint folder of its own that is removed when it ends. Bad input ends
    with one clear line and ``EXIT_BAD_INPUT``."""
    stage = _stage_name(module)
    try:
        preflight = getattr(module, "preflight", None)
        if preflight is not None:
            preflight(cfg)
        needs_spark = getattr(module, "NEEDS_SPARK", True)
        if callable(needs_spark):
            needs_spark = needs_spark(cfg)
        if not needs_spark:
            module.main(None, cfg)
            return 0
        from common.spark import get_spark, stage_checkpoints

        spark = get_spark(cfg)
        try:
            with stage_checkpoints(spark, cfg, stage):
                module.main(spark, cfg)
        except (ConfigError, FileNotFoundError, InputError, ConcurrentWriteError, SystemExit):
            raise
        except Exception:
            from common.spark import keep_console_log

            where = keep_console_log()
            if where:
                print(f"reclake {stage}: Spark's console output is in {where}", file=sys.stderr)
            raise
    except (ConfigError, FileNotFoundError, InputError) as e:
        print(f"reclake {stage}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConcurrentWriteError as e:
        print(f"reclake {stage}: error: {e}", file=sys.stderr)
        return EXIT_CONFLICT
    except SystemExit as e:  # a stage that still exits with a message: same one-line form
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        msg = str(e.code).removeprefix(f"{stage}: ")
        print(f"reclake {stage}: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    module, ns = parse(argv)
    try:
        cfg = config_from_namespace(ns)
    except ConfigError as e:
        print(f"reclake {ns._stage}: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return execute(module, cfg)


def stage_parser(stage: str) -> StageParser:
    """The parser of ``spark-submit jobs/<stage>.py``: global and stage flags in any order."""
    module = importlib.import_module(STAGES[stage])
    parser = _global_parser()
    parser.prog = f"jobs/{stage}.py"
    parser.description = _first_paragraph(module.__doc__)
    module.add_arguments(parser)
    parser.adopt_config_flags()
    parser.set_defaults(_required=_required(parser))
    return parser


def run_stage(stage: str, argv: Sequence[str] | None = None) -> int:
    """Entry for ``spark-submit jobs/<stage>.py [global and stage flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(STAGES[stage])
    ns = stage_parser(stage).parse_args(argv)
    try:
        cfg = config_from_namespace(ns)
    except ConfigError as e:
        print(f"reclake {stage}: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return execute(module, cfg)


if __name__ == "__main__":
    sys.exit(main())
