"""The serving component: it owns the models and runners it serves, a CPU budget it shares with jobs, one thread
that runs every visitor's forward pass, Auto, and lanes that run a batch side by side.

`Server` knows nothing of sessions, jobs or files for download, and never calls back up: the facade
(`service.Lab`) builds it with the model cache and the store and calls `classify_batch`. A request whose model and
variant are ready crosses this module, `core.images`, `serve.auto` (for Auto), `serve.classify` and the runtime's
own module, on the caller's thread and the serving thread only (docs/ARCHITECTURE.md, "One classification").
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

import torch

from deit_demo.core import activity
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.cpus import on_own_thread, torch_threads, usable_cpus
from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.core.images import ImageSource, read_images
from deit_demo.core.model_cache import ModelCache
from deit_demo.core.models import LoadedModel, get_spec
from deit_demo.core.urls import FetchSettings
from deit_demo.serve.auto import AUTO, AutoServe, Pick
from deit_demo.serve.classify import ClassifyResult, classify_tensors
from deit_demo.serve.runners import RunnerCache
from deit_demo.serve.settings import ServeSettings
from deit_demo.variants import ORIGINAL, get_variant
from deit_demo.variants.pipeline import ProgressFn

T = TypeVar("T")
Answer = tuple[LoadedModel, ClassifyResult]


class CpuBudget:
    """Hands out thread counts so that what runs at once uses at most `total` CPUs, and jobs (conversions,
    benchmarks, Auto's preparation) together never more than `total - reserved`: a visitor's classification keeps
    its CPU whatever else is queued."""

    def __init__(self, total: int | None = None, reserved: int = 0):
        self.total = total or usable_cpus()
        self.job_ceiling = max(1, self.total - reserved)
        self._free, self._jobs = self.total, 0
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        return self._free

    @contextlib.contextmanager
    def take(self, want: int, *, job: bool = False, timeout_s: float | None = None) -> Iterator[int]:
        """Take up to `want` CPUs (at least 1, waiting for it) and set this thread's torch thread count to match."""
        want = max(1, min(want, self.total))
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= 1 and (not job or self._jobs < self.job_ceiling),
                                       timeout=timeout_s):
                raise DeitDemoError("The server is busy: every CPU is taken. Please try again in a moment.")
            granted = min(want, self._free, self.job_ceiling - self._jobs if job else want)
            self._free -= granted
            self._jobs += granted if job else 0
        previous = torch.get_num_threads()
        torch.set_num_threads(granted)
        try:
            yield granted
        finally:
            torch.set_num_threads(previous)
            with self._cond:
                self._free += granted
                self._jobs -= granted if job else 0
                self._cond.notify_all()


class ServingThread:
    """One thread for every forward pass that answers a visitor, whichever thread asked for it.

    libgomp gives each OS thread that runs a parallel region its own OpenMP team and keeps it while the thread lives.
    Once the teams hold more threads than there are CPUs, it stops spin-waiting at its barriers and every parallel
    region pays a futex wake-up. Gradio runs handlers on a pool of worker threads, so serving from them built a team
    per worker: DeiT-B pt2e_int8 took 65 ms per image instead of 54 (2-core EPYC), and layer norm 85 us instead of 28.
    The thread ends after `idle_s` without work, and its team with it, so that it slows no other thread meanwhile.
    """

    def __init__(self, name: str = "deit-serve", idle_s: float = 10.0):
        self.name, self.idle_s = name, idle_s
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ident: int | None = None

    def run(self, fn: Callable[[], T], *, timeout_s: float | None = None) -> T:
        """`fn()` on the serving thread; at most `timeout_s` waiting for its turn (then a "busy" error)."""
        if threading.get_ident() == self._ident:
            return fn()  # already on it (a pass that asks for another)
        future: Future = Future()
        # With the caller's context: Gradio finds a request's progress bar through context variables.
        self._jobs.put((future, functools.partial(contextvars.copy_context().run, fn)))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            if future.cancel():
                raise DeitDemoError("The server is busy: other visitors' images are ahead of yours. Please try "
                                    "again in a moment.") from None
            return future.result()  # it started meanwhile: its answer is on the way

    def _work(self) -> None:
        self._ident = threading.get_ident()
        while True:
            try:
                future, fn = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:  # a job put before this lock is taken is seen here; one put after starts a thread
                    if self._jobs.empty():
                        self._thread = self._ident = None
                        return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as err:  # the caller re-raises it
                    future.set_exception(err)


SERVING = ServingThread()  # one per process: the point is one OpenMP team per process


@dataclass(frozen=True)
class ClassifyRequest:
    """One image to classify: with `variant` ``original`` the eager model with all its heads, ``auto`` the fastest
    verified variant (the original until that is ready), or a variant by name (converted on first use)."""

    source: ImageSource
    model: str
    variant: str = AUTO
    k: int = 5
    tome_r: int | None = None


@dataclass(frozen=True)
class _Ready:
    """A (model, variant, r) loaded for serving. Weak references: the caches decide what stays loaded, and an entry
    whose model or runner they let go is simply loaded again."""

    model: weakref.ref
    runner: weakref.ref | None  # None: the original, or Auto (resolved per request)
    pick: Pick | None  # how a named variant is served (None: Auto)


class Server:
    """Answers visitors: the models and runners it serves, the CPU budget, the serving thread, lanes and Auto."""

    sends_pixels = False  # True where the passes run elsewhere: images travel as cropped uint8 pixels

    def __init__(self, models: ModelCache, store: ArtifactStore, settings: ServeSettings | None = None):
        self.settings = settings or ServeSettings()
        self.models = models
        self.cpus = CpuBudget(self.settings.cpus or None, reserved=self.settings.reserved_cpus)
        self.fetch = FetchSettings()  # limits for image URLs (tests that serve on 127.0.0.1 allow loopback)
        self.runners = RunnerCache(store, self.serve_threads(), self.settings.max_runners)
        self.auto = AutoServe(models, self.runners, self.cpus, self.job_cpus, self.settings.auto_variants,
                              lanes=self.settings.classify_lanes)
        self.answered = 0  # images answered; only the serving thread adds to it, and core.activity reads it
        self._ready: dict[tuple[str, str, int | None], _Ready] = {}
        activity.ACTIVITY.watch(self)

    def serve_threads(self) -> int:
        return self.settings.classify_threads or self.cpus.total

    def job_cpus(self, requested: int | None = None) -> int:
        """CPUs a convert/benchmark job may take: all but those kept for classification."""
        return min(requested or self.cpus.job_ceiling, self.cpus.job_ceiling)

    def take_job_cpus(self, requested: int | None = None):
        """The CPUs a convert/benchmark job may take, held for a `with` block (jobs together never take the CPUs
        kept for classification)."""
        return self.cpus.take(self.job_cpus(requested), job=True)

    def classify(self, source: ImageSource, model_key: str, variant_key: str = ORIGINAL, *, k: int = 5,
                 tome_r: int | None = None, wait_auto: bool = False, progress: ProgressFn | None = None) -> Answer:
        """Top-k of one image (see `classify_batch`); `wait_auto` prepares Auto first (the CLI)."""
        if variant_key == AUTO and wait_auto:
            self.auto.prepare(model_key)  # before taking CPUs for the answer: preparing takes its own share
        answer = self.classify_batch([ClassifyRequest(source, model_key, variant_key, k, tome_r)],
                                     progress=progress)[0]
        if isinstance(answer, DeitDemoError):
            raise answer
        return answer

    def classify_batch(self, requests: list[ClassifyRequest], *,
                       progress: ProgressFn | None = None) -> list[Answer | DeitDemoError]:
        """Several visitors' images at once: one forward pass per (model, variant, r) among them. Each item gets its
        answer or its own error, so one visitor's bad upload never fails the others. Images are read on the
        caller's thread (`core.images.read_images`): the serving thread runs only forward passes."""
        out: list = [None] * len(requests)
        specs: list = [None] * len(requests)
        for i, request in enumerate(requests):
            entry = self._ready.get((request.model, request.variant or AUTO, request.tome_r))
            loaded = entry.model() if entry is not None else None
            try:
                if not (isinstance(request.k, int) and 1 <= request.k <= 1000):
                    raise DeitDemoError(f"top-k must be a whole number from 1 to 1000 (got {quoted(request.k)}).")
                specs[i] = loaded.spec if loaded is not None else get_spec(request.model)
            except DeitDemoError as err:
                out[i] = err
        todo = [i for i in range(len(requests)) if out[i] is None]
        tensors = dict(zip(todo, read_images([requests[i].source for i in todo], [specs[i] for i in todo],
                                             fetch=self.fetch, workers=self.cpus.total, pixels=self.sends_pixels)))
        groups: dict[tuple[str, str, int | None], list[int]] = {}
        for i, x in tensors.items():
            if isinstance(x, DeitDemoError):
                out[i] = x
            else:
                groups.setdefault((requests[i].model, requests[i].variant or AUTO, requests[i].tome_r), []).append(i)
        if groups:
            self._answer(groups, {i: tensors[i] for items in groups.values() for i in items},
                         {i: requests[i].k for items in groups.values() for i in items}, out, progress)
        return out

    def _answer(self, groups: dict, tensors: dict, ks: dict, out: list, progress: ProgressFn | None) -> None:
        """Each group's forward pass, here: on the serving thread, on the CPUs a classification may take. (A
        cluster-backed server sends them to its replicas instead: `cluster.server`.)"""
        entries = self._entries(list(groups))

        def serve() -> None:
            with self.cpus.take(self.serve_threads(), timeout_s=60):
                for n, (key, items) in enumerate(groups.items()):
                    if progress:
                        progress(f"classifying with {key[1]}", n, len(groups))
                    found = entries[key]
                    try:
                        if isinstance(found, DeitDemoError):
                            raise found
                        answers = self._classify_group(found, [tensors[i] for i in items], max(ks[i] for i in items))
                    except DeitDemoError as err:
                        answers = [err] * len(items)
                    for i, answer in zip(items, answers):
                        out[i] = answer if isinstance(answer, DeitDemoError) else trimmed(found[0], answer, ks[i])

        SERVING.run(serve, timeout_s=60)

    def _entries(self, keys: list[tuple[str, str, int | None]]) -> dict:
        """(model, runner, pick) for each key, from the ready table; what is missing is loaded first, on a thread of
        its own: a compile there would hold up every visitor on the serving thread (DeiT-B pt2e_int8: 15 s and more),
        and a compile on a thread that outlives it would keep an OpenMP team that slows the serving thread's."""
        found, missing = {}, []
        for key in keys:
            entry = self._ready.get(key)
            loaded = entry.model() if entry is not None else None
            runner = entry.runner() if entry is not None and entry.runner is not None else None
            if loaded is None or (entry.runner is not None and runner is None):
                missing.append(key)
            else:
                found[key] = (loaded, runner, entry.pick)
        if missing:
            found.update(on_own_thread(lambda: {key: self._load(*key) for key in missing}, name="deit-load"))
        return found

    def _load(self, model_key: str, variant_key: str, tome_r: int | None):
        """Load one (model, variant, r) and note it in the ready table; an error is the answer of its requests."""
        try:
            loaded, runner, pick = self.models.get(model_key), None, None
            if variant_key != AUTO:
                variant = get_variant(variant_key)
                if variant is not get_variant(ORIGINAL):
                    with self.cpus.take(self.job_cpus(), job=True, timeout_s=60):
                        runner = self.runners.get(loaded, variant.key, tome_r)
                pick = Pick(variant.key, runner, None, _r_note(variant.key, runner),
                            runner is None or (variant.batch_invariant and not variant.compiles_per_shape),
                            variant.compiles_per_shape)
        except DeitDemoError as err:
            return err
        self._ready[(model_key, variant_key, tome_r)] = _Ready(weakref.ref(loaded), runner and weakref.ref(runner),
                                                               pick)
        return loaded, runner, pick

    def _classify_group(self, found, tensors: list[torch.Tensor], k: int) -> list[ClassifyResult]:
        loaded, _, pick = found
        lanes, warm = (), {self.serve_threads()}
        if pick is None:  # Auto: one frozen snapshot of what it serves now
            choice = self.auto.resolve(loaded)
            pick, warm = choice.serving(), warm | choice.warm_threads
            if pick.runner is not None and pick.runner is choice.runner and choice.lane_runners:
                lanes = (pick.runner, *choice.lane_runners)
        # A compiled graph recompiles (for a minute, on DeiT-B) when torch's thread count changes: it runs with the
        # share of the CPUs this request was granted only where it is compiled for it (Auto's runner is, for the
        # share a convert or benchmark job leaves), and otherwise with the serving thread count.
        granted = torch.get_num_threads()
        recompiles = pick.compiles and granted not in warm
        threads = self.serve_threads() if recompiles else granted
        # Several images on Auto's compiled graph run side by side, a copy of it per lane, each compiled for its
        # share of the threads (and only with the threads it was compiled for).
        lanes = lanes if threads == self.serve_threads() and threads // max(1, len(lanes)) in warm else ()
        # The runtime's own callable: a Runner wraps it in one more Python call per pass
        forward = getattr(pick.runner, "fn", pick.runner)
        with torch_threads(threads) if recompiles else contextlib.nullcontext():
            results = classify_tensors(loaded, tensors, k=min(k, loaded.spec.num_classes), runner=forward,
                                       variant=pick.variant, one_pass=pick.one_pass,
                                       lanes=tuple(getattr(r, "fn", r) for r in lanes))
        self.answered += len(tensors)  # a measurement timed meanwhile says so (core.activity reads it)
        for result in results:  # Auto says what it served and why; a variant by name, its r if it merges tokens
            result.note, result.agreement = pick.sentence, pick.agreement
        return results


def trimmed(loaded: LoadedModel, answer: ClassifyResult | DeitDemoError, k: int) -> Answer | DeitDemoError:
    """An answer cut to its visitor's top-k (a group is answered with the largest k among its visitors)."""
    if isinstance(answer, DeitDemoError):
        return answer
    answer.heads = {head: predictions[:k] for head, predictions in answer.heads.items()}
    return loaded, answer


def _r_note(variant_key: str, runner) -> str:
    """Token merging's r (and whether it was tuned to an accuracy budget), wherever the variant answers."""
    settings = getattr(runner, "notes", None) or {}  # any callable serves; a Runner says how it runs
    if "r" not in settings:
        return ""
    return f"{variant_key} merges r = {settings['r']} tokens per block" + (
        f", {settings['r_source']}" if settings.get("r_source") else "")
