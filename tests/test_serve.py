"""The serving component: what Auto publishes, and when. A visitor never sees a choice that is half made."""

import dataclasses
import threading

import pytest

from deit_demo.core.models import create_model, load_weights, save_weights
from deit_demo.measure import timing
from deit_demo.serve import auto
from deit_demo.serve.auto import AUTO, AutoChoice
from deit_demo.serve.policy import Decision
from deit_demo.serve.settings import ServeSettings
from deit_demo.service.config import AppConfig
from deit_demo.service.lab import Lab
from deit_demo.variants import ORIGINAL, VARIANTS, Runner, Variant
from deit_demo.variants.pipeline import example_images


class CompiledLike(Variant):
    """The original's weights behind a runner that, like an inductor graph, is compiled per shape and thread count:
    Auto serves it in lanes, each lane a copy compiled at preparation (the window this test holds open)."""

    key, title, family, precision = "test_compiled", "Test: compiled per shape", "modern", "fp32"
    suffix = ".safetensors"
    compiles_per_shape = True

    def available(self):
        return True, ""

    def export(self, model, path, ctx):
        save_weights(model, path)
        return {}

    def load(self, artifact, ctx):
        return Runner(load_weights(create_model(ctx.spec), artifact.path).eval(), {"runtime": "test"})


@pytest.fixture
def compiled_like(monkeypatch):
    variant = CompiledLike()
    monkeypatch.setitem(VARIANTS, variant.key, variant)
    # It is the fastest, as a compiled graph is on DeiT-B (the timing itself is not what this test is about).
    speed = {ORIGINAL: 9.0, variant.key: 2.0, "onnx_int8": 5.0}
    monkeypatch.setattr(timing, "time_interleaved",
                        lambda runners, *a, **k: ({name: [speed[name]] * 3 for name in runners}, {}))
    return variant


@pytest.mark.parametrize("cheap_first", [False, True], ids=["alone", "with a cheap candidate"])
def test_a_visitor_served_while_auto_compiles_its_lanes_gets_a_variant_with_its_own_runner(
        compiled_like, monkeypatch, store, cheap_first):
    # The race this guards against: Auto used to put its choice where visitors read it while still preparing, then set
    # the compiled runner, compiled lane copies for 15-30 s, and only then the variant's name. A visitor in that
    # window was served ("original", <compiled runner>): the wrong label, and a graph compiled for another shape.
    # Lanes: 2 x 1 thread. With a cheap candidate listed after it, that one is prepared first (prepare_cost) and, once
    # it beats the original, serves while the compiled one prepares: a faster answer soonest.
    candidates = (compiled_like.key, "onnx_int8") if cheap_first else (compiled_like.key,)
    serve = ServeSettings(auto_variants=candidates, cpus=2, classify_lanes=2)
    lab = Lab(AppConfig(model="deit_tiny", store_root=str(store.root), auto_prepare=False, isolate_conversions=False,
                        serve=serve))
    in_window, release, seen = threading.Event(), threading.Event(), []
    lane_runner = auto.AutoServe._lane_runner

    def held_lane_runner(self, *args, **kwargs):
        in_window.set()
        assert release.wait(60)
        return lane_runner(self, *args, **kwargs)

    monkeypatch.setattr(auto.AutoServe, "_lane_runner", held_lane_runner)
    loaded = lab.model("deit_tiny")
    preparing = threading.Thread(target=lambda: seen.append(lab.server.auto.prepare("deit_tiny")))
    preparing.start()
    try:
        assert in_window.wait(120), "the preparation never reached the lane copies"
        during = lab.server.auto.resolve(loaded)
        pick = during.serving()
        variant, runner, sentence = pick.variant, pick.runner, pick.sentence
        assert during.state == "preparing" and "⏳ Auto is timing them" in lab.auto_status("deit_tiny")
        if cheap_first:
            assert variant == "onnx_int8" and runner is not None and runner is during.runner, (variant, runner)
            assert "still being prepared" in sentence and "faster than the original" in sentence
        else:
            assert (variant, runner) == (ORIGINAL, None), (variant, runner)
            assert "being converted and checked" in sentence
        _, answer = lab.classify(str(example_images()[1]), "deit_tiny", AUTO)
        assert answer.variant == variant
    finally:
        release.set()
        preparing.join(120)
    ready = lab.server.auto.resolve(loaded)
    assert ready is seen[0] and ready.state == "ready" and ready.variant == compiled_like.key
    assert lab.auto_status("deit_tiny").startswith("✅ Auto → test_compiled")
    pick = ready.serving()
    served, served_runner, agreement = pick.variant, pick.runner, pick.agreement
    assert served == compiled_like.key and served_runner is ready.runner and agreement == 1.0
    assert len(ready.lane_runners) == 1 and ready.lane_runners[0] is not served_runner
    assert during.state == "preparing" and during.variant == variant  # what a visitor held before is unchanged


def test_a_published_choice_cannot_be_edited():
    choice = AutoChoice("deit_tiny", "random")
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.decision = Decision("pt2e_int8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.decision.variant = "pt2e_int8"
    changed = dataclasses.replace(choice, decision=Decision("pt2e_int8"))
    assert changed.variant == "pt2e_int8" and changed.pick.variant == "pt2e_int8" and choice.variant == ORIGINAL


def test_one_classification_crosses_few_modules_and_threads(store):
    # The steady path a visitor takes (everything loaded, Auto ready): the handler, the service, the server, the
    # image reader, Auto's snapshot, the classifier, the runtime and the banner; the caller's thread and the serving
    # thread. Before the Server owned what it serves: 15 modules and 3 threads (a loader thread on every request).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import trace_paths
    finally:
        sys.path.pop(0)
    lab = Lab(AppConfig(model="deit_tiny", weights="random", store_root=str(store.root), auto_prepare=False,
                        isolate_conversions=False, serve=ServeSettings(auto_variants=("onnx_int8",))))
    assert lab.server.auto.prepare("deit_tiny").variant in ("onnx_int8", ORIGINAL)
    trace = trace_paths.trace_classification(lab, "deit_tiny")
    threads = {t for names in trace.modules.values() for t in names}
    assert "deit_demo.serve.server" in trace.modules and "deit-serve" in threads  # the trace saw the path
    assert len(trace.modules) <= trace_paths.MAX_MODULES, sorted(trace.modules)
    assert len(threads) <= trace_paths.MAX_THREADS and "deit-load" not in threads, threads
