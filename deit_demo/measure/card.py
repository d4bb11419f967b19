"""A deployment card: what an engineer hands to the team that ships one (model, variant) pair, as Markdown (reads as
a Hugging Face model card section) and JSON.

Everything on it is measured here, for this pair, in one run: latency percentiles at batch 1 and at the best batch
(timed interleaved with the original), load time and time to first inference, peak RSS, the file and its sha256,
top-1/top-5 with intervals and their change against the original on named labelled data (or the published figure,
labelled as such), agreement with the original on the same images, and the machine, packages, commit and settings.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from deit_demo.core.cpus import machine_info, torch_threads, usable_cpus
from deit_demo.core.errors import check_cancel
from deit_demo.core.provenance import run_metadata
from deit_demo.core.stats import accuracy_interval
from deit_demo.measure.bench import parse_batch_sizes
from deit_demo.measure.budget import find_labelled, judge, signed
from deit_demo.measure.evaluate import eval_batch, outcomes
from deit_demo.measure.timing import Entry, TimingSettings, check_timing, measure
from deit_demo.variants import ORIGINAL, get_variant
from deit_demo.variants.base import COMPILE_LOCK, check_tome_r
from deit_demo.variants.pipeline import (
    ProgressFn,
    answer_check,
    check_inputs,
    convert_variant,
    load_verified,
    require_available,
    variant_context,
)

CARD_SCHEMA = "deit-demo-card/1"


@dataclass
class CardSettings:
    """How the card's figures are measured; validated for every caller."""

    variant: str
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    runs: int = 30  # enough samples for a p99 that is not simply the maximum of a handful
    warmup: int = 3
    block: int = 3
    threads: int = 0  # 0: every CPU this process may use
    tome_r: int | None = None  # None: the r tuned and stored for these weights, else the model's default
    eval_data: str | None = None

    def __post_init__(self) -> None:
        get_variant(self.variant)
        self.batch_sizes = sorted(set(parse_batch_sizes(self.batch_sizes)) | {1})
        check_timing(self.runs, self.warmup, self.block)
        check_tome_r(self.tome_r)


def _latency(samples: list[float], batch: int) -> dict:
    p50, p90, p99 = (float(v) for v in np.percentile(samples, [50, 90, 99]))
    return {"batch_size": batch, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(np.mean(samples)),
            "throughput_ips": batch * 1000.0 / p50, "samples_ms": list(samples)}


def make_card(loaded, settings: CardSettings, store, *, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, timing_niceness: int = 0) -> dict:
    """Measure one pair and return its card as plain data (`card_markdown` renders it)."""
    spec, variant = loaded.spec, get_variant(settings.variant)
    threads = settings.threads or usable_cpus()
    require_available(variant)
    ctx = variant_context(spec, store, settings.tome_r, loaded.weights_id)
    with torch_threads(threads):
        artifact, _ = convert_variant(variant, loaded, store, ctx)
        check_cancel(cancel)
        x = next(iter(check_inputs(spec, noise=1).values())).contiguous()
        started = time.perf_counter()
        with COMPILE_LOCK:
            runner = load_verified(variant, artifact, store, ctx)
        loaded_s = time.perf_counter() - started
        with torch.inference_mode():
            started = time.perf_counter()
            runner(x)
            first_ms = 1000 * (time.perf_counter() - started)
    timing = TimingSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block)
    latency, original, peak = {}, {}, 0
    for batch in settings.batch_sizes:
        check_cancel(cancel)
        xb = torch.randn(batch, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
        entries = [Entry(settings.variant, runner)]
        if settings.variant != ORIGINAL:  # timed together, so that the speed-up is measured, not assumed
            entries.append(Entry(ORIGINAL, loaded.model))
        done = {e.name: e for e in measure(entries, xb, timing, threads=threads, progress=progress, cancel=cancel,
                                           niceness=timing_niceness)}
        mine = done[settings.variant]
        if mine.ok:
            latency[batch] = _latency(mine.samples_ms, batch)
            peak = max(peak, mine.peak_rss_bytes)
        if settings.variant != ORIGINAL and done[ORIGINAL].ok:
            original[batch] = _latency(done[ORIGINAL].samples_ms, batch)
    best = max(latency.values(), key=lambda v: v["throughput_ips"], default=None)
    card = {"schema": CARD_SCHEMA, "model": spec.key, "model_label": spec.label, "hub_name": spec.hub_name,
            "variant": variant.key, "variant_title": variant.title, "precision": variant.precision,
            "lossy": variant.lossy, "tome_r": runner.notes.get("r"), "r_source": runner.notes.get("r_source", ""),
            "weights": loaded.weights, "serve": serve_command(spec.key, variant.key, runner.notes.get("r")),
            "latency": {"batch_1": latency.get(1), "best_batch": best,
                        "original_batch_1": original.get(1),
                        "speedup_vs_original_batch_1": original[1]["p50_ms"] / latency[1]["p50_ms"]
                        if 1 in original and 1 in latency else None},
            "load_s": loaded_s, "first_inference_ms": first_ms, "peak_rss_bytes": peak,
            "file": {"name": artifact.path.name, "size_bytes": artifact.size_bytes, "sha256": artifact.sha256,
                     "convert_s": artifact.convert_s},
            "accuracy": _accuracy(loaded, runner, settings, threads, progress),
            "machine": {**machine_info(), "threads_used": threads},
            "run": run_metadata([{"threads": threads, "batch_size": b, "weights": loaded.weights}
                                 for b in latency]),
            "settings": asdict(settings), "made_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if variant.lossy and store.tuned(spec.key, loaded.weights_id).get(variant.key):
        card["tuning"] = store.tuned(spec.key, loaded.weights_id)[variant.key]
    return card


def _accuracy(loaded, runner, settings: CardSettings, threads: int, progress) -> dict:
    """Measured on the model's labelled set against the original (same images), else the published figure."""
    spec = loaded.spec
    dataset, why = find_labelled(spec, settings.eval_data)
    if dataset is None:
        check = answer_check(loaded.model, check_inputs(spec))(runner)
        return {"source": "published", "note": f"not measured here: {why}", "top1": spec.top1, "top5": spec.top5,
                "accuracy_source": spec.accuracy_source, "agreement": check.top1_agreement,
                "agreement_on": check.images_named}
    report = (lambda what: lambda i, n: progress(f"accuracy of {what}", i, n)) if progress else (lambda what: None)
    with torch_threads(threads):
        reference = outcomes(loaded.model, dataset, report(ORIGINAL), eval_batch(get_variant(ORIGINAL)))
        mine = outcomes(runner, dataset, report(settings.variant), eval_batch(get_variant(settings.variant)))
    j = judge(reference, mine, None)
    ref_top1, ref_top5 = (sum(v) / len(v) for v in (reference.top1, reference.top5))
    return {"source": "measured", "data": dataset.name, "n_images": j.n_images,
            "top1": j.top1, "top1_ci95": j.top1_ci95, "top5": j.top5, "top5_ci95": j.top5_ci95,
            "original_top1": ref_top1, "original_top1_ci95": accuracy_interval(reference.top1),
            "original_top5": ref_top5, "original_top5_ci95": accuracy_interval(reference.top5),
            "top1_change_points": -j.top1_drop, "top1_change_ci95": (-j.top1_drop_ci95[1], -j.top1_drop_ci95[0]),
            "top5_change_points": 100 * (j.top5 - ref_top5), "agreement": j.agreement,
            "agreement_on": f"{dataset.name} ({j.n_images} images)"}


def _pct(value, ci=None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")


def serve_command(model: str, variant: str, tome_r: int | None = None) -> str:
    """The command that serves this pair behind an autoscaled HTTP endpoint (Ray Serve; docs/SCALING.md)."""
    r = f" --tome-r {tome_r}" if tome_r is not None else ""
    return f"deit-demo serve --model {model} --variant {variant}{r} --replicas 1:2 --port 8000"


def card_markdown(card: dict) -> str:
    """The card as a Markdown section that reads well in a Hugging Face model card."""
    lat, acc, m, run = card["latency"], card["accuracy"], card["machine"], card["run"]
    r = f" (r={card['tome_r']}{', ' + card['r_source'] if card['r_source'] else ''})" if card["tome_r"] is not None \
        else ""
    lines = [f"## Deployment: {card['model']} as {card['variant']}{r}", "",
             f"{card['variant_title']} of {card['model_label']} (`{card['hub_name']}`), weights: {card['weights']}.",
             "", "### Latency", "", "| batch | p50 ms | p90 ms | p99 ms | images/s |", "|---|---|---|---|---|"]
    for name, row in (("1", lat["batch_1"]), ("best", lat["best_batch"]), ("1, original", lat["original_batch_1"])):
        if row:
            lines.append(f"| {name if name != 'best' else str(row['batch_size']) + ' (best)'} | {row['p50_ms']:.2f} | "
                         f"{row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['throughput_ips']:.1f} |")
    if lat["speedup_vs_original_batch_1"]:
        lines += ["", (f"Speed-up over the original at batch 1 (timed together): "
                       f"{lat['speedup_vs_original_batch_1']:.2f}x.")]
    lines += ["", "### Start-up and memory", "",
              f"- load: {card['load_s']:.2f} s; first inference: {card['first_inference_ms']:.1f} ms",
              f"- peak RSS while timed: {card['peak_rss_bytes'] / 2**20:.0f} MiB",
              (f"- file: `{card['file']['name']}`, {card['file']['size_bytes'] / 1e6:.2f} MB, sha256 "
               f"`{card['file']['sha256']}`"), "", "### Accuracy", ""]
    if acc["source"] == "measured":
        lines += [f"Measured on **{acc['data']}** ({acc['n_images']} images), 95% bootstrap intervals:", "",
                  "| | top-1 | top-5 |", "|---|---|---|",
                  f"| this variant | {_pct(acc['top1'], acc['top1_ci95'])} | {_pct(acc['top5'], acc['top5_ci95'])} |",
                  (f"| original | {_pct(acc['original_top1'], acc['original_top1_ci95'])} | "
                   f"{_pct(acc['original_top5'], acc['original_top5_ci95'])} |"),
                  (f"| change (points) | {signed(acc['top1_change_points'])} [{signed(acc['top1_change_ci95'][0])}, "
                   f"{signed(acc['top1_change_ci95'][1])}] | {signed(acc['top5_change_points'])} |")]
    else:
        lines += [(f"Published figure (not measured here: {acc['note'].removeprefix('not measured here: ')}): top-1 "
                   f"{acc['top1']}%, top-5 {acc['top5']}% ({acc['accuracy_source'] or 'published'}).")]
    lines += ["", f"Top-1 agreement with the original: {100 * acc['agreement']:.1f}% on {acc['agreement_on']}."]
    if card.get("tuning"):
        lines += ["", f"Token merging tuned to an accuracy budget: {card['tuning']['sentence']}"]
    lines += ["", "### Measured on", "",
              f"- {m['cpu']}, {m['threads_used']} of {m['usable_cpus']} usable CPUs; ISA: {' '.join(m['isa']) or '-'}",
              f"- {m['platform']}, Python {m['python']}",
              "- packages: " + ", ".join(f"{k} {v}" for k, v in run["packages"].items() if v != "not installed"),
              f"- project commit: `{run['commit']}`",
              (f"- settings: {card['settings']['runs']} timed runs after {card['settings']['warmup']} warm-up, blocks "
               f"of {card['settings']['block']} (first dropped), interleaved with the original; raw samples in the "
               "JSON"),
              f"- made {card['made_at']}"]
    if card.get("serve"):
        lines += ["", "### Serve it", "", "Behind an HTTP endpoint on Ray Serve, replicas scaled on load (`--cluster "
                  "HOST:PORT` for a running cluster; `--card` with this card's JSON names the pair too):", "",
                  f"    {card['serve']}"]
    return "\n".join(lines) + "\n"
