"""Formats for the visitor's browser (ONNX Runtime Web): files the page downloads and runs on WASM or WebGPU.

They are ONNX files like `onnx.py`'s, made and checked by the same pipeline, and the server runs them with ONNX
Runtime too (which is how their answers are checked and how "this server" is timed beside "your device"). What
differs is what is fast there: WASM has 128-bit SIMD and no VNNI, so its int8 kernels want uint8 weights, and every
token that is not computed counts (docs/PERFORMANCE.md, "In the browser").
"""

from __future__ import annotations

import copy

import torch

from deit_demo.variants.base import MAX_BATCH
from deit_demo.variants.onnx import _Onnx, export_quantized, quantize_static_qdq, quiet_quantizer
from deit_demo.variants.registry import register
from deit_demo.variants.tome_merge import ToMe


class _Browser(_Onnx):
    """A file made for ONNX Runtime Web: quick to make (an export and a rewrite), lazily, when a visitor asks."""

    family = "browser"
    prepare_cost = 1
    browser = ("wasm",)


@register
class WebInt8(_Browser):
    key = "web_int8"
    precision = "int8"
    title = "Browser int8 (static QDQ, uint8 weights)"
    description = ("For ONNX Runtime Web on WASM: static QDQ int8 per channel with uint8 weights and activations, "
                   "the patch-embedding Conv included, calibrated on the example images.")

    def export(self, model, path, ctx):
        # uint8 rather than int8 weights: ONNX Runtime Web's WASM kernels were 10-25% faster with them on DeiT-S,
        # and int8-weight ConvInteger has been a weak spot of onnxruntime-web
        export_quantized(model, path, ctx,
                         lambda fp32, out: quantize_static_qdq(fp32, out, ctx.calibration, weight_type="QUInt8"))
        return {"calibration_images": len(ctx.calibration)}


@register
class WebFp16(_Browser):
    key = "web_fp16"
    precision = "fp16"
    browser = ("webgpu",)
    title = "Browser fp16 (for WebGPU)"
    description = ("fp32 ONNX with weights and compute in fp16 (inputs and outputs stay fp32): half the download, "
                   "and the precision GPUs run fastest. On a CPU it is checked, not fast.")

    def export(self, model, path, ctx):
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        def halve(fp32, out):
            with quiet_quantizer():
                onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))

        export_quantized(model, path, ctx, halve)
        return {}


@register
class WebTomeInt8(_Browser):
    key = "web_tome_int8"
    precision = "int8"
    lossy = True
    batch_invariant = False  # dynamic uint8: on deit_synth, 9 of 1200 answers changed in batches of 50
    title = "Browser token merging + int8 (ToMe, dynamic uint8)"
    description = ("ToMe with r tokens merged per block, exported to ONNX, then dynamic int8 with uint8 weights: "
                   "fewer tokens is what a 128-bit SIMD CPU in a browser needs most. Lossy: answers may change.")

    def store_key(self, ctx) -> str:
        return f"{self.key}-r{ctx.r}"

    def export(self, model, path, ctx):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        merged = ToMe(copy.deepcopy(model), ctx.r).eval()

        def quantize(fp32, out):
            with quiet_quantizer():
                quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QUInt8)

        export_quantized(merged, path, ctx, quantize)
        return {"r": ctx.r, "max_batch": MAX_BATCH, "torch": torch.__version__}
