"""Command line: ``python -m deit_demo models|variants|classify|convert|bench``. Prints tables; --json writes data."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from deit_demo.errors import DeitDemoError


def _write_json(target: str | None, payload: dict) -> None:
    if not target:
        return
    text = json.dumps(payload, indent=2, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text)
        print(f"wrote {target}", file=sys.stderr)


def _table(rows: list[dict], columns: list[str]) -> str:
    from deit_demo.bench import to_markdown

    return to_markdown(rows, columns)


def _progress_bar(label: str, done: int, total: int, width: int = 30) -> None:
    if not sys.stderr.isatty() and done < total:
        return  # a log file gets one line per finished bar, not a stream of carriage returns
    filled = int(width * done / max(total, 1))
    end = "\n" if done >= total else ""
    print(f"\r{label[:22]:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr,
          flush=True)


def cmd_models(args) -> int:
    from deit_demo.models import MODELS

    rows = [{"key": s.key, "timm": s.hub_name, "family": s.family, "params": f"{s.params / 1e6:.1f}M",
             "input": s.input_size, "distilled": "yes" if s.distilled else "", "top-1": f"{s.top1:.1f}"}
            for s in MODELS.values()]
    print(_table(rows, list(rows[0])))
    _write_json(args.json, {"rows": [asdict(s) for s in MODELS.values()]})
    return 0


def cmd_variants(args) -> int:
    from deit_demo.variants import VARIANTS

    rows = [v.info() for v in VARIANTS.values()]
    print(_table([{**r, "available": "yes" if r["available"] else "no"} for r in rows],
                 ["key", "family", "title", "available", "reason"]))
    _write_json(args.json, {"rows": rows})
    return 0


def cmd_classify(args) -> int:
    from deit_demo.classify import HEAD_TITLES, classify
    from deit_demo.models import load_model

    loaded = load_model(args.model, args.weights)
    runner, variant = None, "original"
    if args.variant != "original":
        runner, variant = _runner_for(loaded, args.variant, args.out), args.variant
    result = classify(loaded, args.image, k=args.top, runner=runner, variant=variant)
    banner = {"hub": "pretrained ImageNet weights from the Hugging Face hub",
              "random": "RANDOM weights: the labels are meaningless (use --weights hub or a checkpoint)"}
    print(f"model: {loaded.spec.key} ({loaded.spec.hub_name})   variant: {variant}")
    print(f"weights: {loaded.weights} - {banner.get(loaded.weights, 'local checkpoint')}")
    print(f"time: {result.elapsed_ms:.1f} ms\n")
    for head, preds in result.heads.items():
        print(HEAD_TITLES.get(head, head))
        print(_table([{"#": i + 1, "label": p.label, "class": p.index, "probability": f"{p.prob:.2%}"}
                      for i, p in enumerate(preds)], ["#", "label", "class", "probability"]))
        print()
    _write_json(args.json, result.to_dict())
    return 0


def _runner_for(loaded, key: str, out: str | None):
    from deit_demo.artifacts import ArtifactStore
    from deit_demo.variants import get_variant, prepare, require_available

    variant = get_variant(key)
    require_available(variant)
    return prepare(variant, loaded, ArtifactStore(out))[2]


CONVERT_COLUMNS = ["variant", "file", "size MB", "% of original", "seconds", "top-1 agreement", "top-5 overlap",
                   "max diff", "status", "reason"]


def conversion_rows(results) -> list[dict]:
    """The tutorial-style table rows for a list of ConversionResult."""
    from deit_demo.variants import size_reference

    base = size_reference(results)
    rows = []
    for r in results:
        notes = "; ".join(str(r.notes[k]) for k in ("built_from", "loader", "lite_loader_error") if k in r.notes)
        rows.append({
            "variant": r.variant, "file": Path(r.path).name if r.path else "",
            "size MB": f"{r.size_bytes / 1e6:.1f}" if r.size_bytes else "",
            "% of original": f"{100 * r.size_bytes / base:.0f}%" if base and r.size_bytes else "",
            "seconds": f"{r.convert_s:.1f}" + (" (reused)" if r.reused else "") if r.status == "ok" else "",
            "top-1 agreement": f"{r.top1_agreement:.0%}" if r.top1_agreement is not None else "",
            "top-5 overlap": f"{r.top5_overlap:.0%}" if r.top5_overlap is not None else "",
            "max diff": f"{r.max_abs_diff:.2g}" if r.max_abs_diff is not None else "",
            "status": r.status, "reason": (r.reason or notes)[:160],
        })
    return rows


def cmd_convert(args) -> int:
    from deit_demo.artifacts import ArtifactStore
    from deit_demo.models import load_model
    from deit_demo.variants import VARIANTS, parse_variant_keys, run_conversion

    loaded = load_model(args.model, args.weights)
    keys = parse_variant_keys(args.variants)
    store = ArtifactStore(args.out)
    print(f"model: {loaded.spec.key}   weights: {loaded.weights}   store: {store.root}", file=sys.stderr)
    results = run_conversion(loaded, keys, store, progress=lambda k, i, n, what: _progress_bar(k or what, i, n))
    print(_table(conversion_rows(results), CONVERT_COLUMNS))
    notes = {VARIANTS[r.variant].deprecation for r in results if VARIANTS[r.variant].deprecation}
    for note in sorted(notes):
        print(f"note: {note}")
    _write_json(args.json, {"model": loaded.spec.key, "weights": loaded.weights,
                            "rows": [{k: v for k, v in r.to_row().items()} for r in results]})
    return 0 if all(r.status != "failed" for r in results) else 1


def cmd_bench(args) -> int:
    from deit_demo import bench, charts
    from deit_demo.artifacts import ArtifactStore
    from deit_demo.models import load_model

    loaded = load_model(args.model, args.weights)
    settings = bench.BenchSettings(variants=args.variants.split(","), runs=args.runs, warmup=args.warmup,
                                   threads=args.threads, batch_sizes=[int(b) for b in str(args.batch).split(",")],
                                   block=args.block, input=args.input, profile=not args.no_profile,
                                   time_budget_s=args.time_budget)
    store = ArtifactStore(args.out)
    results = bench.run_benchmark(loaded, settings, store, progress=lambda k, i, n: _progress_bar(k, i, n))
    machine = bench.machine_info()
    print(f"\nmodel: {loaded.spec.key}  weights: {loaded.weights}  threads: {results[0].threads if results else '?'}  "
          f"cpu: {machine['cpu']}  isa: {' '.join(machine['isa']) or '-'}  torch: {machine['torch']}\n")
    print(bench.to_markdown(bench.reduction_table(results),
                            ["Model", "batch", "Inference Time", "Reduction", "Size", "Size Reduction", "reason"]))
    print()
    stats = [{"variant": r.variant, "batch": r.batch_size, "median ms": r.latency.median_ms,
              "p10 ms": r.latency.p10_ms, "p90 ms": r.latency.p90_ms, "mean ms": r.latency.mean_ms,
              "stdev ms": r.latency.stdev_ms, "img/s": r.latency.throughput_ips, "n": len(r.latency.samples_ms),
              "profiler self-CPU ms": r.profiler_self_cpu_ms if r.profiler_self_cpu_ms is not None else "n/a",
              "peak RSS MB": r.peak_rss_bytes / 1e6, "top-1 agree": r.top1_agreement}
             for r in results if r.latency]
    print(bench.to_markdown(stats))
    print("\nThe profiler's self-CPU total sums operator time across threads: it is not wall time.")
    if args.json:
        bench.save_json(args.json, loaded.spec.key, results, {"settings": asdict(settings)})
    if args.csv:
        bench.save_csv(args.csv, results)
    if args.html:
        charts.write_html(results, args.html, title=f"DeiT benchmark: {loaded.spec.key}")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from deit_demo.artifacts import ArtifactStore
    from deit_demo.evaluate import evaluate
    from deit_demo.models import load_model
    from deit_demo.variants import parse_variant_keys

    loaded = load_model(args.model, args.weights)
    rows = evaluate(loaded, parse_variant_keys(args.variants), ArtifactStore(args.out), args.data,
                    progress=lambda k, i, n: _progress_bar(k, i, n))
    base = next((r.top1 for r in rows if r.variant == "original" and r.top1 is not None), None)
    def pct(value):
        return f"{value:.2%}" if value is not None else ""

    table = [{"variant": r.variant, "status": r.status, "top-1": pct(r.top1), "top-5": pct(r.top5),
              "vs original (points)": f"{100 * (r.top1 - base):+.2f}" if None not in (base, r.top1) else "",
              "images": r.images, "reason": r.reason[:120]} for r in rows]
    print(f"model: {loaded.spec.key}   weights: {loaded.weights}   data: {rows[0].data if rows else '-'}")
    print(_table(table, list(table[0])))
    _write_json(args.json, {"model": loaded.spec.key, "weights": loaded.weights, "rows": [r.to_row() for r in rows]})
    return 0 if all(r.status != "failed" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deit_demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
        return p

    def add_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="deit_base", help="catalog key (see `models`)")
        p.add_argument("--weights", default="hub", help="hub | random | PATH to .safetensors or DeiT .pth")
        p.add_argument("--out", default=None, help="artifact store folder (default $DEIT_DEMO_HOME/artifacts)")

    add("models", cmd_models, "list the model catalog")
    add("variants", cmd_variants, "list deployment variants and whether they can run here")
    p = add("classify", cmd_classify, "classify an image file or http(s) URL")
    p.add_argument("image")
    add_model(p)
    p.add_argument("--variant", default="original")
    p.add_argument("--top", type=int, default=5)
    p = add("convert", cmd_convert, "convert a model into deployment variants and check their answers")
    add_model(p)
    p.add_argument("--variants", default="all", help="all or a comma list of variant keys")
    p = add("evaluate", cmd_evaluate, "top-1/top-5 accuracy of each variant on labelled data")
    add_model(p)
    p.set_defaults(model="deit_digits")
    p.add_argument("--variants", default="all")
    p.add_argument("--data", default=None, help="image folder (sub-folders = synset ids or class indices); "
                   "default: the digits test split (deit_digits)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DeitDemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
