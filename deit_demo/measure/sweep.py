"""A sweep: models x variants timed together with the project's method, for each thread count and batch size, each
pair's answers checked against its model's original, its published (or measured) accuracy beside it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from deit_demo.core.cpus import torch_threads, usable_cpus
from deit_demo.core.errors import DeitDemoError, check_cancel, quoted
from deit_demo.core.models import get_spec
from deit_demo.measure.bench import BenchResult, parse_batch_sizes, with_measurement
from deit_demo.measure.timing import Entry, TimingSettings, check_timing, measure
from deit_demo.variants import get_variant, parse_variant_keys
from deit_demo.variants.base import check_tome_r
from deit_demo.variants.pipeline import ProgressFn, answer_check, check_inputs, prepare_variants


@dataclass
class SweepSettings:
    """Which pairs to time, how, and the budgets a recommendation must meet. Validated for every caller."""

    models: list[str]
    variants: list[str]
    threads: list[int] = field(default_factory=lambda: [0])  # 0: every CPU this process may use
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    runs: int = 10
    warmup: int = 2
    block: int = 3
    weights: str | None = None  # hub | random | PATH for every model; None: the lab's choice per model
    tome_r: int | None = None
    budget_ms: float | None = None
    budget_mb: float | None = None
    min_top1: float | None = None  # percent
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        models = [m.strip() for m in (self.models.split(",") if isinstance(self.models, str) else self.models)
                  if m and m.strip()]
        if not models:
            raise DeitDemoError("Choose at least one model to sweep.")
        self.models = [get_spec(m).key for m in dict.fromkeys(models)]
        self.variants = parse_variant_keys(self.variants)
        self.batch_sizes = parse_batch_sizes(self.batch_sizes)
        threads = self.threads.split(",") if isinstance(self.threads, str) else self.threads
        try:
            self.threads = list(dict.fromkeys(int(t) for t in threads if str(t).strip()))
        except ValueError:
            raise DeitDemoError(f"Thread counts must be whole numbers, e.g. 1,2 (got {quoted(threads)}).") from None
        if not self.threads or any(t < 0 or t > usable_cpus() for t in self.threads):
            raise DeitDemoError(f"Thread counts must be from 0 (all) to {usable_cpus()} (got {quoted(self.threads)}).")
        check_timing(self.runs, self.warmup, self.block)
        check_tome_r(self.tome_r)
        for name in ("budget_ms", "budget_mb", "min_top1"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise DeitDemoError(f"{name.replace('_', ' ')} must be a positive number (got {quoted(value)}).")
        if not 0 <= self.min_agreement <= 1:
            raise DeitDemoError(f"The minimum agreement is a fraction from 0 to 1 (got {quoted(self.min_agreement)}).")


@dataclass
class SweepRow(BenchResult):
    """A BenchResult of one (model, variant, threads, batch) with the model's accuracy beside it."""

    published_top1: float | None = None
    published_top5: float | None = None
    accuracy_source: str = ""
    task: str = "ImageNet-1k"  # accuracies compare only within one task
    lossy: bool = False


def task_of(spec) -> str:
    """What a model's accuracy is measured on: ImageNet-1k, or the task of a model trained here."""
    return spec.eval_name or spec.key if spec.labels else "ImageNet-1k"


def run_sweep(settings: SweepSettings, load_model, store, *, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, on_update=None, max_threads: int | None = None,
              timing_niceness: int = 0) -> list[SweepRow]:
    """Time every (model, variant) pair of `settings` together (`measure`), for each thread count and batch size.

    `load_model(key)` returns a LoadedModel (the service's cache, or `models.load_model` with fixed weights). Runners
    are prepared again for each thread count, because ONNX Runtime and OpenVINO fix their threads when loaded.
    `max_threads`: the CPUs this job was granted (a server keeps some for its visitors); counts above it are capped,
    and counts that become the same are timed once.
    `timing_niceness`: see `timing.measure`.
    """
    loaded = {key: load_model(key) for key in settings.models}
    timing = TimingSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block)
    results: list[SweepRow] = []
    for threads in dict.fromkeys(min(t or usable_cpus(), max_threads or usable_cpus()) for t in settings.threads):
        prepared = []  # (model key, item, answer check)
        with torch_threads(threads):  # runtimes fix their thread count when loaded
            for key, model in loaded.items():
                check = answer_check(model.model, check_inputs(model.spec))
                prepared += [(key, item, check) for item in prepare_variants(
                    model, settings.variants, store, progress=progress, cancel=cancel, tome_r=settings.tome_r)]
        batches: list[SweepRow] = []
        for batch in settings.batch_sizes:
            check_cancel(cancel)
            entries = [Entry(f"{key}/{item.key}", item.runner, item.status, item.reason,
                             item.artifact.size_bytes if item.artifact is not None else 0, check=check,
                             x=_input(loaded[key].spec, batch)) for key, item, check in prepared]

            def rows(done: list[Entry], batch: int = batch) -> list[SweepRow]:
                return [_row(e, loaded[e.name.split("/", 1)[0]], batch, threads) for e in done]

            publish = (lambda done: on_update(results + batches + rows(done))) if on_update else None
            batches += rows(measure(entries, None, timing, threads=threads, progress=progress, cancel=cancel,
                                    on_round=publish, niceness=timing_niceness))
        # Rows in model -> variant -> batch order, as the tables read (timing went batch size by batch size)
        order = {key: i for i, key in enumerate((key, item.key) for key, item, _ in prepared)}
        results += sorted(batches, key=lambda r: (order[(r.model, r.variant)],
                                                  settings.batch_sizes.index(r.batch_size)))
    if on_update:
        on_update(results)
    return results


def _input(spec, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))


def _row(entry: Entry, model, batch: int, threads: int) -> SweepRow:
    spec = model.spec
    row = SweepRow(model=spec.key, variant=_variant(entry), batch_size=batch, threads=threads, weights=model.weights,
                   published_top1=spec.top1, published_top5=spec.top5, accuracy_source=spec.accuracy_source,
                   task=task_of(spec), lossy=get_variant(_variant(entry)).lossy)
    return with_measurement(row, entry)


def _variant(entry: Entry) -> str:
    return entry.name.split("/", 1)[1]
