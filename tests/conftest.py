"""Session-scoped local Spark with Delta (local[2], 2 shuffle partitions) and per-test lakes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import load_config


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "spark" in item.fixturenames and not item.get_closest_marker("spark"):
            item.add_marker(pytest.mark.spark)
        if "ray_local" in item.fixturenames and not item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from common.spark import get_spark

    root = tmp_path_factory.mktemp("spark")
    cfg = load_config(values={
        "lake": str(root / "lake"),
        "spark.shuffle_partitions": 2,
        "spark.driver_memory": "2g",
        "spark.conf": {"spark.sql.warehouse.dir": str(root / "warehouse"),
                       "spark.default.parallelism": "2"},
    })
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def make_cfg(tmp_path):
    """Config with a fresh lake under tmp_path; keyword args are dotted overrides."""

    def make(**values):
        vals = {"lake": str(tmp_path / "lake")}
        vals.update({k.replace("__", "."): v for k, v in values.items()})
        return load_config(values=vals)

    return make


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("RECLAKE_DATA_DIR")
    if not d:
        pytest.skip("RECLAKE_DATA_DIR is not set")
    p = Path(d)
    if not p.is_dir():
        pytest.skip(f"RECLAKE_DATA_DIR={d} is not a directory")
    return p


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs, no dashboard); tests that need Ray take this."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
