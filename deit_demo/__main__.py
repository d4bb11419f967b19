"""Command line: ``python -m deit_demo models|variants|classify|convert|evaluate|bench`` (or ``deit-demo ...``).

Prints tables; ``--json PATH`` writes the data (``--json -``: only JSON on stdout, the tables go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from deit_demo.errors import DeitDemoError


class TqdmProgress:
    """The library's progress callback (what, done, total) as tqdm bars on stderr: one bar per stage."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, what: str, done: int, total: int) -> None:
        from tqdm import tqdm

        stage = (what.split(" ", 1)[0], total)
        if self.bar is None or stage != self.stage:
            self.close()
            self.bar, self.stage = tqdm(total=total, desc=stage[0], file=sys.stderr, leave=False, disable=None), stage
        self.bar.set_postfix_str(what.split(" ", 1)[1] if " " in what else "", refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _lab(args):
    from deit_demo.service import AppConfig, Lab

    return Lab(AppConfig(model=args.model, weights=args.weights, store_root=args.store, reserved_cpus=0,
                         fallback_to_random=False, eval_data=getattr(args, "data", None),
                         isolate_conversions=False, heavy_niceness=0))  # one user: nothing to stall; whole tracebacks


def _emit(args, text: str = "") -> None:
    """Human output: stdout, or stderr when stdout carries JSON (--json -)."""
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)


def _write_json(target: str | None, payload: dict) -> None:
    if not target:
        return
    text = json.dumps(payload, indent=2, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text)
        print(f"wrote {target}", file=sys.stderr)


def cmd_models(args) -> int:
    from deit_demo.models import MODELS
    from deit_demo.report import catalog_rows, to_markdown

    _emit(args, to_markdown(catalog_rows(list(MODELS.values()))))
    _write_json(args.json, {"rows": [{k: v for k, v in asdict(s).items() if not callable(v)}
                                     for s in MODELS.values()]})
    return 0


def cmd_variants(args) -> int:
    from deit_demo.report import to_markdown
    from deit_demo.variants import VARIANTS

    rows = [v.info() for v in VARIANTS.values()]
    _emit(args, to_markdown([{**r, "available": "yes" if r["available"] else "no"} for r in rows],
                            ["key", "family", "title", "available", "reason"]))
    _write_json(args.json, {"rows": rows})
    return 0


def cmd_classify(args) -> int:
    from deit_demo.classify import HEAD_TITLES
    from deit_demo.report import to_markdown

    lab = _lab(args)
    # Auto from the CLI converts, checks and times its candidates first (once per store), then uses the fastest.
    loaded, result = lab.classify(args.image, args.model, args.variant, k=args.top, tome_r=args.tome_r,
                                  wait_auto=True)
    _emit(args, f"model: {loaded.spec.key} ({loaded.spec.hub_name})   variant: {result.variant}")
    if result.note:
        _emit(args, result.note)
    _emit(args, f"weights: {loaded.weights} - {lab.banner(loaded, markdown=False)}")
    _emit(args, f"time: {result.elapsed_ms:.1f} ms\n")
    for head, preds in result.heads.items():
        _emit(args, HEAD_TITLES.get(head, head))
        _emit(args, to_markdown([{"#": i + 1, "label": p.label, "class": p.index, "probability": f"{p.prob:.2%}"}
                                 for i, p in enumerate(preds)]) + "\n")
    _write_json(args.json, result.to_dict())
    return 0


def cmd_convert(args) -> int:
    from deit_demo.report import CONVERT_COLUMNS, conversion_rows, to_markdown
    from deit_demo.variants import VARIANTS

    lab = _lab(args)
    progress = TqdmProgress()
    outcome = lab.convert(args.model, args.variants, tome_r=args.tome_r, progress=progress)
    progress.close()
    loaded, results = outcome.loaded, outcome.results
    print(f"model: {loaded.spec.key}   weights: {loaded.weights}   store: {lab.store.root}", file=sys.stderr)
    _emit(args, to_markdown(conversion_rows(results, outcome.top1), CONVERT_COLUMNS))
    if outcome.accuracy_note:
        _emit(args, outcome.accuracy_note)
    for note in sorted({VARIANTS[r.variant].deprecation for r in results if VARIANTS[r.variant].deprecation}):
        _emit(args, f"note: {note}")
    _write_json(args.json, {"model": loaded.spec.key, "weights": loaded.weights,
                            "rows": [r.to_row() for r in results],
                            "accuracy": [r.to_row() for r in outcome.accuracy]})
    return 0 if all(r.status != "failed" for r in results) else 1


def cmd_bench(args) -> int:
    from deit_demo import bench, charts
    from deit_demo.report import REDUCTION_COLUMNS, machine_line, reduction_table, stats_rows, to_markdown

    settings = bench.BenchSettings(variants=args.variants, runs=args.runs, warmup=args.warmup, threads=args.threads,
                                   batch_sizes=args.batch, block=args.block, input=args.input,
                                   profile=not args.no_profile, time_budget_s=args.time_budget, tome_r=args.tome_r)
    lab = _lab(args)
    progress = TqdmProgress()
    loaded, results = lab.benchmark(args.model, settings, progress=progress)
    progress.close()
    _emit(args, f"\nmodel: {loaded.spec.key}  weights: {loaded.weights}  threads: "
                f"{results[0].threads if results else '?'}  {machine_line(bench.machine_info())}\n")
    _emit(args, to_markdown(reduction_table(results), REDUCTION_COLUMNS) + "\n")
    _emit(args, to_markdown(stats_rows(results)))
    _emit(args, "\nThe profiler's self-CPU total sums operator time across threads: it is not wall time.")
    if args.json:
        bench.save_json(args.json, loaded.spec.key, results, {"settings": asdict(settings)})
    if args.csv:
        bench.save_csv(args.csv, results)
    if args.html:
        charts.write_html(results, args.html, title=f"DeiT benchmark: {loaded.spec.key}")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from deit_demo.evaluate import evaluate
    from deit_demo.report import accuracy_rows, to_markdown
    from deit_demo.variants import parse_variant_keys

    lab = _lab(args)
    loaded = lab.model(args.model)
    progress = TqdmProgress()
    rows = evaluate(loaded, parse_variant_keys(args.variants), lab.store, args.data, progress=progress,
                    tome_r=args.tome_r)
    progress.close()
    _emit(args, f"model: {loaded.spec.key}   weights: {loaded.weights}   data: {rows[0].data if rows else '-'}")
    _emit(args, to_markdown(accuracy_rows(rows)))
    _write_json(args.json, {"model": loaded.spec.key, "weights": loaded.weights,
                            "n_images": max((r.n_images for r in rows), default=0),
                            "rows": [r.to_row() for r in rows]})
    return 0 if all(r.status != "failed" for r in rows) else 1


def cmd_tome_sweep(args) -> int:
    from deit_demo import bench, charts
    from deit_demo.report import machine_line, to_markdown, tome_rows

    try:
        rs = [int(r) for r in args.r.split(",") if r.strip()]
    except ValueError:
        raise DeitDemoError(f"--r takes whole numbers separated by commas, e.g. 0,4,8 (got {args.r!r}).") from None
    settings = bench.BenchSettings(runs=args.runs, warmup=args.warmup, threads=args.threads)
    lab = _lab(args)
    loaded = lab.model(args.model)
    progress = TqdmProgress()
    with lab.cpus.take(settings.resolved_threads()):
        rows = bench.tome_sweep(loaded, rs, settings, lab.store, int8=args.int8, progress=progress)
    progress.close()
    _emit(args, f"\nmodel: {loaded.spec.key}  weights: {loaded.weights}  {settings.resolved_threads()} threads, "
                f"batch 1, {settings.runs} runs after {settings.warmup} warm-up  {machine_line(bench.machine_info())}\n")
    _emit(args, to_markdown(tome_rows(rows)))
    _write_json(args.json, {"schema": bench.RESULTS_SCHEMA, "model": loaded.spec.key, "machine": bench.machine_info(),
                            "rows": [row.to_row() for row in rows]})
    if args.html:
        charts.write_figures_html([charts.tome_chart(rows)], args.html, f"Token merging: {loaded.spec.key}")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    from deit_demo import bench, charts, decide
    from deit_demo.report import machine_line, sweep_rows, to_markdown
    from deit_demo.service import AppConfig, Lab

    settings = decide.SweepSettings(models=args.models, variants=args.variants, threads=args.threads,
                                    batch_sizes=args.batch, runs=args.runs, warmup=args.warmup, block=args.block,
                                    weights=args.weights, tome_r=args.tome_r, budget_ms=args.budget_ms,
                                    budget_mb=args.budget_mb, min_top1=args.min_top1,
                                    min_agreement=args.min_agreement)
    lab = Lab(AppConfig(model=settings.models[0], weights=args.weights, store_root=args.store, reserved_cpus=0,
                        fallback_to_random=False, isolate_conversions=False))
    progress = TqdmProgress()
    rows = decide.run_sweep(settings, lambda key: lab.cache.get(key, settings.weights), lab.store, progress=progress)
    progress.close()
    machine = bench.machine_info()
    choice = decide.recommend(rows, budget_ms=settings.budget_ms, budget_mb=settings.budget_mb,
                              min_top1=settings.min_top1, min_agreement=settings.min_agreement, machine=machine)
    _emit(args, f"\n{len(settings.models)} models x {len(settings.variants)} variants, threads "
                f"{','.join(map(str, settings.threads))}, batch {','.join(map(str, settings.batch_sizes))}, "
                f"{settings.runs} runs after {settings.warmup} warm-up, interleaved in blocks; weights "
                f"{settings.weights}; {machine_line(machine)}\n")
    _emit(args, to_markdown(sweep_rows(rows)))
    _emit(args, f"\nrecommendation: {choice.sentence}")
    for r in choice.runners_up:
        _emit(args, f"  runner-up: {decide.pair_name(r)}: {r['published_top1']:.1f}% at {r['median_ms']:.1f} ms")
    for r in choice.rejected:
        _emit(args, f"  lost: {r['pair']}: {r['why']}")
    if args.json:
        decide.save_sweep(args.json, rows, settings, choice)
    if args.csv:
        bench.save_csv(args.csv, rows)
    if args.html:
        dicts = [r.to_row() for r in rows]
        charts.write_figures_html([charts.pareto_chart(dicts, decide.pareto_front(dicts), budget_ms=settings.budget_ms,
                                                       machine=machine["cpu"])], args.html, "DeiT sweep")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from deit_demo import charts, decide
    from deit_demo.report import to_markdown

    payloads = [decide.load_results(path) for path in args.files]
    latency, machines = decide.compare(payloads)
    _emit(args, to_markdown(machines))
    _emit(args, "\n" + to_markdown(latency))
    _write_json(args.json, {"machines": machines, "rows": latency})
    if args.html:
        charts.write_figures_html([charts.compare_chart(latency, [p["label"] for p in payloads])], args.html,
                                  "DeiT results compared")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deit_demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-': stdout, tables to "
                                                      "stderr)")
        return p

    def add_model(p: argparse.ArgumentParser, default: str = "deit_base") -> None:
        p.add_argument("--model", default=default, help="catalog key (see `models`)")
        p.add_argument("--weights", default="hub", help="hub | random | PATH to .safetensors or DeiT .pth")
        p.add_argument("--store", default=None, help="artifact store folder (default $DEIT_DEMO_HOME/artifacts)")
        p.add_argument("--tome-r", type=_non_negative, default=None,
                       help="tokens merged per block by tome_fp32/tome_int8 (default: the model's, see `models`)")

    add("models", cmd_models, "list the model catalog")
    add("variants", cmd_variants, "list deployment variants and whether they can run here")
    p = add("classify", cmd_classify, "classify an image file or http(s) URL")
    p.add_argument("image")
    add_model(p)
    p.add_argument("--variant", default="original",
                   help="a variant key, or auto: the fastest one here that passes its answer check")
    p.add_argument("--top", type=_positive, default=5)
    p = add("convert", cmd_convert, "convert a model into deployment variants and check their answers")
    add_model(p)
    p.add_argument("--variants", default="all", help="all or a comma list of variant keys")
    p = add("evaluate", cmd_evaluate, "top-1/top-5 accuracy of each variant on labelled data, with 95%% intervals")
    add_model(p, default="deit_synth")
    p.add_argument("--variants", default="all")
    p.add_argument("--data", default=None, help="image folder (sub-folders = synset ids or class indices); "
                   "default: the model's built-in test set (the models trained here)")
    p = add("bench", cmd_bench, "benchmark variants: warm-up, interleaved timing, profiler view, charts")
    add_model(p)
    p.add_argument("--variants", default="original,scripted,scripted_int8")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p.add_argument("--batch", default="1", help="batch size, or a comma list for a sweep")
    p.add_argument("--block", type=int, default=3, help="consecutive calls per variant per round (first dropped)")
    p.add_argument("--time-budget", type=float, default=None, help="stop timing after this many seconds")
    p.add_argument("--input", default="noise", help="'noise' (fixed seed) or an image path")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--csv", metavar="PATH")
    p.add_argument("--html", metavar="PATH", help="write the Plotly charts to a standalone HTML file")
    p = add("sweep", cmd_sweep, "time models x variants together; Pareto chart and a recommendation under budgets")
    p.add_argument("--weights", default="hub", help="hub | random | PATH, for every model of the sweep")
    p.add_argument("--store", default=None, help="artifact store folder (default $DEIT_DEMO_HOME/artifacts)")
    p.add_argument("--tome-r", type=_non_negative, default=None, help="r for the token-merging variants")
    p.add_argument("--models", default="deit_tiny,deit_small,deit_base", help="comma list of catalog keys")
    p.add_argument("--variants", default="original,pt2e_int8,onnx_int8")
    p.add_argument("--threads", default="0", help="thread count, or a comma list for a thread sweep (0 = all)")
    p.add_argument("--batch", default="1", help="batch size, or a comma list for a sweep")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--budget-ms", type=float, default=None, help="latency budget per call")
    p.add_argument("--budget-mb", type=float, default=None, help="file size budget")
    p.add_argument("--min-top1", type=float, default=None, help="minimum published top-1 (percent)")
    p.add_argument("--min-agreement", type=float, default=0.99, help="minimum top-1 agreement with the original")
    p.add_argument("--csv", metavar="PATH")
    p.add_argument("--html", metavar="PATH", help="write the Pareto chart to a standalone HTML file")
    p = add("compare", cmd_compare, "compare saved results files (this machine or others): latency side by side")
    p.add_argument("files", nargs="+", help="results JSON files (bench --json, sweep --json)")
    p.add_argument("--html", metavar="PATH", help="write the comparison chart to a standalone HTML file")
    p = add("tome-sweep", cmd_tome_sweep, "token merging: latency and accuracy for each r (tokens merged per block)")
    add_model(p, default="deit_synth")
    p.add_argument("--r", default="0,2,4,6,8", help="comma list of r values")
    p.add_argument("--int8", action="store_true", help="also convert and time tome_int8 at each r")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p.add_argument("--html", metavar="PATH", help="write the r chart to a standalone HTML file")
    return parser


def error_log() -> Path:
    """Where the CLI keeps tracebacks of unexpected errors: $DEIT_DEMO_HOME/logs/errors.log."""
    import os

    home = os.environ.get("DEIT_DEMO_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "deit_demo") / "logs" / "errors.log"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DeitDemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the edge of every command: one line here, the traceback in the log
        import logging

        from deit_demo.errors import log_unexpected

        log = error_log()
        log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log)
        logging.getLogger("deit_demo").addHandler(handler)
        logging.getLogger("deit_demo").propagate = False  # the terminal gets one line, the file the traceback
        try:
            line = log_unexpected(f"`{args.command}`", err).replace("the server log", str(log))
        finally:
            handler.close()
        print(f"error: {line}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
