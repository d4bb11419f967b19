"""The app's handlers called directly with a Lab: no server, no browser. What a visitor would see, as data."""

import json

import pytest

gr = pytest.importorskip("gradio")

import torch  # noqa: E402

from deit_demo.app import decide_tab, handlers  # noqa: E402
from deit_demo.core.errors import DeitDemoError  # noqa: E402
from deit_demo.measure.bench import BenchSettings, parse_batch_sizes  # noqa: E402
from deit_demo.present.report import CONVERT_COLUMNS  # noqa: E402
from deit_demo.serve.auto import AUTO  # noqa: E402
from deit_demo.serve.server import ClassifyRequest  # noqa: E402
from deit_demo.serve.settings import ServeSettings  # noqa: E402
from deit_demo.service.config import AppConfig  # noqa: E402
from deit_demo.service.lab import Lab  # noqa: E402
from deit_demo.variants import pipeline  # noqa: E402
from deit_demo.variants.pipeline import example_images  # noqa: E402
from deit_demo.variants.registry import ORIGINAL  # noqa: E402


class Recorder:
    """Stands in for gr.Progress: records (fraction or (done, total), desc) calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, **kwargs):
        self.calls.append((value, desc))


@pytest.fixture(scope="module")
def lab(store):
    return Lab(AppConfig(model="deit_tiny", store_root=str(store.root)))

def classify_one(lab, image, url, model, variant):
    """The batched classify handler with a batch of one, unwrapped."""
    return [column[0] for column in handlers.classify(lab, [image], [url], [model], [variant])]



def test_classify_handler_returns_banner_timing_and_heads(lab):
    banner, timing, main, second, third = classify_one(lab, str(example_images()[0]), "", "deit_tiny", "original")
    assert "RANDOM weights" in banner and "ms** for the forward pass (original, DeiT-Ti)" in timing
    probs = list(main.values())
    assert len(main) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert second is None and third is None  # plain values: no update that rebuilds a component's config


def test_classify_handler_distilled_fills_three_heads_and_the_model_picks_which_show(lab):
    _, _, main, second, third = classify_one(lab, str(example_images()[0]), "", "deit_tiny_distilled", "original")
    assert all(isinstance(head, dict) and len(head) == 5 for head in (main, second, third)) and main != second
    assert [u["visible"] for u in handlers.heads_for_model("deit_tiny_distilled")] == [True, True]
    assert [u["visible"] for u in handlers.heads_for_model("deit_tiny")] == [False, False]
    assert [u["visible"] for u in handlers.heads_for_model("no_such_model")] == [False, False]


def test_classify_handler_errors_are_gradio_errors(lab):
    with pytest.raises(gr.Error, match="Upload an image"):
        classify_one(lab, None, "  ", "deit_tiny", "original")
    with pytest.raises(gr.Error, match="Unknown model"):
        classify_one(lab, str(example_images()[0]), "", "resnet", "original")
    with pytest.raises(gr.Error, match="Only http") as raised:
        classify_one(lab, None, "file:///etc/passwd", "deit_tiny", "original")
    assert raised.value.print_exception is False  # a visitor's mistake puts no traceback in the server log


def test_the_handlers_edge_logs_only_the_unexpected_and_that_once(caplog):

    @handlers.boundary("Testing")
    def fails(err):
        raise err

    boom = RuntimeError("boom")
    for err in (gr.Error("Pick a model."), DeitDemoError("Unknown model 'x'."), boom):
        with pytest.raises(gr.Error) as raised:
            fails(err)
        assert raised.value.print_exception is False  # Gradio would print a traceback for every one
    logged = [r for r in caplog.records if r.name == "deit_demo"]
    assert len(logged) == 1 and logged[0].exc_info[1] is boom and "Testing" in logged[0].getMessage()


def test_convert_handler_table_matches_the_cli_columns_and_measures_accuracy(lab):
    summary, table, files = handlers.convert(lab, "deit_digits", ["original", "scripted"], progress=Recorder())
    rows = {row[0]: dict(zip(CONVERT_COLUMNS, row)) for row in table}
    assert set(rows) == {"original", "scripted"} and all(len(row) == len(CONVERT_COLUMNS) for row in table)
    assert rows["scripted"]["top-1 agreement"] == "100%"
    assert rows["scripted"]["accuracy"] == rows["original"]["accuracy"]
    assert "2 of 2 variants converted and checked" in summary and "labelled images" in summary
    assert any(f.endswith(".csv") for f in files) and any(f.endswith(".pt") for f in files)


def test_convert_handler_with_no_variant_is_a_clear_error(lab):
    with pytest.raises(gr.Error, match="at least one variant"):
        handlers.convert(lab, "deit_tiny", [], progress=Recorder())


def test_benchmark_handler_streams_then_saves(lab):
    updates = list(handlers.benchmark(lab, "deit_tiny", ["original"], 3, 1, 1, "1", progress=Recorder()))
    final = updates[-1]
    assert final[0].startswith("✅ done") and "| original |" in final[1]
    assert [trace.x for trace in final[2].data][0] == ("original",)
    files = sorted(final[-1])
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["csv", "html", "json", "json"]
    trace = json.loads(open(next(f for f in files if "_trace_original_b1" in f)).read())  # for Perfetto
    assert len(trace["traceEvents"]) > 20
    figure, notes = final[7], final[8]  # where the time goes, by operator class, and what the profiler missed
    assert "linear: MLP" in {bar.name for bar in figure.data} and "operators" in notes


@pytest.mark.parametrize("batch", ["zero", "0", "65", "1,,x", ""])
def test_benchmark_handler_refuses_bad_batches(lab, batch):
    with pytest.raises(gr.Error, match="Batch sizes must be whole numbers from 1 to 64"):
        next(handlers.benchmark(lab, "deit_tiny", ["original"], 3, 1, 1, batch, progress=Recorder()))


class Visitor:
    def __init__(self, session_hash):
        self.session_hash = session_hash


def test_stop_sets_only_the_pressing_visitors_switch_and_files_are_per_visitor(lab):
    a, b = Visitor("visitor-a"), Visitor("visitor-b")
    assert "stopping" in handlers.stop_benchmark(lab, b)
    assert lab.cancel_event("visitor-b").is_set() and not lab.cancel_event("visitor-a").is_set()
    updates = list(handlers.benchmark(lab, "deit_tiny", ["original"], 3, 0, 1, "1", request=a, progress=Recorder()))
    files = updates[-1][-1]  # visitor B's Stop did not stop visitor A's run
    assert updates[-1][0].startswith("✅ done") and all(f.startswith(str(lab.session_dir("visitor-a"))) for f in files)
    assert lab.session_dir("visitor-a") != lab.session_dir("visitor-b")
    assert str(lab.sessions_root) not in str(lab.store.root)  # results never land in the shared store
    lab.end_session("visitor-a")
    assert not any(__import__("os").path.exists(f) for f in files)


@pytest.mark.parametrize("kwargs,message", [
    ({"runs": 0}, "runs must be a whole number from 1 to 10000"),
    ({"runs": 10_001}, "runs must be a whole number from 1 to 10000"),
    ({"warmup": -1}, "warmup must be a whole number from 0 to 1000"),
    ({"threads": -3}, "threads must be a whole number from 0 to"),
    ({"threads": 10_000}, "0 means all the CPUs"),
    ({"block": 0}, "block must be"),
    ({"batch_sizes": "x"}, "Batch sizes"),
    ({"variants": ["nope"]}, "Unknown variant"),
    ({"time_budget_s": 0}, "time budget"),
])
def test_settings_validate_themselves(kwargs, message):
    with pytest.raises(DeitDemoError, match=message):
        BenchSettings(**kwargs)


def test_batch_sizes_parse_every_spelling():
    assert parse_batch_sizes("1, 8") == [1, 8] and parse_batch_sizes(4) == [4] and parse_batch_sizes([2, 2]) == [2]


def test_app_config_validates_itself():
    with pytest.raises(DeitDemoError, match="Unknown model"):
        AppConfig(model="resnet")
    with pytest.raises(DeitDemoError, match="max_runners"):
        AppConfig(serve=ServeSettings(max_runners=0))


def test_tome_sweep_handler_draws_r_against_latency_and_accuracy(lab):
    figure, table = handlers.tome_sweep(lab, "deit_synth", "0, 4", False, 2, 0, 1, progress=Recorder())
    names = [trace.name for trace in figure.data]
    assert "latency, eager fp32 (ms)" in names and "top-1 on labelled data (%)" in names
    assert list(figure.data[0].x) == [0, 4] and "top-1 on 1200 labelled images" in table and "| 4 | 42 |" in table
    with pytest.raises(gr.Error, match="whole numbers"):
        handlers.tome_sweep(lab, "deit_synth", "a,b", False, 2, 0, 1, progress=Recorder())
    with pytest.raises(gr.Error, match="at least 0"):
        handlers.tome_sweep(lab, "deit_synth", "-1", False, 2, 0, 1, progress=Recorder())


def test_an_error_inside_the_r_sweep_is_reported_as_itself_not_as_a_bad_box(lab, monkeypatch):
    # The handler once wrapped the whole job in `except (TypeError, ValueError)`, so any ValueError from inside a
    # sweep reached the visitor as "Runs, warm-up and threads must be whole numbers".
    from deit_demo.service import lab as lab_module

    def broken(*args, **kwargs):
        raise ValueError("the merge schedule ran out of tokens")

    monkeypatch.setattr(lab_module, "tome_sweep", broken)
    with pytest.raises(gr.Error) as raised:
        handlers.tome_sweep(lab, "deit_synth", "0,4", False, 2, 0, 1, progress=Recorder())
    assert "whole numbers" not in raised.value.message and "reference" in raised.value.message.lower()


def test_sweep_handler_draws_the_pareto_chart_and_names_the_machine(lab, tmp_path):
    updates = list(decide_tab.sweep(lab, ["deit_tiny", "deit_tiny_distilled"], ["original"], "1", "1", 2, 0, 1000,
                                    None, None, progress=Recorder()))
    verdict, chart, table, files = updates[-1]
    assert verdict.startswith("**Ship deit_tiny_distilled as original") and "Measured on CPU" in verdict
    assert {trace.name for trace in chart.data} >= {"original", "Pareto frontier"}
    assert "| deit_tiny | original |" in table and files[0].endswith(".json")
    figure, machines, latency = decide_tab.compare_files(lab, [files[0], files[0]])
    assert len(figure.data) == 2 and "| deit_tiny | original |" in latency and "usable CPUs" in machines
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(gr.Error, match="not a DeiT Lab results file"):
        decide_tab.compare_files(lab, [str(bad)])
    with pytest.raises(gr.Error, match="Upload one or more"):
        decide_tab.compare_files(lab, [])


def test_a_shared_batch_answers_each_visitor_and_fails_only_the_bad_item(lab):
    cat, dog = (str(p) for p in example_images()[:2])
    banners, timings, mains, _, _ = handlers.classify(lab, [cat, None, dog, cat], ["", "", "", "file:///etc/passwd"],
                                                      ["deit_tiny"] * 4, ["original"] * 4)
    assert timings[1].startswith("⚠️ Upload an image") and mains[1] is None and banners[1] == ""
    assert timings[3].startswith("⚠️ Only http") and mains[3] is None
    for i in (0, 2):  # the two good images shared one forward pass, and each got its own answer
        assert "one pass for 2 visitors' images" in timings[i] and len(mains[i]) == 5
    alone = classify_one(lab, cat, "", "deit_tiny", "original")[2]
    assert max(alone, key=alone.get) == max(mains[0], key=mains[0].get)  # the same top-1 as when alone
    assert mains[0] != mains[2]


def test_dynamic_int8_and_per_shape_compiles_run_each_image_alone_in_a_batch(tiny):
    from deit_demo.serve.classify import classify_tensors
    from deit_demo.variants import VARIANTS

    seen = []

    def runner(x):
        seen.append(x.shape[0])
        return torch.zeros(x.shape[0], 1000)

    images = [torch.zeros(1, 3, 224, 224)] * 3
    assert not VARIANTS["onnx_int8"].batch_invariant and VARIANTS["onnx_int8_static"].batch_invariant
    assert VARIANTS["pt2e_int8"].compiles_per_shape and not VARIANTS["openvino_int8"].compiles_per_shape
    classify_tensors(tiny, images, runner=runner, one_pass=False)
    classify_tensors(tiny, images, runner=runner, one_pass=True)
    assert seen == [1, 1, 1, 3]


def test_lanes_run_images_side_by_side_on_a_share_of_the_threads_in_order():
    import threading

    from deit_demo.core.cpus import torch_threads
    from deit_demo.serve.classify import run_in_lanes

    calls = []

    def lane(name):
        def runner(x):
            calls.append((int(x.flatten()[0]), name, torch.get_num_threads(), threading.get_ident()))
            return x.flatten()[:1].unsqueeze(0)
        return runner

    images = [torch.full((1, 3, 4, 4), float(i)) for i in range(5)]
    with torch_threads(4):
        out = run_in_lanes([lane("a"), lane("b")], images)
        assert torch.get_num_threads() == 4  # the caller's count, restored
    assert [int(t) for t in out] == [0, 1, 2, 3, 4]
    by_image = {i: (name, n) for i, name, n, _ in calls}
    # each lane calls only its own copy, on half the threads; the odd one out runs on all four with the first
    assert by_image == {0: ("a", 2), 1: ("b", 2), 2: ("a", 2), 3: ("b", 2), 4: ("a", 4)}
    threads = {name: {ident for _, n, _, ident in calls if n == name} for name in "ab"}
    assert threads["a"] == {threading.get_ident()} and len(threads["b"]) == 1 and threads["a"] != threads["b"]


def test_auto_serves_the_original_until_the_fast_variant_is_verified(store):
    serve = ServeSettings(auto_variants=("onnx_int8_static", "mobile_optimized"))
    lab = Lab(AppConfig(model="deit_tiny", store_root=str(store.root), serve=serve))
    cat = str(example_images()[1])
    _, first = lab.classify(cat, "deit_tiny", AUTO)  # nothing prepared yet: no waiting, the original answers
    assert first.variant == "original" and "being converted and checked in the background" in first.note
    choice = lab.server.auto.wait("deit_tiny", timeout_s=600)
    assert choice.state == "ready" and "mobile_optimized" in choice.rejected  # unavailable here, or never verified
    assert set(choice.median_ms) <= {"original", "onnx_int8_static"} and "original" in choice.median_ms
    assert choice.variant == min(choice.median_ms, key=choice.median_ms.get)  # the fastest of the verified
    _, served = lab.classify(cat, "deit_tiny", AUTO)
    assert served.variant == choice.variant and served.note == choice.sentence()
    if choice.variant != "original":
        assert served.agreement == 1.0 and f"on {choice.checked}/{choice.checked} check inputs" in served.note
    assert served.top1.index == first.top1.index  # verified: the same answer as the original


def test_auto_serves_a_compiled_variant_on_the_cpus_a_benchmark_leaves_and_another_while_a_job_compiles(
        store, monkeypatch):
    # A graph compiled for 2 threads still runs 2 while a benchmark holds one of the 2 CPUs: three threads on two
    # cores. Auto's runner is compiled for the share left too, and runs with it, without compiling on a visitor's time.
    import threading

    from torch._dynamo.utils import counters

    from deit_demo.measure import timing
    from deit_demo.variants.base import COMPILE_LOCK

    speed = {"original": 9.0, "onnx_int8_static": 5.0, "pt2e_int8": 2.0}  # the compiled graph fastest, as on DeiT-B
    monkeypatch.setattr(timing, "time_interleaved",
                        lambda runners, *a, **k: ({name: [speed[name]] * 3 for name in runners}, {}))
    # Serving: 2 threads; a convert or benchmark job: 1
    serve = ServeSettings(auto_variants=("pt2e_int8", "onnx_int8_static"), cpus=2)
    lab = Lab(AppConfig(model="deit_tiny", store_root=str(store.root), auto_prepare=False, serve=serve))
    choice = lab.server.auto.prepare("deit_tiny")
    assert (choice.variant, choice.fallback) == ("pt2e_int8", "onnx_int8_static"), choice.rejected
    assert choice.warm_threads == {1, 2}
    counts, fn = [], choice.runner.fn
    choice.runner.fn = lambda x: counts.append(torch.get_num_threads()) or fn(x)
    cat = str(example_images()[1])
    graphs = counters["stats"]["unique_graphs"]
    _, alone = lab.classify(cat, "deit_tiny", AUTO)
    with lab.server.take_job_cpus():  # what a benchmark holds while it runs
        _, shared = lab.classify(cat, "deit_tiny", AUTO)
    assert counts == [2, 1] and counters["stats"]["unique_graphs"] == graphs  # no compile on the visitor's time
    assert shared.top1.index == alone.top1.index

    # A call into a compiled graph could wait for dynamo's process-wide compile lock while another thread compiled:
    # 8 visitors on DeiT-B during a benchmark of pt2e_int8 waited 26-60 s. Meanwhile the fallback serves.
    held, release = threading.Event(), threading.Event()

    def compiling():
        with COMPILE_LOCK:
            held.set()
            release.wait(120)

    other = threading.Thread(target=compiling)
    other.start()
    held.wait(30)
    try:
        _, during = lab.classify(cat, "deit_tiny", AUTO)
    finally:
        release.set()
        other.join()
    _, after = lab.classify(cat, "deit_tiny", AUTO)
    assert (alone.variant, during.variant, after.variant) == ("pt2e_int8", "onnx_int8_static", "pt2e_int8")
    assert "another job is compiling" in during.note and "same top-1 as the original on" in during.note
    assert during.top1.index == alone.top1.index and counts == [2, 1, 2]

    # Several visitors' images on the compiled graph: two 1-thread passes side by side, the second on a copy compiled
    # for 1 thread at preparation; the odd one out on both threads; still no compile on a visitor's time.
    (copy,) = choice.lane_runners
    assert copy is not choice.runner
    copy_counts, copy_fn = [], copy.fn
    copy.fn = lambda x: copy_counts.append(torch.get_num_threads()) or copy_fn(x)
    answers = lab.classify_batch([ClassifyRequest(cat, "deit_tiny", AUTO)] * 3)
    assert counts[3:] == [1, 2] and copy_counts == [1] and counters["stats"]["unique_graphs"] == graphs
    assert [r.lanes for _, r in answers] == [2] * 3 and {r.top1.index for _, r in answers} == {alone.top1.index}


def test_auto_never_serves_a_variant_that_disagrees(store, monkeypatch):
    def disagreeing(reference, candidate):
        return pipeline.AnswerCheck(top1_agreement=0.75, top5_overlap=1.0, max_abs_diff=1.0)

    monkeypatch.setattr(pipeline, "compare_answers", disagreeing)
    lab = Lab(AppConfig(model="deit_tiny", store_root=str(store.root),
                        serve=ServeSettings(auto_variants=("onnx_int8_static",))))
    choice = lab.server.auto.prepare("deit_tiny")
    assert choice.variant == "original" and choice.rejected["onnx_int8_static"].startswith("top-1 agreement 75%")
    assert "no faster variant passed its answer check" in choice.sentence()


def test_auto_candidates_are_validated_and_never_lossy():
    chosen = ServeSettings(auto_variants=["pt2e_int8", "original", "onnx_int8"]).auto_variants
    assert chosen == ("pt2e_int8", "onnx_int8")
    with pytest.raises(DeitDemoError, match="compute less on purpose"):
        AppConfig(serve=ServeSettings(auto_variants=["tome_int8"]))
    with pytest.raises(DeitDemoError, match="Unknown variant"):
        AppConfig(serve=ServeSettings(auto_variants=["nope"]))


def test_the_cli_way_of_auto_prepares_first_then_answers(store, monkeypatch):
    # It used to deadlock: the answer held every CPU while the preparation waited for one.
    settles = []
    for where in ("deit_demo.serve.runners.settle_heap", "deit_demo.serve.auto.settle_heap"):
        monkeypatch.setattr(where, lambda: settles.append(1))
    serve = ServeSettings(auto_variants=("onnx_int8_static",), reserved_cpus=0)
    lab = Lab(AppConfig(model="deit_tiny", store_root=str(store.root), serve=serve))
    _, result = lab.classify(str(example_images()[1]), "deit_tiny", AUTO, wait_auto=True)
    choice = lab.server.auto.choice(lab.model("deit_tiny"))
    assert choice.state == "ready" and result.variant == choice.variant and result.note == choice.sentence()
    # Auto serves the fastest of what it timed, and holds the runner of what it serves (the original needs none).
    assert choice.median_ms[choice.variant] == min(choice.median_ms.values())
    assert (choice.runner is not None) == (choice.variant != ORIGINAL)
    assert settles == [1]  # one full collection per preparation (about 1 s holding the GIL on DeiT-B), not two


def test_the_weights_banner_is_polled_without_loading_anything(tmp_path):
    fresh = Lab(AppConfig(model="deit_digits", weights="random", store_root=str(tmp_path / "store"),
                          auto_prepare=False))
    assert fresh.loaded_model("deit_digits") is None and len(fresh.models) == 0  # polling loaded nothing
    line, banner = handlers.classify_status(fresh, "deit_digits")
    assert banner == gr.skip() and handlers.model_banner(fresh, "deit_digits") == ""
    fresh.model("deit_digits")
    line, banner = handlers.classify_status(fresh, "deit_digits")
    assert "RANDOM weights" in banner and banner == handlers.model_banner(fresh, "deit_digits")
    assert handlers.model_banner(fresh, "deit_synth") == "" and handlers.model_banner(fresh, "nonsense") == ""
