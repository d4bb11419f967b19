"""Server-CPU speed: bf16 and PT2E static int8, each saved as an ExportedProgram (`.pt2`) and compiled by inductor
with freezing when loaded (constant-folded, oneDNN-packed weights). Inductor's compile cache goes under the store.

Why not AOTInductor packages: AOTI skipped the int8 weight prepacking (2.4x slower), and its bf16 package answered
wrongly on deit_synth in torch 2.14.1 while the same graph under torch.compile was right.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deit_demo.core.cpus import native_bf16
from deit_demo.core.paths import cache_folder
from deit_demo.variants.base import (
    COMPILE_LOCK,
    Runner,
    RuntimeProfile,
    Variant,
    export_dynamic_batch,
    missing_packages,
    torch_profile,
)
from deit_demo.variants.registry import register


def inductor_cache(cache_dir: Path):
    """Point inductor's cache into the artifact store for the duration of a compile (not the user's home)."""
    return cache_folder("TORCHINDUCTOR_CACHE_DIR", cache_dir)


class _Bf16Io(nn.Module):
    """Takes and returns fp32 like every other variant; computes in bf16 inside."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).float()


def profile_compiled(variant, artifact, ctx, x: torch.Tensor, runs: int) -> RuntimeProfile:
    """A compiled graph's kernels as torch.profiler sees them in a copy compiled for it: inductor's C++ wrapper runs the
    served graph as one call ('Call CompiledFxGraph', one event). The copy costs a second compile, and only one: it is
    compiled for, and profiled with, tensors made outside inference mode whatever mode the caller is in (dynamo guards
    on the difference; a caller inside inference mode with an input made outside compiled the copy twice, 40 s each
    for DeiT-Ti here)."""
    with torch.inference_mode(False):
        runner = variant.load(artifact, dataclasses.replace(ctx, kernel_profile=True))
        x = x.clone()
    profile = torch_profile(runner, x, runs)
    profile.runtime = "torch.profiler over inductor's kernels (a copy compiled with cpp.enable_kernel_profile)"
    return profile


@register
class CompiledBf16(Variant):
    key = "compiled_bf16"
    prepare_cost = 3
    precision = "bf16"
    compiles_per_shape = True

    def profile(self, artifact, ctx, x, runs):
        return profile_compiled(self, artifact, ctx, x, runs)

    family = "modern"
    suffix = ".pt2"
    # 3: ExportedProgram compiled with freezing at load. The AOTInductor package it used to be answered wrongly on
    # deit_synth (top-1 93% -> 9%; eager bf16 and JIT inductor were right) in torch 2.14.1.
    version = 3
    title = "Compiled bf16 (inductor with freezing)"
    description = ("bf16 weights and activations, exported (.pt2) and compiled by torch.compile's inductor with "
                   "freezing (constant-folded, oneDNN-packed weights) when loaded. Needs native bf16 "
                   "(AMX or AVX512-BF16).")

    def available(self):
        ok, which = native_bf16()
        if not ok:
            return False, ("This CPU has no native bf16 (neither AMX nor AVX512-BF16 in /proc/cpuinfo), so bf16 would "
                           "be emulated and slower than fp32. Use onnx_int8 or pt2e_int8 here.")
        return True, ""

    def export(self, model, path, ctx):
        module = _Bf16Io(copy.deepcopy(model).to(torch.bfloat16)).eval()
        torch.export.save(export_dynamic_batch(module, ctx), str(path))
        return {"bf16_isa": native_bf16()[1]}

    def load(self, artifact, ctx):
        module = torch.export.load(str(artifact.path)).module()
        rewritten = attention_in_bf16(module)
        compiled = compile_frozen(module, torch.zeros_like(ctx.example()), ctx.cache_dir, ctx.kernel_profile)
        return Runner(compiled, {"runtime": "torch.compile (inductor, freezing) of the bf16 ExportedProgram",
                                 "attention": f"two bf16 GEMMs and an fp32 softmax in {rewritten} blocks"})


def compile_frozen(module: nn.Module, example: torch.Tensor, cache_dir: Path, kernel_profile: bool = False) -> Callable:
    """torch.compile with inductor freezing, one specialisation per batch size and thread count.

    Compiled now for `example`'s shape so the first timed call is not a compile. Dynamo guards on the input's shape,
    strides, dtype and dispatch keys, the grad mode and torch's thread count: a new combination recompiles on its first
    call (the benchmark's warm-up absorbs it; serving keeps the thread count fixed), and must do so with freezing on:
    without it the int8 weights are not prepacked and the graph ran at eager fp32 speed. (Freezing as a torch.compile
    option instead fails to lower the int8 weight prepacking in torch 2.14.1.)

    With inductor's C++ wrapper, a call is one C++ function that releases the GIL for the whole pass. Its Python
    wrapper takes the GIL back between kernels, so any other Python thread stalled it at each kernel: in the app,
    Gradio's event loop took DeiT-B pt2e_int8 from 58-62 to 70-81 ms per image (benchmarks/load.py, same sitting).
    `kernel_profile`: a copy for the profiler only, with the Python wrapper and a profiler event in every kernel (the
    C++ wrapper's one call shows as a single event).
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)
    seen: set[tuple] = set()

    def run(x: torch.Tensor) -> torch.Tensor:
        # What dynamo guards on: a tensor made inside inference_mode has other dispatch keys than one made outside.
        key = (tuple(x.shape), x.stride(), x.dtype, x.requires_grad, x.is_inference(), torch.is_grad_enabled(),
               torch.is_inference_mode_enabled(), torch.get_num_threads())
        if key in seen:
            return compiled(x)
        options = {"freezing": True, "cpp_wrapper": not kernel_profile}
        if kernel_profile:
            options["cpp.enable_kernel_profile"] = True
        with COMPILE_LOCK, inductor_cache(cache_dir), inductor_config.patch(options):
            out = compiled(x)
        seen.add(key)
        return out

    with torch.inference_mode():  # the mode every caller here runs in
        run(example)
    return run


def bf16_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                   enable_gqa=False):
    """`scaled_dot_product_attention` (inference: no dropout, not causal) with both products in bf16 and the
    softmax in fp32; returns the query's dtype. On a ViT's 197 tokens inductor's fp32 flash-attention kernel reached
    ~60 GFLOP/s here; two bf16 batched GEMMs and a fused softmax take 40% less (DeiT-B int8: 12.6 -> 7.6 ms)."""
    if dropout_p or is_causal or enable_gqa:
        raise ValueError("bf16_attention covers inference attention only")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = ((query * scale).bfloat16() @ key.bfloat16().transpose(-2, -1)).float()
    if attn_mask is not None:
        logits = logits + attn_mask
    return (logits.softmax(dim=-1).bfloat16() @ value.bfloat16()).to(query.dtype)


def attention_in_bf16(graph_module: torch.fx.GraphModule) -> int:
    """Point the graph's attention calls at `bf16_attention`; returns how many. Done at load, not export, so the
    saved program keeps its own attention and each CPU gets the rewrite only where it has native bf16."""
    count = 0
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.scaled_dot_product_attention.default:
            node.target = bf16_attention
            count += 1
    if count:
        graph_module.graph.lint()
        graph_module.recompile()
    return count


def drop_unused_parameters(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove parameters no node reads: after convert_pt2e the fp32 originals of the int8 weights linger, and
    export would save them (a DeiT-B file of 436 MB instead of ~90)."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph_module.named_parameters() if n not in used]:
        owner_name, _, attr = name.rpartition(".")
        delattr(graph_module.get_submodule(owner_name) if owner_name else graph_module, attr)
    return graph_module


@register
class Pt2eInt8(Variant):
    key = "pt2e_int8"
    prepare_cost = 3
    precision = "int8"
    compiles_per_shape = True

    def profile(self, artifact, ctx, x, runs):
        return profile_compiled(self, artifact, ctx, x, runs)

    family = "modern"
    suffix = ".pt2"
    # 3: ExportedProgram + inductor freezing at load (AOTInductor lost the int8 weight prepacking);
    # 4: no fp32 leftovers; 5: exported from distinct example rows
    version = 5
    title = "PT2E int8 (X86 inductor quantizer, compiled with freezing)"
    description = ("PT2E static int8 with the X86 inductor quantizer (oneDNN int8 kernels, VNNI/AMX), calibrated on "
                   "the example images; saved as an ExportedProgram (.pt2) and compiled by inductor with freezing "
                   "when loaded. On CPUs with native bf16, attention's two products run in bf16 (softmax in fp32).")

    def available(self):
        return missing_packages("torchao")

    def export(self, model, path, ctx):
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = export_dynamic_batch(copy.deepcopy(model), ctx).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for batch in ctx.calibration:
                prepared(batch)
        quantized = drop_unused_parameters(convert_pt2e(prepared))
        torch.export.save(export_dynamic_batch(quantized, ctx), str(path))
        return {"calibration_images": len(ctx.calibration)}

    def load(self, artifact, ctx):
        # Both imports matter: the first registers the int8 ops the saved program calls, the second registers
        # inductor's int8 fusion and weight-prepacking passes; without it the program runs, but ~3x slower.
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401

        module = torch.export.load(str(artifact.path)).module()
        bf16, isa = native_bf16()
        rewritten = attention_in_bf16(module) if bf16 else 0
        compiled = compile_frozen(module, torch.zeros_like(ctx.example()), ctx.cache_dir, ctx.kernel_profile)
        return Runner(compiled, {"runtime": "torch.compile (inductor, freezing) of the int8 ExportedProgram",
                                 "attention": (f"bf16 products in {rewritten} blocks ({isa})" if rewritten
                                               else "fp32 (no native bf16 here)" if not bf16 else "fp32")})
