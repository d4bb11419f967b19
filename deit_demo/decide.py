"""What should I ship? Models x variants timed together, accuracy against latency, a recommendation under budgets,
and saved runs from different machines compared.

`run_sweep` times every (model, variant) pair in one process with the project's method (warm-up, interleaved blocks),
for each thread count and batch size. `recommend` and `pareto_front` work on plain result rows, so they apply to a
sweep just run, to a saved file, or to rows made by hand. Accuracy is the model's published ImageNet top-1 (or the
measured one of a model trained here); a variant is trusted to keep it only when its answers agree with the original.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from deit_demo.bench import (MAX_RUNS, MAX_WARMUP, RESULTS_SCHEMA, BenchResult, BenchSettings, LatencyStats,
                             machine_info, parse_batch_sizes, set_threads, time_interleaved)
from deit_demo.cpus import usable_cpus
from deit_demo.errors import DeitDemoError, check_cancel
from deit_demo.models import get_spec
from deit_demo.pipeline import ProgressFn, check_inputs, compare_answers, prepare_variants, run_inputs
from deit_demo.variants import parse_variant_keys

MAX_RESULTS_BYTES = 20 * 2**20
MAX_JSON_DEPTH = 12


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
    weights: str = "hub"
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
            raise DeitDemoError(f"Thread counts must be whole numbers, e.g. 1,2 (got {threads!r}).") from None
        if not self.threads or any(t < 0 or t > usable_cpus() for t in self.threads):
            raise DeitDemoError(f"Thread counts must be from 0 (all) to {usable_cpus()} (got {self.threads}).")
        for name, low, high in (("runs", 1, MAX_RUNS), ("warmup", 0, MAX_WARMUP), ("block", 1, 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise DeitDemoError(f"{name} must be a whole number from {low} to {high} (got {value!r}).")
        for name in ("budget_ms", "budget_mb", "min_top1"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise DeitDemoError(f"{name.replace('_', ' ')} must be a positive number (got {value!r}).")
        if not 0 <= self.min_agreement <= 1:
            raise DeitDemoError(f"The minimum agreement is a fraction from 0 to 1 (got {self.min_agreement}).")


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
              cancel: threading.Event | None = None, on_update=None) -> list[SweepRow]:
    """Time every (model, variant) pair of `settings` together, for each thread count and batch size.

    `load_model(key)` returns a LoadedModel (the service's cache, or `models.load_model` with fixed weights). Runners
    are prepared again for each thread count, because ONNX Runtime and OpenVINO fix their threads when loaded.
    """
    loaded = {key: load_model(key) for key in settings.models}
    results: list[SweepRow] = []
    for threads in settings.threads:
        count = threads or usable_cpus()
        set_threads(count)
        runners, rows = {}, {}
        for key, model in loaded.items():
            spec = model.spec
            inputs = check_inputs(spec)
            reference = run_inputs(model.model, inputs)
            for item in prepare_variants(model, settings.variants, store, progress=progress, cancel=cancel,
                                         tome_r=settings.tome_r):
                for batch in settings.batch_sizes:
                    row = SweepRow(model=key, variant=item.key, batch_size=batch, threads=count, status=item.status,
                                   reason=item.reason, weights=model.weights, published_top1=spec.top1,
                                   published_top5=spec.top5, accuracy_source=spec.accuracy_source,
                                   task=task_of(spec), lossy=item.variant.lossy)
                    rows[(key, item.key, batch)] = row
                    if item.runner is None:
                        continue
                    row.size_bytes = item.artifact.size_bytes
                    check = compare_answers(reference, run_inputs(item.runner, inputs))
                    row.top1_agreement, row.max_abs_diff = check.top1_agreement, check.max_abs_diff
                    x = torch.randn(batch, 3, spec.input_size, spec.input_size,
                                    generator=torch.Generator().manual_seed(0))
                    runners[(key, item.key, batch)] = (lambda _x, fn=item.runner, xb=x: fn(xb))
        for batch in settings.batch_sizes:
            check_cancel(cancel)
            timed = {f"{m}/{v}": fn for (m, v, b), fn in runners.items() if b == batch}
            bench_settings = BenchSettings(runs=settings.runs, warmup=settings.warmup, block=settings.block)

            def publish(samples, batch=batch):
                for name, values in samples.items():
                    model_key, variant = name.split("/", 1)
                    rows[(model_key, variant, batch)].latency = LatencyStats(list(values), batch_size=batch)
                if on_update:
                    on_update(results + list(rows.values()))

            broken: dict[str, str] = {}
            samples, peaks = time_interleaved(timed, torch.zeros(1), bench_settings, progress=progress,
                                              cancel=cancel, on_round=publish, failed=broken)
            publish(samples)
            for name, reason in broken.items():
                model_key, variant = name.split("/", 1)
                row = rows[(model_key, variant, batch)]
                row.status, row.reason, row.latency = "failed", reason, None
            for name, peak in peaks.items():
                model_key, variant = name.split("/", 1)
                rows[(model_key, variant, batch)].peak_rss_bytes = peak
        results.extend(rows.values())
        runners.clear()
    if on_update:
        on_update(results)
    return results


# ------------------------------------------------------------------------------------------------------ decision


def row_dict(row) -> dict:
    """Any result row (SweepRow, BenchResult or a dict read from a file) as a plain dict with median_ms."""
    if isinstance(row, dict):
        return row
    return row.to_row()


def pair_name(row: dict) -> str:
    name = f"{row['model']}/{row['variant']}"
    extras = [f"threads={row['threads']}" if row.get("threads") else "", f"batch {row['batch_size']}"
              if row.get("batch_size", 1) != 1 else ""]
    return name + "".join(f", {e}" for e in extras if e)


@dataclass
class Recommendation:
    best: dict | None
    runners_up: list[dict]
    rejected: list[dict]  # {"pair", "why"}
    sentence: str
    budgets: dict

    def to_dict(self) -> dict:
        return asdict(self)


def recommend(rows, *, budget_ms: float | None = None, budget_mb: float | None = None, min_top1: float | None = None,
              min_agreement: float = 0.99, machine: dict | None = None, runners_up: int = 3) -> Recommendation:
    """The most accurate pair within the budgets (ties: the faster), the next best, and why every other pair lost."""
    rows = [row_dict(r) for r in rows]
    random = any(r.get("weights") == "random" for r in rows)
    tasks = [r.get("task", "ImageNet-1k") for r in rows]
    task = "ImageNet-1k" if "ImageNet-1k" in tasks else (tasks[0] if tasks else "ImageNet-1k")
    candidates, rejected = [], []
    for r in rows:
        why = []
        if r.get("task", "ImageNet-1k") != task:
            why.append(f"measured on another task ({r.get('task')}): its accuracy does not compare with {task}'s")
        elif r.get("status") != "ok" or r.get("median_ms") is None:
            why.append(f"{r.get('status', 'failed')}: {r.get('reason') or 'not timed'}")
        else:
            if r.get("lossy"):
                why.append("computes less on purpose (token merging): its ImageNet accuracy is not published; "
                           "measure its cost first (tome-sweep)")
            elif r.get("published_top1") is None:
                why.append("no published accuracy")
            if budget_ms is not None and r["median_ms"] > budget_ms:
                why.append(f"{r['median_ms']:.1f} ms is over the {budget_ms:g} ms budget")
            if budget_mb is not None and r.get("size_bytes", 0) / 1e6 > budget_mb:
                why.append(f"{r['size_bytes'] / 1e6:.0f} MB is over the {budget_mb:g} MB budget")
            if min_top1 is not None and (r.get("published_top1") or 0) < min_top1:
                why.append(f"top-1 {r.get('published_top1')}% is under the {min_top1:g}% minimum")
            if not random and r.get("top1_agreement") is not None and r["top1_agreement"] < min_agreement:
                why.append(f"its answers agree with the original on only {r['top1_agreement']:.0%} of the check "
                           "inputs, so the published accuracy may not hold")
        if why:
            rejected.append({"pair": pair_name(r), "why": "; ".join(why)})
        else:
            candidates.append(r)
    candidates.sort(key=lambda r: (-r["published_top1"], r["median_ms"]))
    best = candidates[0] if candidates else None
    for r in candidates[1 + runners_up:]:
        rejected.append({"pair": pair_name(r), "why": f"less accurate or slower than the pick and the runners-up "
                                                      f"({r['published_top1']}%, {r['median_ms']:.1f} ms)"})
    where = f" on {machine['cpu']} ({machine.get('usable_cpus', '?')} CPUs)" if machine else ""
    limits = ", ".join(f for f in (f"{budget_ms:g} ms" if budget_ms else "", f"{budget_mb:g} MB" if budget_mb else "",
                                   f"top-1 >= {min_top1:g}%" if min_top1 else "") if f) or "no budget"
    if best is None:
        sentence = f"Nothing fits ({limits}){where}: see why each pair lost, and loosen a budget."
    else:
        size_mb = best.get("size_bytes", 0) / 1e6
        sentence = (f"Ship {best['model']} as {best['variant']}: {best['published_top1']:.1f}% {task} top-1 "
                    f"({'measured' if 'measured' in best.get('accuracy_source', '') else 'published'}) at "
                    f"{best['median_ms']:.1f} ms per call (batch {best.get('batch_size', 1)}, threads="
                    f"{best.get('threads', '?')}), {size_mb:.1f} MB, within {limits}{where}.")
        if random:
            sentence += " (Random weights: answer agreement was not used, it is noise without trained weights.)"
    return Recommendation(best=best, runners_up=candidates[1:1 + runners_up], rejected=rejected, sentence=sentence,
                          budgets={"budget_ms": budget_ms, "budget_mb": budget_mb, "min_top1": min_top1,
                                   "min_agreement": min_agreement})


def pareto_front(rows) -> list[dict]:
    """Timed rows with an accuracy that no other row beats on both latency and accuracy, fastest first."""
    rows = [row_dict(r) for r in rows if row_dict(r).get("median_ms") is not None
            and row_dict(r).get("published_top1") is not None and not row_dict(r).get("lossy")]
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r["median_ms"], -r["published_top1"])):
        if r["published_top1"] > best:
            front.append(r)
            best = r["published_top1"]
    return front


# ------------------------------------------------------------------------------------------------------ files


def save_sweep(path: Path | str, rows: list[SweepRow], settings: SweepSettings, recommendation: Recommendation) -> dict:
    payload = {"schema": RESULTS_SCHEMA, "kind": "sweep", "machine": machine_info(),
               "settings": asdict(settings), "rows": [r.to_row() for r in rows],
               "recommendation": recommendation.to_dict()}
    text = json.dumps(payload, indent=2, default=str)
    if str(path) == "-":
        print(text)
    else:
        Path(path).write_text(text)
    return payload


def _depth(value, limit: int, level: int = 0) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([_depth(v, limit, level + 1) for v in value.values()] or [level])
    if isinstance(value, list):
        return max([_depth(v, limit, level + 1) for v in value] or [level])
    return level


def load_results(path: Path | str, label: str | None = None) -> dict:
    """A saved results file (bench, sweep or tome-sweep JSON), checked: size, nesting, schema, machine, rows."""
    path = Path(path)
    name = label or path.name
    if not path.is_file():
        raise DeitDemoError(f"{name}: no such file.")
    if os.path.getsize(path) > MAX_RESULTS_BYTES:
        raise DeitDemoError(f"{name} is {os.path.getsize(path) / 2**20:.0f} MB; a results file is at most "
                            f"{MAX_RESULTS_BYTES // 2**20} MB.")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise DeitDemoError(f"{name} is not a results file (not JSON: {str(err)[:80]}).") from None
    except RecursionError:
        raise DeitDemoError(f"{name} is nested too deeply to be a results file.") from None
    if _depth(payload, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise DeitDemoError(f"{name} is nested too deeply to be a results file.")
    if not isinstance(payload, dict) or payload.get("schema") != RESULTS_SCHEMA:
        found = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
        raise DeitDemoError(f"{name} is not a DeiT Lab results file (schema {found!r}, expected {RESULTS_SCHEMA!r}).")
    machine, rows = payload.get("machine"), payload.get("rows")
    if not isinstance(machine, dict) or "cpu" not in machine:
        raise DeitDemoError(f"{name} has no machine block, so its figures cannot be placed.")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "variant" in r and "model" in r for r in rows):
        raise DeitDemoError(f"{name} has no result rows (each needs a model and a variant).")
    payload["label"] = name
    return payload


def machine_label(payload: dict) -> str:
    return f"{payload['label']}: {payload['machine']['cpu']}"


def compare(payloads: list[dict]) -> tuple[list[dict], list[dict]]:
    """(latency rows, machine rows): each timed (model, variant, batch) with its median per file and the speed-up of
    each file against the first. Thread counts usually differ between machines, so they are shown, not matched;
    only when a file holds a thread sweep do threads become part of the key."""
    def timed(payload):
        return [r for r in payload["rows"] if r.get("median_ms") is not None]

    swept = any(len({r.get("threads") for r in timed(p) if (r["model"], r["variant"], r.get("batch_size", 1)) == key})
                > 1 for p in payloads for key in {(r["model"], r["variant"], r.get("batch_size", 1)) for r in timed(p)})
    keys: dict[tuple, dict] = {}
    for index, payload in enumerate(payloads):
        for r in timed(payload):
            key = (r["model"], r["variant"], r.get("batch_size", 1)) + ((r.get("threads"),) if swept else ())
            keys.setdefault(key, {})[index] = r
    latency = []
    for key, found in keys.items():
        row = {"model": key[0], "variant": key[1], "batch": key[2],
               "threads": " / ".join(str(found[i].get("threads", "?")) if i in found else "-"
                                     for i in range(len(payloads)))}
        for index, payload in enumerate(payloads):
            row[f"{payload['label']} ms"] = f"{found[index]['median_ms']:.2f}" if index in found else ""
            if index and 0 in found and index in found:
                row[f"speed-up {payload['label']} vs {payloads[0]['label']}"] = \
                    f"{found[0]['median_ms'] / found[index]['median_ms']:.2f}x"
        latency.append(row)
    machines = [{"file": p["label"], "cpu": p["machine"].get("cpu"), "usable CPUs": p["machine"].get("usable_cpus"),
                 "ISA": " ".join(p["machine"].get("isa", [])), "torch": p["machine"].get("torch"),
                 "platform": p["machine"].get("platform")} for p in payloads]
    return latency, machines
