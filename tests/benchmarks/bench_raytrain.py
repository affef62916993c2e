"""Ray Train against a bare torch loop: same model, data, batches and epochs.

    python tests/benchmarks/bench_raytrain.py [--users 6000] [--items 3000] [--pairs 300000]
                                              [--epochs 3] [--model ncf] [--use-gpu]

Prints, from one run on a generated lake (gold/splits written with deltalake, no Spark):
- the bare single-process torch loop: seconds per epoch and samples/s (examples from in-memory
  tensors, negatives drawn by the same sampler);
- Ray Train with 1 worker: the same epochs' seconds (from the loop's own per-epoch timings, so
  Ray's start-up is excluded) and the ratio to the bare loop (target <= 1.25), and Ray's start-up
  (ray.init, and the rest of the fit outside the epochs: worker group, dataset set-up) apart;
- Ray Train with 2 workers: samples/s (on 2 cores this measures overhead, not speed-up);
- loading the training data: from Delta (pinned read with Ray Data + the index build) against
  from in-memory arrays.
With --use-gpu (a machine with CUDA), the same with use_gpu and AMP (train.amp auto).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def make_lake(root: str, *, users: int, items: int, pairs: int, seed: int = 0) -> None:
    """gold/splits (protocol stratified, train only) with Zipf-popular items."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from common import lake as L

    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, pairs)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    i = rng.choice(items, pairs, p=pop / pop.sum())
    key = np.unique(u.astype(np.int64) * items + i)
    n = len(key)
    table = pa.table({
        "protocol": pa.array(["stratified"] * n), "split": pa.array(["train"] * n),
        "user_idx": pa.array((key // items).astype(np.int32)),
        "item_idx": pa.array((key % items).astype(np.int32)),
        "confidence": pa.array(np.ones(n)),
        "ts": pa.array(np.full(n, 1_700_000_000_000_000, dtype="datetime64[us]")),
    })
    write_deltalake(f"{root}/{L.GOLD_SPLITS}", table, partition_by=["protocol"])


def bare_loop(cfg, data, pairs: np.ndarray, *, epochs: int, device: str) -> list[float]:
    """Seconds per epoch of a plain torch loop over in-memory pairs (same model, batch size,
    sampler, optimiser, clipping) — the baseline."""
    import torch

    from raytrain import data as D
    from raytrain.models import build
    from raytrain.train import amp_dtype

    t = cfg.train
    torch.manual_seed(t.seed)
    net = build(cfg.run.model, n_users=data.n_users, n_items=data.n_items, cfg=cfg,
                n_behaviors=len(cfg.vocabulary),
                graph=data.train_pairs() if cfg.run.model == "lightgcn" else None).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=t.lr)
    dtype = amp_dtype(t.amp, device)
    n_neg = cfg.ncf.negatives if cfg.run.model == "ncf" else 1
    users = torch.as_tensor(pairs[:, 0])
    items = torch.as_tensor(pairs[:, 1])
    out = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        rng = D.epoch_rng(t.seed, epoch, 0)
        perm = torch.as_tensor(rng.permutation(len(pairs)))
        for s in range(0, len(pairs), t.batch_size):
            idx = perm[s:s + t.batch_size]
            u = users[idx]
            neg = torch.as_tensor(D.sample_negatives(u.numpy(), n_neg, data, rng))
            batch = {"user_idx": u.to(device), "item_idx": items[idx].to(device),
                     "neg_items": neg.to(device)}
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = net(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=300_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="ncf", choices=["ncf", "lightgcn"])
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--use-gpu", action="store_true")
    args = ap.parse_args()

    import ray
    import torch

    from common.config import load_config
    from common.lake import Lake
    from raytrain import data as D
    from raytrain.train import load_state, train_run

    root = tempfile.mkdtemp(prefix="bench-raytrain-")
    lake_root = f"{root}/lake"
    make_lake(lake_root, users=args.users, items=args.items, pairs=args.pairs)
    device = "cuda" if args.use_gpu else "cpu"
    base = {"lake": lake_root, "run.model": args.model, "train.epochs": args.epochs,
            "train.batch_size": args.batch_size, "train.patience": 0,
            "train.use_gpu": args.use_gpu, "train.score_batch": 1024,
            "evaluate.k": [10], "train.num_cpus": os.cpu_count()}
    cfg = load_config(values=base)
    lake = Lake(lake_root)
    print(f"bench_raytrain: model={args.model} device={device} torch={torch.__version__} "
          f"ray={ray.__version__} cpus={os.cpu_count()} amp={cfg.train.amp}")

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray_init = time.perf_counter() - t0

    # loading: Delta (pinned Ray Data read + index) vs in-memory arrays
    t0 = time.perf_counter()
    versions = D.pin_versions(lake, ["gold/splits"])
    data, ds = D.load_train_data(lake, cfg, versions)
    pairs = np.stack([np.repeat(np.arange(data.n_users), np.diff(data.seen_indptr)),
                      data.seen_indices], axis=1).astype(np.int64)
    load_delta = time.perf_counter() - t0
    t0 = time.perf_counter()
    _ = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    load_mem = time.perf_counter() - t0
    n = len(pairs)
    print(f"data: {data.n_users:,} users x {data.n_items:,} items, {n:,} train pairs")
    print(f"load: Delta -> Ray Data -> index {load_delta:.2f}s; in-memory tensors "
          f"{load_mem * 1000:.1f} ms")

    threads = torch.get_num_threads()
    bare = bare_loop(cfg, data, pairs, epochs=args.epochs, device=device)
    bare_med = statistics.median(bare)
    print(f"bare torch loop ({threads} threads): epochs {[round(x, 2) for x in bare]} s, median "
          f"{bare_med:.2f}s, {n / bare_med:,.0f} samples/s")
    # a Ray Train worker with 1 CPU runs torch with 1 thread (Ray sets OMP_NUM_THREADS): the
    # same-resources baseline
    torch.set_num_threads(1)
    bare1 = bare_loop(cfg, data, pairs, epochs=args.epochs, device=device)
    bare1_med = statistics.median(bare1)
    torch.set_num_threads(threads)
    print(f"bare torch loop (1 thread, as a 1-CPU worker): epochs "
          f"{[round(x, 2) for x in bare1]} s, median {bare1_med:.2f}s, "
          f"{n / bare1_med:,.0f} samples/s")

    results = {}
    for workers in (1, 2):
        if args.use_gpu and workers > torch.cuda.device_count():
            continue
        # every worker leaves Ray Data a CPU: on 2 cores, 2 workers get half a CPU each
        cpus = 1.0 if workers * 1.0 + 1 <= (os.cpu_count() or 1) or workers == 1 else 0.5
        c = cfg.with_(**{"train.num_workers": workers, "run.run_id": f"bench-{workers}w",
                         "train.fresh": True, "train.cpus_per_worker": cpus})
        t0 = time.perf_counter()
        rec = train_run(c)
        total = time.perf_counter() - t0
        hist = load_state(rec.artefacts["checkpoint"])["history"]
        epochs = [h["epoch_s"] for h in hist]
        med = statistics.median(epochs)
        sps = statistics.median([h["samples_per_s"] for h in hist])
        results[workers] = (med, sps)
        outside = rec.seconds["fit"] - sum(h["rank0_s"] for h in hist)
        print(f"ray train {workers} worker(s): epochs {[round(x, 2) for x in epochs]} s, median "
              f"{med:.2f}s, {sps:,.0f} samples/s; fit {rec.seconds['fit']:.1f}s of which "
              f"{outside:.1f}s outside the epochs (worker start-up, dataset set-up); whole run "
              f"{total:.1f}s")
    med1 = results[1][0]
    print(f"ray.init: {ray_init:.1f}s")
    print(f"RATIO ray train 1 worker / bare loop, same threads (median epoch): "
          f"{med1 / bare1_med:.2f} (target <= 1.25); against the {threads}-thread loop: "
          f"{med1 / bare_med:.2f}")
    if 2 in results:
        print(f"samples/s: 1 worker {results[1][1]:,.0f}, 2 workers {results[2][1]:,.0f}")
    ray.shutdown()
    os._exit(0)  # delta-rs readers: skip the thread-pool shutdown race at exit


if __name__ == "__main__":
    main()
