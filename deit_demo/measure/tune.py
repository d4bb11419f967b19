"""Token merging tuned to an accuracy budget: the fastest *measured* r whose top-1 drop against the original stays
within POINTS on the model's labelled set.

Two steps, each measured, never assumed:
1. accuracy, by bisection over r in [0, r_max]: each probed r is judged (`budget.judge`) against the original on the
   same images; the bisection finds the largest r within the budget (it assumes that merging more never helps
   accuracy, which is how ToMe behaves; every r it keeps was measured all the same), then half and a quarter of it
   are judged too, because latency is not monotone in r;
2. speed: every probed r within the budget is timed together with the dense variant (`timing.measure`), and the
   fastest kept. Merging costs work of its own (the matching, the gathers): on a small model it is slower than the
   dense model, and then the dense variant is kept (r = 0) and the result says so.

The choice is stored beside the artifacts of these weights (`ArtifactStore.save_tuned`), so the preparation of
tome_fp32 / tome_int8 uses it wherever no r is asked for, and every row that shows the variant shows its r.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import torch

from deit_demo.core.cpus import torch_threads, usable_cpus
from deit_demo.core.errors import DeitDemoError, check_cancel, quoted
from deit_demo.measure.budget import WITHIN, Judgement, check_max_drop, find_labelled, judge, signed
from deit_demo.measure.evaluate import eval_batch, outcomes
from deit_demo.measure.timing import Entry, TimingSettings, check_timing, check_whole, measure
from deit_demo.variants.pipeline import ProgressFn, answer_check, check_inputs, prepare_variants
from deit_demo.variants.registry import ORIGINAL, get_variant

DENSE = {"tome_fp32": ORIGINAL, "tome_int8": "pt2e_int8"}  # what each token-merging variant merges on top of


@dataclass
class TuneSettings:
    """The budget and how to time; validated for every caller."""

    max_drop: float
    variant: str = "tome_fp32"
    runs: int = 20
    warmup: int = 3
    block: int = 3
    threads: int = 0  # 0: every CPU this process may use
    eval_data: str | None = None  # labelled folder; None: the model's built-in test split

    def __post_init__(self) -> None:
        self.max_drop = check_max_drop(self.max_drop)
        if self.max_drop is None:
            raise DeitDemoError("Tuning needs an accuracy budget: --max-drop POINTS.")
        if self.variant not in DENSE:
            raise DeitDemoError(f"Only the token-merging variants have an r to tune ({', '.join(DENSE)}); got "
                                f"{quoted(self.variant)}.")
        check_timing(self.runs, self.warmup, self.block)
        check_whole("threads", self.threads, 0, usable_cpus(), " (0 means all the CPUs this process may use)")


@dataclass
class TuneStep:
    """One probed r: its judgement against the original and, if it was within the budget, its timing."""

    r: int
    verdict: str
    top1: float
    top1_ci95: tuple[float, float]
    top1_drop: float  # points
    top1_drop_ci95: tuple[float, float]
    agreement: float  # with the original, on the same labelled images
    median_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class TuneResult:
    """The r kept for one (model, variant) under one budget, and everything it was chosen from."""

    model: str
    variant: str
    dense_variant: str
    max_drop: float
    data: str
    n_images: int
    r: int  # kept: 0 when no measured r is faster than the dense variant
    accuracy_r: int  # the largest r the bisection found within the budget
    top1: float | None
    top1_ci95: tuple[float, float] | None
    top1_drop: float | None
    top1_drop_ci95: tuple[float, float] | None
    agreement: float | None  # with the original, on the same images as top1
    median_ms: float | None
    dense_ms: float | None
    dense_samples_ms: list[float]
    speedup: float | None  # dense median / kept median
    faster: bool  # whether some r beat the dense variant
    sentence: str
    steps: list[TuneStep]
    seconds: float
    threads: int
    weights: str = ""

    @property
    def images(self) -> str:
        return f"{self.data} ({self.n_images} images)"

    def to_row(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """What is stored beside the artifacts: the r and how it was chosen."""
        keep = ("r", "max_drop", "data", "n_images", "top1", "top1_ci95", "top1_drop", "agreement", "median_ms",
                "dense_ms", "speedup", "faster", "sentence", "threads", "seconds")
        return {**{k: getattr(self, k) for k in keep}, "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def r_max(loaded) -> int:
    """The largest r that still merges more in the first block: half of the tokens that may be merged."""
    return loaded.model.patch_embed.num_patches // 2


def tune(loaded, settings: TuneSettings, store, *, progress: ProgressFn | None = None,
         cancel: threading.Event | None = None, timing_niceness: int = 0) -> TuneResult:
    """Bisection over r on accuracy, then the probed r within the budget timed against the dense variant; the
    fastest measured one kept and stored (see the module's docstring)."""
    start = time.perf_counter()
    dataset, why = find_labelled(loaded.spec, settings.eval_data)
    if dataset is None:
        raise DeitDemoError(f"Tuning measures accuracy on labelled data: {why}.")
    threads = settings.threads or usable_cpus()
    report = (lambda what: lambda i, n: progress(f"accuracy of {what}", i, n)) if progress else (lambda what: None)
    reference = outcomes(loaded.model, dataset, report(ORIGINAL), eval_batch(get_variant(ORIGINAL)))
    runners: dict[int, object] = {}

    def runner(key: str, r: int | None):
        with torch_threads(threads):  # runtimes fix their thread count when loaded
            item = next(prepare_variants(loaded, [key], store, tome_r=r, cancel=cancel))
        if item.runner is None:
            raise DeitDemoError(f"{key}{'' if r is None else f' at r={r}'} could not be prepared: {item.reason}")
        return item.runner

    judged: dict[int, Judgement] = {}

    def probe(r: int) -> Judgement:
        check_cancel(cancel)
        runners[r] = runner(settings.variant, r)
        with torch_threads(threads):
            judged[r] = judge(reference, outcomes(runners[r], dataset, report(f"r={r}"),
                                                  eval_batch(get_variant(settings.variant))), settings.max_drop)
        return judged[r]

    dense_key = DENSE[settings.variant]
    dense = runner(dense_key, None)
    with torch_threads(threads):
        dense_outcomes = outcomes(dense, dataset, report(dense_key), eval_batch(get_variant(dense_key)))
        dense_judgement = judge(reference, dense_outcomes, settings.max_drop)
    low, high = 0, r_max(loaded) + 1  # low: within the budget (r = 0 is the dense model); high: not known within
    if dense_judgement.verdict != WITHIN:
        high = 0  # the dense variant itself is over: merging on top of it cannot help
    while high - low > 1:
        mid = (low + high) // 2
        if probe(mid).verdict == WITHIN:
            low = mid
        else:
            high = mid
    for r in (low // 2, low // 4):  # coarser r too: latency is not monotone in r (merging has a cost of its own)
        if r > 0 and r not in judged:
            probe(r)
    within = sorted(r for r, j in judged.items() if j.verdict == WITHIN)
    timing = TimingSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block)
    x = torch.randn(1, 3, loaded.spec.input_size, loaded.spec.input_size, generator=torch.Generator().manual_seed(0))
    check = answer_check(loaded.model, check_inputs(loaded.spec, noise=0))
    entries = [Entry(dense_key, dense, check=check)] + [Entry(f"r={r}", runners[r], check=check) for r in within]
    timed = {e.name: e for e in measure(entries, x, timing, threads=threads, progress=progress, cancel=cancel,
                                        niceness=timing_niceness)}
    steps = []
    for r in sorted(judged):
        j, entry = judged[r], timed.get(f"r={r}")
        median = _median(entry.samples_ms) if entry is not None and entry.ok else None
        steps.append(TuneStep(r, j.verdict, j.top1, j.top1_ci95, j.top1_drop, j.top1_drop_ci95, j.agreement, median,
                              list(entry.samples_ms) if entry is not None else []))
    dense_ms = _median(timed[dense_key].samples_ms) if timed[dense_key].ok else None
    timed_within = [s for s in steps if s.verdict == WITHIN and s.median_ms is not None]
    best = min(timed_within, key=lambda s: s.median_ms, default=None)
    faster = best is not None and dense_ms is not None and best.median_ms < dense_ms
    kept = best if faster else None
    chosen = kept or dense_judgement
    result = TuneResult(
        model=loaded.spec.key, variant=settings.variant, dense_variant=dense_key, max_drop=settings.max_drop,
        data=dataset.name, n_images=dataset.size, r=kept.r if kept else 0, accuracy_r=low, top1=chosen.top1,
        top1_ci95=chosen.top1_ci95, top1_drop=chosen.top1_drop, top1_drop_ci95=chosen.top1_drop_ci95,
        agreement=chosen.agreement, median_ms=kept.median_ms if kept else dense_ms, dense_ms=dense_ms,
        dense_samples_ms=list(timed[dense_key].samples_ms), speedup=dense_ms / kept.median_ms if kept else 1.0,
        faster=faster, sentence="", steps=steps, seconds=0.0, threads=threads, weights=loaded.weights)
    result.sentence = _sentence(result, dense_judgement, best)
    result.seconds = time.perf_counter() - start
    store.save_tuned(loaded.spec.key, loaded.weights_id, settings.variant, result.record())
    return result


def _median(samples: list[float]) -> float | None:
    return float(torch.tensor(samples).median()) if samples else None


def _sentence(result: TuneResult, dense: Judgement, best: TuneStep | None) -> str:
    where = f"on {result.images}"
    if dense.verdict != WITHIN:
        return (f"{result.dense_variant} itself is not within the {result.max_drop:g}-point budget {where} "
                f"({dense.note}); no r can help, r = 0 kept.")
    if result.faster:
        lo, hi = result.top1_ci95
        return (f"r = {result.r}: top-1 {100 * result.top1:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] {where}, "
                f"{signed(-result.top1_drop)} points against the original (budget {result.max_drop:g}), agreement with "
                f"the original {100 * result.agreement:.1f}% on the same images; {result.median_ms:.2f} ms against "
                f"{result.dense_ms:.2f} ms for {result.dense_variant}: {result.speedup:.2f}x faster.")
    if best is None:
        return (f"No r above 0 is within the {result.max_drop:g}-point budget {where}: r = 0 kept "
                f"({result.dense_variant}).")
    return (f"No r is faster: merging costs more than it saves here. The fastest r within the budget (r = {best.r}, "
            f"{best.median_ms:.2f} ms) is slower than {result.dense_variant} ({result.dense_ms:.2f} ms), so r = 0 "
            "is kept.")
