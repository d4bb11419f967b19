"""The Decide tab's handlers: a sweep under budgets (latency, size, and accuracy measured against the original), its
Pareto chart, the recommendation with its deployment card, and saved runs compared. Same rules as `handlers`: the Lab
first, one service call, component values back (`ui.build_decide_tab` binds them).

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotation to pass the visitor's session.
"""

import html
import time
from pathlib import Path

import gradio as gr

from deit_demo.app.events import gradio_progress, session_of, stream_job
from deit_demo.app.handlers import boundary
from deit_demo.app.inputs import budget_box
from deit_demo.present import charts
from deit_demo.present.report import machine_line, sweep_rows, to_markdown
from deit_demo.service import (
    Cancelled,
    DeitDemoError,
    Lab,
    SweepSettings,
    check_max_drop,
    compare,
    compare_warnings,
    expand,
    load_results,
    machine_info,
    pareto_front,
    quoted,
    run_fleet,
    save_fleet,
)


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


EVERY_KIND = "every kind of node in the cluster"
THIS_SERVER = "this server"


@boundary("The sweep")
def sweep(lab: Lab, models, variants, threads_text, batch_text, n_runs, n_warmup, budget_ms, budget_mb, min_top1,
          max_drop=None, where=THIS_SERVER, request: gr.Request = None, progress=gr.Progress()):
    """Models x variants timed together; yields the Pareto chart as rounds complete, then the recommendation and the
    recommended pair's deployment card (`Lab.decide`: the CLI's `sweep` runs the same)."""
    try:
        runs, warmup = int(n_runs), int(n_warmup)
    except (TypeError, ValueError):
        raise DeitDemoError("Runs and warm-up must be whole numbers.") from None
    settings = SweepSettings(models=list(models or []), variants=list(variants or []), threads=str(threads_text),
                             batch_sizes=str(batch_text), runs=runs, warmup=warmup,
                             budget_ms=budget_box(budget_ms, "latency budget"),
                             budget_mb=budget_box(budget_mb, "size budget"),
                             min_top1=budget_box(min_top1, "minimum top-1"), max_drop=max_drop_box(max_drop))
    machine, stage = machine_info(), {"choice": None, "message": ""}
    cancel = lab.cancel_event(session_of(request))
    cancel.clear()
    if where == EVERY_KIND:
        yield from _sweep_each_kind(lab, settings, cancel, session_of(request))
        return

    def job(publish):
        def chosen(rows, choice):
            card = "\n\n📇 measuring the recommended pair for its deployment card…" if choice.best is not None else ""
            stage.update(choice=choice, message=_verdict(rows, choice, machine) + card)
            publish(rows, now=True)

        return lab.decide(settings, progress=gradio_progress(progress), cancel=cancel, on_update=publish,
                          on_choice=chosen, visitor=session_of(request))

    def view(rows, message, choice=None):
        dicts = [r.to_row() for r in rows]
        chart = charts.pareto_chart(dicts, pareto_front(dicts), budget_ms=settings.budget_ms,
                                    machine=machine["cpu"], choice=choice or stage["choice"],
                                    max_drop=settings.max_drop)
        return [stage["message"] or message, chart, to_markdown(sweep_rows(rows))]

    outcome, error, latest = yield from stream_job(job, view, "⏱️ sweeping… the chart fills in as rounds complete")
    if isinstance(error, Cancelled) and stage["choice"] is None:
        stage["message"] = "⏹️ stopped; partial results shown (no recommendation from a partial sweep)"
        yield view(latest, "") + [None]
        return
    if error is not None:
        raise error
    folder = lab.session_dir(session_of(request))
    files = [str(lab.save_sweep(outcome.rows, settings, outcome.choice, folder=folder))]
    message = _verdict(outcome.rows, outcome.choice, machine)
    if outcome.card is not None:
        files += [str(p) for p in lab.save_card(outcome.card, folder=folder)]
        name = html.escape(f"{outcome.card['model']}/{outcome.card['variant']}")
        message += (f"\n\n📇 Deployment card of {name} in the downloads (Markdown for a model card, JSON with the "
                    "raw samples).")
    elif outcome.card_note and outcome.choice.best is not None:
        message += f"\n\n{'⏹️ ' if 'Stopped' in outcome.card_note else ''}{html.escape(outcome.card_note)}"
    stage["message"] = message
    yield view(outcome.rows, message, outcome.choice) + [files]


def _sweep_each_kind(lab: Lab, settings: SweepSettings, cancel, visitor):
    """The sweep on one node of each kind of the cluster at once: one frontier per kind as rows arrive, then a
    recommendation per kind and the files (one per kind, and the combined one `compare` overlays)."""
    arrived: dict[str, list] = {}

    def job(publish):
        def came(kind, rows):
            arrived[kind.name] = rows
            publish([(name, len(rows)) for name, rows in arrived.items()])
        return run_fleet(lab, "sweep", settings, cancel=cancel, on_rows=came, visitor=visitor)

    def view(counts, message):
        lines = "\n".join(f"- {html.escape(name)}: {n} rows" for name, n in counts)
        return [f"{message}\n\n{lines}", charts.fleet_pareto_chart(dict(arrived), budget_ms=settings.budget_ms), ""]

    outcome, error, _ = yield from stream_job(job, view, "⏱️ sweeping on every kind of node… rows arrive per node")
    if error is not None:
        raise error
    parts = {r.kind.name: (r.payload or {}).get("rows") or r.rows_so_far for r in outcome.kinds}
    files = save_fleet(outcome, lab.session_dir(visitor) / f"sweep_fleet_{int(time.time())}")
    message = "**A recommendation per kind of node:**\n\n" + "\n".join(
        f"- {html.escape(line)}" for line in outcome.recommendations())
    tables = "\n\n".join(f"**{html.escape(name)}**\n\n" + to_markdown(
        [{k: r.get(k) for k in ("model", "variant", "median_ms", "status", "reason")} for r in rows])
        for name, rows in parts.items() if rows)
    yield [message + "\n\nA deployment card for any kind: `deit-demo card --cluster ADDRESS --each-kind`.",
           charts.fleet_pareto_chart(parts, budget_ms=settings.budget_ms), tables, [str(f) for f in files]]


def _verdict(rows, choice, machine: dict) -> str:
    """The recommendation, the machine, how token merging was tuned, and why the other pairs lost."""
    lost = "\n".join(f"- {html.escape(r['pair'])}: {html.escape(r['why'])}" for r in choice.rejected)
    tuned = "\n".join(dict.fromkeys(f"- {html.escape(r.model)}/{html.escape(r.variant)}: {html.escape(r.tuning)}"
                                    for r in rows if r.tuning))
    return (f"**{html.escape(choice.sentence)}**\n\nMeasured on {html.escape(machine_line(machine))}."
            + (f"\n\nToken merging tuned to the budget:\n{tuned}" if tuned else "")
            + (f"\n\nWhy the others lost:\n{lost}" if lost else ""))


@boundary("The comparison")
def compare_files(lab: Lab, files) -> tuple:
    """Saved results files overlaid: the chart, the machines (with a warning line for each way the files differ that
    changes their figures), and latency side by side with speed-ups."""
    if not files:
        raise gr.Error("Upload one or more results files (the JSON from Benchmark, Decide or the CLI's --json).")
    payloads = [part for i, f in enumerate(files)  # a fleet file (every kind of node) gives each kind's run
                for part in expand(load_results(f, label=f"{i + 1}:{Path(str(f)).name[:40]}"))]
    latency, machines = compare(payloads)
    warnings = "".join(f"⚠️ {html.escape(line.removeprefix('warning: '))}\n\n"
                       for line in compare_warnings(payloads))
    return (charts.compare_chart(latency, [p["label"] for p in payloads]), warnings + to_markdown(machines),
            to_markdown(latency))
