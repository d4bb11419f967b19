"""ONNX + ONNX Runtime: the portable server path. fp32 from the dynamo exporter, int8 from ORT's dynamic quantizer."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from deit_demo.variants.base import OpTime, Runner, RuntimeProfile, Variant, batch_dim, missing_packages
from deit_demo.variants.registry import register


def export_onnx(model, path, ctx) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every step on stdout
        torch.onnx.export(model, (ctx.example(2),), str(path), dynamo=True, external_data=False,
                          input_names=["pixels"], output_names=["logits"], dynamic_shapes=(batch_dim(),))


@contextlib.contextmanager
def quiet_quantizer():
    """ONNX Runtime's quantizer logs a pre-processing hint on the root logger at every call and prints shape-inference
    notes on stdout."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_static_qdq(fp32, out, calibration, weight_type: str = "QInt8") -> None:
    """Static QDQ int8, per channel, uint8 activations calibrated on `calibration`: MatMul, Gemm and the
    patch-embedding Conv (what ORT fuses into int8 kernels). `weight_type`: QInt8 or QUInt8."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + "_prep.onnx")
    try:
        with quiet_quantizer():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(out), _CalibrationReader("pixels", calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType[weight_type],
                            activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                            extra_options={"ActivationSymmetric": False})
    finally:
        prepared.unlink(missing_ok=True)


def ort_runner(path, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return Runner(run, {"runtime": f"onnxruntime {ort.__version__} ({options.intra_op_num_threads} threads)"},
                  profiler_visible=False)


def ort_profile(path, x: torch.Tensor, runs: int, threads: int | None = None) -> RuntimeProfile:
    """ONNX Runtime's per-node trace of `runs` calls (a session of its own, with profiling on), which is already in the
    Chrome trace event format."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling, options.profile_file_prefix = True, str(Path(folder) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
        for _ in range(runs + 1):  # the first call initialises: its nodes are dropped below
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    first_run = len(nodes) // (runs + 1)
    ops = []
    for event in nodes[first_run:]:  # the warm-up call's nodes dropped
        args = event.get("args", {})
        inputs = [next(iter(d.values())) for d in args.get("input_type_shape", []) if d]
        outputs = [next(iter(d.values())) for d in args.get("output_type_shape", []) if d]
        features = (inputs[0][-1], outputs[0][-1]) if inputs and outputs and inputs[0] and outputs[0] else None
        ops.append(OpTime(kind=args.get("op_name", event["name"]), node=event["name"].removesuffix("_kernel_time"),
                          ms=event.get("dur", 0) / 1000.0, features=features, rank=len(inputs[0]) if inputs else 0))
    return RuntimeProfile(runtime=f"onnxruntime {ort.__version__} (SessionOptions.enable_profiling)", ops=ops,
                          trace=events, images=runs * x.shape[0])


class _Onnx(Variant):
    family = "modern"
    version = 3  # 2: symbolic batch dimension (1..64); 3: exported from distinct example rows
    suffix = ".onnx"

    def available(self):
        return missing_packages("onnx", "onnxscript", "onnxruntime")

    def load(self, artifact, ctx):
        return ort_runner(artifact.path)

    def profile(self, artifact, ctx, x, runs):
        return ort_profile(artifact.path, x, runs)


@register
class OnnxFp32(_Onnx):
    key = "onnx_fp32"
    prepare_cost = 1
    browser = ("wasm", "webgpu")
    title = "ONNX Runtime fp32"
    description = "torch.onnx.export(dynamo=True) -> .onnx, run by ONNX Runtime: portable to any ONNX runtime."

    def export(self, model, path, ctx):
        export_onnx(model, path, ctx)
        return {}


def export_quantized(model, path, ctx, quantize) -> None:
    """Export fp32 next to `path`, then `quantize(fp32_path, path)`; the fp32 intermediate never stays behind."""
    fp32 = path.with_name(path.stem + "_fp32.onnx")
    export_onnx(model, fp32, ctx)
    try:
        quantize(fp32, path)
    finally:
        fp32.unlink(missing_ok=True)


@register
class OnnxInt8(_Onnx):
    key = "onnx_int8"
    prepare_cost = 1
    browser = ("wasm",)
    precision = "int8"
    title = "ONNX Runtime int8 (dynamic)"
    batch_invariant = False
    description = ("ONNX Runtime's quantize_dynamic: int8 weights, activations quantized on the fly (the ONNX "
                   "counterpart of the tutorial's dynamic int8).")

    def export(self, model, path, ctx):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        def quantize(fp32, out):
            with quiet_quantizer():
                quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)

        export_quantized(model, path, ctx, quantize)
        return {}


class _CalibrationReader:
    """ONNX Runtime's calibration protocol over our calibration images."""

    def __init__(self, name: str, images):
        self._items = iter([{name: x.numpy()} for x in images])

    def get_next(self):
        return next(self._items, None)


@register
class OnnxInt8Static(_Onnx):
    key = "onnx_int8_static"
    precision = "int8"
    title = "ONNX Runtime int8 (static QDQ, per-channel)"
    description = ("ONNX Runtime's quantize_static: int8 weights per channel and int8 activations with scales "
                   "calibrated on the example images, in QDQ format (what ORT fuses into int8 kernels).")

    def export(self, model, path, ctx):
        export_quantized(model, path, ctx, lambda fp32, out: quantize_static_qdq(fp32, out, ctx.calibration))
        return {"calibration_images": len(ctx.calibration)}
