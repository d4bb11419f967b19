"""The five steps of the original DeiT tutorial, on today's PyTorch: eager, scripted, dynamic int8, mobile, lite.

TorchScript and `torch.ao.quantization` are deprecated in this PyTorch; we keep them because they are what the
tutorial teaches, silence only their own deprecation warnings, and point to the successors (``executorch_*``,
``onnx_*``, ``compiled_bf16``, ``pt2e_int8``) in each variant's `deprecation` line.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from deit_demo.core.errors import describe
from deit_demo.core.models import create_model, load_weights, save_weights
from deit_demo.variants.base import Runner, Variant
from deit_demo.variants.registry import ORIGINAL, register

JIT_DEPRECATION = ("torch.jit is deprecated since PyTorch 2.9 (FutureWarning here); successor: torch.export -> "
                   "ExecuTorch (executorch_*) for phones, torch.compile / AOTInductor (compiled_bf16) for servers.")
AO_DEPRECATION = ("torch.ao.quantization is deprecated since PyTorch 2.9 (removal announced); successor: torchao / "
                  "PT2E quantization (pt2e_int8, executorch_int8) or ONNX Runtime (onnx_int8).")
MOBILE_DEPRECATION = ("optimize_for_mobile and the lite interpreter are superseded by ExecuTorch (executorch_fp32, "
                      "executorch_int8), the PyTorch runtime for phones since 2024.")


@contextlib.contextmanager
def tutorial_apis():
    """Silence only the deprecation warnings of the tutorial's own APIs; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Lite Interpreter is deprecated")
        yield


@contextlib.contextmanager
def quantized_engine(engine: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def xnnpack_enabled() -> bool:
    return bool(getattr(torch._C, "_is_xnnpack_enabled", lambda: False)())


def quantize_dynamic_int8(model: nn.Module, engine: str) -> nn.Module:
    """The tutorial's dynamic quantization: nn.Linear weights to qint8, activations quantized on the fly."""
    import copy

    with tutorial_apis(), quantized_engine(engine):
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def script(model: nn.Module) -> torch.jit.ScriptModule:
    with tutorial_apis():
        return torch.jit.script(model)


def jit_runner(path: Path, engine: str | None = None, notes: dict | None = None) -> Runner:
    with tutorial_apis():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with tutorial_apis(), quantized_engine(engine) if engine else contextlib.nullcontext():
            return module(x)

    return Runner(run, notes)


@register
class Original(Variant):
    key = ORIGINAL
    title = "Original (eager fp32)"
    family = "classic"
    description = "The timm model as trained: eager PyTorch, fp32 weights saved as safetensors. The baseline."
    suffix = ".safetensors"

    def export(self, model, path, ctx):
        save_weights(model, path)
        return {}

    def load(self, artifact, ctx):
        model = load_weights(create_model(ctx.spec), artifact.path)
        model.eval().requires_grad_(False)
        return Runner(model)


@register
class Scripted(Variant):
    key = "scripted"
    prepare_cost = 1
    title = "TorchScript"
    family = "classic"
    description = "torch.jit.script: a Python-free graph that C++ and the old mobile runtime can load."
    deprecation = JIT_DEPRECATION

    def export(self, model, path, ctx):
        script(model).save(str(path))
        return {}

    def load(self, artifact, ctx):
        return jit_runner(artifact.path)


@register
class ScriptedInt8(Variant):
    key = "scripted_int8"
    prepare_cost = 1
    precision = "int8"
    title = "TorchScript + dynamic int8"
    family = "classic"
    description = ("quantize_dynamic of every nn.Linear to qint8 (about 4x smaller), then scripted. "
                   "Engine: x86 for servers, qnnpack for phones.")
    deprecation = AO_DEPRECATION
    engine = "x86"
    batch_invariant = False

    def available(self):
        if self.engine not in torch.backends.quantized.supported_engines:
            return False, (f"The quantized engine {self.engine!r} is not in this PyTorch build "
                           f"(it has {', '.join(torch.backends.quantized.supported_engines)}).")
        return True, ""

    def export(self, model, path, ctx):
        script(quantize_dynamic_int8(model, self.engine)).save(str(path))
        return {"engine": self.engine}

    def load(self, artifact, ctx):
        return jit_runner(artifact.path, artifact.notes.get("engine", self.engine))


def mobile_unavailable_reason() -> str:
    return (f"optimize_for_mobile needs XNNPACK, and this PyTorch build ({torch.__version__}) was compiled without it "
            "(torch._C._is_xnnpack_enabled() is False; calling it raises 'XNNPACK is not enabled'). It becomes "
            "available with a build made with USE_XNNPACK=1 (PyTorch's Android/iOS builds, some ARM wheels). "
            "The maintained successor is ExecuTorch with its XNNPACK backend (executorch_fp32 / executorch_int8).")


@register
class MobileOptimized(Variant):
    key = "mobile_optimized"
    precision = "int8"
    title = "Mobile-optimized (optimize_for_mobile)"
    family = "classic"
    description = ("The scripted int8 model passed through optimize_for_mobile: conv/bn folding, prepacked XNNPACK "
                   "weights, dropout removal.")
    deprecation = MOBILE_DEPRECATION
    engine = "qnnpack"
    batch_invariant = False  # dynamic int8, as scripted_int8

    def available(self):
        if not xnnpack_enabled():
            return False, mobile_unavailable_reason()
        return True, ""

    def export(self, model, path, ctx):
        from torch.utils.mobile_optimizer import optimize_for_mobile

        with tutorial_apis():
            optimize_for_mobile(script(quantize_dynamic_int8(model, self.engine))).save(str(path))
        return {"engine": self.engine}

    def load(self, artifact, ctx):
        return jit_runner(artifact.path, artifact.notes.get("engine", self.engine))


@register
class Lite(Variant):
    key = "lite"
    precision = "int8"
    title = "Lite interpreter (.ptl)"
    family = "classic"
    description = ("_save_for_lite_interpreter: the file PyTorch Mobile apps loaded, built from the mobile-optimized "
                   "model when XNNPACK is there, else from the scripted int8 model.")
    suffix = ".ptl"
    deprecation = MOBILE_DEPRECATION
    # dynamic int8 (from mobile_optimized or scripted_int8): on deit_synth, 4 of 1200 answers changed in batches of 50
    batch_invariant = False

    def export(self, model, path, ctx):
        if xnnpack_enabled():
            from torch.utils.mobile_optimizer import optimize_for_mobile

            engine, source = "qnnpack", "mobile_optimized"
            with tutorial_apis():
                module = optimize_for_mobile(script(quantize_dynamic_int8(model, engine)))
        else:
            engine, source = ScriptedInt8.engine, "scripted_int8"
            module = script(quantize_dynamic_int8(model, engine))
        with tutorial_apis():
            module._save_for_lite_interpreter(str(path))
        why = "" if source == "mobile_optimized" else " (mobile_optimized is unavailable: no XNNPACK in this build)"
        return {"engine": engine, "source": source, "built_from": f"built from {source}{why}"}

    def load(self, artifact, ctx):
        engine = artifact.notes.get("engine", "qnnpack")
        try:
            from torch.jit.mobile import _load_for_lite_interpreter

            with tutorial_apis():
                module = _load_for_lite_interpreter(str(artifact.path))
            # The loader can succeed and the first call fail; try one call before trusting it.
            with quantized_engine(engine), torch.inference_mode():
                module(ctx.example())
        except Exception as err:
            error = describe(err)
            runner = jit_runner(artifact.path, engine, notes={
                "loader": "torch.jit.load (fallback, as the original tutorial ran it)",
                "lite_loader_error": error,
            })
            return runner

        def run(x):
            with quantized_engine(engine):
                return module(x)

        return Runner(run, {"loader": "lite interpreter (_load_for_lite_interpreter)"})
