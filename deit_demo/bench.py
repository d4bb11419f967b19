"""Timing methodology: warm-up, interleaved blocks, every sample kept, percentiles, the profiler's view beside it.

The original tutorial timed each variant once with the profiler's self-CPU total. That number is not wall time
(it sums operator self times, across threads), so we report it *beside* the wall-clock median, never instead of it.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deit_demo.cpus import cpu_info, on_own_thread, usable_cpus
from deit_demo.errors import Cancelled, DeitDemoError, check_cancel, describe  # noqa: F401  (bench.Cancelled)
from deit_demo.pipeline import ProgressFn, prepare_variants
from deit_demo.stdio import PROFILER_NOISE, filtered_stderr
from deit_demo.variants import MAX_BATCH, parse_variant_keys

RESULTS_SCHEMA = "deit-demo-results/1"
MAX_RUNS, MAX_WARMUP = 10_000, 1_000  # a request can ask for any number: the server must not run forever  # written into every results file, checked when one is read back


def machine_info() -> dict:
    """What the numbers were measured on, so results from different machines can be compared."""
    model, flags = cpu_info()
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    return {"cpu": model or platform.processor() or platform.machine(), "isa": isa, "cores": os.cpu_count(),
            "usable_cpus": usable_cpus(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


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


def parse_batch_sizes(value: str | int | list) -> list[int]:
    """``"1,8"``, ``8`` or ``[1, 8]`` -> [1, 8]; anything else is a one-line error naming the allowed range."""
    message = f"Batch sizes must be whole numbers from 1 to {MAX_BATCH}, e.g. 1 or 1,8 (got {value!r})."
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

    variants: list[str] = field(default_factory=lambda: ["original"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: int = 0  # 0: all CPUs this process may use
    warmup: int = 3
    runs: int = 10
    block: int = 3  # consecutive calls per variant per round; the first of each block is dropped
    time_budget_s: float | None = None
    input: str = "noise"  # "noise" (fixed seed) or an image path
    profile: bool = True
    tome_r: int | None = None  # tokens merged per block by the token-merging variants; None: the model's default

    def __post_init__(self) -> None:
        """Every caller (CLI, app, scripts) gets the same one-line error for an impossible setting."""
        self.variants = parse_variant_keys(self.variants)
        self.batch_sizes = parse_batch_sizes(self.batch_sizes)
        for name, low, high in (("runs", 1, MAX_RUNS), ("warmup", 0, MAX_WARMUP), ("threads", 0, usable_cpus()),
                                ("block", 1, 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                extra = " (0 means all the CPUs this process may use)" if name == "threads" else ""
                raise DeitDemoError(f"{name} must be a whole number from {low} to {high}{extra} (got {value!r}).")
        if self.tome_r is not None and (isinstance(self.tome_r, bool) or not isinstance(self.tome_r, int)
                                        or self.tome_r < 0):
            raise DeitDemoError(f"The token-merging r must be a whole number of at least 0 (got {self.tome_r!r}).")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise DeitDemoError(f"The time budget must be a positive number of seconds (got {self.time_budget_s}).")

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
    max_abs_diff: float | None = None

    def to_row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "latency"}
        row.update(self.latency.to_row() if self.latency else {})
        return row


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by runtimes created after this point


class RssSampler:
    """Peak resident memory of this process while a block runs (psutil, sampled every few ms)."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def profile_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, top: int = 10) -> tuple[float, list]:
    """The tutorial's number (profiler self-CPU total, ms) and the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with filtered_stderr(PROFILER_NOISE), profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        fn(x)
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1000.0
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return total_ms, [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000.0, "calls": e.count} for e in ops]


Runner = Callable[[torch.Tensor], torch.Tensor]


def time_interleaved(runners: dict[str, Runner], x: torch.Tensor, settings: BenchSettings, *,
                     progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                     on_round: Callable[[dict[str, list[float]]], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     failed: dict[str, str] | None = None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Warm up each runner, then time them in interleaved blocks; returns samples (ms) and peak RSS per runner.

    Each round runs every variant for `block` consecutive calls and keeps all but the first: switching runtime on
    every call makes their thread pools fight, and the first call after a switch pays for it. A runner that raises
    is dropped and its reason put in `failed` (name -> reason); the others go on.
    """
    failed = {} if failed is None else failed
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {name: 0 for name in names}
    kept_per_block = max(1, settings.block - 1)
    total = settings.runs

    def call(name: str) -> bool:
        try:
            runners[name](x)
            return True
        except Exception as err:  # a runtime failing mid-benchmark fails its own row only
            failed[name] = f"failed while timing: {describe(err)}"
            return False

    with torch.inference_mode():
        for name in names:
            for _ in range(settings.warmup):
                check_cancel(cancel)
                if name not in failed and not call(name):
                    break
        started = clock()
        done = 0
        while done < total and len(failed) < len(names):
            if settings.time_budget_s is not None and done and clock() - started > settings.time_budget_s:
                break
            for name in [n for n in names if n not in failed]:
                with RssSampler() as rss:
                    for call_index in range(kept_per_block + (1 if settings.block > 1 else 0)):
                        check_cancel(cancel)
                        start = clock()
                        if not call(name):
                            break
                        elapsed_ms = (clock() - start) * 1000.0
                        if settings.block > 1 and call_index == 0:
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


def make_input(settings: BenchSettings, spec, batch_size: int) -> torch.Tensor:
    """The benchmark input: a fixed-seed tensor, or an image repeated `batch_size` times."""
    if settings.input == "noise":
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, 3, spec.input_size, spec.input_size, generator=generator)
    from deit_demo.images import load_image, preprocess

    return preprocess(load_image(settings.input), spec).repeat(batch_size, 1, 1, 1)


def save_json(path: Path | str, model: str, results: list[BenchResult], extra: dict | None = None) -> None:
    payload = {"schema": RESULTS_SCHEMA, "model": model, "machine": machine_info(),
               "rows": [r.to_row() for r in results], **(extra or {})}
    text = json.dumps(payload, indent=2, default=str)
    if str(path) == "-":
        print(text)
    else:
        Path(path).write_text(text)


def load_json(path: Path | str) -> tuple[dict, list[BenchResult]]:
    """Read back a saved benchmark: the payload and its rows as BenchResult objects."""
    payload = json.loads(Path(path).read_text())
    results = []
    for row in payload["rows"]:
        row = dict(row)
        samples = row.pop("samples_ms", None)
        for key in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "stdev_ms", "iqr_ms", "throughput_ips"):
            row.pop(key, None)
        result = BenchResult(**row)
        if samples is not None:
            result.latency = LatencyStats(samples, batch_size=result.batch_size)
        results.append(result)
    return payload, results


CSV_FIELDS = ["model", "variant", "batch_size", "threads", "status", "reason", "median_ms", "p10_ms", "p90_ms",
              "mean_ms", "stdev_ms", "iqr_ms", "throughput_ips", "size_bytes", "profiler_self_cpu_ms",
              "peak_rss_bytes", "weights", "top1_agreement", "max_abs_diff", "samples_ms"]


def save_csv(path: Path | str, results: list[BenchResult]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for result in results:
            row = result.to_row()
            row["samples_ms"] = " ".join(f"{s:.4f}" for s in row.get("samples_ms", []))
            writer.writerow(row)


def load_csv(path: Path | str) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["samples_ms"] = [float(s) for s in row["samples_ms"].split()] if row.get("samples_ms") else []
    return rows


UpdateFn = Callable[[list[BenchResult]], None]


def run_benchmark(loaded, settings: BenchSettings, store, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, on_update: UpdateFn | None = None,
                  timing_niceness: int = 0) -> list[BenchResult]:
    """Prepare each variant, then time all of them interleaved, batch size by batch size.

    `on_update` receives the results so far after every round, so a UI can redraw its charts while it runs. With
    `timing_niceness` the timing runs on a thread of its own at that niceness, so that a server's answers come first;
    the preparation does not: loads and compiles are Python holding the GIL, and a descheduled holder makes every
    other thread wait (8 visitors' DeiT-B p50 while a benchmark compiled pt2e_int8: 2.1-2.3 s niced, 1.4-1.8 s not).
    """
    threads = settings.resolved_threads()
    set_threads(threads)
    common = {"model": loaded.spec.key, "threads": threads, "weights": loaded.weights}
    runners, sizes, failed = {}, {}, {}
    for item in prepare_variants(loaded, settings.variants, store, progress=progress, cancel=cancel,
                                 tome_r=settings.tome_r):
        if item.runner is None:
            failed[item.key] = (item.status, item.reason)
        else:
            runners[item.key], sizes[item.key] = item.runner, item.artifact.size_bytes
    results: list[BenchResult] = []
    for batch_size in settings.batch_sizes:
        x = make_input(settings, loaded.spec, batch_size)
        with torch.inference_mode():
            reference = loaded.model(x).float()
        batch_results = {key: BenchResult(batch_size=batch_size, variant=key, size_bytes=sizes[key], **common)
                         for key in runners}
        for key, runner in runners.items():
            try:
                with torch.inference_mode():
                    got = runner(x).float().reshape(reference.shape)
                batch_results[key].top1_agreement = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
                batch_results[key].max_abs_diff = float((got - reference).abs().max())
            except Exception as err:
                batch_results[key].status, batch_results[key].reason = "failed", describe(err)
        live = {k: runners[k] for k in runners if batch_results[k].status == "ok"}

        def publish(samples: dict[str, list[float]]) -> None:
            for key, values in samples.items():
                batch_results[key].latency = LatencyStats(list(values), batch_size=batch_size)
            if on_update:
                on_update(results + list(batch_results.values()))

        broken: dict[str, str] = {}
        def timed():
            set_threads(threads)  # a count per thread: this may be a new one
            return time_interleaved(live, x, settings, progress=progress, cancel=cancel, on_round=publish,
                                    failed=broken)
        samples, peaks = (on_own_thread(timed, name="deit-timing", niceness=timing_niceness) if timing_niceness
                          else timed())
        publish(samples)
        for key, reason in broken.items():
            batch_results[key].status, batch_results[key].reason, batch_results[key].latency = "failed", reason, None
            live.pop(key)
        for key, runner in live.items():
            result = batch_results[key]
            result.peak_rss_bytes = peaks[key]
            if settings.profile and getattr(runner, "profiler_visible", True):
                result.profiler_self_cpu_ms, result.profiler_ops = profile_once(runner, x)
                result.profiler_note = "self-CPU total sums operator self times over threads; it is not wall time"
            elif settings.profile:
                result.profiler_note = ("torch.profiler cannot see inside this runtime; its operators run outside "
                                        "PyTorch, so no self-CPU figure is shown")
        results.extend(batch_results.values())
    for key, (status, reason) in failed.items():
        results.append(BenchResult(variant=key, batch_size=settings.batch_sizes[0], status=status, reason=reason,
                                   **common))
    if on_update:
        on_update(results)
    return results


@dataclass
class TomeSweepRow:
    """One r of a token-merging sweep: speed (eager and, when asked, int8) and fidelity."""

    model: str
    r: int
    tokens_last_block: int
    latency: LatencyStats | None = None
    int8_latency: LatencyStats | None = None
    top1: float | None = None  # on the model's labelled data, when it has some
    top1_ci95: tuple[float, float] | None = None
    n_images: int = 0
    top1_agreement: float | None = None  # with the unmerged model, on the example images
    weights: str = ""

    def to_row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k not in ("latency", "int8_latency")}
        row["median_ms"] = self.latency.median_ms if self.latency else None
        row["int8_median_ms"] = self.int8_latency.median_ms if self.int8_latency else None
        return row


def tome_sweep(loaded, rs: list[int], settings: BenchSettings, store=None, *, int8: bool = False,
               progress: ProgressFn | None = None, cancel=None) -> list[TomeSweepRow]:
    """For each r: eager ToMe latency (interleaved with every other r, the project's method), accuracy on the model's
    built-in labelled data, and top-1 agreement with the unmerged model on its example images. With `int8`, the
    tome_int8 variant of each r is prepared in `store` and timed too."""
    from deit_demo.evaluate import accuracy, accuracy_interval, builtin_set
    from deit_demo.pipeline import check_inputs, compare_answers, run_inputs
    from deit_demo.tome import ToMe

    if not rs or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in rs):
        raise DeitDemoError(f"r values must be whole numbers of at least 0, e.g. 0,4,8 (got {rs!r}).")
    set_threads(settings.resolved_threads())
    tokens = loaded.model.patch_embed.num_patches + loaded.model.num_prefix_tokens
    inputs = check_inputs(loaded.spec, noise=0)
    reference = run_inputs(loaded.model, inputs)
    dataset = builtin_set(loaded.spec) if loaded.spec.eval_set is not None else None
    rows, runners = [], {}
    for i, r in enumerate(dict.fromkeys(rs)):
        check_cancel(cancel)
        if progress:
            progress(f"measuring r={r}", i, len(rs))
        merged = ToMe(loaded.model, r).eval()
        row = TomeSweepRow(model=loaded.spec.key, r=r, tokens_last_block=merged.tokens_per_block(tokens)[-1],
                           weights=loaded.weights)
        row.top1_agreement = compare_answers(reference, run_inputs(merged, inputs)).top1_agreement
        if dataset is not None:
            top1, _ = accuracy(merged, dataset)
            row.top1, row.top1_ci95, row.n_images = sum(top1) / len(top1), accuracy_interval(top1), len(top1)
        runners[f"r={r}"] = merged
        if int8:
            item = next(prepare_variants(loaded, ["tome_int8"], store, tome_r=r))
            if item.runner is None:
                raise DeitDemoError(f"tome_int8 at r={r} could not be prepared: {item.reason}")
            runners[f"int8 r={r}"] = item.runner
        rows.append(row)
    x = make_input(settings, loaded.spec, settings.batch_sizes[0])
    samples, _ = time_interleaved(runners, x, settings, progress=progress, cancel=cancel)
    for row in rows:
        row.latency = LatencyStats(samples[f"r={row.r}"], batch_size=settings.batch_sizes[0])
        if int8:
            row.int8_latency = LatencyStats(samples[f"int8 r={row.r}"], batch_size=settings.batch_sizes[0])
    return rows
