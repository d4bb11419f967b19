"""The Decide tab's handlers: a sweep under budgets (latency, size, and accuracy measured against the original), its
Pareto chart, the recommendation with its deployment card, and saved runs compared. Same rules as `handlers`: the Lab
first, one service call, component values back (`ui.build_decide_tab` binds them).

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotation to pass the visitor's session.
"""

import html
from pathlib import Path

import gradio as gr

from deit_demo.app.handlers import _session, _stream, boundary, gradio_progress, user_error
from deit_demo.app.inputs import budget_box
from deit_demo.core.cpus import machine_info
from deit_demo.core.errors import Cancelled, DeitDemoError, describe, quoted
from deit_demo.measure import charts, decide
from deit_demo.measure.budget import check_max_drop
from deit_demo.measure.card import CardSettings
from deit_demo.measure.report import machine_line, sweep_rows, to_markdown
from deit_demo.measure.results import load_results
from deit_demo.measure.sweep import SweepSettings
from deit_demo.service.lab import Lab


def max_drop_box(value) -> float | None:
    """The accuracy budget box: empty is no budget; otherwise top-1 points from 0 (nothing may be lost) to 100."""
    text = "" if value is None else str(value).strip()
    if text == "":
        return None
    try:
        return check_max_drop(float(text))
    except ValueError:
        raise DeitDemoError(f"The accuracy budget is a number of top-1 points, e.g. 1 or 0.5, or empty for none (got "
                            f"{quoted(text)}).") from None


@boundary("The sweep")
def sweep(lab: Lab, models, variants, threads_text, batch_text, n_runs, n_warmup, budget_ms, budget_mb, min_top1,
          max_drop=None, request: gr.Request = None, progress=gr.Progress()):
    """Models x variants timed together; yields the Pareto chart as rounds complete, then the recommendation and the
    recommended pair's deployment card."""
    try:
        settings = SweepSettings(models=list(models or []), variants=list(variants or []),
                                 threads=str(threads_text), batch_sizes=str(batch_text), runs=int(n_runs),
                                 warmup=int(n_warmup), budget_ms=budget_box(budget_ms, "latency budget"),
                                 budget_mb=budget_box(budget_mb, "size budget"),
                                 min_top1=budget_box(min_top1, "minimum top-1"), max_drop=max_drop_box(max_drop))
    except DeitDemoError as err:
        raise user_error(err) from None
    machine = machine_info()
    cancel = lab.cancel_event(_session(request))
    cancel.clear()

    def job(publish):
        return lab.sweep(settings, progress=gradio_progress(progress), cancel=cancel, on_update=publish)

    def view(rows, message, choice=None):
        dicts = [r.to_row() for r in rows]
        chart = charts.pareto_chart(dicts, decide.pareto_front(dicts), budget_ms=settings.budget_ms,
                                    machine=machine["cpu"], choice=choice, max_drop=settings.max_drop)
        return [message, chart, to_markdown(sweep_rows(rows))]

    rows, error, latest = yield from _stream(job, view, "⏱️ sweeping… the chart fills in as rounds complete")
    if isinstance(error, Cancelled):
        yield view(latest, "⏹️ stopped; partial results shown (no recommendation from a partial sweep)") + [None]
        return
    if error is not None:
        raise error
    choice = decide.recommend(rows, budget_ms=settings.budget_ms, budget_mb=settings.budget_mb,
                              min_top1=settings.min_top1, max_drop=settings.max_drop, machine=machine)
    folder = lab.session_dir(_session(request))
    path = lab.save_sweep(rows, settings, choice, folder)
    lost = "\n".join(f"- {html.escape(r['pair'])}: {html.escape(r['why'])}" for r in choice.rejected)
    tuned = "\n".join(dict.fromkeys(f"- {html.escape(r.model)}/{html.escape(r.variant)}: {html.escape(r.tuning)}"
                                    for r in rows if r.tuning))
    message = (f"**{html.escape(choice.sentence)}**\n\nMeasured on {html.escape(machine_line(machine))}."
               + (f"\n\nToken merging tuned to the budget:\n{tuned}" if tuned else "")
               + (f"\n\nWhy the others lost:\n{lost}" if lost else ""))
    files = [str(path)]
    if choice.best is not None:
        yield view(rows, message + "\n\n📇 measuring the recommended pair for its deployment card…", choice) + [files]
        card, note = _card(lab, choice.best, settings, folder, progress, cancel)
        files += card
        message += f"\n\n{note}"
    yield view(rows, message, choice) + [files]


def _card(lab: Lab, best: dict, settings: SweepSettings, folder: Path, progress, cancel) -> tuple[list[str], str]:
    """The recommended pair's card (Markdown + JSON) in the visitor's folder, or why there is none."""
    try:
        card_settings = CardSettings(best["variant"], batch_sizes=sorted({1, 8, best.get("batch_size", 1)}),
                                     runs=max(settings.runs, 20), warmup=settings.warmup,
                                     threads=best.get("threads") or 0, tome_r=best.get("tome_r"),
                                     eval_data=settings.eval_data)
        _, card = lab.card(best["model"], card_settings, progress=gradio_progress(progress), cancel=cancel)
    except Cancelled:
        return [], "⏹️ stopped before the deployment card was measured."
    except Exception as err:  # the recommendation stands without its card; say why
        return [], f"No deployment card: {html.escape(describe(err))}"
    paths = lab.save_card(card, folder=folder)
    name = html.escape(f"{best['model']}/{best['variant']}")
    return [str(p) for p in paths], (f"📇 Deployment card of {name} in the downloads (Markdown for a model card, "
                                     "JSON with the raw samples).")


@boundary("The comparison")
def compare_files(lab: Lab, files) -> tuple:
    """Saved results files overlaid: the chart, the machines (with a warning line for each way the files differ that
    changes their figures), and latency side by side with speed-ups."""
    if not files:
        raise gr.Error("Upload one or more results files (the JSON from Benchmark, Decide or the CLI's --json).")
    try:
        payloads = [load_results(f, label=f"{i + 1}:{Path(str(f)).name[:40]}") for i, f in enumerate(files)]
    except DeitDemoError as err:
        raise user_error(err) from None
    latency, machines = decide.compare(payloads)
    warnings = "".join(f"⚠️ {html.escape(line.removeprefix('warning: '))}\n\n"
                       for line in decide.compare_warnings(payloads))
    return (charts.compare_chart(latency, [p["label"] for p in payloads]), warnings + to_markdown(machines),
            to_markdown(latency))
