"""Command line: ``deit-demo models|variants|classify|convert|evaluate|bench|profile|sweep|tune|card|compare|
tome-sweep`` (or ``python -m deit_demo ...``). An entry point: it owns the process-wide settings of a CLI run (logging).
Every job goes through the `Lab` facade (`deit_demo.service`); `measure`'s tables, charts and results files render what
comes back. It may import every library package, never the app.

Prints tables; ``--json PATH`` writes the data (``--json -``: only JSON on stdout, the tables go to stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deit_demo.cli.commands import (
    cmd_bench,
    cmd_classify,
    cmd_compare,
    cmd_convert,
    cmd_evaluate,
    cmd_models,
    cmd_profile,
    cmd_sweep,
    cmd_tome_sweep,
    cmd_variants,
)
from deit_demo.cli.fleet import cmd_nodes
from deit_demo.cli.ship import add_budget, add_ship_commands
from deit_demo.service import ORIGINAL, BenchSettings, DeitDemoError, SweepSettings, configure_process, home


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


def add_timing(p: argparse.ArgumentParser, settings, *, block: bool = True) -> None:
    """--runs, --warmup (and --block) with the defaults of the job's settings dataclass, which the app shows too."""
    p.add_argument("--runs", type=int, default=settings.runs, help=f"timed runs (default {settings.runs})")
    p.add_argument("--warmup", type=int, default=settings.warmup, help=f"warm-up runs (default {settings.warmup})")
    if block:
        p.add_argument("--block", type=int, default=settings.block,
                       help="consecutive calls per variant per round (first dropped)")


def add_cluster(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """Where forward passes run: this process (no flag), a local Ray head, or a running cluster (docs/SCALING.md)."""
    p.add_argument("--cluster", default=default, metavar="local|HOST:PORT",
                   help="classify on Ray Serve replicas: 'local' starts a Ray head on this machine (loopback only); "
                        "HOST:PORT joins a running cluster" + (f" (default {default})" if default else ""))
    p.add_argument("--replicas", default="1:2", metavar="MIN:MAX", help="replicas per (model, variant), scaled on "
                   "ongoing requests (default 1:2)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs (and threads) per replica (default 1)")
    p.add_argument("--batch-max", type=_positive, default=8, help="images batched into one pass (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, help="how long a pass waits to fill its batch "
                   "(default 0: only what queued meanwhile)")


def add_fleet(p: argparse.ArgumentParser) -> None:
    """--cluster and --each-kind: the same job on one node of each kind of the cluster (docs/SCALING.md)."""
    p.add_argument("--cluster", default=None, metavar="local|HOST:PORT",
                   help="a Ray cluster to run on with --each-kind")
    p.add_argument("--each-kind", action="store_true", help="run on one node of each kind of the cluster, the kinds at "
                   "once: a results file per kind (PATH_<kind>.json beside --json PATH) and the combined PATH.json")
    p.add_argument("--deadline", type=float, default=3600.0, help="seconds a kind's job may run before it is "
                   "cancelled and reported (default 3600)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deit-demo", description=(
        "DeiT Deployment Lab from the command line: classify, convert, evaluate, benchmark, profile, sweep and "
        "compare. Prints tables; --json PATH writes the data ('-': only JSON on stdout, the tables go to stderr)."))
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
    p.add_argument("--variant", default=ORIGINAL,
                   help="a variant key, or auto: the fastest one here that passes its answer check")
    p.add_argument("--top", type=_positive, default=5)
    add_cluster(p)
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
    add_fleet(p)
    p.add_argument("--variants", default="original,scripted,scripted_int8")
    add_timing(p, BenchSettings)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p.add_argument("--batch", default="1", help="batch size, or a comma list for a sweep")
    p.add_argument("--time-budget", type=float, default=None, help="stop timing after this many seconds")
    p.add_argument("--input", default="noise", help="'noise' (fixed seed) or an image path")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--csv", metavar="PATH")
    p.add_argument("--html", metavar="PATH", help="write the Plotly charts to a standalone HTML file")
    p = add("profile", cmd_profile, "where each variant's time goes, by operator class, from each runtime's profiler")
    add_model(p)
    p.add_argument("--variants", default="original,pt2e_int8,onnx_int8,openvino_int8,executorch_int8")
    add_timing(p, BenchSettings, block=False)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p.add_argument("--traces", metavar="DIR", help="write each runtime's trace (Chrome trace format) into DIR")
    p.add_argument("--html", metavar="PATH", help="write the stacked chart to a standalone HTML file")
    p = add("sweep", cmd_sweep, "time models x variants together; Pareto chart and a recommendation under budgets")
    add_fleet(p)
    p.add_argument("--weights", default="hub", help="hub | random | PATH, for every model of the sweep")
    p.add_argument("--store", default=None, help="artifact store folder (default $DEIT_DEMO_HOME/artifacts)")
    p.add_argument("--tome-r", type=_non_negative, default=None, help="r for the token-merging variants")
    p.add_argument("--models", default="deit_tiny,deit_small,deit_base", help="comma list of catalog keys")
    p.add_argument("--variants", default="original,pt2e_int8,onnx_int8")
    p.add_argument("--threads", default="0", help="thread count, or a comma list for a thread sweep (0 = all)")
    p.add_argument("--batch", default="1", help="batch size, or a comma list for a sweep")
    add_timing(p, SweepSettings)
    p.add_argument("--budget-ms", type=float, default=None, help="latency budget per call")
    p.add_argument("--budget-mb", type=float, default=None, help="file size budget")
    p.add_argument("--min-top1", type=float, default=None, help="minimum published top-1 (percent)")
    p.add_argument("--min-agreement", type=float, default=SweepSettings.min_agreement,
                   help="minimum top-1 agreement with the original")
    add_budget(p)
    p.add_argument("--csv", metavar="PATH")
    p.add_argument("--html", metavar="PATH", help="write the Pareto chart to a standalone HTML file")
    p.add_argument("--card", metavar="PATH", help="also write the recommended pair's deployment card: PATH.md and "
                                                  "PATH.json (it measures the pair again, at batch 1 and 8)")
    add_ship_commands(add, add_model, add_timing, add_cluster, add_fleet)
    p = add("nodes", cmd_nodes, "the kinds of node in a Ray cluster (CPU, ISA flags, CPUs, accelerator, labels), with "
                                "how many nodes of each")
    p.add_argument("--cluster", required=True, metavar="local|HOST:PORT")
    p = add("compare", cmd_compare, "compare saved results files (this machine or others): latency side by side")
    p.add_argument("files", nargs="+", help="results JSON files (bench --json, sweep --json)")
    p.add_argument("--html", metavar="PATH", help="write the comparison chart to a standalone HTML file")
    p = add("tome-sweep", cmd_tome_sweep, "token merging: latency and accuracy for each r (tokens merged per block)")
    add_model(p, default="deit_synth")
    p.add_argument("--r", default="0,2,4,6,8", help="comma list of r values")
    p.add_argument("--int8", action="store_true", help="also convert and time tome_int8 at each r")
    add_timing(p, BenchSettings, block=False)
    p.add_argument("--threads", type=int, default=0, help="0 = the CPUs this process may use")
    p.add_argument("--html", metavar="PATH", help="write the r chart to a standalone HTML file")
    return parser


def error_log() -> Path:
    """Where the CLI keeps tracebacks of unexpected errors: $DEIT_DEMO_HOME/logs/errors.log."""
    return home() / "logs" / "errors.log"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_process(serving=False)  # the one process-wide setting a CLI run makes: upstream noise dropped
    try:
        return args.fn(args)
    except DeitDemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the edge of every command: one line here, the traceback in the log
        import logging

        from deit_demo.service import log_unexpected

        log = error_log()
        log.parent.mkdir(parents=True, exist_ok=True)
        # For this one record only: the terminal gets one line, the file the traceback. Restored after, so that a
        # caller of main() (a test, a script) keeps its own logging as it was.
        logger, handler = logging.getLogger("deit_demo"), logging.FileHandler(log)
        logger.addHandler(handler)
        propagate, logger.propagate = logger.propagate, False
        try:
            line = log_unexpected(f"`{args.command}`", err).replace("the server log", str(log))
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
            handler.close()
        print(f"error: {line}", file=sys.stderr)
        return 3

