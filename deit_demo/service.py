"""The lab as a service: what the app's handlers and the CLI's commands share (no Gradio here).

`Lab` owns the model cache, the artifact store, the cache of loaded variants and the CPU budget; its methods turn a
request (model key, variant keys, settings) into library calls and result objects. The app and the CLI only format.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deit_demo import bench, charts
from deit_demo.artifacts import DEFAULT_CAP_BYTES, ArtifactStore
from deit_demo.cache import BoundedCache
from deit_demo.classify import ClassifyResult, classify_tensors
from deit_demo.cpus import HEAVY_NICENESS, SERVING, CpuBudget, on_own_thread, settle_heap, torch_threads
from deit_demo.errors import DeitDemoError
from deit_demo.evaluate import AccuracyResult, evaluate
from deit_demo.images import FetchSettings, ImageSource, fetch_url, is_url, load_image, preprocess
from deit_demo.models import DEFAULT_MODEL, MODELS, LoadedModel, ModelCache, get_spec
from deit_demo.pipeline import (ConversionResult, ProgressFn, prepare, run_conversion,
                                variant_context)
from deit_demo.report import weights_banner
from deit_demo.serving import AUTO, AUTO_CANDIDATES, AutoServe, warm_for_visitors
from deit_demo.variants import Runner, VariantContext, get_variant, parse_variant_keys


@dataclass
class AppConfig:
    """How a lab serves: the app's flags, or the CLI's. Validated here, so every caller gets the same error."""

    model: str = DEFAULT_MODEL
    weights: str = "hub"  # hub | random | checkpoint path (applies to `model`; other models use hub, then random)
    offline: bool = False
    store_root: str | None = None
    eval_data: str | None = None  # a labelled image folder: conversion then reports accuracy per variant
    store_cap_bytes: int = DEFAULT_CAP_BYTES
    max_models: int = 2
    # Batches of visitors' classifications in flight at once. Every pass runs on one thread (cpus.SERVING), so a
    # second batch only waits there, and it splits the queue: 8 visitors, DeiT-B: 2.6 images per pass instead of 5
    classify_concurrency: int = 1
    classify_threads: int = 0  # per classification; 0 = every CPU free at that moment
    queue_size: int = 16
    reserved_cpus: int = 1  # kept free of convert/benchmark jobs so classification stays responsive
    max_runners: int = 4
    fallback_to_random: bool = True  # the app serves random weights with a banner; the CLI reports the error
    auto_variants: tuple[str, ...] = AUTO_CANDIDATES  # what Auto may serve, once converted and verified
    auto_prepare: bool = True  # the app prepares Auto for `model` in the background as soon as it starts
    max_batch_size: int = 8  # visitors' classifications that share one forward pass
    # Where Auto serves a compiled graph (one pass per image in a batch), a batch runs this many passes side by side,
    # each on a copy compiled for its share of the serving threads (classify.run_in_lanes).
    classify_lanes: int = 2
    cache_examples: bool = True  # the gallery's answers are cached lazily (for everyone, after a first click)
    isolate_conversions: bool = True  # convert in a child process, so a conversion never stalls an answer
    # A benchmark's timing runs on a thread this much nicer than the server's, so visitors' answers come first (the
    # CLI, with one user, passes 0). Not its preparation, nor conversions or sweeps, which compile: Python holding
    # the GIL, where a descheduled holder makes every answer wait (bench.run_benchmark).
    heavy_niceness: int = HEAVY_NICENESS
    # How long a Python thread may hold the GIL while another waits for it (Python's default: 5 ms). A compile in the
    # server (a benchmark of pt2e_int8) runs seconds of Python, and every answer takes the GIL many times on its way
    # (event loop, handler, serving thread); the app sets this (ui.build_app). DeiT-B, 8 visitors while one compiled:
    # p95 1.6 and 1.7 s at 1 ms against 3.8 and 3.6 s at 5 ms (the phase of the compile; 2 runs each, 2-core EPYC).
    gil_switch_interval_s: float = 0.001

    def __post_init__(self) -> None:
        get_spec(self.model)
        # In the order given (a preference among equally fast ones), without the original: it is always the fallback.
        self.auto_variants = tuple(get_variant(k.strip()).key for k in self.auto_variants if k.strip() != "original")
        lossy = [k for k in self.auto_variants if get_variant(k).lossy]
        if lossy:
            raise DeitDemoError(f"Auto serves only variants meant to give the original's answers; {', '.join(lossy)} "
                                "compute less on purpose (choose them by name instead).")
        for name in ("max_models", "classify_concurrency", "queue_size", "max_runners", "store_cap_bytes",
                     "max_batch_size", "classify_lanes"):
            if getattr(self, name) < 1:
                raise DeitDemoError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        for name in ("classify_threads", "reserved_cpus", "heavy_niceness"):
            if getattr(self, name) < 0:
                raise DeitDemoError(f"{name} must be 0 or more (got {getattr(self, name)}).")


@dataclass
class ConvertOutcome:
    loaded: LoadedModel
    results: list[ConversionResult]
    accuracy: list[AccuracyResult] = field(default_factory=list)
    accuracy_note: str = ""
    seconds: float = 0.0

    @property
    def top1(self) -> dict[str, float]:
        return {r.variant: r.top1 for r in self.accuracy if r.top1 is not None}


class Lab:
    """What every request shares: models, converted variants, the store, and the CPUs."""

    def __init__(self, config: AppConfig | None = None):
        self.config = config or AppConfig()
        self.cache = ModelCache(self.config.max_models)
        self.store = ArtifactStore(self.config.store_root, cap_bytes=self.config.store_cap_bytes,
                                   isolate=self.config.isolate_conversions)
        self.cpus = CpuBudget()
        self.fetch = FetchSettings()  # limits for image URLs (tests that serve on 127.0.0.1 allow loopback)
        self.fallbacks: dict[str, str] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._sessions_lock = threading.Lock()
        # Per-visitor result files live outside the store and outside Gradio's allowed paths: a file is served only
        # once a handler returns it (Gradio copies it to its cache under a content hash), so no visitor can ask for
        # another's by path. Each server has its own folder.
        self.sessions_root = Path(tempfile.mkdtemp(prefix="deit-demo-sessions-"))
        self._runners: BoundedCache[Runner] = BoundedCache(self.config.max_runners)
        self.auto = AutoServe(self, self.config.auto_variants, lanes=self.config.classify_lanes)

    # ---------------------------------------------------------------------------------------------- models

    def model(self, key: str) -> LoadedModel:
        """The model with the best weights we can get; with `fallback_to_random`, random weights (and a banner)
        when the hub or a checkpoint cannot be had."""
        spec = get_spec(key)
        weights = self.config.weights if key == self.config.model else "hub"
        if self.config.offline and weights == "hub" and not spec.bundled:
            weights = "random"
            self.fallbacks[key] = "the server was started with --offline"
        if weights == "random" or not self.config.fallback_to_random:
            return self.cache.get(key, weights)
        try:
            return self.cache.get(key, weights)
        except DeitDemoError:
            self.fallbacks[key] = (f"No pretrained weights: the Hugging Face hub is unreachable and the local cache "
                                   f"has no copy of {spec.hf_repo}" if weights == "hub" else
                                   f"The checkpoint {Path(weights).name} could not be loaded")
            return self.cache.get(key, "random")

    def banner(self, loaded: LoadedModel, *, markdown: bool = True) -> str:
        return weights_banner(loaded, self.fallbacks.get(loaded.spec.key, ""), markdown=markdown)

    def runner(self, loaded: LoadedModel, key: str, tome_r: int | None = None, *,
               adopt: Runner | None = None, settle: bool = True) -> Runner:
        """A loaded variant for classification, converted on first use and kept in a small LRU. `adopt`: a runner
        already loaded from the verified file (Auto's check of an inductor graph), kept instead of compiling again.
        `settle=False`: the caller settles the heap itself once its whole operation is done (Auto's preparation)."""
        variant = get_variant(key)
        # The cache key needs only the spec and r; the full context (preprocessed calibration images) is built only
        # when the runner must be prepared, not on every classification.
        name = variant.store_key(VariantContext(loaded.spec, self.store.root, tome_r=tome_r))

        def load() -> Runner:
            # Loaded with the serving thread count: ONNX Runtime and OpenVINO fix theirs at load, and an inductor
            # graph is compiled for the thread count it is first called with.
            if adopt is not None:
                return warm_for_visitors(adopt, loaded, self.serve_threads())
            with torch_threads(self.serve_threads()):
                runner = prepare(variant, loaded, self.store, variant_context(loaded.spec, self.store, tome_r))[2]
            if settle:
                settle_heap()
            return runner

        return self._runners.get((loaded.spec.key, loaded.weights_id, name), load)

    def _load_for(self, model_key: str, variant_keys: set[str], tome_r: int | None) -> None:
        """The model and the named variants loaded before the visitor's turn on the serving thread, on a thread of
        their own: a compile or conversion there would hold up every other visitor (DeiT-B pt2e_int8: 15 s and more),
        and a compile on a thread that outlives it would keep an OpenMP team that slows the serving thread's."""
        def load() -> None:
            loaded = self.model(model_key)
            for key in variant_keys - {AUTO, "original"}:
                with self.cpus.take(self.heavy_cpus(), timeout_s=60):
                    self.runner(loaded, key, tome_r)

        on_own_thread(load, name="deit-load")

    # ---------------------------------------------------------------------------------------------- visitors

    def cancel_event(self, session: str | None) -> threading.Event:
        """The stop switch of one visitor's jobs (Stop stops only the jobs of whoever pressed it)."""
        with self._sessions_lock:
            return self._cancels.setdefault(session or "local", threading.Event())

    def session_dir(self, session: str | None) -> Path:
        """A folder for one visitor's result files, made on first use."""
        digest = hashlib.sha256((session or "local").encode()).hexdigest()[:16]
        folder = self.sessions_root / digest
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def end_session(self, session: str | None) -> None:
        """A visitor left: stop their jobs and delete their files."""
        with self._sessions_lock:
            event = self._cancels.pop(session or "local", None)
        if event is not None:
            event.set()
        digest = hashlib.sha256((session or "local").encode()).hexdigest()[:16]
        shutil.rmtree(self.sessions_root / digest, ignore_errors=True)

    def serve_threads(self) -> int:
        return self.config.classify_threads or self.cpus.total

    def heavy_cpus(self, requested: int | None = None) -> int:
        """CPUs a convert/benchmark job may take: all but those kept for classification."""
        ceiling = max(1, self.cpus.total - self.config.reserved_cpus)
        return min(requested or ceiling, ceiling)

    # ---------------------------------------------------------------------------------------------- jobs

    def classify(self, source: ImageSource, model_key: str, variant_key: str = "original", *, k: int = 5,
                 tome_r: int | None = None, wait_auto: bool = False,
                 progress: ProgressFn | None = None) -> tuple[LoadedModel, ClassifyResult]:
        """Top-k of one image with the chosen variant (``original`` runs the eager model with all its heads; ``auto``
        the fastest verified variant, or the original until that is ready unless `wait_auto`)."""
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise DeitDemoError(f"top-k must be a whole number from 1 to 1000 (got {k!r}).")
        if variant_key == AUTO and wait_auto:
            self.auto.prepare(model_key)  # before taking CPUs for the answer: preparing takes its own share
        x = self._inputs([source], [model_key])[0]
        if isinstance(x, DeitDemoError):
            raise x
        self._load_for(model_key, {variant_key}, tome_r)

        def serve() -> tuple[LoadedModel, ClassifyResult]:
            with self.cpus.take(self.serve_threads(), timeout_s=60):
                if progress:
                    progress(f"loading {model_key}", 0, 2)
                loaded = self.model(model_key)
                if progress:
                    progress("classifying", 1, 2)
                return loaded, self._classify_group(loaded, [x], variant_key, k=k, tome_r=tome_r)[0]

        return SERVING.run(serve, timeout_s=60)

    def classify_batch(self, sources: list[ImageSource], model_keys: list[str], variant_keys: list[str], *,
                       k: int = 5) -> list[tuple[LoadedModel, ClassifyResult] | DeitDemoError]:
        """Several visitors' images at once: one forward pass per (model, variant) among them. Each item gets its
        answer or its own error, so one visitor's bad upload never fails the others."""
        inputs = self._inputs(sources, model_keys)
        out: list = [x if isinstance(x, DeitDemoError) else None for x in inputs]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (model_key, variant_key) in enumerate(zip(model_keys, variant_keys)):
            if out[i] is None:
                groups.setdefault((model_key, variant_key or AUTO), []).append(i)
        for model_key in {m for m, _ in groups}:
            try:
                self._load_for(model_key, {v for m, v in groups if m == model_key}, None)
            except DeitDemoError:
                pass  # answered per item on the serving thread, which meets the same error

        def serve() -> list:
            with self.cpus.take(self.serve_threads(), timeout_s=60):
                for (model_key, variant_key), items in groups.items():
                    try:
                        loaded = self.model(model_key)
                        answers = self._classify_group(loaded, [inputs[i] for i in items], variant_key, k=k)
                    except DeitDemoError as err:
                        answers, loaded = [err] * len(items), None
                    for i, answer in zip(items, answers):
                        out[i] = answer if isinstance(answer, DeitDemoError) else (loaded, answer)
            return out

        return SERVING.run(serve, timeout_s=60) if groups else out

    def _inputs(self, sources: list[ImageSource], model_keys: list[str]) -> list[torch.Tensor | DeitDemoError]:
        """Each image decoded and preprocessed for its model (or the error that met it), before its turn on the
        serving thread, which runs only forward passes: a bad upload is answered without waiting for that turn.
        URLs are fetched first, several side by side (a slow host, up to `fetch.deadline_s`, holds up only its own
        visitor); then the images decode side by side, one thread per CPU."""

        def get(source: ImageSource) -> ImageSource | DeitDemoError:
            try:
                return fetch_url(str(source), self.fetch) if is_url(source) else source
            except DeitDemoError as err:
                return err

        def read(source: ImageSource | DeitDemoError, model_key: str) -> torch.Tensor | DeitDemoError:
            try:
                if isinstance(source, DeitDemoError):
                    raise source
                return preprocess(load_image(source), get_spec(model_key))
            except DeitDemoError as err:
                return err

        fetched = _side_by_side(get, sources, workers=min(8, sum(map(is_url, sources))), name="deit-fetch")
        # PIL decodes and resizes without the GIL
        return _side_by_side(read, fetched, model_keys, workers=self.cpus.total, name="deit-read")

    def _classify_group(self, loaded: LoadedModel, tensors: list[torch.Tensor], variant_key: str, *, k: int,
                        tome_r: int | None = None) -> list[ClassifyResult]:
        note, agreement, runner, warm, lanes = "", None, None, {self.serve_threads()}, ()
        if variant_key == AUTO:
            choice = self.auto.resolve(loaded)
            variant_key, runner, agreement, note = choice.serving()
            warm |= choice.warm_threads
            lanes = (runner, *choice.lane_runners) if choice.lane_runners and runner is choice.runner else ()
        elif variant_key != "original":
            runner = self.runner(loaded, variant_key, tome_r)
        variant = get_variant(variant_key)
        one_pass = runner is None or (variant.batch_invariant and not variant.compiles_per_shape)
        # A compiled graph recompiles (for a minute, on DeiT-B) when torch's thread count changes: it runs with
        # the share of the CPUs this request was granted only where it is compiled for it (Auto's runner is,
        # for the share a convert or benchmark job leaves), and otherwise with the serving thread count.
        granted = torch.get_num_threads()
        recompiles = variant.compiles_per_shape and granted not in warm
        threads = self.serve_threads() if recompiles else granted
        # Several images on Auto's compiled graph run side by side, a copy of it per lane, each compiled for its
        # share of the threads (and only with the threads it was compiled for).
        lanes = lanes if threads == self.serve_threads() and threads // max(1, len(lanes)) in warm else ()
        with torch_threads(threads) if recompiles else contextlib.nullcontext():
            results = classify_tensors(loaded, tensors, k=min(k, loaded.spec.num_classes), runner=runner,
                                       variant=variant_key, one_pass=one_pass, lanes=lanes)
        for result in results:
            result.note, result.agreement = note, agreement
        return results

    def convert(self, model_key: str, keys, *, tome_r: int | None = None,
                progress: ProgressFn | None = None) -> ConvertOutcome:
        """Convert and check `keys`; with labelled data for this model (built in or --eval-data), accuracy too."""
        loaded = self.model(model_key)
        chosen = parse_variant_keys(keys)
        start = time.perf_counter()
        with self.cpus.take(self.heavy_cpus()):
            outcome = ConvertOutcome(loaded, run_conversion(loaded, chosen, self.store, progress=progress,
                                                            tome_r=tome_r))
            if loaded.spec.eval_set is not None or self.config.eval_data:
                ok = [r.variant for r in outcome.results if r.status == "ok"]
                try:
                    outcome.accuracy = evaluate(loaded, ok, self.store, self.config.eval_data, progress=progress,
                                                tome_r=tome_r)
                    measured = [r for r in outcome.accuracy if r.n_images]
                    if measured:
                        outcome.accuracy_note = (f"Accuracy: top-1 on {measured[0].data} ({measured[0].n_images} "
                                                 "labelled images).")
                except DeitDemoError as err:
                    outcome.accuracy_note = f"Accuracy not measured: {err}"
        outcome.seconds = time.perf_counter() - start
        return outcome

    def benchmark(self, model_key: str, settings: bench.BenchSettings, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, on_update=None) -> tuple[LoadedModel, list[bench.BenchResult]]:
        """Time the variants in `settings` on this lab's CPUs (a job takes at most `heavy_cpus`)."""
        with self.cpus.take(self.heavy_cpus(settings.resolved_threads())) as granted:
            settings.threads = granted
            loaded = self.model(model_key)
            return loaded, bench.run_benchmark(loaded, settings, self.store, progress=progress, cancel=cancel,
                                               on_update=on_update, timing_niceness=self.config.heavy_niceness)

    def tome_sweep(self, model_key: str, rs: list[int], settings: bench.BenchSettings, *, int8: bool = False,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None):
        """Token merging at each r: latency, accuracy on built-in data, agreement with r = 0."""
        with self.cpus.take(self.heavy_cpus(settings.resolved_threads())) as granted:
            settings.threads = granted
            loaded = self.model(model_key)
            return loaded, bench.tome_sweep(loaded, rs, settings, self.store, int8=int8, progress=progress,
                                            cancel=cancel)

    def save_benchmark(self, loaded: LoadedModel, results: list[bench.BenchResult], folder: Path) -> list[Path]:
        """JSON, CSV and standalone HTML charts of a benchmark, written into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"bench_{loaded.spec.key}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**6:06d}"
        bench.save_json(f"{stem}.json", loaded.spec.key, results)
        bench.save_csv(f"{stem}.csv", results)
        charts.write_html(results, f"{stem}.html", title=f"DeiT benchmark: {loaded.spec.key}")
        return [Path(f"{stem}.json"), Path(f"{stem}.csv"), Path(f"{stem}.html")]


def _side_by_side(fn, *columns: list, workers: int, name: str) -> list:
    """`fn` over the rows of `columns`, in order, on up to `workers` short-lived threads (inline for fewer than 2)."""
    workers = min(workers, len(columns[0]))
    if workers <= 1:
        return [fn(*row) for row in zip(*columns)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        return list(pool.map(fn, *columns))


def model_choices() -> list[tuple[str, str]]:
    return [(f"{s.label}  ({s.key})", s.key) for s in MODELS.values()]
