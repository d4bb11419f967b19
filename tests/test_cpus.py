import threading
import time

import pytest
import torch

from deit_demo import DeitDemoError
from deit_demo.core.cpus import cgroup_quota, usable_cpus
from deit_demo.serve.server import ClassifyRequest, CpuBudget


def test_cgroup_v2_and_v1_quotas(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_quota(v1) is None
    (v2 / "cpu.max").write_text("100000 100000\n")
    assert usable_cpus(v2) == 1  # the quota wins over the affinity mask


def test_budget_never_oversubscribes_and_sets_thread_counts():
    budget = CpuBudget(total=2)
    in_use, peak, seen = [0], [0], []
    lock = threading.Lock()

    def job(want):
        with budget.take(want) as granted:
            seen.append((granted, torch.get_num_threads()))
            with lock:
                in_use[0] += granted
                peak[0] = max(peak[0], in_use[0])
            time.sleep(0.05)
            with lock:
                in_use[0] -= granted

    threads = [threading.Thread(target=job, args=(w,)) for w in (2, 1, 2, 1, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2 and budget.free == 2
    assert all(granted == threads_set and granted >= 1 for granted, threads_set in seen)


def test_budget_times_out_with_a_readable_error():
    budget = CpuBudget(total=1)
    with budget.take(1):
        result = {}

        def waiter():
            try:
                with budget.take(1, timeout_s=0.1):
                    result["got"] = True
            except DeitDemoError as err:
                result["error"] = str(err)

        t = threading.Thread(target=waiter)
        t.start()
        t.join()
    assert "busy" in result["error"]


def test_the_serving_thread_runs_every_pass_on_one_thread_in_the_callers_context():
    # One OpenMP team per process: a pass on each of Gradio's workers built a team per worker, and libgomp stopped
    # spin-waiting once the teams outnumbered the CPUs (DeiT-B pt2e_int8: 65 ms per image instead of 54).
    import contextvars

    from deit_demo.serve.server import ServingThread

    serving = ServingThread("test-serve")
    request = contextvars.ContextVar("request", default=None)
    seen = []

    def visitor(name):
        request.set(name)
        seen.append(serving.run(lambda: (threading.get_ident(), request.get(), serving.run(threading.get_ident))))

    visitors = [threading.Thread(target=visitor, args=(f"v{i}",)) for i in range(4)]
    for t in visitors:
        t.start()
    for t in visitors:
        t.join()
    assert len({ident for ident, _, _ in seen}) == 1 and all(inner == ident for ident, _, inner in seen)
    assert sorted(name for _, name, _ in seen) == ["v0", "v1", "v2", "v3"]  # each pass saw its own caller's context
    assert seen[0][0] not in {t.ident for t in visitors}
    try:
        serving.run(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("the pass's error must reach its caller")
    # A visitor who cannot get a turn in time gets a plain message, and their pass never runs later.
    hold, release, ran = threading.Event(), threading.Event(), []
    holder = threading.Thread(target=lambda: serving.run(lambda: (hold.set(), release.wait(10))))
    holder.start()
    assert hold.wait(10)
    try:
        serving.run(lambda: ran.append(1), timeout_s=0.1)
    except DeitDemoError as err:
        assert "busy" in str(err)
    else:
        raise AssertionError("expected a busy error")
    release.set()
    holder.join()
    assert serving.run(lambda: 2) == 2 and ran == []


def test_the_serving_thread_ends_when_idle_and_comes_back_on_demand():
    # Its OpenMP team would otherwise slow every other thread's parallel regions for as long as the process lives
    from deit_demo.serve.server import ServingThread

    serving = ServingThread("test-idle-serve", idle_s=0.2)
    first = serving.run(threading.get_ident)
    deadline = time.monotonic() + 10
    while any(t.name == "test-idle-serve" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "test-idle-serve" for t in threading.enumerate())
    second = serving.run(threading.get_ident)
    assert serving.run(threading.get_ident) == second and second != threading.get_ident() and first


def test_a_lab_serves_visitors_on_other_threads_from_the_serving_thread(monkeypatch):
    from deit_demo.serve import server
    from deit_demo.serve.server import SERVING
    from deit_demo.service.config import AppConfig
    from deit_demo.service.lab import Lab
    from deit_demo.variants.pipeline import example_images

    lab = Lab(AppConfig(model="deit_digits", auto_prepare=False))
    passes = []
    real = server.classify_tensors
    monkeypatch.setattr(server, "classify_tensors",
                        lambda *a, **k: passes.append(threading.get_ident()) or real(*a, **k))
    image = str(example_images()[0])
    callers = [threading.Thread(target=lab.classify, args=(image, "deit_digits")),
               threading.Thread(target=lab.classify_batch,
                                args=([ClassifyRequest(image, "deit_digits", "original")] * 2,))]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    lab.classify(image, "deit_digits")
    assert len(passes) == 3 and set(passes) == {SERVING.run(threading.get_ident)}


def test_images_are_read_off_the_serving_thread_and_a_bad_one_never_waits_for_it(monkeypatch, tmp_path):
    # The serving thread runs only forward passes: a batch's images decode before its turn (side by side), and a
    # bad upload is answered while another visitor's pass still holds that thread.
    from deit_demo.core import images
    from deit_demo.serve.server import SERVING
    from deit_demo.serve.settings import ServeSettings
    from deit_demo.service.config import AppConfig
    from deit_demo.service.lab import Lab
    from deit_demo.variants.pipeline import example_images

    lab = Lab(AppConfig(model="deit_digits", auto_prepare=False, serve=ServeSettings(cpus=2)))
    readers, real, together = [], images.load_image, threading.Barrier(2, timeout=10)

    def load_image(source):
        readers.append(threading.get_ident())
        if len(readers) in (2, 3):  # the batch's first two images: both read at once, or this times out
            together.wait()
        return real(source)

    monkeypatch.setattr(images, "load_image", load_image)
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    image = str(example_images()[0])
    serving_thread = SERVING.run(threading.get_ident)
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=SERVING.run, args=(lambda: held.set() or release.wait(30),))
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(DeitDemoError, match="not an image"):
            lab.classify(str(bad), "deit_digits")
        answers: list = []
        batch = threading.Thread(target=lambda: answers.extend(lab.classify_batch(
            [ClassifyRequest(source, "deit_digits", "original") for source in (str(bad), image, image)])))
        batch.start()
        for _ in range(200):  # its images are read while the serving thread is still held
            if len(readers) == 4:
                break
            time.sleep(0.05)
        assert len(readers) == 4 and not answers, "the batch's images are read before its turn, and it waits for that"
    finally:
        release.set()
        holder.join()
    batch.join(60)
    assert isinstance(answers[0], DeitDemoError) and answers[1][1].top1.index == answers[2][1].top1.index
    assert serving_thread not in readers and len(set(readers[1:3])) == 2, "a batch's images decode side by side"


def test_a_cache_hands_out_what_it_has_while_another_key_builds_and_builds_each_once():
    from deit_demo.core.cache import BoundedCache

    cache: BoundedCache[str] = BoundedCache(4)
    cache.get("ready", lambda: "r")
    started, release, builds = threading.Event(), threading.Event(), []

    def slow() -> str:
        builds.append(1)
        started.set()
        assert release.wait(10)
        return "slow"

    got = []
    builders = [threading.Thread(target=lambda: got.append(cache.get("slow", slow))) for _ in range(3)]
    for t in builders:
        t.start()
    assert started.wait(10)
    assert cache.get("ready", lambda: "other") == "r"  # not held up by the build in progress
    release.set()
    for t in builders:
        t.join()
    assert got == ["slow"] * 3 and builds == [1]
    with pytest.raises(ValueError):
        cache.get("bad", lambda: int("x"))
    assert cache.get("bad", lambda: "fine") == "fine"  # a failed build leaves nothing behind


def test_a_variant_loads_off_the_serving_thread_so_other_visitors_are_served_meanwhile(monkeypatch):
    # A visitor who picks a compiled variant by name waits for its compile (DeiT-B: 15 s and more); the others must
    # not, and the compile's OpenMP team must not outlive it on a long-lived thread.
    from deit_demo.serve import runners
    from deit_demo.service.config import AppConfig
    from deit_demo.service.lab import Lab
    from deit_demo.variants.pipeline import example_images

    lab = Lab(AppConfig(model="deit_digits", auto_prepare=False))
    loading, release, loaders = threading.Event(), threading.Event(), []

    def slow_prepare(variant, loaded, store, ctx):
        loaders.append(threading.current_thread())
        loading.set()
        assert release.wait(30)
        return None, None, loaded.model

    monkeypatch.setattr(runners, "prepare", slow_prepare)
    image = str(example_images()[0])
    picked = []
    visitor = threading.Thread(target=lambda: picked.append(lab.classify(image, "deit_digits", "onnx_fp32")[1]))
    visitor.start()
    assert loading.wait(30)
    try:
        _, other = lab.classify(image, "deit_digits", "original")  # served while the load is under way
        assert other.variant == "original"
    finally:
        release.set()
        visitor.join()
    assert picked[0].variant == "onnx_fp32" and picked[0].top1.index == other.top1.index
    assert loaders[0].name == "deit-load" and not loaders[0].is_alive()


def test_after_a_load_the_heap_is_out_of_the_collectors_sight_and_what_died_before_is_freed(monkeypatch):
    import gc
    import weakref

    from deit_demo.core import cpus
    from deit_demo.service.config import AppConfig
    from deit_demo.service.lab import Lab

    class Node:
        pass

    gc.collect()
    node = Node()
    node.cycle = node
    gc.freeze()  # as after an earlier load
    gone = weakref.ref(node)
    del node
    gc.collect()
    assert gone() is not None  # frozen cyclic garbage outlives a normal collection...
    cpus.settle_heap()
    assert gone() is None  # ...until the next load settles the heap
    gc.unfreeze()
    calls = []
    monkeypatch.setattr("deit_demo.serve.runners.settle_heap", lambda: calls.append(1))
    lab = Lab(AppConfig(model="deit_digits", auto_prepare=False))
    loaded = lab.model("deit_digits")
    lab.server.runners.get(loaded, "scripted")
    lab.server.runners.get(loaded, "scripted")  # a hit: nothing loaded, nothing to settle
    assert calls == [1]


def _niceness() -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_benchmarks_timing_runs_on_its_own_nicer_thread_and_the_callers_priority_stays(monkeypatch):
    # Linux niceness is per thread: a benchmark's timing yields the CPUs to visitors' answers, the server does not,
    # and neither does its preparation (compiles hold the GIL: a descheduled holder makes every answer wait)
    from deit_demo.measure import bench, timing
    from deit_demo.serve.settings import ServeSettings
    from deit_demo.service.config import AppConfig
    from deit_demo.service.lab import Lab

    before = _niceness()
    seen = {}
    real_prepare = bench.prepare_variants

    def preparing(*args, **kwargs):
        seen["prepared at"] = _niceness()
        yield from real_prepare(*args, **kwargs)

    def timed(runners, x, settings, **kwargs):
        seen.update(niceness=_niceness(), thread=threading.get_ident(), threads=torch.get_num_threads())
        return {key: [1.0] * settings.runs for key in runners}, {key: 0 for key in runners}

    monkeypatch.setattr(bench, "prepare_variants", preparing)
    monkeypatch.setattr(timing, "time_interleaved", timed)
    settings = bench.BenchSettings(variants=["original"], runs=2, warmup=0, threads=1)
    niced = AppConfig(model="deit_digits", auto_prepare=False, serve=ServeSettings(heavy_niceness=7))
    _, results = Lab(niced).benchmark("deit_digits", settings)
    assert results[0].status == "ok" and results[0].latency.median_ms == 1.0
    assert seen["niceness"] == min(19, before + 7) and seen["thread"] != threading.get_ident()
    assert seen["threads"] == 1 and seen["prepared at"] == before and _niceness() == before

    as_is = AppConfig(model="deit_digits", auto_prepare=False, serve=ServeSettings(heavy_niceness=0))
    Lab(as_is).benchmark("deit_digits", settings)
    assert seen["niceness"] == before and seen["thread"] == threading.get_ident()  # the CLI's: this thread, as is


def test_niceness_is_a_setting_that_cannot_be_negative():
    from deit_demo.serve.settings import ServeSettings
    from deit_demo.service.config import AppConfig

    with pytest.raises(DeitDemoError, match="heavy_niceness"):
        AppConfig(model="deit_digits", serve=ServeSettings(heavy_niceness=-1))
