"""Scaling benchmark: ingest, transform, split and ALS at growing event counts, in one run.

    make bench-scale
    python tests/benchmarks/bench_scale.py --scales 1,4,16 --out bench-out/scale.json
    python tests/benchmarks/bench_scale.py --scales 0.1,0.4 --keep      # a quick check

For each scale (millions of clean events) the project's generator (``jobs/generate``, through
``bench_etl.ensure_input``: generic CSV, ``--dirty-rate`` dirty rows and as many exact duplicates)
writes a log into a temporary folder, untimed; then, in a fresh Python process with a fresh JVM
(``local[2]``, the same ``--driver-memory`` at every scale), after an untimed warm-up of the
whole pipeline on ``--warmup-events``, the stages run and are timed one by one:

- **ingest** and **transform**: ``bench_etl.run_reclake`` (``ingest.main`` then ``transform.main``
  into a fresh Delta lake);
- **split**: ``split.main``, protocol stratified;
- **als_train** and **als_topk**: ``bench_als.reclake_job`` (``fit.main`` for ALS: the fit, both
  factor tables and the model saved; then the exact seen-excluding top-K for every user).

Data grows the way traffic does: users grow with events (``--users-per-million``, default 20,000,
so ~50 events per user at every scale), the catalogue stays (``--items``, default 20,000). ALS then
sees a matrix 16x taller at 16M than at 1M with about as many interactions per user, and the exact
top-K, which scores every user against every item, does work in proportion to users: every stage
should cost the same per event. (A catalogue growing with the data would make the exact top-K grow
as users x items; docs/scaling.md works that case out from the per-score cost printed here.)
``spark.shuffle_partitions`` grows with the data (``bench_etl.shuffle_partitions``: events /
1.25M, 2 to 16), the ALS blocks and ``recommend.user_batch`` stay at their defaults.

Printed per scale and stage: seconds and seconds per million events; then the cost ratio of the
largest scale to the one before (16M / 4M), PASS within ``--tolerance`` (20%) of 1, else FAIL.

Memory, per scale (one process each, so peaks do not carry over): the Spark UI runs on a free
port for the benchmark and ``/api/v1/applications/<id>/executors`` gives the driver's
``peakMemoryMetrics`` (local mode: the driver is the executor): ``JVMHeapMemory``,
``JVMOffHeapMemory``, and with ``spark.executor.processTreeMetrics.enabled`` the process tree's
``ProcessTreeJVMRSSMemory`` and ``ProcessTreePythonRSSMemory`` (the Python workers). Heap used is
mostly what the collector lets accumulate before it runs (it grows towards ``-Xmx`` whatever the
data), so a thread also samples, every second through JMX, the old generation's usage after the
last collection: the live set, the figure that would grow if a stage held data on the heap. The
Python driver's peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` of the scale's process.

Figures go to ``--out`` (JSON) and, as the last line, ``BENCH_SCALE_RESULT {json}``. Each scale's
folder (log, lake, checkpoints) is deleted after it unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling benchmarks, also when imported by a test
    sys.path.insert(0, str(HERE))

import bench_als  # noqa: E402
import bench_etl  # noqa: E402

from common.config import Config  # noqa: E402

STAGES = ("ingest", "transform", "split", "als_train", "als_topk")
RESULT_PREFIX = "BENCH_SCALE_RESULT "
PROTOCOL = "stratified"
PEAK_KEYS = ("JVMHeapMemory", "JVMOffHeapMemory", "ProcessTreeJVMRSSMemory",
             "ProcessTreePythonRSSMemory", "OnHeapExecutionMemory", "OnHeapStorageMemory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", default="1,4,16",
                   help="millions of clean events, comma-separated (default 1,4,16)")
    p.add_argument("--out", default="./bench-out/scale.json", help="JSON of every figure")
    p.add_argument("--keep", action="store_true", help="keep each scale's log and lake")
    p.add_argument("--workdir", default=None,
                   help="parent of the temporary folders (default: the system's temp dir)")
    p.add_argument("--users-per-million", type=int, default=20_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dirty-rate", type=float, default=0.01)
    p.add_argument("--driver-memory", default="6g", help="the same at every scale")
    p.add_argument("--warmup-events", type=int, default=50_000,
                   help="untimed run of every stage first, in each scale's JVM; 0: none")
    p.add_argument("--tolerance", type=float, default=0.2,
                   help="largest / previous scale cost per event must be within 1 +- this")
    p.add_argument("--in-process", action="store_true",
                   help="run every scale in this process and one Spark session (tests; the "
                        "memory figures then mix scales)")
    p.add_argument("--summarise", default=None, metavar="JSON",
                   help="re-print (and re-summarise in place) the figures of an earlier --out")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one scale: spec JSON path
    a = p.parse_args(argv)
    try:
        a.scale_list = [float(s) for s in a.scales.split(",") if s.strip()]
    except ValueError:
        p.error(f"--scales {a.scales!r}: numbers of millions, e.g. 1,4,16")
    if not a.scale_list or min(a.scale_list) <= 0:
        p.error("--scales needs positive numbers")
    return a


# --- configuration ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scale_config(a: argparse.Namespace, events: int, work: Path, *, ui_port: int | None) -> Config:
    """bench_etl's config (lake, log, shuffle width by size) plus the users, catalogue, ALS and
    monitoring settings of this benchmark."""
    etl_args = argparse.Namespace(events=events, shuffle_partitions=None,
                                  driver_memory=a.driver_memory, dirty_rate=a.dirty_rate)
    conf = {"spark.sql.warehouse.dir": str(work / "warehouse")}
    if ui_port is not None:
        conf.update({
            "spark.ui.port": str(ui_port),
            "spark.port.maxRetries": "50",
            "spark.executor.processTreeMetrics.enabled": "true",
            "spark.executor.metrics.pollingInterval": "1s",
            "spark.executor.heartbeatInterval": "2s",
        })
    return bench_etl.bench_config(etl_args, work).with_(**{
        "generate.users": max(100, round(events / 1e6 * a.users_per_million)),
        "generate.items": a.items,
        "split.protocol": PROTOCOL,
        "als.rank": a.rank,
        "als.max_iter": a.iters,
        "run.dataset": "generated",
        "spark.ui": ui_port is not None,
        "spark.conf": conf,
    })


def say(line: str) -> None:
    print(line, flush=True)


# --- memory ---------------------------------------------------------------------------------------


def rss_now() -> int:
    """This process's resident set now, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class JvmSampler:
    """Samples, every ``interval`` s through JMX, heap used and the old generation's usage after
    its last collection (the live set), keeping the maximum since the last ``take``."""

    def __init__(self, spark, interval: float = 1.0):
        jvm = spark.sparkContext._jvm
        mf = jvm.java.lang.management.ManagementFactory
        self._heap = mf.getMemoryMXBean()
        self._old = [p for p in mf.getMemoryPoolMXBeans() if "Old" in p.getName()
                     or "Tenured" in p.getName()]
        self._interval = interval
        self._lock = threading.Lock()
        self._max = {"heap_used": 0, "old_gen_after_gc": 0, "python_rss": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        heap = self._heap.getHeapMemoryUsage().getUsed()
        live = sum((p.getCollectionUsage().getUsed() if p.getCollectionUsage() else 0)
                   for p in self._old)
        with self._lock:
            for k, v in (("heap_used", heap), ("old_gen_after_gc", live),
                         ("python_rss", rss_now())):
                self._max[k] = max(self._max[k], v)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sample()
            except Exception:  # the gateway closing at the end: nothing left to sample
                return

    def start(self) -> JvmSampler:
        self._thread.start()
        return self

    def take(self) -> dict[str, int]:
        """The maxima since the last call (a sample is taken now too), then reset."""
        try:
            self._sample()
        except Exception:
            pass
        with self._lock:
            out, self._max = dict(self._max), dict.fromkeys(self._max, 0)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def rest_peaks(spark) -> dict[str, int] | None:
    """The driver's ``peakMemoryMetrics`` from the Spark UI's REST API; None without a UI."""
    sc = spark.sparkContext
    url = sc.uiWebUrl
    if not url:
        return None
    try:
        with urllib.request.urlopen(
                f"{url}/api/v1/applications/{sc.applicationId}/executors", timeout=10) as r:
            executors = json.load(r)
    except OSError:
        return None
    driver = next((e for e in executors if e.get("id") == "driver"), None)
    peaks = (driver or {}).get("peakMemoryMetrics") or {}
    return {k: int(peaks[k]) for k in PEAK_KEYS if k in peaks}


# --- one scale ----------------------------------------------------------------------------------


def run_stages(spark, cfg: Config, sampler: JvmSampler | None, run_id: str,
               progress=say) -> dict:
    """Every timed stage on cfg's log into a fresh lake; seconds, rows and per-stage memory."""
    from jobs import split

    out: dict = {"seconds": {}, "memory": {}, "rows": {}}

    def mark(stage: str, seconds: float) -> None:
        out["seconds"][stage] = seconds
        if sampler is not None:
            out["memory"][stage] = sampler.take()
        progress(f"  {stage:<10} {seconds:8.1f}s")

    if sampler is not None:
        sampler.take()  # what came before (warm-up, start-up) is not the first stage's
    t0 = time.perf_counter()
    ing, tr, audit, gold = bench_etl.run_reclake(spark, cfg)
    out["seconds"]["ingest"] = ing
    progress(f"  {'ingest':<10} {ing:8.1f}s")
    mark("transform", tr)  # one memory window covers both (run_reclake runs them back to back)
    t = time.perf_counter()
    counts = split.main(spark, cfg)
    mark("split", time.perf_counter() - t)
    train_s, topk_s, record = bench_als.reclake_job(spark, cfg, run_id)
    mark("als_train", train_s)
    mark("als_topk", topk_s)
    out["wall_s"] = time.perf_counter() - t0
    out["rows"] = {
        "input": audit["rows_in"], "silver": audit["rows_clean_new"],
        "duplicates": audit["rows_duplicate"], "quarantined": audit["rows_quarantined"],
        "interactions": gold.get("gold/interactions", 0),
        "train": record.counts["train_rows"],
        "recommendations": record.counts["recommendation_rows"],
        "split": {k: v for k, v in counts.items() if k.startswith("rows_")},
    }
    return out


def run_scale(spark, spec: dict, progress=say) -> dict:
    """One scale in the given session (spec: events, work, warmup_work, args)."""
    a = argparse.Namespace(**spec["args"])
    events, work = spec["events"], Path(spec["work"])
    ui_port = spec.get("ui_port")
    cfg = scale_config(a, events, work, ui_port=ui_port)
    sampler = JvmSampler(spark).start()
    try:
        if spec.get("warmup_work"):
            t = time.perf_counter()
            warm = scale_config(a, a.warmup_events, Path(spec["warmup_work"]), ui_port=ui_port)
            run_stages(spark, warm, None, "scale-warmup", progress=lambda _: None)
            progress(f"  warm-up on {a.warmup_events:,} events (untimed): "
                     f"{time.perf_counter() - t:.1f}s")
        res = run_stages(spark, cfg, sampler, f"scale-{events}", progress)
        time.sleep(3 if ui_port else 0)  # one more heartbeat brings the last peaks to the UI
        res["peaks"] = rest_peaks(spark)
        res["jvm"] = sampler.take()
    finally:
        sampler.stop()
    res["python_driver_peak_rss"] = peak_rss_self()
    res.update(events=events, users=cfg.generate.users, items=cfg.generate.items,
               shuffle_partitions=cfg.spark.shuffle_partitions,
               als_blocks=[cfg.als.num_user_blocks, cfg.als.num_item_blocks],
               user_batch=cfg.recommend.user_batch, driver_memory=cfg.spark.driver_memory)
    # the JVM samples of the whole scale, maximum over stages
    stage_mem = [m for m in res["memory"].values() if m]
    res["live_set_peak"] = max((m["old_gen_after_gc"] for m in stage_mem), default=None)
    res["heap_used_peak"] = max((m["heap_used"] for m in stage_mem), default=None)
    return res


def child_main(spec_path: str) -> int:
    """Entry of a scale's own process: a fresh JVM with the UI on, the result as JSON."""
    from common.spark import get_spark

    spec = json.loads(Path(spec_path).read_text())
    a = argparse.Namespace(**spec["args"])
    cfg = scale_config(a, spec["events"], Path(spec["work"]), ui_port=spec["ui_port"])
    spark = get_spark(cfg)
    try:
        res = run_scale(spark, spec)
    finally:
        spark.stop()
    Path(spec["result"]).write_text(json.dumps(res))
    return 0


# --- the run --------------------------------------------------------------------------------------


def per_million(res: dict) -> dict[str, float]:
    m = res["events"] / 1e6
    return {s: res["seconds"][s] / m for s in STAGES}


def mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def summarise(results: list[dict], tolerance: float) -> dict:
    """Cost per million events per stage and scale; the last scale / the one before."""
    summary: dict = {"s_per_m_events": [per_million(r) for r in results], "tolerance": tolerance}
    if len(results) >= 2:
        summary["fixed_marginal"] = fixed_marginal(results)
        last, prev = summary["s_per_m_events"][-1], summary["s_per_m_events"][-2]
        ratios = {s: last[s] / prev[s] for s in STAGES}
        total = sum(results[-1]["seconds"].values()) / results[-1]["events"]
        total_prev = sum(results[-2]["seconds"].values()) / results[-2]["events"]
        ratios["total"] = total / total_prev
        summary["ratio_scales"] = [results[-2]["events"], results[-1]["events"]]
        summary["ratios"] = ratios
        summary["pass"] = {s: abs(r - 1) <= tolerance for s, r in ratios.items()}
    return summary


def fixed_marginal(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per stage, a least-squares line seconds = fixed + marginal * millions of events over the
    scales: what does not grow with the data, and what every further million costs."""
    import numpy as np

    m = np.array([r["events"] / 1e6 for r in results])
    out = {}
    for stage in (*STAGES, "total"):
        y = np.array([sum(r["seconds"].values()) if stage == "total" else r["seconds"][stage]
                      for r in results])
        marginal, fixed = np.polyfit(m, y, 1)
        out[stage] = {"fixed_s": float(fixed), "marginal_s_per_m": float(marginal)}
    return out


def print_table(results: list[dict], summary: dict) -> None:
    head = f"{'events':>8} " + " ".join(f"{s:>10}" for s in (*STAGES, "total"))
    print("\nseconds per million events")
    print(head)
    for r, pm in zip(results, summary["s_per_m_events"], strict=True):
        total = sum(r["seconds"].values()) / (r["events"] / 1e6)
        print(f"{r['events'] / 1e6:>7g}M " + " ".join(f"{pm[s]:>10.1f}" for s in STAGES)
              + f" {total:>10.1f}")
    if "ratios" in summary:
        a, b = (e / 1e6 for e in summary["ratio_scales"])
        print(f"{b:g}M/{a:g}M " + " ".join(
            f"{summary['ratios'][s]:>10.2f}" for s in (*STAGES, "total")))
        print(" " * 9 + " ".join(
            f"{'PASS' if summary['pass'][s] else 'FAIL':>10}" for s in (*STAGES, "total"))
              + f"   (within +-{summary['tolerance']:.0%})")
    if "fixed_marginal" in summary:
        fm = summary["fixed_marginal"]
        print("fixed s  " + " ".join(f"{fm[s]['fixed_s']:>10.1f}" for s in (*STAGES, "total")))
        print("s/M more " + " ".join(
            f"{fm[s]['marginal_s_per_m']:>10.1f}" for s in (*STAGES, "total"))
              + "   (least squares over the scales)")
    print("\npeak memory (MiB): JVM heap used | old gen after GC (live set) | JVM off-heap | "
          "JVM RSS | Python workers RSS | Python driver RSS")
    for r in results:
        p = r.get("peaks") or {}
        print(f"{r['events'] / 1e6:>7g}M  {mib(p.get('JVMHeapMemory', r['heap_used_peak'])):>7} "
              f"{mib(r['live_set_peak']):>7} {mib(p.get('JVMOffHeapMemory')):>7} "
              f"{mib(p.get('ProcessTreeJVMRSSMemory')):>7} "
              f"{mib(p.get('ProcessTreePythonRSSMemory')):>7} "
              f"{mib(r['python_driver_peak_rss']):>7}")


def prepare_log(a: argparse.Namespace, events: int, work: Path) -> dict:
    """The scale's generated log (untimed), in this process so the scale's own is clean."""
    cfg = scale_config(a, events, work, ui_port=None)
    manifest, gen_s = bench_etl.ensure_input(cfg)
    return {"input_rows": manifest["rows"], "generate_s": gen_s}


def run_all(a: argparse.Namespace, spark=None, progress=say) -> dict:
    """Every scale, each in its own process unless ``--in-process`` (or ``spark`` given)."""
    root = Path(tempfile.mkdtemp(prefix="reclake-scale-", dir=a.workdir))
    args = {k: v for k, v in vars(a).items() if k not in ("child", "scale_list")}
    in_process = a.in_process or spark is not None
    own_spark = False
    results: list[dict] = []
    warm_work = None
    try:
        if a.warmup_events > 0:
            warm_work = root / "warmup"
            prepare_log(a, a.warmup_events, warm_work)
        if in_process and spark is None:
            from common.spark import get_spark

            spark, own_spark = get_spark(scale_config(a, 1, root / "session", ui_port=None)), True
        for scale in a.scale_list:
            events = round(scale * 1e6)
            work = root / f"{scale:g}M"
            progress(f"scale {scale:g}M events: generating (untimed)")
            info = prepare_log(a, events, work)
            spec = {"events": events, "work": str(work), "args": args,
                    "warmup_work": str(warm_work) if warm_work else None,
                    "ui_port": None if in_process else free_port(),
                    "result": str(work / "result.json")}
            progress(f"scale {scale:g}M events: {info['input_rows']:,} input rows, timing")
            if in_process:
                res = run_scale(spark, spec, progress=progress)
            else:
                Path(spec["result"]).parent.mkdir(parents=True, exist_ok=True)
                spec_path = work / "spec.json"
                spec_path.write_text(json.dumps(spec))
                env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
                subprocess.run([sys.executable, str(Path(__file__).resolve()),
                                "--child", str(spec_path)], check=True, env=env)
                res = json.loads(Path(spec["result"]).read_text())
            res.update(info)
            results.append(res)
            if not a.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if own_spark:
            spark.stop()
        if a.keep:
            progress(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarise(results, a.tolerance)
    return {"scales": results, **summary,
            "settings": {k: args[k] for k in ("users_per_million", "items", "rank", "iters",
                                              "dirty_rate", "driver_memory", "warmup_events")}}


def write_result(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child:
        return child_main(a.child)
    if a.summarise:
        result = json.loads(Path(a.summarise).read_text())
        result.update(summarise(result["scales"], a.tolerance))
        print_table(result["scales"], result)
        write_result(result, Path(a.summarise))
        return 0
    t = time.perf_counter()
    result = run_all(a)
    result["wall_s"] = time.perf_counter() - t
    print_table(result["scales"], result)
    write_result(result, Path(a.out))
    print(f"\nfigures -> {a.out}")
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
