"""Result formatting shared by the CLI and the app: tables as rows of strings, Markdown, CSV, and the weights banner.

Measuring lives in `measure` and serving in `serve`; this module only turns their result objects into text, so the
CLI and the app show the same tables.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

from deit_demo.core.models import LoadedModel, ModelSpec
from deit_demo.measure.budget import signed
from deit_demo.measure.results import pair_name as pair_name  # the CLI's tables name pairs as the app's do
from deit_demo.measure.results import variant_name
from deit_demo.variants import ORIGINAL
from deit_demo.variants.pipeline import size_reference

# ------------------------------------------------------------------------------------------------------ generic


def to_markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table from dict rows."""
    if not rows:
        return "_no results_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def percent(fraction: float | None, digits: int = 0) -> str:
    return "" if fraction is None else f"{100 * fraction:.{digits}f}%"


def _reduction(fraction: float) -> str:
    return f"{round(100 * fraction) + 0:d}%"  # + 0 turns -0 into 0


# ------------------------------------------------------------------------------------------------------ weights


def weights_banner(loaded: LoadedModel, *, markdown: bool = True) -> str:
    """Where the weights came from, in one line; for random weights, that the labels mean nothing and why (the
    model's `note`: the weights asked for could not be had)."""
    spec = loaded.spec
    if loaded.weights == "hub":
        text = f"✅ **Pretrained ImageNet weights**: `{spec.hf_repo}` (timm + Hugging Face hub cache)."
    elif loaded.weights.startswith("checkpoint:"):
        name = loaded.weights.split(":", 1)[1]
        text = f"📦 **Weights from a local checkpoint**: `{html.escape(name)}`."
        if spec.report:
            text = f"📦 **Trained here** (`{html.escape(name)}`): labels and accuracy are real, on its own task."
    else:
        why = loaded.note or "random weights were requested"
        text = (f"⚠️ **RANDOM weights: labels meaningless.** {html.escape(why)}. The pipeline, sizes and timings "
                "are real; for real labels use --weights hub (network or a filled cache) or a checkpoint path.")
    return text if markdown else text.replace("**", "").replace("`", "")


# ------------------------------------------------------------------------------------------------------ catalog


def catalog_rows(specs: list[ModelSpec]) -> list[dict]:
    return [{"key": s.key, "timm": s.hub_name, "family": s.family, "params": f"{s.params / 1e6:.1f}M",
             "input": s.input_size, "distilled": "yes" if s.distilled else "", "top-1": f"{s.top1:.1f}",
             "top-5": f"{s.top5:.1f}" if s.top5 is not None else "",
             "accuracy from": "measured here" if s.accuracy_source.startswith("measured") else
             "DeiT III paper / timm" if "DeiT III" in s.accuracy_source else "DeiT paper / timm", "tome r": s.tome_r}
            for s in specs]


# ------------------------------------------------------------------------------------------------------ conversion

CONVERT_COLUMNS = ["variant", "status", "file", "size MB", "% of original", "seconds", "top-1 agreement",
                   "agreement on", "top-5 overlap", "max diff", "accuracy", "notes"]


def conversion_rows(results, accuracy: dict[str, float] | None = None) -> list[dict]:
    """One row per ConversionResult, in CONVERT_COLUMNS; `accuracy` maps variant -> top-1 on labelled data."""
    base = size_reference(results)
    accuracy = accuracy or {}
    rows = []
    for r in results:
        notes = r.reason or "; ".join(str(r.notes[k]) for k in ("built_from", "loader", "lite_loader_error")
                                      if k in r.notes)
        rows.append({
            "variant": r.variant + (f" (r={r.notes['r']})" if "r" in r.notes else ""),
            "status": r.status + (" (reused)" if r.reused else ""),
            "file": Path(r.path).name if r.path else "",
            "size MB": f"{r.size_bytes / 1e6:.1f}" if r.size_bytes else "",
            "% of original": f"{100 * r.size_bytes / base:.0f}%" if base and r.size_bytes else "",
            "seconds": f"{r.convert_s:.1f}" if r.status == "ok" else "",
            "top-1 agreement": percent(r.top1_agreement), "agreement on": r.agreement_on,
            "top-5 overlap": percent(r.top5_overlap),
            "max diff": f"{r.max_abs_diff:.2g}" if r.max_abs_diff is not None else "",
            "accuracy": percent(accuracy.get(r.variant), 2), "notes": notes[:240],
        })
    return rows


CSV_CONVERSION_FIELDS = ["model", "variant", "status", "reason", "size_bytes", "sha256", "convert_s", "top1_agreement",
                         "top5_overlap", "max_abs_diff", "top1", "weights"]


def write_conversion_csv(path: Path | str, results, accuracy: dict[str, float] | None = None) -> Path:
    accuracy = accuracy or {}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_CONVERSION_FIELDS)
        for r in results:
            writer.writerow([r.model, r.variant, r.status, r.reason, r.size_bytes, r.sha256, f"{r.convert_s:.3f}",
                             r.top1_agreement, r.top5_overlap, r.max_abs_diff, accuracy.get(r.variant), r.weights])
    return Path(path)


# ------------------------------------------------------------------------------------------------------ benchmark

REDUCTION_COLUMNS = ["Model", "batch", "Inference Time", "Reduction", "Size", "Size Reduction", "reason"]


def busy_mark(row) -> str:
    """A row timed on a busy server says so in its table (core.activity), in a cell's width."""
    return f"⚠ busy: {row.disturbed[:90]}" if getattr(row, "disturbed", "") else ""


def busy_note(rows) -> str:
    """One sentence for a results view whose timing was disturbed, or ""."""
    busy = sorted({r.disturbed for r in rows if getattr(r, "disturbed", "")})
    if not busy:
        return ""
    return (f"Measured while the server was busy ({'; '.join(busy)[:300]}): these figures may be slow and spread; "
            "rerun when the server is idle.")


def reduction_table(results) -> list[dict]:
    """The tutorial's table (Model, Inference Time, Reduction) plus size and size reduction vs the original."""
    originals = {r.batch_size: r for r in results if r.variant == ORIGINAL and r.latency}
    rows = []
    for r in results:
        if not r.latency:
            rows.append({"Model": r.variant, "batch": r.batch_size, "Inference Time": r.status,
                         "Reduction": "", "Size": "", "Size Reduction": "", "reason": r.reason})
            continue
        base = originals.get(r.batch_size)
        time_red = _reduction(1 - r.latency.median_ms / base.latency.median_ms) if base else ""
        size_red = _reduction(1 - r.size_bytes / base.size_bytes) if base and base.size_bytes and r.size_bytes else ""
        rows.append({"Model": variant_name(r), "batch": r.batch_size, "Inference Time": f"{r.latency.median_ms:.2f}ms",
                     "Reduction": time_red, "Size": f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes else "",
                     "Size Reduction": size_red, "reason": busy_mark(r)})
    return rows


def stats_rows(results) -> list[dict]:
    """The spread behind each median: percentiles, throughput, the profiler's total, memory, agreement."""
    return [{"variant": variant_name(r), "batch": r.batch_size, "median ms": r.latency.median_ms,
             "p10 ms": r.latency.p10_ms, "p90 ms": r.latency.p90_ms, "mean ms": r.latency.mean_ms,
             "stdev ms": r.latency.stdev_ms, "img/s": r.latency.throughput_ips, "n": len(r.latency.samples_ms),
             "profiler self-CPU ms": r.profiler_self_cpu_ms if r.profiler_self_cpu_ms is not None else "n/a",
             "peak RSS MB": r.peak_rss_bytes / 1e6, "top-1 agree": r.top1_agreement, "agreement on": r.agreement_on}
            for r in results if r.latency]


def breakdown_markdown(results) -> str:
    """Under the breakdown chart: one sentence per variant against the fastest, each profiler's total against the wall
    time, and why a variant has no breakdown."""
    from deit_demo.measure.profile import explain

    seen, rows = set(), []
    for r in results:
        if r.breakdown is not None and r.variant not in seen:
            seen.add(r.variant)
            rows.append(r.breakdown)
    lines = [f"- {html.escape(s)}" for s in explain(rows)]
    lines += [f"- {b.variant} ({html.escape(b.runtime)}): {html.escape(b.gap_note())}" for b in rows
              if b.status == "ok" and b.gap_note()]
    lines += [f"- {b.variant}: no breakdown: {html.escape(b.reason)}" for b in rows if b.status != "ok"]
    return "\n".join(lines)


def profiler_markdown(results) -> str:
    parts = []
    for r in results:
        if not r.latency:
            continue
        head = f"**{r.variant}** (batch {r.batch_size}): wall median {r.latency.median_ms:.2f} ms"
        if r.profiler_self_cpu_ms is None:
            parts.append(f"{head}. {r.profiler_note or 'profiling pending'}")
            continue
        rows = "\n".join(f"| {html.escape(op['op'])} | {op['self_cpu_ms']:.3f} | {op['calls']} |"
                         for op in r.profiler_ops)
        parts.append(f"{head}; profiler self-CPU total {r.profiler_self_cpu_ms:.2f} ms ({r.profiler_note}).\n\n"
                     f"| operator | self CPU ms | calls |\n|---|---|---|\n{rows}")
    return "\n\n".join(parts) or "_Run a benchmark to see where time goes._"


def machine_line(machine: dict) -> str:
    return f"CPU {machine['cpu']} ({' '.join(machine['isa']) or 'no AVX-512'}), torch {machine['torch']}"


# ------------------------------------------------------------------------------------------------------ accuracy


def _interval(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""


def accuracy_rows(rows) -> list[dict]:
    """One row per AccuracyResult, with the change against the original in points."""
    base = next((r.top1 for r in rows if r.variant == ORIGINAL and r.top1 is not None), None)
    return [{"variant": r.variant, "status": r.status, "top-1": percent(r.top1, 2),
             "top-1 95% CI": _interval(r.top1_ci95), "top-5": percent(r.top5, 2),
             "top-5 95% CI": _interval(r.top5_ci95),
             "vs original (points)": signed(100 * (r.top1 - base)) if None not in (base, r.top1) else "",
             "n_images": r.n_images, "top-1 agreement": percent(r.top1_agreement, 1), "agreement on": r.agreement_on,
             "reason": r.reason[:120]} for r in rows]


def tome_rows(rows) -> list[dict]:
    """A token-merging sweep as a table: r, tokens left, latency (eager, int8), accuracy with its interval, and the
    agreement with r=0 on the images it names."""
    return [{"r": row.r, "tokens after last block": row.tokens_last_block,
             "eager median ms": f"{row.latency.median_ms:.2f}" if row.latency else "",
             "int8 median ms": f"{row.int8_latency.median_ms:.2f}" if row.int8_latency else "",
             "top-1": percent(row.top1, 2), "top-1 95% CI": _interval(row.top1_ci95), "n_images": row.n_images,
             "top-1 agreement with r=0": percent(row.top1_agreement), "agreement on": row.agreement_on,
             "timed": busy_mark(row) or "quiet"} for row in rows]


def tune_rows(result) -> list[dict]:
    """A tuning's probed r as a table: verdict, accuracy and its change, agreement with the original on the same
    images, latency (only the r within the budget are timed, with the dense variant)."""
    rows = [{"r": f"0 ({result.dense_variant})", "budget": "", "top-1 % [95% CI]": "", "vs original, points [95% CI]":
             "", "agreement": "", "median ms": f"{result.dense_ms:.2f}" if result.dense_ms else "", "kept": ""}]
    for s in result.steps:
        rows.append({"r": s.r, "budget": s.verdict, "top-1 % [95% CI]": f"{100 * s.top1:.2f} {_interval(s.top1_ci95)}",
                     "vs original, points [95% CI]":
                         f"{signed(-s.top1_drop)} [{signed(-s.top1_drop_ci95[1])}, {signed(-s.top1_drop_ci95[0])}]",
                     "agreement": percent(s.agreement, 1),
                     "median ms": f"{s.median_ms:.2f}" if s.median_ms else "(not timed: not within the budget)",
                     "kept": "✓" if s.r == result.r and result.faster else ""})
    if not result.faster:
        rows[0]["kept"] = "✓"
    return rows


def sweep_rows(rows) -> list[dict]:
    """A models x variants sweep as a table: latency spread, throughput, size, memory, accuracy, agreement. With an
    accuracy budget, the measured top-1 and its change against the original, and the agreement, all on the same
    named images."""
    table = []
    judged = any(getattr(r, "accuracy_verdict", "") for r in rows)
    for r in rows:
        stats = r.latency
        line = {"model": r.model, "variant": variant_name(r), "threads": r.threads, "batch": r.batch_size,
                "status": r.status, "median ms": f"{stats.median_ms:.2f}" if stats else "",
                "p10-p90 ms": f"{stats.p10_ms:.1f}-{stats.p90_ms:.1f}" if stats else "",
                "img/s": f"{stats.throughput_ips:.1f}" if stats else "",
                "size MB": f"{r.size_bytes / 1e6:.1f}" if r.size_bytes else "",
                "peak RSS MB": f"{r.peak_rss_bytes / 1e6:.0f}" if r.peak_rss_bytes else "",
                "top-1 %": f"{r.published_top1:.1f}" if r.published_top1 is not None else "",
                "top-5 %": f"{r.published_top5:.1f}" if r.published_top5 is not None else ""}
        if judged:
            drop = r.top1_drop_ci95
            line.update({"measured top-1 % [95% CI]": f"{100 * r.top1:.2f} {_interval(r.top1_ci95)}"
                         if r.top1 is not None else "",
                         "vs original, points [95% CI]":
                             f"{signed(-r.top1_drop)} [{signed(-drop[1])}, {signed(-drop[0])}]"
                         if r.top1_drop is not None else "",
                         "budget": r.accuracy_verdict})
        line.update({"agreement": percent(r.top1_agreement, 1 if judged else 0), "agreement on": r.agreement_on,
                     "reason": r.reason[:80] or busy_mark(r)})
        table.append(line)
    return table
