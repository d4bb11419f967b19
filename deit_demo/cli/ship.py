"""The CLI's commands for what to ship under a guarantee: ``tune`` (token merging's r tuned to an accuracy budget)
and ``card`` (a deployment card), and the accuracy-budget options `sweep` shares with them."""

from __future__ import annotations

import argparse
import sys

from deit_demo.cli.common import emit, lab_for, progress_bars, write_json_out


def _points(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a number of top-1 points from 0 to 100 (got {value:g})")
    return value


def add_budget(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--max-drop and --eval-data, as `sweep` and `tune` take them."""
    p.add_argument("--max-drop", type=_points, default=None, required=required, metavar="POINTS",
                   help="accuracy budget: a pair qualifies only if its top-1, measured on the labelled set, is within "
                        "POINTS of its model's original (token merging's r is tuned to it first)")
    p.add_argument("--eval-data", default=None, metavar="FOLDER",
                   help="labelled images for the budget (sub-folders = synset ids or class indices); default: the "
                        "model's built-in test split (the models trained here)")


def add_ship_commands(add, add_model, add_timing, add_cluster, add_fleet) -> None:
    """The `tune`, `card` and `serve` sub-commands (the other arguments are build_parser's helpers)."""
    from deit_demo.service import CardSettings, TuneSettings

    p = add("tune", cmd_tune, "token merging: the fastest measured r within an accuracy budget, stored with the "
                              "artifacts")
    add_model(p, default="deit_synth")
    add_budget(p, required=True)
    p.add_argument("--variants", default="tome_fp32,tome_int8", help="tome_fp32, tome_int8 or both")
    add_timing(p, TuneSettings, block=False)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p = add("card", cmd_card, "a deployment card for one (model, variant): Markdown + JSON")
    add_model(p, default="deit_synth")
    add_fleet(p)
    p.add_argument("--variant", required=True, help="a variant key (see `variants`)")
    p.add_argument("--batch", default="1,8", help="batch sizes to time (batch 1 is always timed)")
    add_timing(p, CardSettings, block=False)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p.add_argument("--eval-data", default=None, metavar="FOLDER", help="labelled images (default: built-in split)")
    p.add_argument("--out", metavar="STEM", help="write STEM.md and STEM.json (default: card_<model>_<variant>)")
    p = add("serve", cmd_serve, "serve one (model, variant) on Ray Serve as an HTTP endpoint (image bytes or a URL in, "
                                "top-k JSON out), replicas scaled on load; Ctrl-C stops it")
    add_model(p, default="deit_base")
    p.add_argument("--variant", default=None, help="a variant key (see `variants`); or --card")
    p.add_argument("--card", metavar="JSON", help="a deployment card's JSON: serve the pair it describes")
    p.add_argument("--host", default="127.0.0.1", help="where the endpoint listens (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    add_cluster(p, default="local")


def cmd_tune(args) -> int:
    from deit_demo.present.report import to_markdown, tune_rows
    from deit_demo.service import TuneSettings
    lab = lab_for(args)
    results = []
    for variant in dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()):
        settings = TuneSettings(args.max_drop, variant, runs=args.runs, warmup=args.warmup, threads=args.threads,
                                eval_data=args.eval_data)
        with progress_bars() as progress:
            loaded, result = lab.tune(args.model, settings, progress=progress)
        emit(args, f"\n{loaded.spec.key} {variant}, budget {result.max_drop:g} top-1 "
                    f"point{'' if result.max_drop == 1 else 's'}, on {result.images}, "
                    f"{result.threads} threads, {settings.runs} runs: tuned in {result.seconds:.1f} s")
        emit(args, to_markdown(tune_rows(result)))
        emit(args, f"\n{result.sentence}")
        results.append(result)
    emit(args, f"\nstored in {lab.store_root}: tome variants of {args.model} now use the tuned r unless --tome-r "
                "says otherwise")
    write_json_out(args.json, _payload(results, model=args.model))
    return 0


def _payload(results, **extra) -> dict:
    from deit_demo.service import results_payload

    rows = [{**r.to_row(), "samples_ms": r.dense_samples_ms} for r in results]
    return results_payload(rows, kind="tune", **extra)


def cmd_card(args) -> int:
    from deit_demo.service import CardSettings, card_markdown

    settings = CardSettings(args.variant, batch_sizes=args.batch, runs=args.runs, warmup=args.warmup,
                            threads=args.threads, tome_r=args.tome_r, eval_data=args.eval_data)
    if args.each_kind:
        from deit_demo.cli.fleet import run_each_kind

        return run_each_kind(args, "card", settings, model=args.model)
    lab = lab_for(args)
    with progress_bars() as progress:
        _, card = lab.card(args.model, settings, progress=progress)
    emit(args, card_markdown(card))
    for path in lab.save_card(card, args.out or f"card_{card['model']}_{card['variant']}"):
        print(f"wrote {path}", file=sys.stderr)
    write_json_out(args.json, card)
    return 0


def cmd_serve(args) -> int:
    import time

    from deit_demo.service import ClusterSettings, DeitDemoError, pair_from_card, parse_replicas, serve_endpoint

    model, variant, tome_r = args.model, args.variant, args.tome_r
    if args.card:
        model, variant, card_r = pair_from_card(args.card)
        tome_r = tome_r if tome_r is not None else card_r
    if not variant:
        raise DeitDemoError("Name the pair: --variant KEY (with --model), or --card CARD.json.")
    low, high = parse_replicas(args.replicas)
    cluster = ClusterSettings(args.cluster, low, high, args.replica_cpus, args.batch_max, args.batch_wait_ms)
    print(f"deploying {model}/{variant} on Ray Serve ({args.cluster}; replicas {low}:{high})...", file=sys.stderr)
    endpoint = serve_endpoint(model, variant, cluster, host=args.host, port=args.port, weights=args.weights,
                              store_root=args.store, tome_r=tome_r)
    try:
        emit(args, f"serving {endpoint.model}/{endpoint.variant} (weights: {endpoint.weights}) at {endpoint.url} "
                   f"after {endpoint.started_s:.1f} s")
        emit(args, f"  curl -X POST --data-binary @cat.jpg {endpoint.url}")
        emit(args, f"  curl -X POST -H 'content-type: application/json' -d '{{\"url\": \"https://...\"}}' "
                   f"{endpoint.url}\nCtrl-C stops it.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.close()
        print("stopped: the endpoint, its replicas and (for --cluster local) the head", file=sys.stderr)
    return 0
