"""Serving many visitors: "Auto (fastest verified)", prepared in the background so that no visitor waits for it.

`AutoServe` converts a few fast candidates for a model on a background thread, keeps those whose answers match the
original's on every check input, times them against the original, and from then on serves the fastest. Until it is
ready (or when nothing passes) Auto serves the original, and says so.

What Auto serves is published, never edited: an `AutoChoice` is frozen, built whole off to the side while Auto
prepares (compiles, lane copies), and swapped in under a lock only when everything in it is ready. A visitor takes one
snapshot and is served a variant with its own runner, never a half-made pair.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from deit_demo.core import activity
from deit_demo.core.cpus import settle_heap, torch_threads
from deit_demo.core.errors import describe, log_unexpected
from deit_demo.core.models import LoadedModel
from deit_demo.measure.timing import Entry, LatencyStats, TimingSettings, entries_from, measure
from deit_demo.serve.runners import RunnerCache, warm_for_visitors
from deit_demo.serve.threads import CpuBudget
from deit_demo.variants import ORIGINAL, Runner, get_variant
from deit_demo.variants.base import compiling_elsewhere
from deit_demo.variants.pipeline import answer_check, check_inputs, prepare, prepare_variants, variant_context

AUTO = "auto"
AUTO_TITLE = "Auto (fastest verified)"
# Quick to convert, exact in intent (no token merging), and the fastest families measured here (benchmarks/
# fastest.py). Static int8 first: its answer does not depend on which other images share the batch.
AUTO_CANDIDATES = ("openvino_int8", "onnx_int8_static", "pt2e_int8", "onnx_int8", "scripted_int8")


@dataclass(frozen=True)
class AutoChoice:
    """What Auto serves for one (model, weights), and why: published whole, never edited (`dataclasses.replace`)."""

    model: str
    weights_id: str
    state: str = "preparing"  # preparing | ready | failed
    variant: str = ORIGINAL
    agreement: float | None = None  # top-1 agreement with the original on the check inputs
    checked: int = 0  # how many check inputs (the example images and fixed-seed noise)
    median_ms: dict[str, float] = field(default_factory=dict)  # batch 1, timed together, original included
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why Auto does not use it
    seconds: float = 0.0
    runner: Runner | None = field(default=None, repr=False)  # held here, so the LRU of variants never evicts it
    # Thread counts the runner is ready for without compiling: the serving count, and the share left to a visitor
    # while a convert or benchmark job holds the other CPUs (so the two never run more threads than there are CPUs)
    warm_threads: frozenset[int] = frozenset()
    # What serves while another thread compiles, when `variant` is a compiled graph: a call into one can then wait for
    # dynamo's process-wide compile lock (8 visitors on DeiT-B during a benchmark of pt2e_int8: answers of 26-60 s).
    # The fastest verified variant that compiles nothing, or the original.
    fallback: str = ORIGINAL
    fallback_agreement: float | None = None
    fallback_runner: Runner | None = field(default=None, repr=False)
    # Where `runner` is a compiled graph: one more copy per lane beyond the first, each compiled for a lane's share of
    # the serving threads, so that several visitors' images run side by side (`classify.run_in_lanes`). A copy each,
    # because one compiled graph called from two threads at once recompiled (a dynamo guard raced), without freezing.
    lane_runners: tuple[Runner, ...] = field(default=(), repr=False)

    def serving(self) -> tuple[str, Runner | None, float | None, str]:
        """(variant, runner, agreement, sentence) to serve with now."""
        if self.runner is not None and get_variant(self.variant).compiles_per_shape and compiling_elsewhere():
            checked = f": {self._agreed(self.fallback_agreement)}" if self.fallback_runner else ""
            why = f"another job is compiling, and {self.variant} could wait for it"
            sentence = f"Auto → {self.fallback}{checked} ({why})"
            return self.fallback, self.fallback_runner, self.fallback_agreement, sentence
        return self.variant, self.runner, self.agreement, self.sentence()

    def _agreed(self, agreement: float | None) -> str:
        return f"same top-1 as the original on {round((agreement or 0) * self.checked)}/{self.checked} check inputs"

    @property
    def speedup(self) -> float | None:
        if self.variant == ORIGINAL or not self.median_ms.get(self.variant) or not self.median_ms.get(ORIGINAL):
            return None
        return self.median_ms[ORIGINAL] / self.median_ms[self.variant]

    def sentence(self) -> str:
        """One line for the visitor: the variant Auto used and its agreement with the original."""
        if self.state == "preparing" and self.variant == ORIGINAL:
            return "Auto → original (the fast variants are being converted and checked in the background)"
        if self.state == "preparing":  # the first verified variant that beat the original, while the others prepare
            return (f"Auto → {self.variant}: {self._agreed(self.agreement)}, {self.speedup:.1f}× faster than the "
                    "original here (the other candidates are still being prepared)")
        if self.variant != ORIGINAL:
            return (f"Auto → {self.variant}: {self._agreed(self.agreement)}, {self.speedup:.1f}× faster than the "
                    "original here")
        if self.state == "failed":
            return f"Auto → original ({self.rejected.get('*', 'preparing the fast variants failed')})"
        slower = {k: v for k, v in self.median_ms.items() if k != ORIGINAL}
        if slower:
            timed = ", ".join(f"{k} {v:.1f} ms" for k, v in slower.items())
            return (f"Auto → original (the verified variants were not faster here: {timed}; original "
                    f"{self.median_ms[ORIGINAL]:.1f} ms)")
        why = "; ".join(f"{k}: {v}" for k, v in list(self.rejected.items())[:3])
        return f"Auto → original (no faster variant passed its answer check: {why})" if why else "Auto → original"


@dataclass
class AutoProgress:
    """How far a preparation has got (shown while it runs; not part of what is served)."""

    model: str
    total: int
    candidate: str = ""
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        left = ""
        if self.done:  # a rough figure: the candidates done so far took this long each, and the timing is short
            left = f", about {max(5, elapsed / self.done * (self.total - self.done) + 10):.0f} s left"
        doing = f"preparing {self.candidate}" if self.candidate and self.done < self.total else "timing them"
        return f"{doing} ({self.done} of {self.total} candidates done{left})"


class AutoServe:
    """Chooses, per model, the fastest verified variant; prepares on a background thread, one model at a time.

    It asks for what it needs and no more: `models` (the facade's weights policy), the shared `runners` cache (it
    holds the store and the serving thread count), the `cpus` budget and the share a background job may take."""

    def __init__(self, models: Callable[[str], LoadedModel], runners: RunnerCache, cpus: CpuBudget,
                 job_cpus: Callable[[], int], candidates: tuple[str, ...] = AUTO_CANDIDATES, timing_runs: int = 6,
                 lanes: int = 1):
        self.models, self.runners, self.cpus, self.job_cpus = models, runners, cpus, job_cpus
        self.candidates = tuple(candidates)
        self.lanes = lanes
        self.timing_runs = timing_runs
        self._choices: dict[tuple[str, str], AutoChoice] = {}
        self._lock = threading.Lock()
        self._todo: queue.Queue[str] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._preparing = threading.Lock()  # one preparation at a time: the worker's, or a caller that waits
        self._progress: dict[str, AutoProgress] = {}  # model key -> the preparation under way

    def _key(self, loaded: LoadedModel) -> tuple[str, str]:
        return loaded.spec.key, loaded.weights_id

    def choice(self, loaded: LoadedModel) -> AutoChoice | None:
        with self._lock:
            return self._choices.get(self._key(loaded))

    def _publish(self, choice: AutoChoice) -> AutoChoice:
        """The one place a choice becomes visible: a whole, frozen object swapped in under the lock."""
        with self._lock:
            self._choices[(choice.model, choice.weights_id)] = choice
        return choice

    def status(self, model_key: str) -> str:
        """One line on what Auto does for `model_key` now: preparing (which candidate, how far), ready (what it
        serves and why) or failed (why). Never loads anything."""
        with self._lock:
            progress = self._progress.get(model_key)
            choices = [c for (key, _), c in self._choices.items() if key == model_key]
        now = choices[-1].sentence() if choices else "Auto → original"
        if progress is not None:
            return f"⏳ Auto is {progress.line()} for {model_key}. Meanwhile: {now}."
        if not choices:
            return f"Auto has not started for {model_key}: the first classification with Auto starts it."
        icon = {"ready": "✅", "failed": "⚠️"}.get(choices[-1].state, "⏳")
        return f"{icon} {now}."

    def request(self, model_key: str) -> None:
        """Prepare `model_key` in the background (once; later requests are free)."""
        self._todo.put(model_key)
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="auto-prepare", daemon=True)
                self._worker.start()

    def resolve(self, loaded: LoadedModel) -> AutoChoice:
        """What Auto serves now; never waits (a caller that may wait calls `prepare` first, as the CLI does)."""
        found = self.choice(loaded)
        if found is None:
            self.request(loaded.spec.key)
            return AutoChoice(loaded.spec.key, loaded.weights_id)
        return found

    def wait(self, model_key: str, timeout_s: float = 1800) -> AutoChoice:
        """Block until `model_key` is ready (for benchmarks and tests)."""
        self.request(model_key)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.choice(self.models(model_key))
            if found is not None and found.state != "preparing":
                return found
            time.sleep(0.2)
        raise TimeoutError(f"Auto was not ready for {model_key} after {timeout_s:.0f} s")

    def _work(self) -> None:
        while True:
            try:
                model_key = self._todo.get(timeout=5)
            except queue.Empty:
                return
            try:
                self.prepare(model_key)
            except Exception as err:  # never kill the server's helper thread; the choice records it
                log_unexpected("Preparing Auto", err)

    def prepare(self, model_key: str) -> AutoChoice:
        """Convert, check and time the candidates for `model_key` (now, on this thread); publish the fastest."""
        loaded = self.models(model_key)
        with self._lock:
            self._choices.setdefault(self._key(loaded), AutoChoice(*self._key(loaded)))
        with self._preparing:
            current = self.choice(loaded)
            if current.state != "preparing":
                return current
            start = time.perf_counter()
            with self._lock:
                self._progress[model_key] = AutoProgress(model_key, len(self.candidates))
            try:
                with self.cpus.take(self.job_cpus()) as granted, activity.ACTIVITY.doing(f"Auto preparing {model_key}"):
                    chosen = self._choose(loaded, granted)
            except Exception as err:
                current = self.choice(loaded)  # an interim choice, if one was published, still serves
                self._publish(replace(current, state="failed", rejected={
                    **current.rejected, "*": f"preparing the fast variants failed: {describe(err)}"}))
                raise
            finally:
                with self._lock:
                    self._progress.pop(model_key, None)
            chosen = self._publish(replace(chosen, seconds=time.perf_counter() - start))
            settle_heap()
            return chosen

    def _lane_runner(self, loaded: LoadedModel, key: str, threads: int) -> Runner:
        """Another copy of the verified variant, loaded from its file and compiled for `threads` (DeiT-B pt2e_int8:
        about 90 MB and a compile of 15-30 s, here rather than on a visitor's time)."""
        store = self.runners.store
        with torch_threads(threads):
            runner = prepare(get_variant(key), loaded, store, variant_context(loaded.spec, store))[2]
        return warm_for_visitors(runner, loaded, threads)

    def _publish_interim(self, loaded: LoadedModel, key: str, original: Entry, candidate: Entry,
                         x, threads: int, checked: int) -> bool:
        """Serve `key` while the other candidates prepare, if its answers match and a short timing says it beats the
        original; True when published."""
        quick = TimingSettings(runs=4, warmup=1, block=3)
        timed = {e.name: e for e in measure([Entry(ORIGINAL, original.runner),
                                             Entry(key, candidate.runner, check=candidate.check)],
                                            x, quick, threads=threads, min_agreement=1.0)}
        if not timed[key].ok or not timed[ORIGINAL].ok:
            return False
        medians = {name: LatencyStats(e.samples_ms).median_ms for name, e in timed.items()}
        if medians[key] >= medians[ORIGINAL]:
            return False
        self._publish(AutoChoice(loaded.spec.key, loaded.weights_id, variant=key,
                                 agreement=timed[key].answers.top1_agreement, checked=checked,
                                 median_ms={k: round(v, 2) for k, v in medians.items()},
                                 runner=self.runners.get(loaded, key, settle=False),
                                 warm_threads=frozenset({self.runners.threads})))
        return True

    def _choose(self, loaded: LoadedModel, threads: int) -> AutoChoice:
        """A new, complete choice for `loaded` (nothing is published here)."""
        inputs = check_inputs(loaded.spec)
        check, x = answer_check(loaded.model, inputs), next(iter(inputs.values()))
        timing = TimingSettings(runs=self.timing_runs, warmup=2, block=3)
        # Cheapest to prepare first (stable: the given order decides among equals), so that the first verified one
        # to beat the original serves while the others are prepared (DeiT-B: the int8 ONNX model in seconds, the
        # compiled graph after minutes).
        order = sorted(self.candidates, key=lambda k: get_variant(k).prepare_cost)
        progress = self._progress.get(loaded.spec.key)

        def note(what: str, done: int, total: int) -> None:
            if progress is not None:
                with self._lock:  # status() reads it under the same lock
                    progress.candidate, progress.done = what.removeprefix("preparing "), done

        entries, interim = [Entry(ORIGINAL, loaded.model)], False
        for item in prepare_variants(loaded, order, self.runners.store, progress=note):
            entries += entries_from([item], check=check)
            if not interim and item.runner is not None and not item.variant.compiles_per_shape:
                interim = self._publish_interim(loaded, item.key, entries[0], entries[-1], x, threads, len(inputs))
        entries = measure(entries, x, timing, threads=threads, min_agreement=1.0)
        rejected = {e.name: e.reason if e.status == "rejected" or e.reason.startswith("failed while")
                    else f"{e.status}: {e.reason.split(chr(10))[0][:160]}" for e in entries if not e.ok}
        timed = {e.name: e for e in entries if e.ok}
        medians = {name: LatencyStats(e.samples_ms).median_ms for name, e in timed.items()}
        fastest = min(medians, key=medians.get) if medians else ORIGINAL
        agreement = {name: e.answers.top1_agreement for name, e in timed.items() if e.answers is not None}
        serving: dict = {}
        serve_threads = self.runners.threads
        if fastest != ORIGINAL:
            if get_variant(fastest).compiles_per_shape:
                # The checked inductor graph is already compiled for this job's share of the CPUs, so that a visitor
                # served during a benchmark runs on the CPUs left, not on all of them; the cache compiles it for the
                # serving threads as well (DeiT-B: 15 s a compile), here rather than on a visitor's time.
                runner = self.runners.get(loaded, fastest, adopt=timed[fastest].runner)
                # (One a visitor had loaded by name meanwhile is served instead: compiled for the serving threads only.)
                adopted = runner is timed[fastest].runner
                warm = frozenset({serve_threads} | ({threads} if adopted else set()))
                serving.update(runner=runner, warm_threads=warm)
                share = serve_threads // self.lanes
                if self.lanes > 1 and share in warm:
                    try:
                        serving["lane_runners"] = tuple(self._lane_runner(loaded, fastest, share)
                                                        for _ in range(self.lanes - 1))
                    except Exception as err:  # serving one image at a time is slower, not wrong
                        rejected["lanes"] = f"a copy of {fastest} for side-by-side passes: {describe(err)}"
                plain = [k for k in sorted(medians, key=medians.get)
                         if k in agreement and not get_variant(k).compiles_per_shape]
                if plain:
                    serving.update(fallback=plain[0], fallback_agreement=agreement[plain[0]],
                                   fallback_runner=self.runners.get(loaded, plain[0], settle=False))
            else:
                # Loaded again for serving: runtimes fix their thread count when loaded (the cache loads with the
                # serving threads); this one was loaded with this job's share of the CPUs.
                serving.update(runner=self.runners.get(loaded, fastest, settle=False),  # prepare settles at its end
                               warm_threads=frozenset({serve_threads}))
        return AutoChoice(loaded.spec.key, loaded.weights_id, state="ready", variant=fastest,
                          agreement=agreement.get(fastest), checked=len(inputs),
                          median_ms={name: round(ms, 2) for name, ms in medians.items()}, rejected=rejected,
                          **serving)
