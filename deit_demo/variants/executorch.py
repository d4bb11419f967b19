"""ExecuTorch: `torch.export` -> edge dialect -> XNNPACK delegate -> `.pte`, the successor of mobile + lite.

The `.pte` runs here through ExecuTorch's Python runtime (`executorch.runtime`), the same C++ runtime and XNNPACK
kernels an Android or iOS app links.
"""

from __future__ import annotations

import copy

import torch

from deit_demo.core.stdio import EXECUTORCH_NOISE, filtered_stderr
from deit_demo.variants.base import Runner, Variant, export_dynamic_batch, missing_packages
from deit_demo.variants.registry import register


def _lower_to_pte(exported: torch.export.ExportedProgram, path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)


def set_executorch_threads(threads: int) -> None:
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    except (ImportError, RuntimeError, AttributeError):
        pass  # older runtimes size the pool once, from the core count


def pte_runner(path, notes: dict | None = None) -> Runner:
    from executorch.runtime import Runtime

    with filtered_stderr(EXECUTORCH_NOISE):  # the runtime narrates CPU probing and thread pools on fd 2
        set_executorch_threads(torch.get_num_threads())
        method = Runtime.get().load_program(str(path)).load_method("forward")

    def run(x: torch.Tensor) -> torch.Tensor:
        return method.execute([x.contiguous()])[0]

    return Runner(run, {"runtime": "executorch.runtime (XNNPACK delegate)", **(notes or {})}, profiler_visible=False)


class _ExecuTorch(Variant):
    prepare_cost = 3
    family = "modern"
    version = 3  # 2: symbolic batch dimension (1..64); 3: exported from distinct example rows
    suffix = ".pte"

    def available(self):
        return missing_packages("executorch", "torchao")

    def load(self, artifact, ctx):
        return pte_runner(artifact.path)

    def profiler_available(self):
        # Checked with ETDump (_load_for_executorch(enable_etdump=True) and the devtools Inspector): this wheel records
        # the program's load (Method::init, Program::load_method) and nothing per operator inside the XNNPACK delegate.
        return False, ("ExecuTorch's ETDump in this build records only the program's load, no operator inside the "
                       "XNNPACK delegate (a runtime built with the event tracer and XNNPACK's profiler would)")


@register
class ExecuTorchFp32(_ExecuTorch):
    key = "executorch_fp32"
    title = "ExecuTorch fp32 (.pte, XNNPACK)"
    description = ("torch.export -> to_edge_transform_and_lower with the XNNPACK partitioner -> .pte: what replaces "
                   "optimize_for_mobile + the lite interpreter on phones.")

    def export(self, model, path, ctx):
        _lower_to_pte(export_dynamic_batch(model, ctx), path)
        return {}


@register
class ExecuTorchInt8(_ExecuTorch):
    key = "executorch_int8"
    precision = "int8"
    title = "ExecuTorch int8 (.pte, XNNPACK, PT2E)"
    description = ("PT2E int8 with the XNNPACK quantizer: per-channel int8 weights, int8 activations quantized "
                   "per call (dynamic, like the tutorial's int8), lowered to XNNPACK: the modern quantized phone "
                   "model.")
    # Static (calibrated) int8 activations wreck a ViT's softmax/GELU outputs: on deit_tiny they kept top-1 on a
    # fraction of the check inputs where dynamic kept all. `static_activations = True` restores them, calibrated.
    static_activations = False
    batch_invariant = static_activations

    def export(self, model, path, ctx):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = export_dynamic_batch(copy.deepcopy(model), ctx).module()
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=not self.static_activations)
        prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(config))
        with torch.no_grad():
            for batch in ctx.calibration:  # sets the observers of static activations; harmless for dynamic ones
                prepared(batch)
        quantized = convert_pt2e(prepared)
        _lower_to_pte(export_dynamic_batch(quantized, ctx), path)
        return {"activations": "static (calibrated)" if self.static_activations else "dynamic",
                "calibration_images": len(ctx.calibration)}
