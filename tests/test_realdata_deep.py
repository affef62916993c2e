"""Quality bars of the deep models on real data (RECLAKE_DATA_DIR; skipped when it is unset).

Each model trains with its config file from ``configs/`` (what ``make reproduce-deep`` runs).
Hyperparameters and epoch counts in those files were chosen on a validation part carved from the
train share (``split.valid_from: train``), never on the test part these tests score."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import lake as L
from common import schema as S
from common.config import load_config
from common.lake import Lake
from jobs import evaluate, fit, ingest, split, transform

pytestmark = [pytest.mark.realdata, pytest.mark.spark, pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]


def _cfg(name: str, lake: str, **values):
    vals = {"lake": lake, **{k.replace("__", "."): v for k, v in values.items()}}
    return load_config(REPO / "configs" / name, values=vals)


def _metrics(lake: Lake, run_id: str, target: str = "all") -> dict[str, float]:
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(L.METRICS_EVALUATION))
    df = dt.to_pandas()
    del dt
    df = df[(df[S.RUN_ID] == run_id) & (df[S.TARGET] == target) & (df[S.K] == 10)]
    return dict(zip(df[S.METRIC], df[S.VALUE], strict=True))


def _build_lake(spark, cfg, source: str, protocols: tuple[str, ...]) -> None:
    ingest.main(spark, cfg.with_(**{"ingest.path": source}))
    transform.main(spark, cfg)
    for protocol in protocols:
        split.main(spark, cfg.with_(**{"split.protocol": protocol}))


@pytest.fixture(scope="module")
def ml_lake(spark, tmp_path_factory, data_dir) -> str:
    lake = str(tmp_path_factory.mktemp("ml100k-deep") / "lake")
    cfg = _cfg("movielens-100k.yaml", lake)
    _build_lake(spark, cfg, str(data_dir / "movielens-100k" / "u.data"),
                ("stratified", "leave_last_out"))
    return lake


@pytest.fixture(scope="module")
def taobao_lake(spark, tmp_path_factory, data_dir) -> str:
    lake = str(tmp_path_factory.mktemp("taobao-deep") / "lake")
    cfg = _cfg("taobao.yaml", lake)
    _build_lake(spark, cfg, str(data_dir / "taobao-userbehavior-sample" / "UserBehavior.csv"),
                ("leave_last_out",))
    return lake


# The bars are NeuMF >= 0.42 and LightGCN >= 0.45. LightGCN's config, chosen by `reclake
# tune` on validation, measured 0.4511 on test after its refit (docs/results.md); run-to-run noise
# is about 0.002 (Ray Data's batch order), so the test guards 0.445 rather than pass or fail on
# the third decimal.
@pytest.mark.parametrize("model, bar", [("ncf", 0.42), ("lightgcn", 0.445)])
def test_movielens_100k_stratified_quality_bar(ray_local, ml_lake, model, bar):
    """MS Recommenders publishes NCF 0.396 and LightGCN 0.420 NDCG@10 on this protocol."""
    from raytrain.train import train_run

    cfg = _cfg(f"movielens-100k/{model}.yaml", ml_lake, run__run_id=f"ml-{model}")
    assert cfg.split.protocol == "stratified" and cfg.split.valid_ratio == 0  # the plain 75/25
    record = train_run(cfg)
    m = _metrics(Lake(ml_lake), f"ml-{model}")
    print(f"\nML-100K stratified @10 {model}: {m} ({record.counts['epochs_run']} epochs)")
    assert m["users_evaluated"] == 943
    assert m["ndcg"] >= bar, m


def test_movielens_100k_leave_last_out_sasrec_beats_als_and_popularity(spark, ray_local, ml_lake):
    from raytrain.train import train_run

    lake = Lake(ml_lake)
    cfg = _cfg("movielens-100k/sasrec.yaml", ml_lake, run__run_id="ml-sasrec")
    assert cfg.split.protocol == "leave_last_out"
    train_run(cfg)  # early stopping on the protocol's valid item (the one before the test item)
    base = _cfg("movielens-100k.yaml", ml_lake, split__protocol="leave_last_out")
    for model in ("als", "popularity"):
        run = base.with_(**{"run.model": model, "run.run_id": f"ml-llo-{model}"})
        fit.main(spark, run)
        evaluate.main(spark, run)
    got = {m: _metrics(lake, r) for m, r in
           (("sasrec", "ml-sasrec"), ("als", "ml-llo-als"), ("popularity", "ml-llo-popularity"))}
    print("\nML-100K leave_last_out @10:",
          {m: (round(v["ndcg"], 4), round(v["hit_rate"], 4)) for m, v in got.items()})
    for m in got.values():
        assert m["users_evaluated"] >= 940
    for other in ("als", "popularity"):
        assert got["sasrec"]["ndcg"] > got[other]["ndcg"], got
        assert got["sasrec"]["hit_rate"] > got[other]["hit_rate"], got


def test_taobao_sasrec_with_and_without_behaviour_embedding(ray_local, taobao_lake):
    """Both variants on the same leave_last_out split, reported side by side (README). The sample
    is too sparse for either to find much (most last items are cold and dropped); the test checks
    that both runs train, rank every user and are scored on the same users, so it trains 6 of the
    config's 30 epochs (the README's figures are `make reproduce-deep`'s full runs)."""
    from raytrain.train import train_run

    lake = Lake(taobao_lake)
    got = {}
    for on in (True, False):
        run_id = f"tb-sasrec-{'beh' if on else 'nobeh'}"
        cfg = _cfg("taobao/sasrec.yaml", taobao_lake, run__run_id=run_id,
                   sasrec__behavior_embedding=on, train__epochs=6)
        assert cfg.split.protocol == "leave_last_out"
        record = train_run(cfg)
        assert record.params["sasrec.behavior_embedding"] is on
        assert record.counts["recommendation_rows"] == 815 * 10
        got[on] = _metrics(lake, run_id)
    print("\nTaobao leave_last_out @10 SASRec with / without behaviour embedding:",
          {k: (round(v["ndcg"], 4), round(v["hit_rate"], 4)) for k, v in got.items()})
    assert got[True]["users_evaluated"] == got[False]["users_evaluated"] > 100
    for m in got.values():
        assert 0 <= m["ndcg"] <= m["hit_rate"] <= 1
