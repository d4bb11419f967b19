"""What each compiler knob gives PT2E int8 DeiT on this CPU, timed together with the best CPU runtimes in ONE process.

    python benchmarks/explore_int8.py [--model deit_base] [--threads 2] [--runs 20] [--only NAME,...] [--store DIR]

The pt2e_int8 graph (X86 inductor quantizer, calibrated on the example images), compiled several ways:
  shipped         what pt2e_int8 does: dynamic-batch export, torch.compile(dynamic=False) with freezing and inductor's
                  C++ wrapper, and (on CPUs with native bf16) attention's two products in bf16
  fp32_attention  as shipped, with attention left as inductor's fp32 flash-attention kernel (shipped until 2026-11-26)
  no_freezing     the same without freezing: what constant folding and oneDNN weight prepacking give
  static_b1       exported with a static batch of 1 (no symbolic batch anywhere in the graph), then as shipped
  max_autotune    as shipped with mode="max-autotune": inductor times its C++ GEMM templates against oneDNN per shape
  python_wrapper  as shipped, with inductor's Python wrapper instead of its C++ one (shipped until 2026-11-26): a
                  Python call per kernel, and the GIL taken back between kernels
  int8_attention  q·kᵀ and attn·v quantized too (timm's fused attention off, the X86 quantizer's matmul recipe), with
                  torchao's int8 SDPA fusion pass registered; reports whether the fusion matched
Peers from the artifact store: openvino_int8 and onnx_int8 (converted on first use). Prints medians, p90s, top-1
agreement with eager fp32 on the example images and fixed noise, and each knob's ratio to `shipped`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.cpus import machine_info, native_bf16
from deit_demo.core.models import load_model
from deit_demo.measure import timing
from deit_demo.present.report import machine_line, to_markdown
from deit_demo.variants.base import export_dynamic_batch
from deit_demo.variants.compiled import attention_in_bf16, drop_unused_parameters
from deit_demo.variants.pipeline import check_inputs, compare_answers, prepare_variants, run_inputs, variant_context

KNOBS = ["shipped", "fp32_attention", "no_freezing", "static_b1", "max_autotune", "python_wrapper", "int8_attention"]
PEERS = ["openvino_int8", "onnx_int8"]


def quantize(model: torch.nn.Module, ctx, *, static_batch: bool, matmul: bool) -> torch.fx.GraphModule:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = copy.deepcopy(model)
    if matmul:
        for block in model.blocks:
            block.attn.fused_attn = False  # explicit q @ kᵀ and attn @ v, which the quantizer can annotate
    example = ctx.example(1)

    def export(m):
        return torch.export.export(m, (example,)) if static_batch else export_dynamic_batch(m, ctx)

    config = x86.get_default_x86_inductor_quantization_config()
    quantizer = x86.X86InductorQuantizer().set_global(config)
    if matmul:
        quantizer.set_function_type_qconfig(torch.matmul, config)
    prepared = prepare_pt2e(export(model).module(), quantizer)
    with torch.no_grad():
        for batch in ctx.calibration:
            prepared(batch)
    return export(drop_unused_parameters(convert_pt2e(prepared))).module()


def compile_knob(graph: torch.fx.GraphModule, x: torch.Tensor, *, freezing: bool = True, mode: str | None = None,
                 cpp_wrapper: bool = True):
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  (inductor's int8 passes)

    compiled = torch.compile(graph, dynamic=False, mode=mode)
    with torch.inference_mode(), inductor_config.patch(freezing=freezing, cpp_wrapper=cpp_wrapper):
        compiled(x)
    return compiled


def build(knob: str, model, ctx, x):
    from torch._dynamo.utils import counters

    if knob == "int8_attention":
        import torch._inductor.config as inductor_config
        from torchao.prototype.inductor.fx_passes import _qsdpa_init
        from torchao.prototype.inductor.fx_passes.qsdpa_fusion import custom_pass

        inductor_config.post_grad_custom_pre_pass = custom_pass
        _qsdpa_init()
    graph = quantize(model, ctx, static_batch=knob == "static_b1", matmul=knob == "int8_attention")
    if knob not in ("fp32_attention", "int8_attention") and native_bf16()[0]:
        attention_in_bf16(graph)
    counters.clear()
    fn = compile_knob(graph, x, freezing=knob != "no_freezing", mode="max-autotune" if knob == "max_autotune" else None,
                      cpp_wrapper=knob != "python_wrapper")
    fused = {k: v for k, v in counters["inductor"].items() if k.endswith("_count") and ("sdpa" in k or "qlinear" in k)}
    if knob == "int8_attention":
        torch._inductor.config.post_grad_custom_pre_pass = None
    return fn, fused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_base")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--only", default="", help="comma list of knobs and peers to build (default: all)")
    parser.add_argument("--store", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.weights)
    store = ArtifactStore(args.store)
    ctx = variant_context(loaded.spec, store)
    inputs = check_inputs(loaded.spec)
    reference = run_inputs(loaded.model, inputs)
    x = next(iter(inputs.values()))
    only = set(filter(None, args.only.split(",")))
    runners, notes = {}, {}
    for knob in [k for k in KNOBS if not only or k in only]:
        start = time.perf_counter()
        try:
            runners[knob], fused = build(knob, loaded.model, ctx, x)
        except Exception as err:  # a knob that does not compile is a finding, not a crash
            notes[knob] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:150]}"
            print(f"{knob}: {notes[knob]}", file=sys.stderr)
            continue
        sdpa = sum(v for k, v in fused.items() if "sdpa" in k)
        notes[knob] = (f"built in {time.perf_counter() - start:.0f} s; qlinear fusions "
                       f"{sum(v for k, v in fused.items() if 'qlinear' in k)}"
                       + (f"; int8 SDPA fusions {sdpa}" if knob == "int8_attention" else ""))
        print(f"ready {knob}: {notes[knob]}", file=sys.stderr)
    for item in prepare_variants(loaded, [p for p in PEERS if not only or p in only], store):
        if item.runner is not None:
            runners[item.key], notes[item.key] = item.runner, "peer"

    agreement = {name: compare_answers(reference, run_inputs(fn, inputs)) for name, fn in runners.items()}
    settings = timing.TimingSettings(runs=args.runs, warmup=args.warmup, block=args.block)
    samples, _ = timing.time_interleaved(runners, x, settings)
    medians = {name: timing.LatencyStats(v).median_ms for name, v in samples.items()}
    print(f"\n{loaded.spec.label} ({loaded.weights} weights), batch 1, {args.threads} threads, {args.runs} runs after "
          f"{args.warmup} warm-up, interleaved in blocks of {args.block}; {machine_line(machine_info())}\n")
    rows = [{"runner": name, "median ms": round(medians[name], 2),
             "p90 ms": round(timing.LatencyStats(samples[name]).p90_ms, 2),
             "vs shipped": f"{medians[name] / medians['shipped']:.2f}" if "shipped" in medians else "",
             "top-1 agree": f"{agreement[name].top1_agreement:.0%}", "notes": notes.get(name, "")}
            for name in sorted(samples, key=medians.get)]
    rows += [{"runner": name, "notes": note} for name, note in notes.items() if name not in samples]
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
