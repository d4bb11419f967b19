"""The one timing loop: prepare -> check -> time interleaved -> publish, for every job that times runners.

Benchmark, sweep, the token-merging r sweep and Auto's choice differ only in what they hand to `measure` and how they
render what comes back. The method (warm-up, interleaved blocks, the first call of each block dropped, every sample
kept) and the validation of its settings live here once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deit_demo.core import activity
from deit_demo.core.activity import Conditions
from deit_demo.core.cpus import on_own_thread, torch_threads
from deit_demo.core.errors import DeitDemoError, check_cancel, describe, quoted
from deit_demo.variants.pipeline import AnswerCheck, ProgressFn

# A request can ask for any number: the server must not run forever
MAX_RUNS, MAX_WARMUP, MAX_BLOCK = 10_000, 1_000, 100


def check_whole(name: str, value, low: int, high: int, extra: str = "") -> int:
    """`value` as a whole number in [low, high], or the one-line error every caller gives for it."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DeitDemoError(f"{name} must be a whole number from {low} to {high}{extra} (got {quoted(value)}).")
    return value


def check_timing(runs, warmup, block) -> None:
    """The settings of the timing method, validated once for benchmark, sweep and r sweep."""
    check_whole("runs", runs, 1, MAX_RUNS)
    check_whole("warmup", warmup, 0, MAX_WARMUP)
    check_whole("block", block, 1, MAX_BLOCK)


@dataclass
class LatencyStats:
    """Per-call latency samples in milliseconds and the statistics a performance engineer quotes."""

    samples_ms: list[float]
    batch_size: int = 1

    def percentile(self, q: float) -> float:
        """Linear-interpolated percentile (numpy's default), q in 0..100; NaN with no samples."""
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else float("nan")

    @property
    def median_ms(self) -> float:
        return self.percentile(50)

    @property
    def p10_ms(self) -> float:
        return self.percentile(10)

    @property
    def p90_ms(self) -> float:
        return self.percentile(90)

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms)) if self.samples_ms else float("nan")

    @property
    def stdev_ms(self) -> float:
        return float(np.std(self.samples_ms, ddof=1)) if len(self.samples_ms) > 1 else 0.0

    @property
    def iqr_ms(self) -> float:
        return self.percentile(75) - self.percentile(25)

    @property
    def throughput_ips(self) -> float:
        """Images per second at the median."""
        return self.batch_size * 1000.0 / self.median_ms if self.samples_ms else 0.0

    def to_row(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms,
                "stdev_ms": self.stdev_ms, "iqr_ms": self.iqr_ms, "throughput_ips": self.throughput_ips,
                "samples_ms": list(self.samples_ms)}


@dataclass
class TimingSettings:
    """How to time: calls per runner, warm-up, block length, an optional time budget."""

    runs: int = 10
    warmup: int = 3
    block: int = 3  # consecutive calls per runner per round; the first of each block is dropped
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        check_timing(self.runs, self.warmup, self.block)


STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakRss:
    """The process's peak resident memory while a block runs, from the kernel's own high-water mark (VmHWM): reset
    through /proc/self/clear_refs when the first of the blocks running at once starts, read when each one ends.
    Nothing runs beside the timed calls (a thread polling RSS every 5 ms cost 2-3% of DeiT's latency, measured by
    benchmarks/rss_cost.py). Like that sampler's, the figure is the whole process's: blocks timed at the same moment
    (Auto's and a benchmark's) share one counter, so each reads the peak since the first of them began. Where the
    kernel offers no reset, the RSS after the block."""

    _lock = threading.Lock()
    _active = 0
    _reset = False

    def __init__(self):
        self.peak = 0

    def __enter__(self) -> PeakRss:
        with PeakRss._lock:
            if PeakRss._active == 0:
                try:
                    CLEAR_REFS.write_text("5")
                    PeakRss._reset = True
                except OSError:
                    PeakRss._reset = False
            PeakRss._active += 1
        return self

    def __exit__(self, *exc) -> None:
        with PeakRss._lock:
            PeakRss._active -= 1
            reset = PeakRss._reset
        self.peak = _status_bytes("VmHWM" if reset else "VmRSS") or _rss_bytes()


def _status_bytes(field_name: str) -> int:
    try:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) * 1024 if match else 0


def _rss_bytes() -> int:
    """RSS where there is no /proc (psutil)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except (ImportError, OSError):
        return 0


Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Entry:
    """One thing a job times: its name, its runner (or why it has none), and what it is timed and checked on."""

    name: str
    runner: Runner | None
    status: str = "ok"  # ok | unavailable | failed | rejected
    reason: str = ""
    size_bytes: int = 0
    x: torch.Tensor | None = None  # its own input (a sweep's models differ in size); None: the job's input
    check: Callable[[Runner], AnswerCheck] | None = None  # its answers against the original's
    # What the job gives back
    answers: AnswerCheck | None = None
    samples_ms: list[float] = field(default_factory=list)
    peak_rss_bytes: int = 0
    conditions: Conditions | None = None  # what else the process did while the job timed

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def entries_from(prepared: Iterable, *, name: Callable = lambda item: item.key, **extra) -> list[Entry]:
    """Entries for what `pipeline.prepare_variants` yields (its failure rows kept, with their reasons)."""
    return [Entry(name(item), item.runner, item.status, item.reason,
                  item.artifact.size_bytes if item.artifact is not None else 0, **extra) for item in prepared]


RoundFn = Callable[[list[Entry]], None]


def measure(entries: Iterable[Entry], x: torch.Tensor | None, timing: TimingSettings, *, threads: int,
            min_agreement: float | None = None, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, on_round: RoundFn | None = None,
            niceness: int = 0) -> list[Entry]:
    """The one loop: each entry prepared (what `entries` yields), its answers checked, then every entry that passed
    timed interleaved with the others, published after each round. An entry that cannot run keeps its reason and the
    others go on; one whose agreement with the original is under `min_agreement` is not timed ("rejected").

    With `niceness`, the timing (and only the timing) runs on a thread of its own at that niceness, so that a
    server's answers come first: loads and compiles are Python holding the GIL, and a descheduled holder makes every
    other thread wait (8 visitors' DeiT-B p50 while a benchmark compiled pt2e_int8: 2.1-2.3 s niced, 1.4-1.8 s not).
    Each entry's `conditions` says what else the process did while the blocks were timed (`core.activity`).
    """
    done: list[Entry] = []
    for entry in entries:
        check_cancel(cancel)
        if entry.ok and entry.check is not None:
            try:
                with torch_threads(threads):  # as it will be timed: a compiled graph compiles per thread count
                    entry.answers = entry.check(entry.runner)
            except Exception as err:  # converted and loaded, but its runtime fails on a real input
                entry.status, entry.reason = "failed", describe(err)
            else:
                if min_agreement is not None and entry.answers.top1_agreement < min_agreement:
                    entry.status = "rejected"
                    entry.reason = f"top-1 agreement {entry.answers.top1_agreement:.0%} on the check inputs"
        done.append(entry)
    live = [e for e in done if e.ok]

    def publish(samples: dict[str, list[float]]) -> None:
        for entry in live:
            entry.samples_ms = list(samples.get(entry.name, []))
        if on_round:
            on_round(done)

    runners = {e.name: e.runner if e.x is None else (lambda _x, fn=e.runner, own=e.x: fn(own)) for e in live}
    broken: dict[str, str] = {}

    def timed():
        with torch_threads(threads):  # a count per OS thread: this may be a new one
            return time_interleaved(runners, x, timing, progress=progress, cancel=cancel, on_round=publish,
                                    failed=broken)

    with activity.ACTIVITY.window(threads) as conditions:
        samples, peaks = on_own_thread(timed, name="deit-timing", niceness=niceness) if niceness else timed()
    for entry in done:
        entry.conditions = conditions
    publish(samples)
    for entry in live:
        if entry.name in broken:
            entry.status, entry.reason, entry.samples_ms = "failed", broken[entry.name], []
        else:
            entry.peak_rss_bytes = peaks.get(entry.name, 0)
    return done


def time_interleaved(runners: dict[str, Runner], x: torch.Tensor | None, timing: TimingSettings, *,
                     progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                     on_round: Callable[[dict[str, list[float]]], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     failed: dict[str, str] | None = None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Warm up each runner, then time them in interleaved blocks: samples (ms) and peak RSS per runner.

    Each round runs every runner for `block` consecutive calls and keeps all but the first: switching runtime on
    every call makes their thread pools fight, and the first call after a switch pays for it. A runner that raises
    is dropped and its reason put in `failed` (name -> reason); the others go on.
    """
    failed = {} if failed is None else failed
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {name: 0 for name in names}
    kept_per_block = max(1, timing.block - 1)
    total = timing.runs

    def call(name: str) -> bool:
        try:
            runners[name](x)
            return True
        except Exception as err:  # a runtime failing mid-benchmark fails its own row only
            failed[name] = f"failed while timing: {describe(err)}"
            return False
    with torch.inference_mode():
        for name in names:
            for _ in range(timing.warmup):
                check_cancel(cancel)
                if name not in failed and not call(name):
                    break
        started = clock()
        done = 0
        while done < total and len(failed) < len(names):
            if timing.time_budget_s is not None and done and clock() - started > timing.time_budget_s:
                break
            for name in [n for n in names if n not in failed]:
                with PeakRss() as rss:
                    for call_index in range(kept_per_block + (1 if timing.block > 1 else 0)):
                        check_cancel(cancel)
                        start = clock()
                        if not call(name):
                            break
                        elapsed_ms = (clock() - start) * 1000.0
                        if timing.block > 1 and call_index == 0:
                            continue
                        if len(samples[name]) < total:
                            samples[name].append(elapsed_ms)
                peaks[name] = max(peaks[name], rss.peak)
                if progress:
                    progress(f"timing {name}", len(samples[name]), total)
            done = min([len(s) for n, s in samples.items() if n not in failed] or [total])
            if on_round:
                on_round(samples)
    return samples, peaks
