"""Serving many visitors: "Auto (fastest verified)", prepared in the background so that no visitor waits for it.

`AutoServe` converts a few fast candidates for a model on a background thread, keeps those whose answers match the
original's on every check input, times them against the original, and from then on serves the fastest. Until it is
ready (or when nothing passes) Auto serves the original, and says so.

What Auto serves is published, never edited: an `AutoChoice` (the policy's `Decision` and the runners that serve it)
is frozen, built whole off to the side while Auto prepares, and swapped in under a lock only when all of it is ready.
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
from deit_demo.measure.timing import Entry, TimingSettings, measure
from deit_demo.serve.candidates import measure_candidates
from deit_demo.serve.policy import Decision, Rules, beats_original, measured
from deit_demo.serve.runners import RunnerCache, warm_for_visitors
from deit_demo.variants import ORIGINAL, Runner, get_variant
from deit_demo.variants.base import compiling_elsewhere
from deit_demo.variants.pipeline import prepare, variant_context

AUTO = "auto"
AUTO_TITLE = "Auto (fastest verified)"
# Quick to convert, exact in intent (no token merging), and the fastest families measured here (benchmarks/
# fastest.py). Static int8 first: its answer does not depend on which other images share the batch.
AUTO_CANDIDATES = ("openvino_int8", "onnx_int8_static", "pt2e_int8", "onnx_int8", "scripted_int8")


@dataclass(frozen=True)
class Pick:
    """What one request is served with: a variant, its runner (None: the eager original) and how to call it."""

    variant: str
    runner: Runner | None
    agreement: float | None
    sentence: str
    one_pass: bool = True  # several images share one forward pass (else one pass each)
    compiles: bool = False  # a graph compiled per shape and thread count


@dataclass(frozen=True)
class Runners:
    """What serves a decision, loaded and compiled before it is published."""

    main: Runner | None = field(default=None, repr=False)  # held here, so the LRU of variants never evicts it
    # Thread counts `main` is ready for without compiling: the serving count, and the share left to a visitor while a
    # convert or benchmark job holds the other CPUs (so the two never run more threads than there are CPUs)
    warm_threads: frozenset[int] = frozenset()
    # Where `main` is a compiled graph: one more copy per lane beyond the first, each compiled for a lane's share of
    # the serving threads, so that several visitors' images run side by side (`classify.run_in_lanes`). A copy each,
    # because one compiled graph called from two threads at once recompiled (a dynamo guard raced), without freezing.
    lanes: tuple[Runner, ...] = field(default=(), repr=False)
    # What serves while another thread compiles, when `main` is a compiled graph: a call into one can then wait for
    # dynamo's process-wide compile lock (8 visitors on DeiT-B during a benchmark of pt2e_int8: answers of 26-60 s).
    fallback: Runner | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AutoChoice:
    """What Auto serves for one (model, weights), and why: published whole, never edited (`dataclasses.replace`)."""

    model: str
    weights_id: str
    state: str = "preparing"  # preparing | ready | failed
    decision: Decision = Decision()
    checked: int = 0  # how many check inputs (the example images and fixed-seed noise)
    runners: Runners = Runners()
    seconds: float = 0.0
    # Derived once here, so that serving a request reads two fields and looks nothing up
    pick: Pick = field(init=False, repr=False, compare=False)
    stand_in: Pick | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        d, r = self.decision, self.runners
        main = get_variant(d.variant)
        object.__setattr__(self, "pick", Pick(d.variant, r.main, d.agreement, self.sentence(),
                                              main.batch_invariant and not main.compiles_per_shape,
                                              main.compiles_per_shape))
        stand_in = None
        if r.main is not None and main.compiles_per_shape:
            checked = f": {self._agreed(d.fallback_agreement)}" if r.fallback else ""
            why = f"another job is compiling, and {d.variant} could wait for it"
            fallback = get_variant(d.fallback)
            stand_in = Pick(d.fallback, r.fallback, d.fallback_agreement, f"Auto → {d.fallback}{checked} ({why})",
                            fallback.batch_invariant and not fallback.compiles_per_shape, fallback.compiles_per_shape)
        object.__setattr__(self, "stand_in", stand_in)

    def serving(self) -> Pick:
        """What to serve with now: the stand-in while another thread compiles, if the choice is a compiled graph."""
        if self.stand_in is not None and compiling_elsewhere():
            return self.stand_in
        return self.pick

    # The decision's and the runners' figures, read where a choice is shown or tested
    variant = property(lambda self: self.decision.variant)
    agreement = property(lambda self: self.decision.agreement)
    median_ms = property(lambda self: self.decision.median_ms)
    rejected = property(lambda self: self.decision.rejected)
    fallback = property(lambda self: self.decision.fallback)
    speedup = property(lambda self: self.decision.speedup)
    runner = property(lambda self: self.runners.main)
    lane_runners = property(lambda self: self.runners.lanes)
    warm_threads = property(lambda self: self.runners.warm_threads)

    def _agreed(self, agreement: float | None) -> str:
        return f"same top-1 as the original on {round((agreement or 0) * self.checked)}/{self.checked} check inputs"

    def sentence(self) -> str:
        """One line for the visitor: the variant Auto used and its agreement with the original."""
        if self.state == "preparing" and self.variant == ORIGINAL:
            return "Auto → original (the fast variants are being converted and checked in the background)"
        faster = f", {self.speedup:.1f}× faster than the original here" if self.speedup else ""
        if self.state == "preparing":  # the first verified variant that beat the original, while the others prepare
            return (f"Auto → {self.variant}: {self._agreed(self.agreement)}{faster} (the other candidates are still "
                    "being prepared)")
        if self.variant != ORIGINAL:
            return f"Auto → {self.variant}: {self._agreed(self.agreement)}{faster}"
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
    """How far a preparation has got (shown while it runs; not part of what is served; read under AutoServe's lock)."""

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

    It asks for what it needs and no more: the server's `models` cache, the shared `runners` cache (it holds the
    store and the serving thread count), the `cpus` budget (a `serve.server.CpuBudget`) and the share a background
    job may take. What it serves is decided by `policy.choose`; loading and compiling for that decision happen here."""

    def __init__(self, models, runners: RunnerCache, cpus, job_cpus: Callable[[], int],
                 candidates: tuple[str, ...] = AUTO_CANDIDATES, timing_runs: int = 6, lanes: int = 1,
                 rules: Rules = Rules()):
        self.models, self.runners, self.cpus, self.job_cpus = models, runners, cpus, job_cpus
        self.candidates = tuple(candidates)
        self.lanes, self.timing_runs, self.rules = lanes, timing_runs, rules
        self.serve_here = True  # False: a cluster serves what Auto chooses, so nothing is loaded here for serving
        self.preparer = None  # a cluster's: the measurement as a task on a worker node
        self._choices: dict[tuple[str, str], AutoChoice] = {}
        self._lock = threading.Lock()
        self._todo: queue.Queue[str] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._preparing = threading.Lock()  # one preparation at a time: the worker's, or a caller that waits
        self._progress: dict[str, AutoProgress] = {}  # model key -> the preparation under way (under `_lock`)

    def choice(self, loaded: LoadedModel) -> AutoChoice | None:
        with self._lock:
            return self._choices.get((loaded.spec.key, loaded.weights_id))

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
            line = progress.line() if progress is not None else ""
            choices = [c for (key, _), c in self._choices.items() if key == model_key]
        now = choices[-1].sentence() if choices else "Auto → original"
        if line:
            return f"⏳ Auto is {line} for {model_key}. Meanwhile: {now}."
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
            found = self.choice(self.models.get(model_key))
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
        loaded = self.models.get(model_key)
        with self._lock:
            self._choices.setdefault((loaded.spec.key, loaded.weights_id),
                                     AutoChoice(loaded.spec.key, loaded.weights_id))
        with self._preparing:
            current = self.choice(loaded)
            if current.state != "preparing":
                return current
            start = time.perf_counter()
            with self._lock:
                self._progress[model_key] = AutoProgress(model_key, len(self.candidates))
            try:
                with self.cpus.take(self.job_cpus(), job=True) as granted, \
                        activity.ACTIVITY.doing(f"Auto preparing {model_key}"):
                    chosen = self._choose(loaded, granted)
            except Exception as err:
                current = self.choice(loaded)  # an interim choice, if one was published, still serves
                why = {**current.rejected, "*": f"preparing the fast variants failed: {describe(err)}"}
                self._publish(replace(current, state="failed", decision=replace(current.decision, rejected=why)))
                raise
            finally:
                with self._lock:
                    self._progress.pop(model_key, None)
            chosen = self._publish(replace(chosen, seconds=time.perf_counter() - start))
            settle_heap()
            return chosen

    def _note(self, model_key: str):
        """The preparation's progress callback: what it prepares now, and how many are done (read by `status`)."""
        def note(what: str, done: int, total: int) -> None:
            with self._lock:
                if (progress := self._progress.get(model_key)) is not None:
                    progress.candidate, progress.done = what.removeprefix("preparing "), done
        return note

    def _choose(self, loaded: LoadedModel, threads: int) -> AutoChoice:
        """A new, complete choice for `loaded`: prepare, check and time the candidates beside the original (the first
        fast one serves meanwhile), let the policy decide, then load what it chose. A cluster replaces this with
        the same measurement on a worker node (`preparer`)."""
        if self.preparer is not None:
            return self.preparer(loaded, threads)
        published = []

        def first_fast(original, candidate, x, checked) -> None:
            if not published and self._publish_interim(loaded, original, candidate, x, threads, checked):
                published.append(candidate.name)

        found = measure_candidates(loaded, self.candidates, self.runners.store, threads=threads,
                                   timing_runs=self.timing_runs, rules=self.rules, progress=self._note(loaded.spec.key),
                                   on_prepared=first_fast)
        decision = found.decision
        runners = self._load_for_serving(loaded, decision, found.entries[decision.variant].runner, threads)
        return AutoChoice(loaded.spec.key, loaded.weights_id, "ready", replace(decision, rejected={
            **decision.rejected, **runners[1]}), found.checked, runners[0])

    def _load_for_serving(self, loaded: LoadedModel, decision: Decision, checked: Runner | None,
                          threads: int) -> tuple[Runners, dict[str, str]]:
        """The runners that serve `decision`, loaded (and compiled) before it is published, and what could not be."""
        serve_threads, problems = self.runners.threads, {}
        if decision.variant == ORIGINAL or not self.serve_here:
            return Runners(), problems
        if not get_variant(decision.variant).compiles_per_shape:
            # Loaded again for serving: runtimes fix their thread count when loaded (the cache loads with the
            # serving threads); the checked one was loaded with this job's share of the CPUs.
            return Runners(self.runners.get(loaded, decision.variant, settle=False),  # prepare settles at its end
                           frozenset({serve_threads})), problems
        # The checked inductor graph is already compiled for this job's share of the CPUs, so that a visitor served
        # during a benchmark runs on the CPUs left, not on all of them; the cache compiles it for the serving threads
        # as well (DeiT-B: 15 s a compile), here rather than on a visitor's time. (One a visitor had loaded by name
        # meanwhile is served instead: compiled for the serving threads only.)
        runner = self.runners.get(loaded, decision.variant, adopt=checked)
        warm = frozenset({serve_threads} | ({threads} if runner is checked else set()))
        lanes, share = (), serve_threads // self.lanes
        if self.lanes > 1 and share in warm:
            try:
                lanes = tuple(self._lane_runner(loaded, decision.variant, share) for _ in range(self.lanes - 1))
            except Exception as err:  # serving one image at a time is slower, not wrong
                problems["lanes"] = f"a copy of {decision.variant} for side-by-side passes: {describe(err)}"
        fallback = (self.runners.get(loaded, decision.fallback, settle=False)
                    if decision.fallback != ORIGINAL else None)
        return Runners(runner, warm, lanes, fallback), problems

    def _lane_runner(self, loaded: LoadedModel, key: str, threads: int) -> Runner:
        """Another copy of the verified variant, loaded from its file and compiled for `threads` (DeiT-B pt2e_int8:
        about 90 MB and a compile of 15-30 s, here rather than on a visitor's time)."""
        store = self.runners.store
        with torch_threads(threads):
            runner = prepare(get_variant(key), loaded, store, variant_context(loaded.spec, store))[2]
        return warm_for_visitors(runner, loaded, threads)

    def _publish_interim(self, loaded: LoadedModel, original: Entry, candidate: Entry, x, threads: int,
                         checked: int) -> bool:
        """Serve the candidate while the others prepare, if its answers match and a short timing says it beats the
        original; True when published."""
        quick = TimingSettings(runs=4, warmup=1, block=3)
        timed = {e.name: measured(e) for e in measure(
            [Entry(ORIGINAL, original.runner), Entry(candidate.name, candidate.runner, check=candidate.check)],
            x, quick, threads=threads, min_agreement=self.rules.min_agreement)}
        key = candidate.name
        if not beats_original(timed[key], timed[ORIGINAL], self.rules):
            return False
        decision = Decision(key, timed[key].agreement, {k: round(m.median_ms, 2) for k, m in timed.items()})
        self._publish(AutoChoice(loaded.spec.key, loaded.weights_id, decision=decision, checked=checked,
                                 runners=Runners(self.runners.get(loaded, key, settle=False),
                                                 frozenset({self.runners.threads})) if self.serve_here else Runners()))
        return True

