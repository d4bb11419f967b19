"""A sweep: models x variants timed together with the project's method, for each thread count and batch size, each
pair's answers checked against its model's original, its published (or measured) accuracy beside it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from deit_demo.core.cpus import torch_threads, usable_cpus
from deit_demo.core.errors import DeitDemoError, check_cancel, describe, quoted
from deit_demo.core.models import get_spec
from deit_demo.measure.bench import BenchResult, parse_batch_sizes, with_measurement
from deit_demo.measure.budget import Judgement, check_max_drop, find_labelled, judge, unjudged
from deit_demo.measure.evaluate import eval_batch, outcomes
from deit_demo.measure.timing import Entry, TimingSettings, check_timing, measure
from deit_demo.measure.tune import DENSE, TuneSettings, tune
from deit_demo.variants import ORIGINAL, get_variant, parse_variant_keys
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
    max_drop: float | None = None  # top-1 points a pair may lose against its model's original, measured
    eval_data: str | None = None  # labelled image folder for the budget; None: each model's built-in test split

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
        self.max_drop = check_max_drop(self.max_drop)
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
    # The accuracy budget (budget.judge), when the sweep has one: measured on `eval_data`, against the original
    accuracy_verdict: str = ""  # within | uncertain | over | unjudged; "" without a budget
    accuracy_note: str = ""
    eval_data: str = ""
    n_images: int = 0
    top1: float | None = None
    top1_ci95: tuple[float, float] | None = None
    top5: float | None = None
    top5_ci95: tuple[float, float] | None = None
    top1_drop: float | None = None  # points
    top1_drop_ci95: tuple[float, float] | None = None
    settle_images: int | None = None
    check_agreement: float | None = None  # on the check inputs, when `top1_agreement` is on the labelled set
    tuning: str = ""  # for a token-merging variant tuned to the budget: the r kept and why (measure.tune)

    def judged(self, judgement: Judgement) -> SweepRow:
        """This row with `judgement`'s figures; its agreement then comes from the same labelled images."""
        for name, value in judgement.to_row().items():
            setattr(self, name, value)
        if judgement.agreement is not None:
            self.check_agreement, self.top1_agreement = self.top1_agreement, judgement.agreement
            self.agreement_on = judgement.images
        return self


def task_of(spec) -> str:
    """What a model's accuracy is measured on: ImageNet-1k, or the task of a model trained here."""
    return spec.eval_name or spec.key if spec.labels else "ImageNet-1k"


def run_sweep(settings: SweepSettings, load_model, store, *, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, on_update=None, max_threads: int | None = None,
              timing_niceness: int = 0, tunings: dict | None = None) -> list[SweepRow]:
    """Time every (model, variant) pair of `settings` together (`measure`), for each thread count and batch size.

    `load_model(key)` returns a LoadedModel (the service's cache, or `models.load_model` with fixed weights). Runners
    are prepared again for each thread count, because ONNX Runtime and OpenVINO fix their threads when loaded.
    `max_threads`: the CPUs this job was granted (a server keeps some for its visitors); counts above it are capped,
    and counts that become the same are timed once.
    `timing_niceness`: see `timing.measure`.
    With `settings.max_drop`, every pair's top-1 is measured on its model's labelled set and judged against the
    original (`judge_pairs`), and first the token-merging variants' r is tuned to that budget (`measure.tune`) and
    stored, so the preparation uses it; `tunings` (a dict, if given) receives each (model, variant)'s TuneResult.
    """
    loaded = {key: load_model(key) for key in settings.models}
    judgements: dict[tuple[str, str], Judgement] = {}
    tunings = {} if tunings is None else tunings
    if settings.max_drop is not None and settings.tome_r is None:
        for key, model in loaded.items():  # the token-merging variants' r, tuned to the budget and stored
            if find_labelled(model.spec, settings.eval_data)[0] is None:
                continue  # its pairs are named as unjudged below
            for variant in (v for v in settings.variants if v in DENSE):
                tunings[(key, variant)] = tune(model, TuneSettings(
                    settings.max_drop, variant, runs=settings.runs, warmup=settings.warmup, block=settings.block,
                    threads=min(settings.threads[0] or usable_cpus(), max_threads or usable_cpus()),
                    eval_data=settings.eval_data), store, progress=progress, cancel=cancel,
                    timing_niceness=timing_niceness)
    timing = TimingSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block)
    results: list[SweepRow] = []
    for threads in dict.fromkeys(min(t or usable_cpus(), max_threads or usable_cpus()) for t in settings.threads):
        prepared = []  # (model key, item, answer check)
        with torch_threads(threads):  # runtimes fix their thread count when loaded
            for key, model in loaded.items():
                check = answer_check(model.model, check_inputs(model.spec))
                mine = [(key, item, check) for item in prepare_variants(
                    model, settings.variants, store, progress=progress, cancel=cancel, tome_r=settings.tome_r)]
                if settings.max_drop is not None and not any(k == key for k, _ in judgements):
                    judgements.update(judge_pairs(model, [item for _, item, _ in mine], settings, progress))
                prepared += mine
        batches: list[SweepRow] = []
        for batch in settings.batch_sizes:
            check_cancel(cancel)
            entries = [Entry(f"{key}/{item.key}", item.runner, item.status, item.reason,
                             item.artifact.size_bytes if item.artifact is not None else 0, check=check,
                             x=_input(loaded[key].spec, batch)) for key, item, check in prepared]

            def rows(done: list[Entry], batch: int = batch, threads: int = threads) -> list[SweepRow]:
                return [_row(e, loaded[e.name.split("/", 1)[0]], batch, threads, judgements) for e in done]

            # called only during this iteration's measure(); `+=` on the lists extends them in place, so the bound
            # objects are the ones the loop keeps extending
            publish = ((lambda done, results=results, batches=batches: on_update(results + batches + rows(done)))
                       if on_update else None)
            batches += rows(measure(entries, None, timing, threads=threads, progress=progress, cancel=cancel,
                                    on_round=publish, niceness=timing_niceness))
        # Rows in model -> variant -> batch order, as the tables read (timing went batch size by batch size)
        order = {key: i for i, key in enumerate((key, item.key) for key, item, _ in prepared)}
        results += sorted(batches, key=lambda r: (order[(r.model, r.variant)],
                                                  settings.batch_sizes.index(r.batch_size)))
    for row in results:
        if (row.model, row.variant) in tunings:
            row.tuning = tunings[(row.model, row.variant)].sentence
    if on_update:
        on_update(results)
    return results


def _input(spec, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))


def judge_pairs(model, items, settings: SweepSettings, progress: ProgressFn | None = None
                ) -> dict[tuple[str, str], Judgement]:
    """Each prepared pair of one model judged against its original on the model's labelled set (or why it cannot
    be); the original itself is judged too, so that its row shows the reference figures."""
    key = model.spec.key
    dataset, why = find_labelled(model.spec, settings.eval_data)
    if dataset is None:
        return {(key, item.key): unjudged(why) for item in items}
    report = (lambda what: lambda i, n: progress(f"accuracy of {what}", i, n)) if progress else (lambda what: None)
    reference = outcomes(model.model, dataset, report(f"{key}/{ORIGINAL}"), eval_batch(get_variant(ORIGINAL)))
    found = {}
    for item in items:
        if item.runner is None:
            found[(key, item.key)] = unjudged(item.reason or item.status)
            continue
        try:
            found[(key, item.key)] = judge(reference, outcomes(item.runner, dataset, report(f"{key}/{item.key}"),
                                                               eval_batch(item.variant)), settings.max_drop)
        except Exception as err:  # loaded, but its runtime fails on the labelled data: that pair says so
            found[(key, item.key)] = unjudged(f"it failed on {dataset.name}: {describe(err)}")
    return found


def _row(entry: Entry, model, batch: int, threads: int, judgements: dict | None = None) -> SweepRow:
    spec = model.spec
    row = SweepRow(model=spec.key, variant=_variant(entry), batch_size=batch, threads=threads, weights=model.weights,
                   published_top1=spec.top1, published_top5=spec.top5, accuracy_source=spec.accuracy_source,
                   task=task_of(spec), lossy=get_variant(_variant(entry)).lossy)
    row = with_measurement(row, entry)
    judgement = (judgements or {}).get((spec.key, row.variant))
    return row.judged(judgement) if judgement is not None else row


def _variant(entry: Entry) -> str:
    return entry.name.split("/", 1)[1]
