"""The Gradio app: Classify, Convert, Benchmark and About tabs. Handlers only turn inputs into library calls."""

from __future__ import annotations

import html
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from deit_demo import DeitDemoError, bench, charts
from deit_demo.artifacts import ArtifactStore
from deit_demo.classify import HEAD_TITLES, classify
from deit_demo.cpus import CpuBudget
from deit_demo.models import DEFAULT_MODEL, MODELS, LoadedModel, ModelCache
from deit_demo.variants import (VARIANTS, get_variant, parse_variant_keys, prepare, require_available,
                                run_conversion, size_reference)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
HEAVY = "heavy"  # one concurrency group for convert + benchmark: they would fight over the same cores


@dataclass
class AppConfig:
    """Server settings from app.py's flags."""

    model: str = DEFAULT_MODEL
    weights: str = "hub"  # hub | random | checkpoint path (applies to `model`; other models use hub, then random)
    offline: bool = False
    store_root: str | None = None
    eval_data: str | None = None  # a labelled image folder: the Convert tab then reports accuracy per variant
    store_cap_bytes: int = 8 * 1024**3
    max_models: int = 2
    classify_concurrency: int = 2
    classify_threads: int = 0  # per classification; 0 = every CPU free at that moment
    queue_size: int = 16
    reserved_cpus: int = 1  # kept free of convert/benchmark jobs so classification stays responsive
    max_runners: int = 4


@dataclass
class Lab:
    """What the handlers share: the model cache, the artifact store and the running benchmark's stop switch."""

    config: AppConfig
    cache: ModelCache = field(init=False)
    store: ArtifactStore = field(init=False)
    cancel: threading.Event = field(default_factory=threading.Event)
    fallbacks: dict[str, str] = field(default_factory=dict)
    cpus: CpuBudget = field(default_factory=CpuBudget)

    def __post_init__(self) -> None:
        self.cache = ModelCache(self.config.max_models)
        self.store = ArtifactStore(self.config.store_root, cap_bytes=self.config.store_cap_bytes)
        self._runners: OrderedDict[tuple, object] = OrderedDict()
        self._runners_lock = threading.Lock()

    def heavy_cpus(self, requested: int | None = None) -> int:
        """CPUs a convert/benchmark job may take: all but those kept for classification."""
        ceiling = max(1, self.cpus.total - self.config.reserved_cpus)
        return min(requested or ceiling, ceiling)

    def runner(self, loaded: LoadedModel, key: str):
        """A loaded variant for classification, converted on first use and kept in a small LRU."""
        variant = get_variant(key)
        require_available(variant)
        cache_key = (loaded.spec.key, loaded.weights_id, key)
        with self._runners_lock:
            if cache_key in self._runners:
                self._runners.move_to_end(cache_key)
                return self._runners[cache_key]
            _, _, runner = prepare(variant, loaded, self.store)
            self._runners[cache_key] = runner
            while len(self._runners) > self.config.max_runners:
                self._runners.popitem(last=False)
            return runner

    def model(self, key: str) -> LoadedModel:
        """The model with the best weights we can get; falls back to random (with a banner) when offline."""
        if key not in MODELS:
            raise DeitDemoError(f"Unknown model {str(key)!r}.")
        weights = self.config.weights if key == self.config.model else "hub"
        if self.config.offline and weights == "hub":
            weights = "random"
            self.fallbacks[key] = "the server was started with --offline"
        if weights != "random":
            try:
                return self.cache.get(key, weights)
            except DeitDemoError:
                self.fallbacks[key] = (f"No pretrained weights: the Hugging Face hub is unreachable and the local "
                                       f"cache has no copy of {MODELS[key].hf_repo}" if weights == "hub" else
                                       f"The checkpoint {Path(weights).name} could not be loaded")
        return self.cache.get(key, "random")

    def banner(self, loaded: LoadedModel) -> str:
        spec = loaded.spec
        if loaded.weights == "hub":
            return f"✅ **Pretrained ImageNet weights**: `{spec.hf_repo}` (timm + Hugging Face hub cache)."
        if loaded.weights.startswith("checkpoint:"):
            return f"📦 **Weights from a local checkpoint**: `{html.escape(loaded.weights[11:])}`."
        why = self.fallbacks.get(spec.key, "random weights were requested")
        return (f"⚠️ **RANDOM weights: labels meaningless.** {html.escape(why)}. The pipeline, sizes and timings "
                "are real; for real labels start the app with network access or `--weights PATH`.")


class SafeImage(gr.Image):
    """An image input that hands the uploaded file to `deit_demo.images` untouched.

    gr.Image would open the file with PIL before our handler runs, so a text file or a decompression bomb would fail
    inside Gradio with an unreadable error; our decoder has the allow-list, the pixel cap and the plain messages.
    """

    @classmethod
    def get_block_name(cls) -> str:
        return "image"  # render with the stock frontend component

    def preprocess(self, payload):
        if payload is None or (payload.url and payload.url.startswith("data:")) or payload.path is None:
            return super().preprocess(payload)
        return str(payload.path)


def _error(err: Exception) -> gr.Error:
    return gr.Error(html.escape(str(err), quote=False))  # quotes are harmless in text; <, > and & are not


def _label_value(preds) -> dict[str, float]:
    return {f"{p.label} ({p.index})": p.prob for p in preds}


# ------------------------------------------------------------------------------------------------------ Classify


def build_classify_tab(lab: Lab) -> None:
    examples = sorted(str(p) for p in ASSETS.glob("*.jpg")) + sorted(str(p) for p in ASSETS.glob("digits/*.png"))[:4]
    with gr.Row():
        with gr.Column(scale=1):
            image = SafeImage(type="filepath", label="Image", sources=["upload", "webcam", "clipboard"], height=300)
            url = gr.Textbox(label="…or an image URL (http/https)", placeholder="https://example.com/cat.jpg")
            with gr.Row():
                model = gr.Dropdown([(f"{s.label}  ({s.key})", s.key) for s in MODELS.values()],
                                    value=lab.config.model, label="Model")
                variant = gr.Dropdown(["original"] + [v.key for v in VARIANTS.values() if v.key != "original"],
                                      value="original", label="Variant (converted on demand)")
            run = gr.Button("Classify", variant="primary")
            gr.Examples(examples, inputs=image, label="Examples")
        with gr.Column(scale=1):
            banner = gr.Markdown(elem_id="weights-banner")
            timing = gr.Markdown(elem_id="classify-timing")
            with gr.Row():
                head_a = gr.Label(num_top_classes=5, label="Prediction (class-token head for ⚗ models)",
                                  elem_id="label-main")
                head_b = gr.Label(num_top_classes=5, label=HEAD_TITLES["distillation"], visible=False)
                head_c = gr.Label(num_top_classes=5, label=HEAD_TITLES["average"], visible=False)

    def on_classify(image_path, url_text, model_key, variant_key, progress=gr.Progress()):
        source = (url_text or "").strip() or image_path
        if not source:
            raise gr.Error("Upload an image, pick an example, or paste an image URL.")
        try:
            with lab.cpus.take(lab.config.classify_threads or lab.cpus.total, timeout_s=60):
                progress(0.1, desc=f"loading {model_key}")
                loaded = lab.model(model_key)
                runner = None
                if variant_key != "original":
                    progress(0.4, desc=f"preparing {variant_key} (converted on first use)")
                    runner = lab.runner(loaded, variant_key)
                progress(0.8, desc="classifying")
                result = classify(loaded, source, runner=runner, variant=variant_key)
        except DeitDemoError as err:
            raise _error(err) from None
        heads = result.heads
        if "average" in heads:
            labels = [_label_value(heads["class"]), gr.update(value=_label_value(heads["distillation"]), visible=True),
                      gr.update(value=_label_value(heads["average"]), visible=True)]
        else:
            labels = [_label_value(heads["logits"]), gr.update(value=None, visible=False),
                      gr.update(value=None, visible=False)]
        timing_text = (f"**{result.elapsed_ms:.1f} ms** for the forward pass ({result.variant}, "
                       f"{loaded.spec.label}); top-1: **{html.escape(result.top1.label)}**")
        return [lab.banner(loaded), timing_text, *labels]

    run.click(on_classify, [image, url, model, variant], [banner, timing, head_a, head_b, head_c],
              api_name="classify", concurrency_limit=lab.config.classify_concurrency, concurrency_id="classify")


# ------------------------------------------------------------------------------------------------------ Convert

CONVERT_HEADERS = ["variant", "status", "size MB", "% of original", "seconds", "top-1 agreement", "top-5 overlap",
                   "max diff", "accuracy", "notes"]


def variant_choices() -> list[tuple[str, str]]:
    choices = []
    for v in VARIANTS.values():
        ok, _ = v.available()
        choices.append((f"{v.title}" + ("" if ok else "  (unavailable)"), v.key))
    return choices


def variants_help() -> str:
    lines = ["| variant | what it is | status |", "|---|---|---|"]
    for v in VARIANTS.values():
        ok, reason = v.available()
        lines.append(f"| `{v.key}` | {v.description} | {'✅ available' if ok else '⛔ ' + reason} |")
    return "\n".join(lines)


def conversion_table(results, accuracy: dict[str, float] | None = None) -> list[list]:
    base = size_reference(results)
    accuracy = accuracy or {}
    rows = []
    for r in results:
        notes = r.reason or "; ".join(str(r.notes[k]) for k in ("built_from", "loader") if k in r.notes)
        rows.append([r.variant, r.status + (" (reused)" if r.reused else ""),
                     round(r.size_bytes / 1e6, 1) if r.size_bytes else None,
                     f"{100 * r.size_bytes / base:.0f}%" if base and r.size_bytes else "",
                     round(r.convert_s, 2) if r.status == "ok" else None,
                     f"{r.top1_agreement:.0%}" if r.top1_agreement is not None else "",
                     f"{r.top5_overlap:.0%}" if r.top5_overlap is not None else "",
                     f"{r.max_abs_diff:.2g}" if r.max_abs_diff is not None else "",
                     f"{accuracy[r.variant]:.2%}" if r.variant in accuracy else "", notes])
    return rows


def default_convert_keys() -> list[str]:
    """The tutorial's pipeline plus ONNX: seconds to convert. The ahead-of-time compilers are one tick away."""
    quick = {"original", "scripted", "scripted_int8", "mobile_optimized", "lite", "onnx_fp32", "onnx_int8"}
    return [k for k, v in VARIANTS.items() if k in quick and v.available()[0]]


def build_convert_tab(lab: Lab) -> None:
    with gr.Row():
        model = gr.Dropdown([(f"{s.label}  ({s.key})", s.key) for s in MODELS.values()], value=lab.config.model,
                            label="Model", scale=1)
        keys = gr.CheckboxGroup(variant_choices(), value=default_convert_keys(), scale=3,
                                label="Variants (ExecuTorch and the AOTInductor ones compile for minutes on DeiT-B)")
    run = gr.Button("Convert", variant="primary")
    status = gr.Markdown(elem_id="convert-status")
    table = gr.Dataframe(headers=CONVERT_HEADERS, label="Results (accuracy: top-1 on labelled data, when there is "
                         "some: deit_digits or --eval-data)", interactive=False, wrap=True, max_height=720,
                         column_widths=["12%", "8%", "6%", "7%", "7%", "7%", "7%", "7%", "8%", "31%"],
                         elem_id="convert-table")
    files = gr.File(label="Downloads (artifacts and the results table)", file_count="multiple", interactive=False)
    with gr.Accordion("What each variant is, and why some are unavailable here", open=False):
        gr.Markdown(variants_help())

    def on_convert(model_key, variant_keys, progress=gr.Progress()):
        try:
            loaded = lab.model(model_key)
            chosen = parse_variant_keys(variant_keys or ["original"])
        except DeitDemoError as err:
            raise _error(err) from None

        def report(key, i, n, what):
            progress((i, n), desc=f"{what} {key}".strip(), unit="variants")

        start = time.perf_counter()
        with lab.cpus.take(lab.heavy_cpus()):
            results = run_conversion(loaded, chosen, lab.store, progress=report)
        ok = [r for r in results if r.status == "ok"]
        accuracy, accuracy_note = {}, ""
        if loaded.spec.key == "deit_digits" or lab.config.eval_data:
            from deit_demo.evaluate import evaluate

            try:
                rows = evaluate(loaded, [r.variant for r in ok], lab.store, lab.config.eval_data,
                                progress=lambda k, i, n: progress((i, n), desc=f"accuracy of {k}", unit="images"))
                accuracy = {r.variant: r.top1 for r in rows if r.top1 is not None}
                if rows:
                    accuracy_note = f" Accuracy: top-1 on {rows[0].data} ({rows[0].images} labelled images)."
            except DeitDemoError as err:
                accuracy_note = f" Accuracy not measured: {html.escape(str(err))}"
        csv_path = lab.store.root / f"conversion_{loaded.spec.key}_{loaded.weights_id}.csv"
        _write_conversion_csv(csv_path, results, accuracy)
        summary = (f"{lab.banner(loaded)}\n\n**{len(ok)} of {len(results)} variants converted and checked** in "
                   f"{time.perf_counter() - start:.1f} s. Agreement is measured against the original on the bundled "
                   f"example images and fixed-seed noise.{accuracy_note}")
        return summary, conversion_table(results, accuracy), [r.path for r in ok] + [str(csv_path)]

    run.click(on_convert, [model, keys], [status, table, files], api_name="convert", concurrency_limit=1,
              concurrency_id=HEAVY)


def _write_conversion_csv(path: Path, results, accuracy: dict[str, float]) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "variant", "status", "reason", "size_bytes", "sha256", "convert_s", "top1_agreement",
                         "top5_overlap", "max_abs_diff", "top1", "weights"])
        for r in results:
            writer.writerow([r.model, r.variant, r.status, r.reason, r.size_bytes, r.sha256, f"{r.convert_s:.3f}",
                             r.top1_agreement, r.top5_overlap, r.max_abs_diff, accuracy.get(r.variant), r.weights])


# ------------------------------------------------------------------------------------------------------ Benchmark


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


def build_benchmark_tab(lab: Lab) -> None:
    with gr.Row():
        model = gr.Dropdown([(f"{s.label}  ({s.key})", s.key) for s in MODELS.values()], value=lab.config.model,
                            label="Model", scale=1)
        keys = gr.CheckboxGroup(variant_choices(), value=["original", "scripted", "scripted_int8"], label="Variants",
                                scale=3)
    with gr.Row():
        runs = gr.Slider(2, 200, value=20, step=1, label="Timed runs")
        warmup = gr.Slider(0, 50, value=3, step=1, label="Warm-up runs")
        threads = gr.Slider(1, max(1, bench.usable_cpus()), value=lab.heavy_cpus(), step=1,
                            label=f"Threads (up to {lab.heavy_cpus()} while serving: "
                                  f"{lab.config.reserved_cpus} CPU kept for classification)")
        batches = gr.Textbox("1", label="Batch sizes (comma list for a sweep)")
    with gr.Row():
        run = gr.Button("Run benchmark", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown(elem_id="bench-status")
    table = gr.Markdown(elem_id="bench-table")
    with gr.Row():
        latency_plot = gr.Plot(label="Latency", elem_id="plot-latency")
        size_plot = gr.Plot(label="Size", elem_id="plot-size")
    with gr.Row():
        reduction_plot = gr.Plot(label="Reduction", elem_id="plot-reduction")
        scatter_plot = gr.Plot(label="Size vs latency", elem_id="plot-scatter")
    sweep_plot = gr.Plot(label="Batch sweep", visible=False, elem_id="plot-sweep")
    with gr.Accordion("The profiler's view (per variant)", open=False):
        profile_md = gr.Markdown()
    files = gr.File(label="Downloads (JSON, CSV, HTML charts)", file_count="multiple", interactive=False)

    def render(results, message):
        figures = charts.all_charts(results)
        reduction = bench.to_markdown(bench.reduction_table(results),
                                      ["Model", "batch", "Inference Time", "Reduction", "Size", "Size Reduction",
                                       "reason"]) if results else ""
        return [message, reduction, figures["latency"], figures["size"], figures["reduction"], figures["scatter"],
                gr.update(value=figures.get("throughput"), visible="throughput" in figures),
                profiler_markdown(results)]

    def on_run(model_key, variant_keys, n_runs, n_warmup, n_threads, batch_text, progress=gr.Progress()):
        try:
            batch_sizes = [int(b) for b in str(batch_text).replace(" ", "").split(",") if b]
            if not batch_sizes or any(b < 1 or b > 64 for b in batch_sizes):
                raise DeitDemoError("Batch sizes must be whole numbers from 1 to 64, e.g. 1 or 1,8.")
        except ValueError:
            raise gr.Error("Batch sizes must be whole numbers from 1 to 64, e.g. 1 or 1,8.") from None
        except DeitDemoError as err:
            raise _error(err) from None
        settings = bench.BenchSettings(variants=list(variant_keys or ["original"]), runs=int(n_runs),
                                       warmup=int(n_warmup), threads=lab.heavy_cpus(int(n_threads)),
                                       batch_sizes=batch_sizes)
        lab.cancel.clear()
        updates: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work():
            try:
                with lab.cpus.take(settings.threads) as granted:
                    settings.threads = granted
                    loaded = lab.model(model_key)
                    outcome["loaded"] = loaded
                    outcome["results"] = bench.run_benchmark(
                        loaded, settings, lab.store, cancel=lab.cancel, on_update=lambda r: updates.put(list(r)),
                        progress=lambda k, i, n: progress((i, n), desc=f"timing {k}", unit="runs"))
            except Exception as err:  # reported to the user below; the server keeps serving
                outcome["error"] = err
            finally:
                updates.put(None)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        latest: list = []
        last_draw = 0.0
        while True:
            item = updates.get()
            if item is None:
                break
            latest = item
            if time.monotonic() - last_draw > 0.5:  # redraw at most twice a second
                last_draw = time.monotonic()
                yield render(latest, "⏱️ running… charts fill in as rounds complete") + [None]
        worker.join()
        error = outcome.get("error")
        if isinstance(error, bench.Cancelled):
            yield render(latest, "⏹️ stopped; partial results shown") + [None]
            return
        if error is not None:
            raise _error(error) if isinstance(error, DeitDemoError) else gr.Error(
                f"Benchmark failed: {html.escape(type(error).__name__)}")
        results, loaded = outcome["results"], outcome["loaded"]
        out_dir = lab.store.root / "benchmarks"
        out_dir.mkdir(exist_ok=True)
        stem = out_dir / f"bench_{loaded.spec.key}_{int(time.time())}"
        bench.save_json(f"{stem}.json", loaded.spec.key, results)
        bench.save_csv(f"{stem}.csv", results)
        charts.write_html(results, f"{stem}.html", title=f"DeiT benchmark: {loaded.spec.key}")
        machine = bench.machine_info()
        message = (f"✅ done: {loaded.spec.label}, {settings.runs} runs after {settings.warmup} warm-up, "
                   f"{results[0].threads if results else '?'} threads, interleaved in blocks; CPU {machine['cpu']} "
                   f"({' '.join(machine['isa']) or 'no AVX-512'}).\n\n{lab.banner(loaded)}")
        yield render(results, message) + [[f"{stem}.json", f"{stem}.csv", f"{stem}.html"]]

    outputs = [status, table, latency_plot, size_plot, reduction_plot, scatter_plot, sweep_plot, profile_md, files]
    run.click(on_run, [model, keys, runs, warmup, threads, batches], outputs, api_name="benchmark",
              concurrency_limit=1, concurrency_id=HEAVY)

    def on_stop():
        lab.cancel.set()
        return "⏹️ stopping…"

    stop.click(on_stop, None, status, api_name="stop_benchmark", queue=False)


# ------------------------------------------------------------------------------------------------------ About

ABOUT = """
## What DeiT is, and why it matters

**DeiT** (Data-efficient Image Transformers, Touvron et al., 2021) showed that a plain Vision Transformer can reach
ResNet-class ImageNet accuracy **trained on ImageNet-1k alone**, on one 8-GPU node in under three days. Before it,
ViTs needed hundreds of millions of extra images (JFT-300M). The recipe: strong augmentation (RandAugment, Mixup,
CutMix, random erasing), stochastic depth, repeated augmentation, and AdamW with long schedules.

**The distillation token.** Besides the usual class token, DeiT adds a second learned token that travels through every
attention layer and has its own head. The class head learns from the true labels; the distillation head learns from
a **teacher** (a RegNet CNN). At test time the two heads' logits are averaged. The Classify tab shows both heads and
their average for the distilled models (⚗).

**Soft vs hard distillation.** *Soft*: the student matches the teacher's softened probabilities (KL divergence at a
temperature). *Hard*: the student is trained with cross-entropy on the teacher's **argmax** label, as if it were a
second ground truth. DeiT found hard distillation works better, and that a CNN teacher passes on useful inductive
bias: DeiT-B⚗ reaches 83.4% top-1 vs 81.8% without distillation.

## Shipping it: the variants

{variants}

## What is deprecated in today's PyTorch, and the successor

| then (the tutorial) | now | successor |
|---|---|---|
| `torch.jit.script` | deprecated (FutureWarning) | `torch.export` → ExecuTorch (phones), `torch.compile` (servers) |
| `torch.ao.quantization` | deprecated, removal announced | torchao / PT2E quantization, ONNX Runtime quantization |
| `optimize_for_mobile` | needs XNNPACK, absent from this build | ExecuTorch with the XNNPACK backend |
| lite interpreter `.ptl` | deprecated; its loader fails in this build | ExecuTorch `.pte` |

## How we measure
Wall clock with `perf_counter`, warm-up first, then the variants interleaved in blocks (each round, each variant
runs a few consecutive calls and the first is dropped), so machine drift hits all alike. We show the median with
p10–p90, and the profiler's self-CPU total beside it: that total sums operator time over threads and is **not**
wall time, which is why the tutorial's single profiled run overstated latency.
"""


def digits_markdown() -> str:
    """The distillation experiment we ran here (assets/deit_digits.json, written by deit_demo.train_digits)."""
    import json

    report_path = ASSETS / "deit_digits.json"
    if not report_path.is_file():
        return "_Run `python -m deit_demo.train_digits` to train the offline demo model._"
    r = json.loads(report_path.read_text())
    gain = 100 * (r["student_average"] - r["student_without_distillation"])
    verdict = (f"On a task this small both students come within {abs(gain):.1f} points of each other: the teacher's "
               "help is within noise here." if abs(gain) < 1 else
               f"Here distillation changed the student's accuracy by {gain:+.1f} points.")
    return (f"""
## Distillation, measured here: `deit_digits`

Pretrained ImageNet weights cannot be downloaded everywhere, so the lab ships a DeiT it trained itself on
scikit-learn's bundled handwritten digits (8×8 images upsampled to 32×32; {r['test_images']} held-out test images):
a small CNN teacher, then a {r['params']:,}-parameter DeiT student with a distillation token trained with **hard-label
distillation** (class head ← labels, distillation head ← the teacher's argmax). Choose **DeiT-digits** in any tab.

| model | test accuracy |
|---|---|
| CNN teacher | {r['teacher']:.2%} |
| student, class-token head | {r['student_class_head']:.2%} |
| student, distillation-token head | {r['student_distillation_head']:.2%} |
| student, average of both heads (DeiT's output) | {r['student_average']:.2%} |
| same student trained on labels only (no teacher) | {r['student_without_distillation']:.2%} |

{verdict} DeiT's gain shows at ImageNet scale (81.8% → 83.4% for DeiT-B). Trained in {r['train_seconds']:.0f} s on a
2-core CPU.
""")


def build_about_tab() -> None:
    rows = ["| variant | what it is for |", "|---|---|"]
    rows += [f"| **{v.title}**<br>`{v.key}` · {v.family} · {v.precision} | {v.description} |" for v in VARIANTS.values()]
    gr.Markdown(ABOUT.replace("{variants}", "\n".join(rows)) + digits_markdown(), elem_id="about")


# ------------------------------------------------------------------------------------------------------ Blocks


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    """The whole app. Nothing is loaded here; the first request loads and caches the model."""
    lab = Lab(config or AppConfig())
    with gr.Blocks(title="DeiT Deployment Lab") as demo:
        gr.Markdown("# DeiT Deployment Lab\nClassify with a Data-efficient Image Transformer, convert it into "
                    "deployment variants, and benchmark them live, honestly.")
        with gr.Tab("Classify", id="classify"):
            build_classify_tab(lab)
        with gr.Tab("Convert", id="convert"):
            build_convert_tab(lab)
        with gr.Tab("Benchmark", id="benchmark"):
            build_benchmark_tab(lab)
        with gr.Tab("About", id="about"):
            build_about_tab()
    demo.queue(max_size=lab.config.queue_size, api_open=False, default_concurrency_limit=1)
    demo.lab = lab  # tests and app.py reach the store through here
    return demo


def launch_kwargs(lab: Lab) -> dict:
    """Server settings shared by app.py and the tests."""
    return dict(max_file_size="20mb", enable_monitoring=False, show_error=False,
                allowed_paths=[str(lab.store.root)], footer_links=["api"])
