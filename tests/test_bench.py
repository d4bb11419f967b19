import csv
import threading
import time

import numpy as np
import pytest
import torch

from deit_demo import bench, charts, report
from deit_demo.bench import BenchResult, BenchSettings, LatencyStats


def test_latency_stats_against_hand_computed_samples():
    stats = LatencyStats([10.0, 12.0, 11.0, 30.0, 9.0], batch_size=4)
    assert stats.median_ms == 11.0
    assert stats.mean_ms == pytest.approx(14.4)
    assert stats.p10_ms == pytest.approx(9.4)  # sorted 9,10,11,12,30: pos 0.4 -> 9 + 0.4*1
    assert stats.p90_ms == pytest.approx(22.8)  # pos 3.6 -> 12 + 0.6*18
    assert stats.iqr_ms == pytest.approx(2.0)  # p75 12 - p25 10
    assert stats.stdev_ms == pytest.approx(np.std([10, 12, 11, 30, 9], ddof=1))
    assert stats.throughput_ips == pytest.approx(4 * 1000 / 11.0)
    samples = list(np.random.default_rng(0).gamma(2, 3, 101))
    for q in (10, 50, 90):
        assert LatencyStats(samples).percentile(q) == pytest.approx(np.percentile(samples, q))


def test_interleaving_runs_blocks_and_drops_the_first_call():
    calls = []
    runners = {name: (lambda x, n=name: calls.append(n)) for name in ("a", "b")}
    settings = BenchSettings(warmup=1, runs=4, block=3)
    samples, peaks = bench.time_interleaved(runners, torch.zeros(1), settings)
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls[2:] == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # two rounds of 3-call blocks
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    assert all(p > 0 for p in peaks.values())


def test_interleaving_measures_with_the_given_clock():
    ticks = iter(range(0, 10_000, 1))
    clock = lambda: next(ticks) / 1000.0  # each reading advances 1 ms
    samples, _ = bench.time_interleaved({"a": lambda x: None}, torch.zeros(1),
                                        BenchSettings(warmup=0, runs=3, block=1), clock=clock)
    assert samples["a"] == pytest.approx([1.0, 1.0, 1.0])


def test_cancel_stops_promptly():
    cancel = threading.Event()
    runners = {"slow": lambda x: time.sleep(0.01)}
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    start = time.perf_counter()
    with pytest.raises(bench.Cancelled):
        bench.time_interleaved(runners, torch.zeros(1), BenchSettings(warmup=0, runs=10_000), cancel=cancel)
    assert time.perf_counter() - start < 1.0


def _results() -> list[BenchResult]:
    return [
        BenchResult("deit_tiny", "original", 1, 2, latency=LatencyStats([20.0, 22.0, 21.0]), size_bytes=22_000_000,
                    top1_agreement=1.0),
        BenchResult("deit_tiny", "scripted_int8", 1, 2, latency=LatencyStats([10.0, 11.0, 12.0]),
                    size_bytes=6_000_000, top1_agreement=0.9, profiler_self_cpu_ms=15.0),
        BenchResult("deit_tiny", "mobile_optimized", 1, 2, status="unavailable", reason="no XNNPACK"),
    ]


def test_reduction_table_like_the_tutorial():
    rows = report.reduction_table(_results())
    assert rows[0]["Inference Time"] == "21.00ms" and rows[0]["Reduction"] == "0%"
    assert rows[1]["Reduction"] == "48%" and rows[1]["Size Reduction"] == "73%"
    assert rows[2]["Inference Time"] == "unavailable" and rows[2]["reason"] == "no XNNPACK"
    markdown = report.to_markdown(rows)
    assert markdown.splitlines()[0].startswith("| Model | batch | Inference Time | Reduction")


def test_json_and_csv_round_trip(tmp_path):
    results = _results()
    bench.save_json(tmp_path / "r.json", "deit_tiny", results)
    payload, back = bench.load_json(tmp_path / "r.json")
    assert payload["machine"]["torch"] == torch.__version__ and "isa" in payload["machine"]
    assert [r.variant for r in back] == [r.variant for r in results]
    assert back[1].latency.samples_ms == [10.0, 11.0, 12.0] and back[1].latency.median_ms == 11.0
    assert back[2].latency is None and back[2].reason == "no XNNPACK"
    bench.save_csv(tmp_path / "r.csv", results)
    rows = bench.load_csv(tmp_path / "r.csv")
    assert rows[1]["variant"] == "scripted_int8" and float(rows[1]["median_ms"]) == 11.0
    assert rows[1]["samples_ms"] == [10.0, 11.0, 12.0]
    with open(tmp_path / "r.csv") as handle:
        assert next(csv.reader(handle)) == bench.CSV_FIELDS


def test_charts_have_one_point_per_variant_with_the_right_values(tmp_path):
    results = _results()
    latency = charts.latency_chart(results).data[0]
    assert list(latency.x) == ["original", "scripted_int8"] and list(latency.y) == [21.0, 11.0]
    assert list(latency.error_y.array) == pytest.approx([21.8 - 21.0, 11.8 - 11.0])
    size = charts.size_chart(results).data[0]
    assert list(size.y) == [22.0, 6.0]
    reduction = charts.reduction_chart(results).data
    assert list(reduction[0].x) == ["scripted_int8"] and reduction[0].y[0] == pytest.approx(100 * (1 - 11 / 21))
    assert reduction[1].y[0] == pytest.approx(100 * (1 - 6 / 22))
    scatter = charts.scatter_chart(results).data[0]
    assert list(scatter.marker.color) == [1.0, 0.9]
    assert latency.marker.color[1] == size.marker.color[1] == charts.variant_color("scripted_int8")
    sweep = results[:2] + [BenchResult("deit_tiny", "original", 8, 2, latency=LatencyStats([80.0], batch_size=8))]
    assert "throughput" in charts.all_charts(sweep)
    line = charts.throughput_chart(sweep).data[0]
    assert list(line.x) == [1, 8] and list(line.y) == pytest.approx([1000 / 21, 8000 / 80])
    html = charts.write_html(results, tmp_path / "c.html").read_text()
    assert "plotly" in html.lower() and "scripted_int8" in html


@pytest.mark.slow
def test_run_benchmark_end_to_end(tiny, store):
    updates = []
    settings = BenchSettings(variants=["original", "scripted_int8", "mobile_optimized"], runs=4, warmup=1,
                             threads=1, batch_sizes=[1, 2])
    results = bench.run_benchmark(tiny, settings, store, on_update=lambda r: updates.append(len(r)))
    timed = [r for r in results if r.latency]
    assert {(r.variant, r.batch_size) for r in timed} == {(v, b) for v in ("original", "scripted_int8") for b in (1, 2)}
    assert all(len(r.latency.samples_ms) == 4 and r.threads == 1 for r in timed)
    assert all(r.profiler_self_cpu_ms > 0 and len(r.profiler_ops) == 10 for r in timed)
    assert all(r.peak_rss_bytes > 100e6 for r in timed)
    assert updates and len(updates) >= 3
    unavailable = [r for r in results if r.variant == "mobile_optimized"]
    assert unavailable and (unavailable[0].status == "unavailable") != bool(unavailable[0].latency)


def test_usable_cpus_is_positive_and_bounded():
    import os

    assert 1 <= bench.usable_cpus() <= (os.cpu_count() or 1)
