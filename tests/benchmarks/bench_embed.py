"""`reclake embed` (Ray Data batch inference) against SentenceTransformer.encode in one process.

    python tests/benchmarks/bench_embed.py [--items 20000] [--batch-size 64] [--concurrency 1]
                                           [--num-cpus 2] [--num-gpus 0] [--repeats 2]

Generates ``--items`` seeded catalogue texts (10-25 words: brand, product, features, category),
writes them as ``silver/items`` (and ``silver/item_index`` for half of them) in a temp lake, then
prints from one run:

- (b) ``SentenceTransformer.encode(texts, batch_size=...)`` of the same packaged model in this
  process (same ``max_seq_length``, normalised): items/s, the median of ``--repeats`` runs, half
  before and half after (a), so a shared machine's load falls on both sides;
- (a) the stage's path, :func:`raytrain.embed.embed_run` on the lake (``read_delta`` -> hash and
  select -> ``map_batches(TextEmbedder)`` -> delta-rs write): wall time and items/s including
  Ray's start-up and excluding it, and the embedding phase alone (actor start, model load,
  inference, write); the largest difference between its vectors and (b)'s;
- the ratio (a) excluding Ray's start-up / (b) (target >= 0.75 at 20k items).

CPU: one actor with ``--num-cpus`` = all cores (default), so the actor's torch runs as many threads
as the in-process encode does (torch's default is one per core); two 1-CPU actors on 2 cores
would each run one thread and hold a model copy each, for no gain. GPU machine:
``--num-gpus 1`` (the reference then runs on CUDA too) and a larger ``--batch-size``.
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

BRANDS = ["Acme", "Northwind", "Zephyr", "Lumen", "Kestrel", "Orbit", "Maple & Co", "Vantage",
          "Heron", "Solace", "Tundra", "Quill"]
PRODUCTS = {
    "Kitchen": ["electric kettle", "chef's knife", "cast iron skillet", "espresso machine",
                "blender", "rice cooker", "cutting board"],
    "Sports": ["running shoes", "yoga mat", "trail backpack", "cycling helmet", "tennis racket",
               "water bottle", "fitness tracker"],
    "Books": ["space opera novel", "detective thriller", "cookbook", "history of Rome",
              "poetry collection", "graphic novel", "field guide to birds"],
    "Electronics": ["wireless headphones", "mechanical keyboard", "4K monitor", "smart speaker",
                    "portable charger", "action camera", "e-reader"],
    "Home": ["linen duvet cover", "floor lamp", "wool rug", "ceramic vase", "blackout curtains",
             "bookshelf", "scented candle"],
}
ADJECTIVES = ["lightweight", "durable", "compact", "premium", "classic", "ergonomic", "handmade",
              "waterproof", "minimalist", "vintage", "rechargeable", "award-winning"]
FEATURES = ["stainless steel body", "two-year warranty", "fast charging", "breathable mesh",
            "soft-touch grip", "dishwasher safe parts", "noise cancelling", "recycled materials",
            "a matte black finish", "an illustrated hardcover edition", "adjustable straps",
            "a long battery life", "gift-ready packaging", "a cosy oversized fit",
            "easy assembly in minutes"]
USES = ["everyday use", "long weekends away", "small apartments", "beginners and experts",
        "cold winter mornings", "the home office", "family dinners", "rainy commutes"]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` catalogue texts of about 10-25 words, seeded."""
    rng = np.random.default_rng(seed)
    cats = list(PRODUCTS)
    out = []
    for _ in range(n):
        cat = cats[rng.integers(len(cats))]
        feats = rng.choice(FEATURES, size=int(rng.integers(1, 4)), replace=False)
        text = (f"{BRANDS[rng.integers(len(BRANDS))]} {ADJECTIVES[rng.integers(len(ADJECTIVES))]} "
                f"{PRODUCTS[cat][rng.integers(len(PRODUCTS[cat]))]} for "
                f"{USES[rng.integers(len(USES))]}, with {' and '.join(feats)}. {cat}")
        out.append(text)
    return out


def make_lake(root: str, texts: list[str]) -> None:
    """silver/items (ITEMS_SCHEMA) of ``texts``; silver/item_index for every other item."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from common import lake as L
    from common import schema as S
    from raytrain import lake_io as IO

    n = len(texts)
    ids = [f"item-{i:06d}" for i in range(n)]
    now = IO.utc_now()
    items = pa.table({
        S.ITEM_ID: ids, S.ITEM_IDX: pa.nulls(n, pa.int32()), S.TITLE: [t.split(",")[0]
                                                                      for t in texts],
        S.TEXT: texts, S.CATEGORY_PATH: [[t.rsplit(". ", 1)[-1]] for t in texts],
        S.BRAND: pa.nulls(n, pa.string()), S.ATTRIBUTES: pa.nulls(n, pa.map_(pa.string(),
                                                                              pa.string())),
        S.SOURCE: ["bench"] * n, S.BATCH_ID: ["bench"] * n, S.INGEST_TS: [now] * n,
    }, schema=IO.arrow_schema(S.ITEMS_SCHEMA))
    write_deltalake(f"{root}/{L.SILVER_ITEMS}", items)
    write_deltalake(f"{root}/{L.SILVER_ITEM_INDEX}", pa.table({
        S.ITEM_ID: ids[::2], S.ITEM_IDX: pa.array(np.arange(len(ids[::2]), dtype=np.int32))}))


def encode_in_process(model, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    vecs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        show_progress_bar=False)
    return time.perf_counter() - t0, vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=1, help="embedding actors")
    ap.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1),
                    help="CPUs per actor (default: all cores, see the docstring)")
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    ap.add_argument("--repeats", type=int, default=2, help="in-process encode runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    import torch

    from common import lake as L
    from common.config import load_config
    from raytrain import embed as E

    texts = make_texts(args.items, args.seed)
    words = [len(t.split()) for t in texts]
    root = tempfile.mkdtemp(prefix="bench-embed-")
    lake_root = f"{root}/lake"
    make_lake(lake_root, texts)
    cfg = load_config(values={
        "lake": lake_root, "embed.batch_size": args.batch_size,
        "embed.concurrency": args.concurrency, "embed.num_cpus": args.num_cpus,
        "embed.num_gpus": args.num_gpus, "embed.num_cpus_local": os.cpu_count()})
    device = E.device_of(cfg)
    print(f"bench_embed: {args.items:,} items ({min(words)}-{max(words)} words, mean "
          f"{statistics.mean(words):.1f}), batch {args.batch_size}, {args.concurrency} actor(s) "
          f"x {args.num_cpus:g} CPU / {args.num_gpus:g} GPU, device={device}, "
          f"cpus={os.cpu_count()}, torch={torch.__version__} ({torch.get_num_threads()} threads), "
          f"ray={ray.__version__}; figures from a shared machine")

    model, _ = E.load_encoder(cfg, device=device)  # verified; max_seq_length as the stage
    from sentence_transformers import SentenceTransformer

    assert isinstance(model, SentenceTransformer)
    encode_in_process(model, texts[:256], args.batch_size)  # warm-up
    before = (args.repeats + 1) // 2
    times, ref = [], None
    for _ in range(before):
        dt, ref = encode_in_process(model, texts, args.batch_size)
        times.append(dt)

    t0 = time.perf_counter()
    res = E.embed_run(cfg)
    wall = time.perf_counter() - t0
    s = res["seconds"]

    for _ in range(args.repeats - before):
        dt, ref = encode_in_process(model, texts, args.batch_size)
        times.append(dt)

    from deltalake import DeltaTable

    dt_ = DeltaTable(f"{lake_root}/{L.MODELS_TEXT_EMBEDDINGS}")
    out = dt_.to_pyarrow_table(columns=["item_id", "vector"])
    del dt_
    order = np.argsort(np.array(out.column("item_id").to_pylist()))
    got = np.array(out.column("vector").to_pylist(), dtype=np.float32)[order]
    diff = float(np.abs(got - ref).max())

    n = res["embedded"]
    enc = statistics.median(times)
    excl = wall - s["ray_start"]
    print(f"(b) in-process encode: {[round(t, 1) for t in times]} s, median {enc:.1f}s, "
          f"{args.items / enc:,.1f} items/s")
    print(f"(a) reclake embed: {n:,} items; wall {wall:.1f}s incl. Ray start-up "
          f"({n / wall:,.1f} items/s), {excl:.1f}s excl. ({n / excl:,.1f} items/s); "
          f"ray.init {s['ray_start']:.1f}s, weights check {s['verify']:.2f}s, read+select "
          f"{s['select']:.1f}s, embed+write {s['embed']:.1f}s ({n / s['embed']:,.1f} items/s)")
    print(f"max |vector difference| (a) vs (b): {diff:.2e}")
    print(f"RATIO reclake embed excl. Ray start-up / in-process encode (items/s): "
          f"{(n / excl) / (args.items / enc):.2f} (target >= 0.75); incl. Ray start-up "
          f"{(n / wall) / (args.items / enc):.2f}")
    ray.shutdown()
    os._exit(0)  # delta-rs readers: skip the thread-pool shutdown race at exit


if __name__ == "__main__":
    main()
