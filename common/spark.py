"""The one SparkSession factory.

Local runs get Delta through ``delta.configure_spark_with_delta_pip`` and sizes that suit
``local[2]``; on a cluster (``spark-submit``, Spark on Kubernetes) the master and packages come from
the submitter and every ``spark.conf`` entry of the config passes through verbatim.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark import SparkConf
from pyspark.sql import SparkSession

from common.config import Config

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


def get_spark(cfg: Config) -> SparkSession:
    """Create (or return the running) SparkSession for ``cfg``.

    The master is set only when the config names one and spark-submit has not already set it.
    A checkpoint directory is always set (ALS lineage overflows the stack without one).
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
    if sc.delta_pip and not already_has_delta:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    if (sc.master or "").startswith("local") and not submitted:
        # local Python workers are forked from this process's environment; the conf alone is
        # not read for them, and the system interpreter lacks numpy / pandas
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(sc.log_level)
    ckpt = sc.checkpoint_dir or str(Path(cfg.lake) / "_checkpoints")
    spark.sparkContext.setCheckpointDir(ckpt)
    return spark
