"""bench_scale's core at a tiny scale: every stage timed at both scales, figures in the JSON.

Slow: two scales of the whole pipeline (ingest to top-K) take ~95 s on 2 cores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
import bench_scale  # noqa: E402


@pytest.mark.slow
@pytest.mark.spark
def test_two_tiny_scales_give_every_stage_figure(spark, tmp_path: Path):
    out = tmp_path / "scale.json"
    args = bench_scale.parse_args([
        "--scales", "0.01,0.02", "--warmup-events", "0", "--users-per-million", "20000",
        "--items", "300", "--rank", "4", "--iters", "1", "--workdir", str(tmp_path),
        "--out", str(out)])
    lines: list[str] = []
    result = bench_scale.run_all(args, spark=spark, progress=lines.append)
    bench_scale.write_result(result, out)

    saved = json.loads(out.read_text())
    assert [s["events"] for s in saved["scales"]] == [10_000, 20_000]
    for scale, per_m in zip(saved["scales"], saved["s_per_m_events"], strict=True):
        assert set(scale["seconds"]) == set(bench_scale.STAGES)
        assert all(v > 0 for v in scale["seconds"].values())
        assert per_m["ingest"] == pytest.approx(scale["seconds"]["ingest"] / scale["events"] * 1e6)
        assert scale["rows"]["silver"] == scale["events"]  # the generator's clean rows, all kept
        assert scale["rows"]["recommendations"] > 0
        assert scale["users"] == scale["events"] // 50 and scale["items"] == 300
        assert scale["heap_used_peak"] > 0 and scale["python_driver_peak_rss"] > 0
    assert set(saved["ratios"]) == {*bench_scale.STAGES, "total"}
    assert saved["ratio_scales"] == [10_000, 20_000]
    assert all(isinstance(v, bool) for v in saved["pass"].values())
    assert any(line.strip().startswith("als_topk") for line in lines)  # progress per stage
    assert not any(tmp_path.glob("reclake-scale-*"))  # the temporary lakes are gone
