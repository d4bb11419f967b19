"""A benchmark: each variant of one model timed with the project's method, batch size by batch size, with its answers
checked and the profiler's view beside the wall clock.

The original tutorial timed each variant once with the profiler's self-CPU total. That number is not wall time
(it sums operator self times, across threads), so we report it *beside* the wall-clock median, never instead of it.
The profiler runs in its own calls, after the timed blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from deit_demo.core.cpus import torch_threads, usable_cpus
from deit_demo.core.errors import DeitDemoError, describe, quoted
from deit_demo.core.stdio import PROFILER_NOISE, filtered_stderr
from deit_demo.measure.profile import Breakdown, breakdown, unavailable
from deit_demo.measure.timing import LatencyStats, TimingSettings, check_timing, check_whole, entries_from, measure
from deit_demo.variants import MAX_BATCH, ORIGINAL, parse_variant_keys
from deit_demo.variants.base import check_tome_r, torch_profile
from deit_demo.variants.pipeline import ProgressFn, answer_check, prepare_variants, variant_context


def parse_batch_sizes(value: str | int | list) -> list[int]:
    """``"1,8"``, ``8`` or ``[1, 8]`` -> [1, 8]; anything else is a one-line error naming the allowed range."""
    message = f"Batch sizes must be whole numbers from 1 to {MAX_BATCH}, e.g. 1 or 1,8 (got {quoted(value)})."
    parts = str(value).replace(" ", "").split(",") if isinstance(value, (str, int)) else list(value)
    try:
        sizes = [int(p) for p in parts if str(p) != ""]
    except (TypeError, ValueError):
        raise DeitDemoError(message) from None
    if not sizes or any(b < 1 or b > MAX_BATCH for b in sizes) or any(str(p).strip("0123456789") for p in parts):
        raise DeitDemoError(message)
    return list(dict.fromkeys(sizes))


@dataclass
class BenchSettings:
    """What to time and how."""

    variants: list[str] = field(default_factory=lambda: [ORIGINAL])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: int = 0  # 0: all CPUs this process may use
    # The defaults every entry point shows (the Benchmark tab, `bench`, `profile`, `tome-sweep` read them here)
    warmup: int = 3
    runs: int = 20
    block: int = 3  # consecutive calls per variant per round; the first of each block is dropped
    time_budget_s: float | None = None
    input: str = "noise"  # "noise" (fixed seed) or an image path
    profile: bool = True
    tome_r: int | None = None  # tokens merged per block by the token-merging variants; None: the model's default

    def __post_init__(self) -> None:
        """Every caller (CLI, app, scripts) gets the same one-line error for an impossible setting."""
        self.variants = parse_variant_keys(self.variants)
        self.batch_sizes = parse_batch_sizes(self.batch_sizes)
        check_timing(self.runs, self.warmup, self.block)
        check_whole("threads", self.threads, 0, usable_cpus(), " (0 means all the CPUs this process may use)")
        check_tome_r(self.tome_r)
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise DeitDemoError("The time budget must be a positive number of seconds "
                                f"(got {quoted(self.time_budget_s)}).")

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else usable_cpus()


@dataclass
class BenchResult:
    """One (variant, batch size) line of a benchmark; field names follow the project's result vocabulary."""

    model: str
    variant: str
    batch_size: int
    threads: int
    status: str = "ok"
    reason: str = ""
    latency: LatencyStats | None = None
    size_bytes: int = 0
    profiler_self_cpu_ms: float | None = None
    profiler_ops: list[dict] = field(default_factory=list)
    profiler_note: str = ""
    peak_rss_bytes: int = 0
    weights: str = ""
    top1_agreement: float | None = None
    agreement_on: str = ""  # the images `top1_agreement` comes from, named, with their count
    max_abs_diff: float | None = None
    tome_r: int | None = None  # the token-merging variants' r (tuned or chosen), shown wherever the variant appears
    disturbed: str = ""  # why the timing was not on a quiet server ("" when it was); see core.activity
    conditions: dict = field(default_factory=dict)
    breakdown: Breakdown | None = None  # where the time goes, by operator class, from the runtime's own profiler
    trace_events: list = field(default_factory=list, repr=False)  # the runtime's trace (saved as a file, not in rows)

    def to_row(self) -> dict:
        skip = ("latency", "breakdown", "trace_events")
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        row["breakdown"] = self.breakdown.to_row() if self.breakdown is not None else None
        row["profiled_after_timing"] = True  # the profilers ran in calls of their own, after the timed blocks
        row.update(self.latency.to_row() if self.latency else {})
        return row


def profile_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, top: int = 10) -> tuple[float, list]:
    """The tutorial's number (profiler self-CPU total, ms) and the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with filtered_stderr(PROFILER_NOISE), profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        fn(x)
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1000.0
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return total_ms, [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000.0, "calls": e.count} for e in ops]


def with_measurement(row: BenchResult, entry) -> BenchResult:
    """`row` with what the timing loop measured for `entry`: status, size, memory, answers, samples, conditions."""
    row.status, row.reason, row.size_bytes, row.peak_rss_bytes = entry.status, entry.reason, entry.size_bytes, \
        entry.peak_rss_bytes
    if entry.answers is not None:
        row.top1_agreement, row.max_abs_diff = entry.answers.top1_agreement, entry.answers.max_abs_diff
        row.agreement_on = entry.answers.images_named
    row.tome_r = (getattr(entry.runner, "notes", None) or {}).get("r")
    if entry.ok:
        row.latency = LatencyStats(list(entry.samples_ms), batch_size=row.batch_size)
    if entry.conditions is not None:
        row.disturbed, row.conditions = entry.conditions.disturbed, entry.conditions.to_dict()
    return row


PROFILE_RUNS = 3  # calls each runtime's profiler sees, after the timing


def profile_row(row: BenchResult, item, runner, x: torch.Tensor, loaded, store, tome_r: int | None) -> None:
    """The profilers' view of one timed variant: the tutorial's torch.profiler total where torch sees the operators,
    and every runtime's own breakdown by operator class (measure.profile)."""
    if getattr(runner, "profiler_visible", True):
        row.profiler_self_cpu_ms, row.profiler_ops = profile_once(runner, x)
        row.profiler_note = "self-CPU total sums operator self times over threads; it is not wall time"
    else:
        row.profiler_note = ("torch.profiler cannot see inside this runtime; its own profiler's breakdown is shown "
                             "instead")
    ok, reason = item.variant.profiler_available()
    if not ok:
        row.breakdown = unavailable(row.variant, reason)
        return
    try:
        ctx = variant_context(loaded.spec, store, tome_r, loaded.weights_id)
        profile = item.variant.profile(item.artifact, ctx, x, PROFILE_RUNS) or torch_profile(runner, x, PROFILE_RUNS)
    except Exception as err:  # a profiler failing takes only its own view away
        row.breakdown = unavailable(row.variant, f"its profiler failed: {describe(err)}")
        return
    row.breakdown = breakdown(row.variant, profile, wall_ms=row.latency.median_ms if row.latency else None)
    row.trace_events = profile.trace


def make_input(settings: BenchSettings, spec, batch_size: int) -> torch.Tensor:
    """The benchmark input: a fixed-seed tensor, or an image repeated `batch_size` times."""
    if settings.input == "noise":
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, 3, spec.input_size, spec.input_size, generator=generator)
    from deit_demo.core.images import load_image, preprocess

    return preprocess(load_image(settings.input), spec).repeat(batch_size, 1, 1, 1)


UpdateFn = Callable[[list["BenchResult"]], None]


def run_benchmark(loaded, settings: BenchSettings, store, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, on_update: UpdateFn | None = None,
                  timing_niceness: int = 0) -> list[BenchResult]:
    """Prepare each variant once, then for each batch size check and time all of them interleaved (`measure`).

    `on_update` receives the results so far after every round, so a UI can redraw its charts while it runs;
    `timing_niceness`: see `measure`.
    """
    threads = settings.resolved_threads()
    common = {"model": loaded.spec.key, "threads": threads, "weights": loaded.weights}
    with torch_threads(threads):  # runtimes fix their thread count when loaded
        prepared = list(prepare_variants(loaded, settings.variants, store, progress=progress, cancel=cancel,
                                         tome_r=settings.tome_r))
    timing = TimingSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block,
                            time_budget_s=settings.time_budget_s)
    results: list[BenchResult] = []

    def rows(entries, batch_size: int) -> list[BenchResult]:
        out = []
        for e in entries:
            out.append(with_measurement(BenchResult(batch_size=batch_size, variant=e.name, **common), e))
        return out

    for batch_size in settings.batch_sizes:
        x = make_input(settings, loaded.spec, batch_size)
        ready = [item for item in prepared if item.runner is not None]
        publish = (lambda entries, b=batch_size: on_update(results + rows(entries, b))) if on_update else None
        entries = measure(entries_from(ready, check=answer_check(loaded.model, {"input": x})), x, timing,
                          threads=threads, progress=progress, cancel=cancel, on_round=publish,
                          niceness=timing_niceness)
        batch_rows = rows(entries, batch_size)
        if settings.profile:  # in calls of its own, after the timed blocks: it never changes the timed figures
            items = {item.key: item for item in ready}
            for row, entry in zip(batch_rows, entries):
                if not entry.ok:
                    continue
                with torch_threads(threads):
                    profile_row(row, items[entry.name], entry.runner, x, loaded, store, settings.tome_r)
        results.extend(batch_rows)
    failed = [item for item in prepared if item.runner is None]
    results += rows(entries_from(failed), settings.batch_sizes[0])
    if on_update:
        on_update(results)
    return results
