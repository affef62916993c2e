"""The one SparkSession factory.

Local runs get Delta through ``delta.configure_spark_with_delta_pip`` and sizes that suit
``local[2]``; on a cluster (``spark-submit``, Spark on Kubernetes) the master and packages come from
the submitter and every ``spark.conf`` entry of the config passes through verbatim.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark import SparkConf
from pyspark.sql import SparkSession

from common.config import Config

# Loggers whose warnings say nothing to a user of these jobs (not shown unless --verbose):
# WindowExec warns "No Partition Defined" for every global-order window (the id indices use one
# on purpose, over a batch's new ids only); Utils about the loopback hostname.
QUIET_LOGGERS = (
    "org.apache.spark.sql.execution.window.WindowExec",
    "org.apache.spark.util.Utils",
    "org.apache.hadoop.util.NativeCodeLoader",
)

# where the JVM's console output goes when not --verbose: {"path": str | None, "keep": bool}
_CONSOLE = {"path": None, "keep": False}

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _base_conf(cfg: Config) -> dict[str, str]:
    sc = cfg.spark
    conf = {
        **DELTA_CONF,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.ui.enabled": str(sc.ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        # Delta rebuilds table state with this many tasks (default 50): far too many locally
        "spark.databricks.delta.snapshotPartitions": str(max(1, sc.shuffle_partitions)),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.sources.partitionOverwriteMode": "static",
        # Python workers must run this interpreter (the venv's), or pandas UDFs fail
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if sc.driver_memory:
        conf["spark.driver.memory"] = sc.driver_memory
    conf.update({str(k): str(v) for k, v in sc.conf.items()})
    return conf


def delta_jars_installed() -> bool:
    """Whether Delta's JAR is already in Spark's own ``jars/`` folder (``$SPARK_HOME/jars``, else
    pip pyspark's): an image with the JARs baked in (deploy/*/Dockerfile) then needs no Ivy
    resolution at start-up, and no network."""
    homes = [os.environ.get("SPARK_HOME")]
    try:
        import pyspark

        homes.append(os.path.dirname(pyspark.__file__))
    except ImportError:  # pragma: no cover - pyspark is a dependency
        pass
    return any(h and any(Path(h, "jars").glob("delta-spark_*.jar")) for h in homes)


def get_spark(cfg: Config) -> SparkSession:
    """Create (or return the running) SparkSession for ``cfg``.

    The master is set only when the config names one and spark-submit has not already set it.
    Unless ``spark.verbose``, a JVM this call starts writes its console (Ivy's dependency
    resolution, log4j's start-up lines, later warnings) to a temporary log file, removed at exit
    unless ``keep_console_log`` was called; the warnings of ``QUIET_LOGGERS`` are dropped.
    No checkpoint directory is set here: ``stage_checkpoints`` gives each stage its own.
    """
    sc = cfg.spark
    builder = SparkSession.builder.appName(sc.app_name)
    submitted = SparkConf().contains("spark.master")
    if sc.master and not submitted:
        builder = builder.master(sc.master)
    for k, v in _base_conf(cfg).items():
        builder = builder.config(k, v)
    already_has_delta = any(
        "delta" in SparkConf().get(k, "") for k in ("spark.jars.packages", "spark.jars")
    )
    if sc.delta_pip and not already_has_delta and not delta_jars_installed():
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    if (sc.master or "").startswith("local") and not submitted:
        # local Python workers are forked from this process's environment; the conf alone is
        # not read for them, and the system interpreter lacks numpy / pandas
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if sc.verbose or SparkSession.getActiveSession() is not None:
        spark = builder.getOrCreate()
    else:
        with _console_to_log_file():
            spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(sc.log_level)
    if not sc.verbose:
        _quiet_loggers(spark)
    return spark


@contextmanager
def _console_to_log_file() -> Iterator[None]:
    """Point this process's stdout / stderr at a log file while the JVM starts: the JVM inherits
    them and keeps writing there; this process gets its own back afterwards."""
    if _CONSOLE["path"] is None:
        fd, path = tempfile.mkstemp(prefix="reclake-spark-", suffix=".log")
        os.close(fd)
        _CONSOLE["path"] = path
        atexit.register(_remove_console_log)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log_fd = os.open(_CONSOLE["path"], os.O_WRONLY | os.O_APPEND)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield
    except Exception:
        _CONSOLE["keep"] = True  # e.g. "Java gateway process exited": the reason is in the file
        raise
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        if _CONSOLE["keep"]:
            print(f"Spark's console output is in {_CONSOLE['path']}", file=sys.stderr)


def keep_console_log() -> str | None:
    """Keep the JVM's console log past exit (a stage failed); returns its path, if any."""
    if _CONSOLE["path"] is None:
        return None
    _CONSOLE["keep"] = True
    return _CONSOLE["path"]


def _remove_console_log() -> None:
    if _CONSOLE["path"] and not _CONSOLE["keep"]:
        Path(_CONSOLE["path"]).unlink(missing_ok=True)


def _quiet_loggers(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    error = jvm.org.apache.logging.log4j.Level.ERROR
    for name in QUIET_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, error)


def checkpoint_root(cfg: Config) -> str:
    """``spark.checkpoint_dir``, else ``<lake>/_checkpoints``."""
    if cfg.spark.checkpoint_dir:
        return cfg.spark.checkpoint_dir
    return cfg.lake.rstrip("/") + "/_checkpoints" if "://" in cfg.lake else str(
        Path(cfg.lake).absolute() / "_checkpoints")


@contextmanager
def stage_checkpoints(spark: SparkSession, cfg: Config, name: str = "stage") -> Iterator[str]:
    """Checkpoint under ``<checkpoint root>/<name>-<random>`` for the block, then delete that
    folder (and the root, if nothing else is left in it). ALS's lineage overflows the stack
    without checkpoints, so every stage gets a directory; none is left behind.

        with stage_checkpoints(spark, cfg, "fit"):
            model = als.fit(train)

    Spark has no way to unset a checkpoint directory: after the block it still names the deleted
    folder, which Spark recreates if anything checkpoints there later.
    """
    root = checkpoint_root(cfg)
    folder = f"{root}/{name}-{uuid.uuid4().hex[:12]}"
    sc = spark.sparkContext
    sc.setCheckpointDir(folder)
    try:
        yield folder
    finally:
        jvm = sc._jvm
        path = jvm.org.apache.hadoop.fs.Path(folder)
        fs = path.getFileSystem(sc._jsc.hadoopConfiguration())
        fs.delete(path, True)
        parent = jvm.org.apache.hadoop.fs.Path(root)
        try:
            if fs.exists(parent) and len(fs.listStatus(parent)) == 0:
                fs.delete(parent, False)
        except Exception:  # another stage's folder appeared meanwhile: leave the root
            pass
