"""Deciding what to ship: the recommendation and the frontier on hand-made rows, a real 2x2 sweep, saved runs
compared, and files that are not results refused."""

import json

import pytest

from deit_demo.core.errors import DeitDemoError
from deit_demo.core.models import load_model
from deit_demo.measure import decide, results, sweep
from deit_demo.measure.results import RESULTS_SCHEMA


def row(model, variant, top1, ms, mb, **extra):
    return {"model": model, "variant": variant, "status": "ok", "published_top1": top1, "median_ms": ms,
            "size_bytes": int(mb * 1e6), "top1_agreement": 1.0, "weights": "hub", "threads": 2, "batch_size": 1,
            "task": "ImageNet-1k", **extra}


ROWS = [row("deit_tiny", "original", 72.2, 20.0, 23), row("deit_tiny", "pt2e_int8", 72.2, 8.0, 6),
        row("deit_small", "original", 79.8, 60.0, 88), row("deit_small", "pt2e_int8", 79.8, 22.0, 23),
        row("deit_base", "original", 81.8, 200.0, 346), row("deit_base", "pt2e_int8", 81.8, 45.0, 90),
        row("deit_base", "onnx_int8", 81.8, 44.0, 88, top1_agreement=0.6),
        row("deit_base", "tome_int8", 81.8, 25.0, 90, lossy=True),
        {"model": "deit_base", "variant": "mobile_optimized", "status": "unavailable", "reason": "no XNNPACK"}]


def test_most_accurate_within_budget_wins_and_every_loser_says_why():
    choice = decide.recommend(ROWS, budget_ms=50, machine={"cpu": "Test CPU", "usable_cpus": 2})
    assert (choice.best["model"], choice.best["variant"]) == ("deit_base", "pt2e_int8")
    assert [(r["model"], r["variant"]) for r in choice.runners_up] == [("deit_small", "pt2e_int8"),
                                                                        ("deit_tiny", "pt2e_int8"),
                                                                        ("deit_tiny", "original")]
    why = {r["pair"]: r["why"] for r in choice.rejected}
    assert "over the 50 ms budget" in why["deit_base/original, threads=2"]
    assert "agree with the original on only 60%" in why["deit_base/onnx_int8, threads=2"]
    assert "token merging" in why["deit_base/tome_int8, threads=2"]
    assert "unavailable: no XNNPACK" in why["deit_base/mobile_optimized"]
    assert "over the 50 ms budget" in why["deit_small/original, threads=2"]
    many = decide.recommend(ROWS, budget_ms=500, runners_up=1)
    assert any("less accurate or slower" in r["why"] for r in many.rejected)
    assert len(choice.rejected) + len(choice.runners_up) + 1 == len(ROWS)
    assert choice.sentence.startswith("Ship deit_base as pt2e_int8: 81.8% ImageNet-1k top-1 (published) at 45.0 ms")
    assert "on Test CPU" in choice.sentence


def test_budgets_on_size_and_accuracy_and_ties_go_to_the_faster():
    choice = decide.recommend(ROWS + [row("deit_base", "openvino_int8", 81.8, 40.0, 95)], budget_ms=50, budget_mb=92)
    assert choice.best["variant"] == "pt2e_int8"  # openvino is faster but 95 MB is over the 92 MB budget
    choice = decide.recommend(ROWS + [row("deit_base", "openvino_int8", 81.8, 40.0, 80)], budget_ms=50)
    assert choice.best["variant"] == "openvino_int8"  # same accuracy, faster
    none = decide.recommend(ROWS, budget_ms=5)
    assert none.best is None and none.sentence.startswith("Nothing fits")
    floor = decide.recommend(ROWS, min_top1=80, budget_ms=30)
    assert floor.best is None and any("under the 80% minimum" in r["why"] for r in floor.rejected)


def test_other_tasks_do_not_compete_and_random_weights_skip_agreement():
    rows = ROWS + [row("deit_synth", "original", 93.1, 1.0, 1, task="textures")]
    choice = decide.recommend(rows, budget_ms=50)
    assert choice.best["model"] == "deit_base"
    assert any("another task (textures)" in r["why"] for r in choice.rejected)
    randoms = [dict(r, weights="random") for r in ROWS]
    choice = decide.recommend(randoms, budget_ms=50)
    assert choice.best["variant"] == "onnx_int8" and "Random weights" in choice.sentence


def test_pareto_front_keeps_only_undominated_pairs():
    front = decide.pareto_front(ROWS)
    assert [(r["model"], r["variant"]) for r in front] == [("deit_tiny", "pt2e_int8"), ("deit_small", "pt2e_int8"),
                                                            ("deit_base", "onnx_int8")]


@pytest.mark.parametrize("budget_ms", [None, 50.0, 2000.0, 1.0])
def test_the_pareto_chart_spans_its_points_and_its_budget_line_in_ms(budget_ms):
    from deit_demo.present.charts import pareto_chart

    timed = [r for r in ROWS if r.get("median_ms")]
    figure = pareto_chart(ROWS, decide.pareto_front(ROWS), budget_ms=budget_ms)
    low, high = (10 ** v for v in figure.layout.xaxis.range)
    span = [r["median_ms"] for r in timed] + ([budget_ms] if budget_ms else [])
    assert low <= min(span) and max(span) <= high <= 1.5 * max(span), (low, high)  # it was 1 to 10^54 with 50 ms
    assert low >= 0.5 * min(span)
    assert all(t.endswith(" ms") for t in figure.layout.xaxis.ticktext) and len(figure.layout.xaxis.tickvals) >= 2
    assert not figure.layout.shapes  # a shape's x on a log axis is read as a power of ten
    if budget_ms:
        line = next(trace for trace in figure.data if trace.name == f"budget {budget_ms:g} ms")
        assert set(line.x) == {budget_ms} and figure.layout.yaxis.range[0] <= min(line.y)


@pytest.fixture(scope="module")
def sweep_rows(store):
    settings = sweep.SweepSettings(models=["deit_tiny", "deit_tiny_distilled"], variants=["original", "scripted_int8"],
                                    runs=2, warmup=1, threads=[1], weights="random")
    return sweep.run_sweep(settings, lambda key: load_model(key, "random"), store)


def test_a_2x2_sweep_times_every_pair_together(sweep_rows):
    assert {(r.model, r.variant) for r in sweep_rows} == {(m, v) for m in ("deit_tiny", "deit_tiny_distilled")
                                                          for v in ("original", "scripted_int8")}
    for r in sweep_rows:
        assert r.status == "ok" and len(r.latency.samples_ms) == 2 and r.threads == 1 and r.peak_rss_bytes > 0
        assert r.size_bytes > 1e6 and r.published_top1 in (72.2, 74.5) and r.published_top5 in (91.1, 91.898)
        assert 0 <= r.top1_agreement <= 1 and r.task == "ImageNet-1k"
    assert next(r for r in sweep_rows if r.variant == "original").top1_agreement == 1.0
    choice = decide.recommend(sweep_rows)
    assert choice.best["model"] == "deit_tiny_distilled"  # the more accurate model, no budget


def test_thread_sweep_times_each_thread_count(store):
    settings = sweep.SweepSettings(models=["deit_tiny"], variants=["original"], runs=2, warmup=0, threads="1,2",
                                    weights="random")
    rows = sweep.run_sweep(settings, lambda key: load_model(key, "random"), store)
    assert sorted(r.threads for r in rows) == [1, 2] and all(r.latency for r in rows)


@pytest.mark.parametrize("kwargs,message", [
    ({"models": []}, "at least one model"), ({"models": ["resnet"]}, "Unknown model"),
    ({"threads": "x"}, "Thread counts"), ({"threads": [99]}, "Thread counts"), ({"budget_ms": -1}, "budget ms"),
    ({"variants": []}, "at least one variant"), ({"batch_sizes": "0"}, "Batch sizes"),
])
def test_sweep_settings_validate_themselves(kwargs, message):
    base = dict(models=["deit_tiny"], variants=["original"])
    with pytest.raises(DeitDemoError, match=message):
        sweep.SweepSettings(**{**base, **kwargs})


def test_saved_runs_compare_across_machines(sweep_rows, tmp_path):
    results.write_json(tmp_path / "a.json", results.results_payload(sweep_rows, model="deit_tiny"))
    other = json.loads((tmp_path / "a.json").read_text())
    other["machine"]["cpu"] = "Other CPU"
    for r in other["rows"]:
        r["median_ms"], r["threads"] = r["median_ms"] * 2, 8  # another machine, another thread count
    (tmp_path / "b.json").write_text(json.dumps(other))
    payloads = [results.load_results(tmp_path / "a.json"), results.load_results(tmp_path / "b.json")]
    latency, machines = decide.compare(payloads)
    assert [m["cpu"] for m in machines][1] == "Other CPU" and len(latency) == 4
    assert all(r["speed-up b.json vs a.json"] == "0.50x" and r["threads"] == "1 / 8" for r in latency)


@pytest.mark.parametrize("content,message", [
    ("not json at all", "not JSON"),
    (json.dumps({"rows": []}), "not a DeiT Lab results file"),
    (json.dumps({"schema": RESULTS_SCHEMA, "rows": []}), "no machine block"),
    (json.dumps({"schema": RESULTS_SCHEMA, "machine": {"cpu": "x"}, "rows": [1, 2]}), "no result rows"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    (json.dumps({"schema": RESULTS_SCHEMA, "machine": {"cpu": "x"}, "rows": [], "a": [[[[[[[[[[[[[[1]]]]]]]]]]]]]]}),
     "nested too deeply"),
])
def test_files_that_are_not_results_are_refused(content, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DeitDemoError, match=message):
        results.load_results(path)


def test_huge_files_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(results.MAX_RESULTS_BYTES + 1)
    with pytest.raises(DeitDemoError, match="at most 20 MB"):
        results.load_results(path)
