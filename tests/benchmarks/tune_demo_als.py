"""Choose the demo's ALS settings on validation NDCG@10, never looking at the test split.

    .venv/bin/python tests/benchmarks/tune_demo_als.py            # the default grid
    .venv/bin/python tests/benchmarks/tune_demo_als.py --rank 8,16 --alpha 1,4 --max-iter 10

Builds the demo lake (default generate settings, the demo's dirty rate, ``jobs.demo.build_lake``)
and the demo's stratified split. Validation is carved out of that split's *train* side: the
stratified splitter (``jobs.split.split_stratified``, seed ``split.seed + 1``) holds out a
``--valid-share`` of every user's train pairs, cold pairs dropped as the split stage does. Each
grid point is fitted on the rest of train and scored with the demo's
own model code (the registry's ``als`` and ``popularity``, ``common/models.py``; seen items
excluded) and metric (``jobs.evaluate.ranking_metrics``). Prints the
grid sorted by validation NDCG@10 and the best settings, to be copied into ``jobs.demo.DEMO_ALS``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from pyspark.sql import functions as F

from common import lake as L
from common import models
from common import schema as S
from common.config import load_config
from common.lake import Lake
from common.models import TrainContext
from common.spark import get_spark
from jobs import demo, split
from jobs.evaluate import ranking_metrics
from jobs.fit import train_split
from jobs.models.topk import seen_items

K = 10


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="folder for the lake and data (default: a temp dir)")
    p.add_argument("--rank", type=_ints, default=[4, 8, 16])
    p.add_argument("--reg-param", type=_floats, default=[0.01, 0.1, 1.0])
    p.add_argument("--alpha", type=_floats, default=[0.5, 2.0, 8.0])
    p.add_argument("--max-iter", type=_ints, default=[5, 15])
    p.add_argument("--reuse", action="store_true",
                   help="keep the lake already under --work (skip generate .. split)")
    p.add_argument("--valid-share", type=float, default=0.15,
                   help="share of each user's train pairs held out for validation")
    return p.parse_args()


def validation_split(spark, cfg, *, valid_share: float):
    """(fit rows ``user_idx, item_idx, confidence``, validation rows ``user_idx, item_idx``),
    both carved from the demo's stratified train split."""
    splits = Lake(cfg.lake).read(spark, L.GOLD_SPLITS).where(F.col(S.PROTOCOL) == "stratified")
    train = splits.where(F.col(S.SPLIT) == S.TRAIN).drop(S.SPLIT)
    inner_cfg = cfg.with_(**{"split.ratio": 1 - valid_share, "split.valid_ratio": 0.0,
                             "split.seed": cfg.split.seed + 1})
    inner = split.split_stratified(train, cfg=inner_cfg)
    fit = train_split(inner.withColumn(S.PROTOCOL, F.lit("inner")), protocol="inner")
    held = inner.where(F.col(S.SPLIT) == S.TEST).select(S.USER_IDX, S.ITEM_IDX)
    # cold pairs dropped, as the split stage does with split.cold = drop
    valid = (held.join(fit.select(S.USER_IDX).distinct(), S.USER_IDX)
             .join(fit.select(S.ITEM_IDX).distinct(), S.ITEM_IDX))
    return fit.cache(), valid.cache()


def score(spark, cfg, name: str, fit, seen, valid) -> tuple[float, float]:
    """(validation NDCG@K, seconds) of model ``name`` fitted on ``fit``."""
    t = time.perf_counter()
    ctx = TrainContext(spark=spark, lake=Lake(cfg.lake), cfg=cfg, run_id=f"tune-{name}")
    model = models.create(cfg, name)
    model.fit(ctx, fit)
    recs = model.recommend(ctx, seen, k=K)
    return ranking_metrics(recs, valid, ks=[K])[K]["ndcg"], time.perf_counter() - t


def main() -> None:
    args = parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tune-demo-als-"))
    cfg = demo.demo_config(load_config(values={"lake": str(work / "lake"),
                                               "generate.out": str(work / "data")}))
    spark = get_spark(cfg)
    if not spark.sparkContext.getCheckpointDir():
        spark.sparkContext.setCheckpointDir(str(work / "checkpoints"))
    t0 = time.perf_counter()
    if not (args.reuse and Lake(cfg.lake).exists(spark, L.GOLD_SPLITS)):
        demo.build_lake(spark, cfg)
        split.main(spark, cfg.with_(**{"split.protocol": "stratified"}))
    fit, valid = validation_split(spark, cfg, valid_share=args.valid_share)
    seen = seen_items(fit).cache()
    print(f"\nvalidation: {fit.count():,} fit pairs, {valid.count():,} validation pairs, "
          f"{valid.select(S.USER_IDX).distinct().count():,} users "
          f"(lake built in {time.perf_counter() - t0:.0f}s)")

    pop_ndcg, _ = score(spark, cfg, "popularity", fit, seen, valid)
    print(f"popularity: valid ndcg@{K} {pop_ndcg:.4f}\n")
    print(f"{'rank':>4} {'reg_param':>9} {'alpha':>6} {'max_iter':>8}  "
          f"{'valid ndcg@10':>13} {'x pop':>6} {'fit s':>6}")
    results = []
    grid = itertools.product(args.rank, args.reg_param, args.alpha, args.max_iter)
    for rank, reg, alpha, iters in grid:
        params = {"als.rank": rank, "als.reg_param": reg, "als.alpha": alpha,
                  "als.max_iter": iters}
        run_cfg = cfg.with_(**params)
        ndcg, secs = score(spark, run_cfg, "als", fit, seen, valid)
        results.append((ndcg, params))
        print(f"{rank:>4} {reg:>9g} {alpha:>6g} {iters:>8}  {ndcg:>13.4f} "
              f"{ndcg / pop_ndcg:>6.2f} {secs:>6.1f}", flush=True)

    print(f"\nsorted by valid ndcg@{K}:")
    for ndcg, params in sorted(results, key=lambda r: -r[0])[:10]:
        print(f"  {ndcg:.4f}  {params}")
    best_ndcg, best = max(results, key=lambda r: r[0])
    print(f"\nbest: {best}  valid ndcg@{K} {best_ndcg:.4f} = {best_ndcg / pop_ndcg:.2f} x "
          f"popularity {pop_ndcg:.4f}; total {time.perf_counter() - t0:.0f}s")
    spark.stop()


if __name__ == "__main__":
    main()
