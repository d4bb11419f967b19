"""The CLI's commands: each turns parsed arguments into `Lab` calls and prints tables (`deit_demo.cli` parses)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from deit_demo.cli.common import emit, lab_for, progress_bars, write_json_out


def cmd_models(args) -> int:
    from deit_demo.present.report import catalog_rows, to_markdown
    from deit_demo.service import MODELS

    emit(args, to_markdown(catalog_rows(list(MODELS.values()))))
    write_json_out(args.json, {"rows": [{k: v for k, v in asdict(s).items() if not callable(v)}
                                     for s in MODELS.values()]})
    return 0


def cmd_variants(args) -> int:
    from deit_demo.present.report import to_markdown
    from deit_demo.service import VARIANTS

    rows = [v.info() for v in VARIANTS.values()]
    emit(args, to_markdown([{**r, "available": "yes" if r["available"] else "no"} for r in rows],
                            ["key", "family", "title", "available", "reason"]))
    write_json_out(args.json, {"rows": rows})
    return 0


def cmd_classify(args) -> int:
    from deit_demo.present.report import to_markdown, weights_banner
    from deit_demo.service import HEAD_TITLES

    lab = lab_for(args)
    # Auto from the CLI converts, checks and times its candidates first (once per store), then uses the fastest.
    if args.variant == "auto":
        print("Auto: converting, checking and timing its candidates first (the first time for a store takes a "
              "minute or more; later runs reuse the files)...", file=sys.stderr)
    try:
        loaded, result = lab.classify(args.image, args.model, args.variant, k=args.top, tome_r=args.tome_r,
                                      wait_auto=True)
    finally:
        lab.close()  # with --cluster local: the head and its replicas stop here
    emit(args, f"model: {loaded.spec.key} ({loaded.spec.hub_name})   variant: {result.variant}")
    if result.note:
        emit(args, result.note)
    emit(args, f"weights: {loaded.weights} - {weights_banner(loaded, markdown=False)}")
    emit(args, f"time: {result.elapsed_ms:.1f} ms\n")
    for head, preds in result.heads.items():
        emit(args, HEAD_TITLES.get(head, head))
        emit(args, to_markdown([{"#": i + 1, "label": p.label, "class": p.index, "probability": f"{p.prob:.2%}"}
                                 for i, p in enumerate(preds)]) + "\n")
    write_json_out(args.json, result.to_dict())
    return 0


def cmd_convert(args) -> int:
    from deit_demo.present.report import CONVERT_COLUMNS, conversion_rows, to_markdown
    from deit_demo.service import VARIANTS

    lab = lab_for(args)
    with progress_bars() as progress:
        outcome = lab.convert(args.model, args.variants, tome_r=args.tome_r, progress=progress)
    loaded, results = outcome.loaded, outcome.results
    print(f"model: {loaded.spec.key}   weights: {loaded.weights}   store: {lab.store_root}", file=sys.stderr)
    emit(args, to_markdown(conversion_rows(results, outcome.top1), CONVERT_COLUMNS))
    if outcome.accuracy_note:
        emit(args, outcome.accuracy_note)
    for note in sorted({VARIANTS[r.variant].deprecation for r in results if VARIANTS[r.variant].deprecation}):
        emit(args, f"note: {note}")
    write_json_out(args.json, {"model": loaded.spec.key, "weights": loaded.weights,
                            "rows": [r.to_row() for r in results],
                            "accuracy": [r.to_row() for r in outcome.accuracy]})
    return 0 if all(r.status != "failed" for r in results) else 1


def cmd_bench(args) -> int:
    from deit_demo.present import charts
    from deit_demo.present.report import (
        REDUCTION_COLUMNS,
        busy_note,
        machine_line,
        reduction_table,
        stats_rows,
        to_markdown,
    )
    from deit_demo.service import BenchSettings, machine_info, results_payload, save_csv

    settings = BenchSettings(variants=args.variants, runs=args.runs, warmup=args.warmup, threads=args.threads,
                             batch_sizes=args.batch, block=args.block, input=args.input,
                             profile=not args.no_profile, time_budget_s=args.time_budget, tome_r=args.tome_r)
    if getattr(args, "each_kind", False):
        from deit_demo.cli.fleet import run_each_kind

        return run_each_kind(args, "bench", settings, model=args.model)
    lab = lab_for(args)
    with progress_bars() as progress:
        loaded, results = lab.benchmark(args.model, settings, progress=progress)
    emit(args, f"\nmodel: {loaded.spec.key}  weights: {loaded.weights}  threads: "
                f"{results[0].threads if results else '?'}  {machine_line(machine_info())}\n")
    emit(args, to_markdown(reduction_table(results), REDUCTION_COLUMNS) + "\n")
    emit(args, to_markdown(stats_rows(results)))
    if busy_note(results):
        emit(args, f"\nwarning: {busy_note(results)}")
    emit(args, "\nThe profiler's self-CPU total sums operator time across threads: it is not wall time.")
    write_json_out(args.json, results_payload(results, model=loaded.spec.key, settings=asdict(settings)))
    if args.csv:
        save_csv(args.csv, results)
    if args.html:
        charts.write_html(results, args.html, title=f"DeiT benchmark: {loaded.spec.key}")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_profile(args) -> int:
    from deit_demo.present import charts
    from deit_demo.present.report import machine_line, to_markdown
    from deit_demo.service import CLASSES, BenchSettings, explain, machine_info, results_payload, write_traces

    settings = BenchSettings(variants=args.variants, runs=args.runs, warmup=args.warmup, threads=args.threads,
                             profile=True, tome_r=args.tome_r)
    lab = lab_for(args)
    with progress_bars() as progress:
        loaded, results = lab.benchmark(args.model, settings, progress=progress)
    rows = [r.breakdown for r in results if r.breakdown is not None and r.batch_size == settings.batch_sizes[0]]
    done = [b for b in rows if b.status == "ok"]
    emit(args, f"\nmodel: {loaded.spec.key}  weights: {loaded.weights}  threads: {settings.threads}  "
                f"{machine_line(machine_info())}\nms per image by operator class (share of the profiler's total):\n")
    table = [{"class": name, **{b.variant: f"{b.ms[name]:.2f} ({100 * b.share[name]:.0f}%)" if name in b.ms else ""
                                for b in done}} for name in CLASSES if any(name in b.ms for b in done)]
    table.append({"class": "profiler total", **{b.variant: f"{b.total_ms:.2f}" for b in done}})
    table.append({"class": "wall median", **{b.variant: f"{b.wall_ms:.2f}" if b.wall_ms else "" for b in done}})
    emit(args, to_markdown(table, ["class", *[b.variant for b in done]]))
    for line in explain(rows):
        emit(args, f"\n{line}")
    for b in rows:
        emit(args, f"{b.variant}: {b.gap_note() if b.status == 'ok' else 'no breakdown: ' + b.reason}")
        if b.unmapped:
            emit(args, f"  other: {', '.join(b.unmapped)}")
    if args.traces:
        Path(args.traces).mkdir(parents=True, exist_ok=True)
        for path in write_traces(results, Path(args.traces) / f"profile_{loaded.spec.key}"):
            print(f"wrote {path}", file=sys.stderr)
    write_json_out(args.json, results_payload([b.to_row() for b in rows], model=loaded.spec.key,
                                           profiled_after_timing=True))
    if args.html:
        charts.write_figures_html([charts.breakdown_chart(rows)], args.html, f"Where the time goes: {loaded.spec.key}")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from deit_demo.present.report import accuracy_rows, to_markdown

    lab = lab_for(args)
    with progress_bars() as progress:
        loaded, rows = lab.evaluate(args.model, args.variants, progress=progress, tome_r=args.tome_r)
    emit(args, f"model: {loaded.spec.key}   weights: {loaded.weights}   data: {rows[0].data if rows else '-'}")
    emit(args, to_markdown(accuracy_rows(rows)))
    write_json_out(args.json, {"model": loaded.spec.key, "weights": loaded.weights,
                            "n_images": max((r.n_images for r in rows), default=0),
                            "rows": [r.to_row() for r in rows]})
    return 0 if all(r.status != "failed" for r in rows) else 1


def cmd_tome_sweep(args) -> int:
    from deit_demo.present import charts
    from deit_demo.present.report import busy_note, machine_line, to_markdown, tome_rows
    from deit_demo.service import BenchSettings, machine_info, results_payload

    settings = BenchSettings(runs=args.runs, warmup=args.warmup, threads=args.threads)
    lab = lab_for(args)
    with progress_bars() as progress:
        loaded, rows = lab.tome_sweep(args.model, args.r, settings, int8=args.int8, progress=progress)
    emit(args, f"\nmodel: {loaded.spec.key}  weights: {loaded.weights}  {settings.threads} threads, "
                f"batch 1, {settings.runs} runs after {settings.warmup} warm-up  {machine_line(machine_info())}\n")
    emit(args, to_markdown(tome_rows(rows)))
    if busy_note(rows):
        emit(args, f"\nwarning: {busy_note(rows)}")
    write_json_out(args.json, results_payload(rows, model=loaded.spec.key))
    if args.html:
        charts.write_figures_html([charts.tome_chart(rows)], args.html, f"Token merging: {loaded.spec.key}")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    from deit_demo.present import charts
    from deit_demo.present.report import machine_line, pair_name, signed, sweep_rows, to_markdown
    from deit_demo.service import SweepSettings, pareto_front, save_csv

    settings = SweepSettings(models=args.models, variants=args.variants, threads=args.threads,
                             batch_sizes=args.batch, runs=args.runs, warmup=args.warmup, block=args.block,
                             weights=args.weights, tome_r=args.tome_r, budget_ms=args.budget_ms,
                             budget_mb=args.budget_mb, min_top1=args.min_top1,
                             min_agreement=args.min_agreement, max_drop=args.max_drop, eval_data=args.eval_data)
    if args.each_kind:
        from deit_demo.cli.fleet import run_each_kind

        return run_each_kind(args, "sweep", settings)
    lab = lab_for(args)
    with progress_bars() as progress:
        # the Decide tab's flow: sweep -> recommendation -> (with --card) the recommended pair's card
        outcome = lab.decide(settings, card=bool(args.card), progress=progress)
    rows, choice, machine = outcome.rows, outcome.choice, outcome.machine
    timed_threads = ",".join(str(t) for t in dict.fromkeys(r.threads for r in rows)) or "-"
    emit(args, f"\n{len(settings.models)} model(s) x {len(settings.variants)} variant(s), threads "
                f"{timed_threads}, batch {','.join(map(str, settings.batch_sizes))}, "
                f"{settings.runs} runs after {settings.warmup} warm-up, interleaved in blocks; weights "
                f"{settings.weights}; {machine_line(machine)}\n")
    emit(args, to_markdown(sweep_rows(rows)))
    for line in dict.fromkeys(f"tuned {r.model}/{r.variant}: {r.tuning}" for r in rows if r.tuning):
        emit(args, f"\n{line}")
    emit(args, f"\nrecommendation: {choice.sentence}")
    for r in choice.runners_up:
        emit(args, f"  runner-up: {pair_name(r)}: {r['published_top1']:.1f}% at {r['median_ms']:.1f} ms"
                    + (f" (measured {100 * r['top1']:.2f}%, {signed(-r['top1_drop'])} points)" if r.get("top1_drop")
                       is not None else ""))
    for r in choice.rejected:
        emit(args, f"  lost: {r['pair']}: {r['why']}")
    if args.json:
        lab.save_sweep(rows, settings, choice, path=args.json)
    if outcome.card is not None:
        for path in lab.save_card(outcome.card, args.card):
            print(f"wrote {path}", file=sys.stderr)
    elif outcome.card_note:
        print(outcome.card_note, file=sys.stderr)
    if args.csv:
        save_csv(args.csv, rows)
    if args.html:
        dicts = [r.to_row() for r in rows]
        charts.write_figures_html([charts.pareto_chart(dicts, pareto_front(dicts), budget_ms=settings.budget_ms,
                                                       machine=machine["cpu"], choice=choice,
                                                       max_drop=settings.max_drop)], args.html, "DeiT sweep")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from deit_demo.present import charts
    from deit_demo.present.report import to_markdown
    from deit_demo.service import compare, compare_warnings, expand, load_results

    payloads = [part for path in args.files for part in expand(load_results(path))]  # a fleet file: each kind
    latency, machines = compare(payloads)
    warnings = compare_warnings(payloads)
    for line in warnings:
        print(line, file=sys.stderr)
    emit(args, to_markdown(machines))
    emit(args, "\n" + to_markdown(latency))
    write_json_out(args.json, {"machines": machines, "rows": latency, "warnings": warnings})
    if args.html:
        charts.write_figures_html([charts.compare_chart(latency, [p["label"] for p in payloads])], args.html,
                                  "DeiT results compared")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


