"""The serving component: one thread runs every visitor's forward pass, a CPU budget shares the CPUs with jobs, a
cache holds the loaded variants, Auto chooses the fastest verified one, and lanes run a batch side by side.

`Server` knows nothing of sessions, conversions for download or benchmarks: the facade (`service.Lab`) hands it a
way to get a model (its weights policy) and the store, and calls `classify` / `classify_batch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from deit_demo.core import activity
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.cpus import HEAVY_NICENESS, on_own_thread, torch_threads
from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.core.images import ImageSource, is_url, load_image, preprocess
from deit_demo.core.models import LoadedModel, get_spec
from deit_demo.core.urls import FetchSettings, fetch_url
from deit_demo.serve.auto import AUTO, AUTO_CANDIDATES, AutoServe
from deit_demo.serve.classify import ClassifyResult, classify_tensors
from deit_demo.serve.runners import RunnerCache
from deit_demo.serve.threads import SERVING, CpuBudget
from deit_demo.variants import ORIGINAL, get_variant
from deit_demo.variants.pipeline import ProgressFn


@dataclass
class ServeSettings:
    """How the serving component uses the CPUs. Tuning, with the measurement behind each default; validated here."""

    auto_variants: tuple[str, ...] = AUTO_CANDIDATES  # what Auto may serve, once converted and verified
    cpus: int = 0  # CPUs to share out; 0 = those this process may use
    classify_threads: int = 0  # per classification; 0 = every CPU free at that moment
    reserved_cpus: int = 1  # kept free of convert/benchmark jobs so classification stays responsive
    max_runners: int = 4
    # Where Auto serves a compiled graph (one pass per image in a batch), a batch runs this many passes side by side,
    # each on a copy compiled for its share of the serving threads (classify.run_in_lanes).
    classify_lanes: int = 2
    # A benchmark's or sweep's timing runs on a thread this much nicer than the server's, so visitors' answers come
    # first (the CLI, with one user, passes 0). Not their preparation, nor conversions, which compile: Python holding
    # the GIL, where a descheduled holder makes every answer wait (timing.measure).
    heavy_niceness: int = HEAVY_NICENESS

    def __post_init__(self) -> None:
        # In the order given (a preference among equally fast ones), without the original: it is always the fallback.
        self.auto_variants = tuple(get_variant(k.strip()).key for k in self.auto_variants if k.strip() != ORIGINAL)
        lossy = [k for k in self.auto_variants if get_variant(k).lossy]
        if lossy:
            raise DeitDemoError(f"Auto serves only variants meant to give the original's answers; {', '.join(lossy)} "
                                "compute less on purpose (choose them by name instead).")
        for name in ("max_runners", "classify_lanes"):
            if getattr(self, name) < 1:
                raise DeitDemoError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        for name in ("cpus", "classify_threads", "reserved_cpus", "heavy_niceness"):
            if getattr(self, name) < 0:
                raise DeitDemoError(f"{name} must be 0 or more (got {getattr(self, name)}).")


class Server:
    """Answers visitors: the serving thread, the CPU budget, the loaded variants, lanes and Auto."""

    def __init__(self, models: Callable[[str], LoadedModel], store: ArtifactStore,
                 settings: ServeSettings | None = None):
        self.settings = settings or ServeSettings()
        self.models = models
        self.cpus = CpuBudget(self.settings.cpus or None)
        self.fetch = FetchSettings()  # limits for image URLs (tests that serve on 127.0.0.1 allow loopback)
        self.runners = RunnerCache(store, self.serve_threads(), self.settings.max_runners)
        self.auto = AutoServe(models, self.runners, self.cpus, self.job_cpus, self.settings.auto_variants,
                              lanes=self.settings.classify_lanes)

    def serve_threads(self) -> int:
        return self.settings.classify_threads or self.cpus.total

    def job_cpus(self, requested: int | None = None) -> int:
        """CPUs a convert/benchmark job may take: all but those kept for classification."""
        ceiling = max(1, self.cpus.total - self.settings.reserved_cpus)
        return min(requested or ceiling, ceiling)

    def _load_for(self, model_key: str, variant_keys: set[str], tome_r: int | None) -> None:
        """The model and the named variants loaded before the visitor's turn on the serving thread, on a thread of
        their own: a compile or conversion there would hold up every other visitor (DeiT-B pt2e_int8: 15 s and more),
        and a compile on a thread that outlives it would keep an OpenMP team that slows the serving thread's."""
        def load() -> None:
            loaded = self.models(model_key)
            for key in variant_keys - {AUTO, ORIGINAL}:
                with self.cpus.take(self.job_cpus(), timeout_s=60):
                    self.runners.get(loaded, key, tome_r)

        on_own_thread(load, name="deit-load")

    def classify(self, source: ImageSource, model_key: str, variant_key: str = ORIGINAL, *, k: int = 5,
                 tome_r: int | None = None, wait_auto: bool = False,
                 progress: ProgressFn | None = None) -> tuple[LoadedModel, ClassifyResult]:
        """Top-k of one image with the chosen variant (``original`` runs the eager model with all its heads; ``auto``
        the fastest verified variant, or the original until that is ready unless `wait_auto`)."""
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise DeitDemoError(f"top-k must be a whole number from 1 to 1000 (got {quoted(k)}).")
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
                loaded = self.models(model_key)
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
                        loaded = self.models(model_key)
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
        activity.ACTIVITY.served(len(tensors))  # a measurement timed meanwhile says so
        note, agreement, runner, warm, lanes = "", None, None, {self.serve_threads()}, ()
        if variant_key == AUTO:
            choice = self.auto.resolve(loaded)
            variant_key, runner, agreement, note = choice.serving()
            warm |= choice.warm_threads
            lanes = (runner, *choice.lane_runners) if choice.lane_runners and runner is choice.runner else ()
        elif variant_key != ORIGINAL:
            runner = self.runners.get(loaded, variant_key, tome_r)
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
        # Token merging's r (and whether it was tuned to an accuracy budget) shows wherever the variant answers
        settings = getattr(runner, "notes", None) or {}  # any callable serves; a Runner says how it runs
        if "r" in settings:
            how = f"{variant_key} merges r = {settings['r']} tokens per block" + (
                f", {settings['r_source']}" if settings.get("r_source") else "")
            note = f"{note} · {how}" if note else how
        for result in results:
            result.note, result.agreement = note, agreement
        return results


def _side_by_side(fn, *columns: list, workers: int, name: str) -> list:
    """`fn` over the rows of `columns`, in order, on up to `workers` short-lived threads (inline for fewer than 2)."""
    workers = min(workers, len(columns[0]))
    if workers <= 1:
        return [fn(*row) for row in zip(*columns)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        return list(pool.map(fn, *columns))
