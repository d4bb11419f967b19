"""Token merging's r sweep: for each r, latency (eager, and int8 when asked) timed together, accuracy on the model's
labelled data, and agreement with the unmerged model on the same images, through the one timing loop."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field

from deit_demo.core.cpus import torch_threads
from deit_demo.core.errors import DeitDemoError, check_cancel, quoted
from deit_demo.core.stats import accuracy_interval
from deit_demo.measure.bench import BenchSettings, make_input
from deit_demo.measure.evaluate import EVAL_BATCH, builtin_set, outcomes
from deit_demo.measure.timing import Entry, LatencyStats, TimingSettings, measure
from deit_demo.variants.pipeline import ProgressFn, answer_check, check_inputs, prepare_variants
from deit_demo.variants.tome_merge import ToMe


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
    top1_agreement: float | None = None  # with the unmerged model: on the labelled images if any, else check inputs
    agreement_on: str = ""  # the images `top1_agreement` comes from, named, with their count
    weights: str = ""
    threads: int = 0
    disturbed: str = ""  # why the timing was not on a quiet server ("" when it was); see core.activity
    conditions: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k not in ("latency", "int8_latency")}
        row["median_ms"] = self.latency.median_ms if self.latency else None
        row["int8_median_ms"] = self.int8_latency.median_ms if self.int8_latency else None
        row["samples_ms"] = list(self.latency.samples_ms) if self.latency else []
        row["int8_samples_ms"] = list(self.int8_latency.samples_ms) if self.int8_latency else []
        return row


def parse_rs(value) -> list[int]:
    """``"0,4,8"`` or ``[0, 4, 8]`` -> [0, 4, 8], in order, without repeats; anything else is one clear error."""
    message = f"r values must be whole numbers of at least 0, separated by commas, e.g. 0,4,8 (got {quoted(value)})."
    parts = str(value).replace(" ", "").split(",") if isinstance(value, str) else value
    try:
        rs = [p if isinstance(p, int) and not isinstance(p, bool) else int(str(p)) for p in parts if str(p) != ""]
    except (TypeError, ValueError):
        raise DeitDemoError(message) from None
    if not rs or any(r < 0 for r in rs):
        raise DeitDemoError(message)
    return list(dict.fromkeys(rs))


def tome_sweep(loaded, rs, settings: BenchSettings, store=None, *, int8: bool = False,
               progress: ProgressFn | None = None, cancel: threading.Event | None = None,
               timing_niceness: int = 0) -> list[TomeSweepRow]:
    """For each r: eager ToMe latency (interleaved with every other r), accuracy on the model's built-in labelled
    data, and top-1 agreement with the unmerged model on those same images (on its check inputs where it has no
    labelled data; each row names its images). With `int8`, the tome_int8 variant of
    each r is prepared in `store` and timed too. `timing_niceness`: see `timing.measure`."""
    rs = parse_rs(rs)
    threads = settings.resolved_threads()
    tokens = loaded.model.patch_embed.num_patches + loaded.model.num_prefix_tokens
    check = answer_check(loaded.model, check_inputs(loaded.spec, noise=0))
    dataset = builtin_set(loaded.spec) if loaded.spec.eval_set is not None else None
    reference = outcomes(loaded.model, dataset, batch=EVAL_BATCH) if dataset is not None else None
    rows, entries = [], []
    for i, r in enumerate(rs):
        check_cancel(cancel)
        if progress:
            progress(f"measuring r={r}", i, len(rs))
        merged = ToMe(loaded.model, r).eval()
        row = TomeSweepRow(model=loaded.spec.key, r=r, tokens_last_block=merged.tokens_per_block(tokens)[-1],
                           weights=loaded.weights, threads=threads)
        if dataset is not None:
            found = outcomes(merged, dataset, batch=EVAL_BATCH)  # eager ToMe merges each image on its own
            top1 = found.top1
            row.top1, row.top1_ci95, row.n_images = sum(top1) / len(top1), accuracy_interval(top1), len(top1)
            row.top1_agreement = sum(a == b for a, b in zip(found.predicted, reference.predicted)) / len(top1)
            row.agreement_on = f"{dataset.name} ({len(top1)} images)"
        entries.append(Entry(f"r={r}", merged, check=check))
        if int8:
            with torch_threads(threads):  # runtimes fix their thread count when loaded
                item = next(prepare_variants(loaded, ["tome_int8"], store, tome_r=r))
            if item.runner is None:
                raise DeitDemoError(f"tome_int8 at r={r} could not be prepared: {item.reason}")
            entries.append(Entry(f"int8 r={r}", item.runner))
        rows.append(row)
    x = make_input(settings, loaded.spec, settings.batch_sizes[0])
    timing = TimingSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block,
                            time_budget_s=settings.time_budget_s)
    timed = {e.name: e for e in measure(entries, x, timing, threads=threads, progress=progress, cancel=cancel,
                                               niceness=timing_niceness)}
    batch = settings.batch_sizes[0]
    for row in rows:
        for name in (f"r={row.r}", f"int8 r={row.r}") if int8 else (f"r={row.r}",):
            if not timed[name].ok:
                raise DeitDemoError(f"token merging ({name}) failed: {timed[name].reason}")
        eager = timed[f"r={row.r}"]
        row.disturbed, row.conditions = eager.conditions.disturbed, eager.conditions.to_dict()
        if dataset is None:  # with labelled data, agreement was taken on the same images as the accuracy
            row.top1_agreement, row.agreement_on = eager.answers.top1_agreement, eager.answers.images_named
        row.latency = LatencyStats(eager.samples_ms, batch_size=batch)
        if int8:
            row.int8_latency = LatencyStats(timed[f"int8 r={row.r}"].samples_ms, batch_size=batch)
    return rows
