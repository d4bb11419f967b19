"""The fastest DeiT-B on this CPU: our variants against the peers a user might pick instead, in ONE process.

    python benchmarks/fastest.py [--model deit_base] [--weights random] [--threads 2] [--runs 30] [--skip KEY,...]

Everything is timed on the same input, interleaved in blocks (each round every runner makes `block` consecutive calls
and the first is dropped), so drift hits all alike. Peers: ONNX Runtime int8 (dynamic, per-channel, the usual
recipe) and OpenVINO with bf16 inference precision (requirements-dev). Prints medians, p90s, top-1 agreement with
eager fp32 on the example images and fixed noise, and the ratio of our best to the best peer.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from deit_demo import bench
from deit_demo.artifacts import ArtifactStore
from deit_demo.models import load_model
from deit_demo.pipeline import check_inputs, compare_answers, prepare_variants, run_inputs
from deit_demo.report import to_markdown

OURS = ["original", "scripted_int8", "executorch_fp32", "executorch_int8", "onnx_fp32", "compiled_bf16", "pt2e_int8"]


def openvino_bf16(model: torch.nn.Module, example: torch.Tensor, threads: int):
    import openvino as ov

    core = ov.Core()
    ov_model = ov.convert_model(model, example_input=example)
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer([x.numpy()])[0].copy())

    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return run, f"openvino {ov.__version__}, precision {precision}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_base")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--skip", default="", help="comma list of runners to leave out")
    parser.add_argument("--store", default=None)
    args = parser.parse_args()

    bench.set_threads(args.threads)
    loaded = load_model(args.model, args.weights)
    store = ArtifactStore(args.store)
    inputs = check_inputs(loaded.spec)
    reference = run_inputs(loaded.model, inputs)
    x = next(iter(inputs.values()))  # the first example image
    skip = set(filter(None, args.skip.split(",")))

    runners, kinds, notes = {}, {}, {}
    start = time.perf_counter()
    for item in prepare_variants(loaded, [k for k in OURS + ["onnx_int8"] if k not in skip], store):
        if item.runner is None:
            print(f"skip {item.key}: {item.status}: {item.reason}", file=sys.stderr)
            continue
        runners[item.key] = item.runner
        kinds[item.key] = "peer" if item.key == "onnx_int8" else "ours"
        notes[item.key] = (f"{item.artifact.size_bytes / 1e6:.0f} MB, {'reused' if item.reused else 'converted'} "
                           f"in {time.perf_counter() - start:.0f} s")
        print(f"ready {item.key}: {notes[item.key]}", file=sys.stderr)
        start = time.perf_counter()
    if "openvino_bf16" not in skip:
        try:
            runners["openvino_bf16"], notes["openvino_bf16"] = openvino_bf16(loaded.model, x, args.threads)
            kinds["openvino_bf16"] = "peer"
        except Exception as err:  # report, never hide: the table says why the peer is missing
            print(f"skip openvino_bf16: {type(err).__name__}: {err}", file=sys.stderr)

    agreement = {name: compare_answers(reference, run_inputs(fn, inputs)) for name, fn in runners.items()}
    settings = bench.BenchSettings(runs=args.runs, warmup=args.warmup, block=args.block)
    samples, _ = bench.time_interleaved(runners, x, settings)
    machine = bench.machine_info()
    print(f"\n{loaded.spec.label} ({loaded.weights} weights), batch 1, {args.threads} threads, {args.runs} runs after "
          f"{args.warmup} warm-up, blocks of {args.block}; CPU {machine['cpu']}; ISA {' '.join(machine['isa'])}; "
          f"torch {machine['torch']}\n")
    rows = []
    for name, values in samples.items():
        stats = bench.LatencyStats(values)
        check = agreement[name]
        rows.append({"runner": name, "kind": kinds[name], "median ms": round(stats.median_ms, 2),
                     "p90 ms": round(stats.p90_ms, 2), "top-1 agree": f"{check.top1_agreement:.0%}",
                     "max diff": f"{check.max_abs_diff:.3g}", "notes": notes.get(name, "")})
    rows.sort(key=lambda r: r["median ms"])
    print(to_markdown(rows))
    qualified = [r for r in rows if agreement[r["runner"]].top1_agreement >= 0.99]
    ours = [r for r in qualified if r["kind"] == "ours"]
    peers = [r for r in qualified if r["kind"] == "peer"]
    if ours and peers:
        best, peer = ours[0], peers[0]
        print(f"\nbest of ours (top-1 agreement >= 99%): {best['runner']} {best['median ms']} ms; best peer: "
              f"{peer['runner']} {peer['median ms']} ms; ratio ours/peer = {best['median ms'] / peer['median ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
