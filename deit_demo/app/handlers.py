"""Gradio event handlers: top-level functions that take the `Lab` first, turn inputs into one service call, and its
results into component values. `ui.py` binds them to components; tests call them directly, without a server.

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotation to pass the visitor's session.
"""

import functools
import html
import inspect

import gradio as gr

from deit_demo.app.events import gradio_progress, session_of, stream_job
from deit_demo.app.inputs import tome_r_box
from deit_demo.present import charts
from deit_demo.present.report import (
    CONVERT_COLUMNS,
    REDUCTION_COLUMNS,
    breakdown_markdown,
    busy_note,
    conversion_rows,
    machine_line,
    profiler_markdown,
    reduction_table,
    to_markdown,
    tome_rows,
    weights_banner,
    write_conversion_csv,
)
from deit_demo.service import (
    AUTO,
    MODELS,
    BenchSettings,
    Cancelled,
    ClassifyRequest,
    DeitDemoError,
    Lab,
    log_unexpected,
    machine_info,
)


def user_error(err: Exception) -> gr.Error:
    # Quotes are harmless in text; <, > and & are not. No traceback in the server log for a visitor's mistake.
    return gr.Error(html.escape(str(err), quote=False), print_exception=False)


def boundary(what: str):
    """Every handler's edge: a project error shows its own message; anything unexpected shows one line with a
    reference id while the traceback goes to the server log, once; the server keeps serving either way. Gradio
    would print a traceback for every gr.Error it sees, a visitor's typo included: the log would drown in them."""

    def wrap(handler):
        def translate(err: Exception) -> gr.Error:
            if isinstance(err, gr.Error):
                err.print_exception = False
                return err
            if isinstance(err, DeitDemoError):
                return user_error(err)
            return gr.Error(html.escape(log_unexpected(what, err), quote=False), print_exception=False)

        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def streaming(*args, **kwargs):
                try:
                    yield from handler(*args, **kwargs)
                except Exception as err:
                    raise translate(err) from None
            return streaming

        @functools.wraps(handler)
        def plain(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as err:
                raise translate(err) from None
        return plain

    return wrap


def _label_value(preds) -> dict[str, float]:
    return {f"{p.label} ({p.index})": p.prob for p in preds}


def _classify_outputs(loaded, result, extra: str = "") -> list:
    """Banner, timing line and the three label outputs (the second and third hold values only for distilled models).

    Plain values, never gr.update: which heads show follows the model dropdown (`heads_for_model`). An update aimed
    at a component makes Gradio rebuild that component's config for the session, its JSON schema included: 1.6 ms of
    the event loop per answer (2.1 ms against 0.44 ms, 2-core EPYC), on the path every visitor's answer takes."""
    heads = result.heads
    if "average" in heads:
        labels = [_label_value(heads["class"]), _label_value(heads["distillation"]), _label_value(heads["average"])]
    else:
        labels = [_label_value(heads["logits"]), None, None]
    n = result.batch_size
    shared = ("" if n == 1 else f", one pass for {n} visitors' images" if result.one_pass
              else f", {n} visitors' images one at a time" if result.lanes == 1
              else f", {n} visitors' images one at a time, {result.lanes} side by side")
    timing = (f"**{result.elapsed_ms:.1f} ms** for the forward pass ({result.variant}, {loaded.spec.label}{shared}); "
              f"top-1: **{html.escape(result.top1.label)}**")
    notes = " · ".join(html.escape(n, quote=False) for n in (result.note, extra) if n)
    return [weights_banner(loaded), timing + (f"\n\n{notes}" if notes else ""), *labels]


def _failed_outputs(message: str) -> list:
    return ["", f"⚠️ {html.escape(message, quote=False)}", None, None, None]


def heads_for_model(model_key: str) -> tuple:
    """The distillation-token and average heads show only for a distilled model (DeiT's ⚗ models)."""
    distilled = model_key in MODELS and MODELS[model_key].distilled
    return gr.update(visible=distilled), gr.update(visible=distilled)


def auto_status(lab: Lab, model_key) -> str:
    """The Classify tab's line on Auto for the selected model (polled; never loads anything)."""
    try:
        return html.escape(lab.auto_status(model_key), quote=False)
    except DeitDemoError:  # a model key the dropdown does not offer: nothing to say
        return ""


def _loaded_banner(lab: Lab, model_key) -> str | None:
    """The weights banner of `model_key` if it is loaded, else None (never loads)."""
    try:
        loaded = lab.loaded_model(model_key)
    except DeitDemoError:
        return None
    return None if loaded is None else weights_banner(loaded)


def classify_status(lab: Lab, model_key) -> tuple:
    """Auto's line and where the selected model's weights came from, polled (never loads anything): random weights
    say so before anyone's first answer. The banner is left as it is while the model is not loaded."""
    banner = _loaded_banner(lab, model_key)
    return auto_status(lab, model_key), gr.skip() if banner is None else banner


def model_banner(lab: Lab, model_key) -> str:
    """The weights banner when another model is picked: its own once loaded, else none until its first answer."""
    return _loaded_banner(lab, model_key) or ""


@boundary("Fetching the image URL")
def fetch_url_input(lab: Lab, url: str, request: gr.Request = None) -> tuple:
    """The step before Classify: an image URL is fetched into this visitor's folder and shown in the image box, so
    the batched classification that every visitor shares never waits on one visitor's host (up to 10 s)."""
    url = (url or "").strip()
    if not url:
        return gr.skip(), gr.skip()
    path = lab.fetch_image(url, session_of(request))
    return str(path), ""


@boundary("Classification")
def classify(lab: Lab, image_paths: list, url_texts: list, model_keys: list, variant_keys: list) -> list:
    """Batched: Gradio hands over up to `max_batch_size` visitors' requests at once; one list per output.

    Items with the same model and variant share one forward pass. Gradio can fail only a whole batch, so a lone
    request that fails raises as usual (an error toast; an exception for API clients), while in a shared batch each
    failed item gets its own message in its timing line and the others their answers.
    """
    sources, failures = [], {}
    for i, (path, url) in enumerate(zip(image_paths, url_texts)):
        sources.append((url or "").strip() or path)
        if not sources[-1]:
            failures[i] = "Upload an image, pick an example, or paste an image URL."
    todo = [i for i in range(len(sources)) if i not in failures]
    answers = lab.classify_batch([ClassifyRequest(sources[i], model_keys[i], variant_keys[i] or AUTO) for i in todo])
    rows = [None] * len(sources)
    for i, answer in zip(todo, answers):
        if isinstance(answer, Exception):
            failures[i] = str(answer)
        else:
            rows[i] = _classify_outputs(*answer)
    if len(sources) == 1 and failures:
        raise gr.Error(html.escape(failures[0], quote=False))
    for i, message in failures.items():
        rows[i] = _failed_outputs(message)
    return [list(column) for column in zip(*rows)]


@boundary("Classification")
def classify_example(lab: Lab, image_path, model_key) -> list:
    """A gallery example with Auto: cached lazily, so the first visitor to click it computes it for everyone."""
    if not image_path:
        raise gr.Error("This example has no image.")
    loaded, result = lab.classify(image_path, model_key, AUTO)
    return _classify_outputs(loaded, result, extra="a cached example: computed by its first click")


@boundary("Conversion")
def convert(lab: Lab, model_key, variant_keys, request: gr.Request = None, progress=gr.Progress()) -> tuple:
    """Status text, the conversion table (CONVERT_COLUMNS) and the files to download."""
    outcome = lab.convert(model_key, variant_keys or [], progress=gradio_progress(progress),
                          visitor=session_of(request))
    loaded, results = outcome.loaded, outcome.results
    ok = [r for r in results if r.status == "ok"]
    csv_path = write_conversion_csv(lab.session_dir(session_of(request)) / f"conversion_{loaded.spec.key}.csv",
                                    results, outcome.top1)
    summary = (f"{weights_banner(loaded)}\n\n**{len(ok)} of {len(results)} variants converted and checked** in "
               f"{outcome.seconds:.1f} s. Agreement is measured against the original on the bundled example images "
               f"and fixed-seed noise. {html.escape(outcome.accuracy_note)}")
    table = [[row[c] for c in CONVERT_COLUMNS] for row in conversion_rows(results, outcome.top1)]
    return summary, table, [r.path for r in ok] + [str(csv_path)]


def whole_numbers(*values) -> list[int]:
    """The runs, warm-up and threads boxes as whole numbers, or one message that says so (and nothing else: an error
    from inside a job is never reported as a bad box)."""
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError) as err:
        raise DeitDemoError(f"Runs, warm-up and threads must be whole numbers ({err}).") from None


def render_benchmark(results, message: str) -> list:
    """Status, reduction table, the four charts, the batch-sweep chart and the profiler's view."""
    figures = charts.all_charts(results)
    reduction = to_markdown(reduction_table(results), REDUCTION_COLUMNS) if results else ""
    return [message, reduction, figures["latency"], figures["size"], figures["reduction"], figures["scatter"],
            gr.update(value=figures.get("throughput"), visible="throughput" in figures), figures.get("breakdown"),
            breakdown_markdown(results), profiler_markdown(results)]


@boundary("The benchmark")
def benchmark(lab: Lab, model_key, variant_keys, n_runs, n_warmup, n_threads, batch_text, tome_r=None,
              request: gr.Request = None, progress=gr.Progress()):
    """Runs the benchmark in a worker thread and yields redrawn charts as rounds complete (at most twice a second)."""
    runs, warmup, threads = whole_numbers(n_runs, n_warmup, n_threads)
    settings = BenchSettings(variants=list(variant_keys or []), runs=runs, warmup=warmup, threads=threads,
                             batch_sizes=str(batch_text), tome_r=tome_r_box(tome_r))
    cancel = lab.cancel_event(session_of(request))
    cancel.clear()
    value, error, latest = yield from stream_job(
        lambda publish: lab.benchmark(model_key, settings, progress=gradio_progress(progress), cancel=cancel,
                                      on_update=publish, visitor=session_of(request)),
        render_benchmark, "⏱️ running… charts fill in as rounds complete")
    if isinstance(error, Cancelled):
        yield render_benchmark(latest, "⏹️ stopped; partial results shown") + [None]
        return
    if error is not None:
        raise error
    loaded, results = value
    files = lab.save_benchmark(loaded, results, lab.session_dir(session_of(request)))
    message = (f"✅ done: {loaded.spec.label}, {settings.runs} runs after {settings.warmup} warm-up, "
               f"{results[0].threads if results else '?'} threads, interleaved in blocks; "
               f"{machine_line(machine_info())}.\n\n{weights_banner(loaded)}")
    if busy_note(results):
        message = f"⚠️ {html.escape(busy_note(results))}\n\n{message}"
    yield render_benchmark(results, message) + [[str(f) for f in files]]


@boundary("The r sweep")
def tome_sweep(lab: Lab, model_key, r_text, int8, n_runs, n_warmup, n_threads, request: gr.Request = None,
               progress=gr.Progress()) -> tuple:
    """The r chart and table for one model."""
    runs, warmup, threads = whole_numbers(n_runs, n_warmup, n_threads)
    settings = BenchSettings(runs=runs, warmup=warmup, threads=threads)
    cancel = lab.cancel_event(session_of(request))
    cancel.clear()
    loaded, rows = lab.tome_sweep(model_key, str(r_text), settings, int8=bool(int8), progress=gradio_progress(progress),
                                  cancel=cancel, visitor=session_of(request))
    note = (f"{loaded.spec.label}, {rows[0].threads if rows else '?'} threads, batch 1, {settings.runs} runs per r, "
            f"interleaved; {machine_line(machine_info())}. Accuracy: " + (
                f"top-1 on {rows[0].n_images} labelled images with 95% intervals." if rows[0].n_images else
                "no labelled data for this model: agreement with r = 0 on the example images only."))
    if busy_note(rows):
        note = f"⚠️ {html.escape(busy_note(rows))}\n\n{note}"
    return charts.tome_chart(rows), note + "\n\n" + to_markdown(tome_rows(rows))


@boundary("Stop")
def stop_benchmark(lab: Lab, request: gr.Request = None) -> str:
    """Stops the jobs of the visitor who pressed Stop, and no one else's."""
    lab.cancel_event(session_of(request)).set()
    return "⏹️ stopping…"
