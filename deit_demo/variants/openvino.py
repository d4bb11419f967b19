"""OpenVINO: the CPU runtime an x86 user is most likely to pick. fp32 IR, NNCF post-training int8, and bf16 inference.

An IR is two files (``model.xml`` + ``model.bin``); the artifact is one uncompressed tar holding both, so the store's
sha256 covers the weights too, and it is read back from memory (``tar -xf`` gives the usual IR files).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from deit_demo.core.cpus import native_bf16
from deit_demo.variants.base import OpTime, Runner, RuntimeProfile, Variant, missing_packages
from deit_demo.variants.registry import register


def convert_ir(model: torch.nn.Module, ctx):
    """The model as an OpenVINO model with a dynamic batch dimension."""
    import openvino as ov

    size = ctx.spec.input_size
    return ov.convert_model(model, example_input=ctx.example(2), input=[(-1, 3, size, size)])


def save_ir_tar(ov_model, path: Path) -> None:
    import openvino as ov

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        with tarfile.open(path, "w") as tar:
            tar.add(xml, arcname="model.xml")
            tar.add(xml.with_suffix(".bin"), arcname="model.bin")


def read_ir_tar(path: Path):
    import openvino as ov

    with tarfile.open(path) as tar:
        xml = tar.extractfile("model.xml").read().decode()
        weights = tar.extractfile("model.bin").read()
    return ov.Core().read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))


def ov_runner(path: Path, precision: str) -> Runner:
    """Compile for this CPU with the latency hint, this thread's torch thread count and the given precision."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(read_ir_tar(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer([x.detach().contiguous().numpy()])[0].copy())

    used = compiled.get_property("INFERENCE_PRECISION_HINT")
    return Runner(run, {"runtime": f"openvino {ov.__version__} (CPU, {used}, {torch.get_num_threads()} threads)"},
                  profiler_visible=False)


def ov_profile(path: Path, precision: str, x: torch.Tensor, runs: int) -> RuntimeProfile:
    """OpenVINO's per-layer counters (`PERF_COUNT`) over `runs` calls, compiled as `ov_runner` compiles, turned into
    Chrome trace events (one lane, the layers of each call one after another)."""
    import openvino as ov

    compiled = ov.Core().compile_model(read_ir_tar(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    feed = [x.detach().contiguous().numpy()]
    request.infer(feed)  # the first call initialises: not the model's time
    ops, trace, clock_us = [], [], 0.0
    for _ in range(runs):
        request.infer(feed)
        for layer in request.get_profiling_info():
            if layer.status != layer.status.EXECUTED:
                continue
            us = layer.real_time.total_seconds() * 1e6
            ops.append(OpTime(kind=layer.node_type, node=layer.node_name, ms=us / 1000.0))
            trace.append({"name": layer.node_type, "ph": "X", "ts": clock_us, "dur": us, "pid": 0, "tid": 0,
                          "cat": "layer", "args": {"node": layer.node_name, "exec_type": layer.exec_type}})
            clock_us += us
    return RuntimeProfile(runtime=f"openvino {ov.__version__} (PERF_COUNT)", ops=ops, trace=trace,
                          images=runs * x.shape[0])


class _OpenVino(Variant):
    family = "modern"
    suffix = ".tar"
    inference_precision = "f32"

    def available(self):
        return missing_packages("openvino")

    def export(self, model, path, ctx):
        save_ir_tar(convert_ir(model, ctx), path)
        return {"format": "OpenVINO IR (model.xml + model.bin in a tar)"}

    def load(self, artifact, ctx):
        return ov_runner(artifact.path, self.inference_precision)

    def profile(self, artifact, ctx, x, runs):
        return ov_profile(artifact.path, self.inference_precision, x, runs)


@register
class OpenVinoFp32(_OpenVino):
    key = "openvino_fp32"
    title = "OpenVINO fp32 (IR)"
    description = "ov.convert_model -> OpenVINO IR, compiled for this CPU with the latency hint, fp32 inference."


@register
class OpenVinoInt8(_OpenVino):
    key = "openvino_int8"
    precision = "int8"
    title = "OpenVINO int8 (NNCF post-training, transformer preset)"
    description = ("NNCF post-training quantization of the IR (model_type=TRANSFORMER: int8 weights and activations, "
                   "SmoothQuant), calibrated on the example images like pt2e_int8; OpenVINO's int8 CPU kernels.")

    def available(self):
        return missing_packages("openvino", "nncf")

    def export(self, model, path, ctx):
        import logging

        import nncf

        nncf.set_log_level(logging.ERROR)
        # NNCF draws progress bars on stdout: the CLI's table lives there
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(convert_ir(model, ctx), nncf.Dataset([x.numpy() for x in ctx.calibration]),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(ctx.calibration))
        save_ir_tar(quantized, path)
        return {"calibration_images": len(ctx.calibration), "quantizer": f"nncf {nncf.__version__}"}


@register
class OpenVinoBf16(_OpenVino):
    key = "openvino_bf16"
    precision = "bf16"
    title = "OpenVINO bf16 (IR, bf16 inference precision)"
    description = ("The fp32 IR compiled with INFERENCE_PRECISION_HINT=bf16: OpenVINO computes in bf16 on CPUs with "
                   "native bf16 (AMX or AVX512-BF16).")

    inference_precision = "bf16"

    def available(self):
        ok, _ = native_bf16()
        if not ok:
            return False, ("This CPU has no native bf16 (neither AMX nor AVX512-BF16 in /proc/cpuinfo); OpenVINO "
                           "would emulate it. Use openvino_int8 or openvino_fp32 here.")
        return missing_packages("openvino")
