"""The Gradio app's layout: one `build_*_tab` per tab, each binding components to the handlers in `handlers.py`."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from deit_demo.app import agents, decide_tab, device, handlers
from deit_demo.app.about import about_markdown
from deit_demo.app.events import partial
from deit_demo.app.inputs import preprocessed
from deit_demo.present.report import CONVERT_COLUMNS
from deit_demo.service import (
    AUTO,
    AUTO_TITLE,
    HEAD_TITLES,
    MODELS,
    ORIGINAL,
    VARIANTS,
    AppConfig,
    BenchSettings,
    Lab,
    SweepSettings,
    cache_folder,
    example_images,
    usable_cpus,
)

__all__ = ["AppConfig", "Lab", "build_app", "launch_kwargs"]


HEAVY = "heavy"  # one concurrency group for convert + benchmark: they would fight over the same cores
# Seconds a heavy job may run before Gradio stops it with a message, so no visitor holds the CPUs forever.
TIME_LIMITS = {"convert": 1800, "benchmark": 1800, "tome_sweep": 1800, "sweep": 3600}


class SafeImage(gr.Image):
    """An image input that hands the uploaded file to `deit_demo.core.images` untouched.

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


def gallery(default_model: str) -> list[list[str]]:
    """(image, model) pairs: the photographs with the default model, then a few examples of each model trained here
    with that model (clicking one also picks its model)."""
    photos = [[str(p), default_model] for p in example_images()]
    trained = [[str(p), s.key] for s in MODELS.values() if s.report for p in s.example_paths()[:4]]
    return photos + trained


def model_choices() -> list[tuple[str, str]]:
    return [(f"{s.label}  ({s.key})", s.key) for s in MODELS.values()]


def serving_choices() -> list[tuple[str, str]]:
    return [(AUTO_TITLE, AUTO)] + [(title, key) for title, key in variant_choices()]


def variant_choices() -> list[tuple[str, str]]:
    return [(v.title + ("" if v.available()[0] else "  (unavailable)"), v.key) for v in VARIANTS.values()]


def variants_help() -> str:
    lines = ["| variant | what it is | status |", "|---|---|---|"]
    for v in VARIANTS.values():
        ok, reason = v.available()
        lines.append(f"| `{v.key}` | {v.description} | {'✅ available' if ok else '⛔ ' + reason} |")
    return "\n".join(lines)


def default_convert_keys(model_key: str) -> list[str]:
    """The model's quick variants that run here: seconds to convert; the ahead-of-time compilers are one tick away."""
    quick = MODELS[model_key].quick_variants
    return [k for k, v in VARIANTS.items() if k in quick and v.available()[0]]


def build_classify_tab(lab: Lab) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = SafeImage(type="filepath", label="Image", sources=["upload", "webcam", "clipboard"], height=300,
                              elem_id="classify-image")
            url = gr.Textbox(label="…or an image URL (http/https)", placeholder="https://example.com/cat.jpg")
            with gr.Row():
                # min_width: on a phone the two stack instead of squeezing their text under the arrow
                model = gr.Dropdown(model_choices(), value=lab.config.model, label="Model", min_width=260)
                variant = gr.Dropdown(serving_choices(), value=AUTO, label="Variant (Auto: the fastest one that "
                                      "passed its answer check here; others are converted on first use)", min_width=260)
            run = gr.Button("Classify", variant="primary")
        # The answer comes right after the inputs, before the examples: on a phone (one column) it is what follows
        # the button, and page.js brings it into view when an example far below fills it in.
        with gr.Column(scale=1, elem_id="classify-answer"):
            auto_line = gr.Markdown(handlers.auto_status(lab, lab.config.model), elem_id="auto-status")
            banner = gr.Markdown(elem_id="weights-banner")
            timing = gr.Markdown(elem_id="classify-timing")
            distilled = MODELS[lab.config.model].distilled
            with gr.Row():
                head_a = gr.Label(num_top_classes=5, label="Prediction (class-token head for ⚗ models)",
                                  elem_id="label-main")
                head_b = gr.Label(num_top_classes=5, label=HEAD_TITLES["distillation"], visible=distilled,
                                  elem_id="label-distillation")
                head_c = gr.Label(num_top_classes=5, label=HEAD_TITLES["average"], visible=distilled,
                                  elem_id="label-average")
    outputs = [banner, timing, head_a, head_b, head_c]
    with examples_cache(lab.sessions_root / "examples"):
        gr.Examples(gallery(lab.config.model), inputs=[image, model], label="Examples", outputs=outputs,
                    fn=partial(handlers.classify_example, lab), cache_examples=lab.config.cache_examples,
                    cache_mode="lazy", elem_id="examples")
    # Auto's state and the weights banner for the selected model, kept current without a refresh (a cheap read;
    # nothing is loaded)
    status = partial(handlers.auto_status, lab)
    gr.Timer(3).tick(partial(handlers.classify_status, lab), [model], [auto_line, banner], queue=False,
                     show_progress="hidden", api_visibility="private")
    model.change(status, [model], [auto_line], queue=False, show_progress="hidden", api_visibility="private")
    model.change(partial(handlers.model_banner, lab), [model], [banner], queue=False, show_progress="hidden",
                 api_visibility="private")
    # Which heads show follows the model picked (an example sets it too), not each answer: see
    # handlers._classify_outputs.
    model.change(handlers.heads_for_model, [model], [head_b, head_c], queue=False, show_progress="hidden",
                 api_visibility="private")
    # A URL is fetched first, in a group of its own, into the image box: the shared batch never waits on a visitor's
    # host. (Queued: Gradio shows an event's error message only for queued events.)
    fetched = run.click(partial(handlers.fetch_url_input, lab), [url], [image, url], api_visibility="private",
                        concurrency_limit=8, concurrency_id="fetch_url", show_progress="minimal")
    # Batched: visitors who classify at the same moment share one forward pass (see handlers.classify).
    fetched.success(partial(handlers.classify, lab), [image, url, model, variant], outputs, api_name="classify",
                    concurrency_limit=lab.config.classify_concurrency, concurrency_id="classify", batch=True,
                    max_batch_size=lab.config.max_batch_size)


@contextlib.contextmanager
def examples_cache(folder: Path):
    """Lazily cached examples go into this server's own temporary folder rather than Gradio's default under the
    working directory, so a restart with other weights never shows answers computed with the old ones. (Gradio reads
    the folder from the environment when the examples are made, and prints where at every start: not ours to show.)"""
    with cache_folder("GRADIO_EXAMPLES_CACHE", folder), contextlib.redirect_stdout(io.StringIO()):
        yield


def build_convert_tab(lab: Lab) -> None:
    with gr.Row():
        model = gr.Dropdown(model_choices(), value=lab.config.model, label="Model", scale=1)
        keys = gr.CheckboxGroup(variant_choices(), value=default_convert_keys(lab.config.model), scale=3,
                                label="Variants (ExecuTorch and the AOTInductor ones compile for minutes on DeiT-B)")
    run = gr.Button("Convert", variant="primary")
    status = gr.Markdown(elem_id="convert-status")
    table = gr.Dataframe(headers=CONVERT_COLUMNS, label="Results (accuracy: top-1 on labelled data, when there is "
                         "some: the models trained here, or --eval-data)", interactive=False, wrap=True,
                         max_height=720, elem_id="convert-table",
                         column_widths=["11%", "7%", "10%", "5%", "6%", "6%", "6%", "6%", "6%", "7%", "30%"])
    files = gr.File(label="Downloads (artifacts and the results table)", file_count="multiple", interactive=False)
    with gr.Accordion("What each variant is, and why some are unavailable here", open=False):
        gr.Markdown(variants_help())
    inputs = [model, keys]
    run.click(preprocessed(partial(handlers.convert, lab), inputs), inputs, [status, table, files], api_name="convert",
              preprocess=False, concurrency_limit=1, concurrency_id=HEAVY, time_limit=TIME_LIMITS["convert"])


def build_benchmark_tab(lab: Lab) -> None:
    with gr.Row():
        model = gr.Dropdown(model_choices(), value=lab.config.model, label="Model", scale=1)
        keys = gr.CheckboxGroup(variant_choices(), value=[ORIGINAL, "scripted", "scripted_int8"], label="Variants",
                                scale=3)
    with gr.Row():
        runs = gr.Slider(2, 200, value=BenchSettings.runs, step=1, label="Timed runs")
        warmup = gr.Slider(0, 50, value=BenchSettings.warmup, step=1, label="Warm-up runs")
        threads = gr.Slider(1, max(1, usable_cpus()), value=lab.heavy_cpus(), step=1,
                            label=f"Threads (up to {lab.heavy_cpus()} while serving: "
                                  f"{lab.config.serve.reserved_cpus} CPU kept for classification)")
        batches = gr.Textbox("1", label="Batch sizes (comma list for a sweep)")
        tome_r = gr.Number(None, precision=0, minimum=0, maximum=64, label="ToMe r (tokens merged per block; empty: "
                           "the model's default)")
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
    with gr.Row():
        breakdown_plot = gr.Plot(label="Where the time goes", elem_id="plot-breakdown")
        breakdown_md = gr.Markdown(elem_id="breakdown-notes")
    with gr.Accordion("The tutorial's torch.profiler view (per variant)", open=False):
        profile_md = gr.Markdown()
    files = gr.File(label="Downloads (JSON, CSV, HTML charts, each runtime's trace for Perfetto)",
                    file_count="multiple", interactive=False)
    with gr.Accordion("Token merging: r against latency and accuracy", open=False):
        with gr.Row():
            r_values = gr.Textbox("0,2,4,6,8", label="r values")
            r_int8 = gr.Checkbox(False, label="also convert and time tome_int8 at each r (minutes on DeiT-B)")
            r_run = gr.Button("Run r sweep")
        r_plot = gr.Plot(label="r sweep", elem_id="plot-tome")
        r_table = gr.Markdown(elem_id="tome-table")
    outputs = [status, table, latency_plot, size_plot, reduction_plot, scatter_plot, sweep_plot, breakdown_plot,
               breakdown_md, profile_md, files]
    inputs = [model, keys, runs, warmup, threads, batches, tome_r]
    run.click(preprocessed(partial(handlers.benchmark, lab), inputs), inputs, outputs, api_name="benchmark",
              preprocess=False, concurrency_limit=1, concurrency_id=HEAVY, time_limit=TIME_LIMITS["benchmark"])
    inputs = [model, r_values, r_int8, runs, warmup, threads]
    r_run.click(preprocessed(partial(handlers.tome_sweep, lab), inputs), inputs, [r_plot, r_table],
                api_name="tome_sweep", preprocess=False, concurrency_limit=1, concurrency_id=HEAVY,
                time_limit=TIME_LIMITS["tome_sweep"])
    stop.click(partial(handlers.stop_benchmark, lab), None, status, api_name="stop_benchmark", queue=False)


def build_decide_tab(lab: Lab) -> None:
    gr.Markdown("Time several models and variants together on this machine, see accuracy against latency, and get "
                "a recommendation under your budgets, with its deployment card. Accuracy is the published ImageNet "
                "top-1 (measured, for the models trained here); with an accuracy budget, each pair's top-1 is "
                "measured on the model's labelled set against its original, and token merging's r is tuned to it.")
    with gr.Row():
        models = gr.CheckboxGroup(model_choices(), value=["deit_tiny", "deit_small"], label="Models", scale=2)
        keys = gr.CheckboxGroup(variant_choices(), value=[ORIGINAL, "scripted_int8"], label="Variants", scale=3)
    with gr.Row():
        threads = gr.Textbox(str(lab.heavy_cpus()), label="Threads (comma list for a sweep)")
        batches = gr.Textbox("1", label="Batch sizes (comma list)")
        runs = gr.Slider(2, 100, value=SweepSettings.runs, step=1, label="Timed runs", elem_id="decide-runs")
        warmup = gr.Slider(0, 20, value=SweepSettings.warmup, step=1, label="Warm-up runs", elem_id="decide-warmup")
    with gr.Row():
        # Text boxes: a gr.Number shows 0 when empty, and empty is what "no budget" looks like.
        budget_ms = gr.Textbox("", label="Latency budget (ms per call)", placeholder="no budget",
                               elem_id="decide-budget-ms")
        budget_mb = gr.Textbox("", label="Size budget (MB)", placeholder="no budget", elem_id="decide-budget-mb")
        min_top1 = gr.Textbox("", label="Minimum top-1 (%)", placeholder="no minimum", elem_id="decide-min-top1")
        max_drop = gr.Textbox("", label="Accuracy budget (top-1 points under the original, measured)",
                              placeholder="no budget", elem_id="decide-max-drop")
    # With a cluster attached, the same sweep on one node of each kind of the cluster (docs/SCALING.md)
    where = gr.Radio([decide_tab.THIS_SERVER, decide_tab.EVERY_KIND], value=decide_tab.THIS_SERVER, label="Run on",
                     visible=lab.config.cluster is not None, elem_id="decide-where")
    with gr.Row():
        run = gr.Button("Run sweep", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    verdict = gr.Markdown(elem_id="decide-recommendation")
    pareto = gr.Plot(label="Accuracy vs latency", elem_id="plot-pareto")
    table = gr.Markdown(elem_id="decide-table")
    files = gr.File(label="Download the sweep (JSON, with the recommendation) and the deployment card (Markdown, JSON)",
                    file_count="multiple", interactive=False, elem_id="decide-files")
    inputs = [models, keys, threads, batches, runs, warmup, budget_ms, budget_mb, min_top1, max_drop, where]
    run.click(preprocessed(partial(decide_tab.sweep, lab), inputs), inputs, [verdict, pareto, table, files],
              api_name="sweep", preprocess=False, concurrency_limit=1, concurrency_id=HEAVY,
              time_limit=TIME_LIMITS["sweep"])
    stop.click(partial(handlers.stop_benchmark, lab), None, verdict, api_name="stop_sweep", queue=False)
    with gr.Accordion("Compare saved runs (from this machine or others)", open=False):
        uploads = gr.File(label="Results files (JSON)", file_count="multiple", file_types=[".json"], type="filepath")
        compare = gr.Button("Compare")
        compare_plot = gr.Plot(label="Latency per results file", elem_id="plot-compare")
        machines = gr.Markdown(elem_id="compare-machines")
        latency = gr.Markdown(elem_id="compare-latency")
    compare.click(partial(decide_tab.compare_files, lab), [uploads], [compare_plot, machines, latency],
                  api_name="compare", concurrency_limit=2)


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    """The whole app. Nothing is loaded here; the first request loads and caches the model."""
    lab = Lab(config or AppConfig())
    with gr.Blocks(title="DeiT Deployment Lab", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# DeiT Deployment Lab\nClassify with a Data-efficient Image Transformer, convert it into "
                    "deployment variants, and benchmark them live, honestly.")
        with gr.Tab("Classify", id="classify"):
            build_classify_tab(lab)
        with gr.Tab("Convert", id="convert"):
            build_convert_tab(lab)
        with gr.Tab("Benchmark", id="benchmark"):
            build_benchmark_tab(lab)
        with gr.Tab("Decide", id="decide"):
            build_decide_tab(lab)
        with gr.Tab("Your device", id="device"):
            device.build_device_tab(lab)
        with gr.Tab("About", id="about"):
            gr.Markdown(about_markdown(), elem_id="about")
        # For agents (MCP) and API clients: classification and the read-only catalog; convert and benchmark are not
        # tools (they take the server's CPUs for minutes).
        # Its own group: it fetches a URL before it takes its turn on the serving thread, which every pass shares.
        gr.api(partial(agents.classify_image, lab, agent_tool=True), api_name="classify_image",
               concurrency_limit=2, concurrency_id="classify_image")
        gr.api(partial(agents.list_models, lab, agent_tool=True), api_name="list_models")

        def visitor_left(request: gr.Request) -> None:
            lab.end_session(request.session_hash)  # their files go, their jobs stop

        demo.unload(visitor_left)
    if lab.config.auto_prepare:
        lab.prepare_auto(lab.config.model)  # in the background: until it is ready, Auto serves the original
    demo.queue(max_size=lab.config.queue_size, api_open=False, default_concurrency_limit=1)
    demo.lab = lab  # tests and app.py reach the store through here
    return demo


# The page's own JavaScript, kept small and in its own file
PAGE_HEAD = (f"<script>{(Path(__file__).with_name('page.js')).read_text()}</script>"
             f'<script type="module" src="{device.ENTRY_URL}"></script>'
             f"<style>{device.DEVICE_CSS}</style>")


def launch_kwargs(lab: Lab) -> dict:
    """Server settings shared by app.py and the tests."""

    # No server-side rendering, whatever GRADIO_SSR_MODE says (Hugging Face Spaces turns it on): with SSR, Gradio's
    # Node server renders the page itself, without the COOP/COEP headers of CrossOriginIsolation, so the Your device
    # tab would lose WASM threads. (Its routes reach Python either way: they live under /gradio_api.)
    return dict(max_file_size="20mb", enable_monitoring=False, show_error=False, head=PAGE_HEAD, ssr_mode=False,
                allowed_paths=[str(lab.store_root)], footer_links=["api"],
                app_kwargs={"routes": device.routes(lab), "middleware": [Middleware(device.CrossOriginIsolation)]},
                mcp_server=importlib.util.find_spec("mcp") is not None)  # gradio[mcp]: agents get the tools
