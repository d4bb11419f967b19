"""What every deployment variant is: the `Variant` base class, the `Runner` it loads, and the context it is given.

Family modules subclass `Variant` and register it (`registry.register`); they import this module and the registry,
never the package `__init__`, so the package has no import cycle.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deit_demo.core.artifacts import Artifact
from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.core.models import ModelSpec
from deit_demo.core.stdio import PROFILER_NOISE, filtered_stderr

MAX_BATCH = 64  # exported variants take any batch from 1 to this
# torch.export, dynamo and inductor are not thread-safe, and the app converts on several threads (a visitor's Convert,
# Auto's background preparation, a benchmark compiling a new batch size): one export, load or compile at a time.
COMPILE_LOCK = threading.RLock()


def compiling_elsewhere() -> bool:
    """Whether another thread holds COMPILE_LOCK (an export, load or compile is under way there)."""
    if COMPILE_LOCK.acquire(blocking=False):
        COMPILE_LOCK.release()
        return False
    return True


def confine_fx_patches_to_their_thread() -> bool:
    """Make torch.fx's tracing patches apply only on the thread that traces; False where torch lacks the hook.

    While it traces, torch.fx's tracer (symbolic_trace, and make_fx under torch.export and torch.compile) replaces
    `torch.nn.Module.__call__` and `__getattr__` for the whole process. A visitor's eager forward pass on
    another thread then ran through the tracer and failed ("module is not installed as a submodule"): seen when
    visitors were served the original while Auto converted in the background. Each patch now dispatches to the
    tracer on the tracing thread and to what it replaced everywhere else. COMPILE_LOCK keeps traces one at a time,
    so patches are still undone in the order they were made. Process-wide: entry points call it
    (`app.process.configure_server_process`); importing this module changes nothing.
    """
    try:
        from torch.fx._symbolic_trace import _Patcher
    except ImportError:
        return False
    if getattr(_Patcher, "confined_to_thread", False):
        return True
    if not all(callable(getattr(_Patcher, name, None)) for name in ("patch", "patch_method")):
        return False
    patch, patch_method = _Patcher.patch, _Patcher.patch_method

    def confined(new_fn: Callable, old_fn: Callable) -> Callable:
        owner = threading.get_ident()

        @functools.wraps(new_fn)
        def dispatch(*args, **kwargs):
            return (new_fn if threading.get_ident() == owner else old_fn)(*args, **kwargs)
        return dispatch

    def confined_patch(self, frame_dict, name, new_fn, deduplicate=True):
        old_fn = frame_dict[name] if name in frame_dict else getattr(builtins, name, None)
        if callable(old_fn):
            new_fn = confined(new_fn, old_fn)
        return patch(self, frame_dict, name, new_fn, deduplicate)

    def confined_patch_method(self, cls, name, new_fn, deduplicate=True):
        return patch_method(self, cls, name, confined(new_fn, getattr(cls, name)), deduplicate)

    _Patcher.patch, _Patcher.patch_method = confined_patch, confined_patch_method
    _Patcher.confined_to_thread = True
    return True



def check_tome_r(r) -> int | None:
    """Tokens merged per block: a whole number of at least 0, or None for the model's default."""
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
        raise DeitDemoError(f"The token-merging r must be a whole number of at least 0 (got {quoted(r)}).")
    return r


@dataclass
class VariantContext:
    """What a variant needs to export or load, handed to it rather than looked up: the model's catalog entry, a cache
    folder for compilers (inside the artifact store, never the user's home), and calibration images."""

    spec: ModelSpec
    cache_dir: Path
    calibration: list[torch.Tensor] = field(default_factory=list)
    tome_r: int | None = None  # tokens merged per block by the token-merging variants; None: the model's default
    kernel_profile: bool = False  # compile so that the profiler sees each kernel (a copy for profiling only)
    tuned_r: dict[str, int] = field(default_factory=dict)  # variant key -> r tuned to an accuracy budget (stored)

    def __post_init__(self) -> None:
        check_tome_r(self.tome_r)

    @property
    def r(self) -> int:
        return self.spec.tome_r if self.tome_r is None else self.tome_r

    def r_for(self, key: str) -> int:
        """The r of variant `key`: the one asked for, else the one tuned for it and stored, else the model's."""
        return self.tome_r if self.tome_r is not None else self.tuned_r.get(key, self.spec.tome_r)

    def example(self, batch: int = 1) -> torch.Tensor:
        """A fixed input of the model's shape: `batch` different calibration images (seeded noise where there are
        too few), so an export or a trial call sees real, varied data."""
        size = self.spec.input_size
        rows = [image[:1] for image in self.calibration[:batch]]
        generator = torch.Generator().manual_seed(len(rows))
        rows += [torch.randn(1, 3, size, size, generator=generator) for _ in range(batch - len(rows))]
        return torch.cat(rows)


@dataclass
class OpTime:
    """One operator in a runtime's own profile: its kind (MatMulInteger, FullyConnected, aten::addmm), its node's
    name where the runtime keeps one, its time summed over the profiled calls, and what its shapes say."""

    kind: str
    node: str
    ms: float
    features: tuple[int, int] | None = None  # (in, out) of a linear layer, where the shapes tell
    rank: int = 0  # of its first input (4: per-head activations, an attention product)


@dataclass
class RuntimeProfile:
    """What a runtime's profiler saw over some calls, with its trace in the Chrome trace event format."""

    runtime: str
    ops: list[OpTime]
    trace: list[dict]
    images: int  # images run while profiling (per-image figures divide by it)


def torch_profile(runner, x: torch.Tensor, runs: int = 3) -> RuntimeProfile:
    """torch.profiler's view of `runner` (eager, TorchScript, inductor's compiled kernels) over `runs` calls, with
    each operator's input shapes (a linear layer's role is read from them)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):  # outside the profile: lazy initialisation, and TorchScript's profiling runs, are not the
            runner(x)  # model's time
        with filtered_stderr(PROFILER_NOISE), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(runs):
                runner(x)
    ops = []
    for event in prof.events():
        if event.self_cpu_time_total <= 0:
            continue
        shapes = [list(s) for s in (event.input_shapes or []) if isinstance(s, (list, tuple))]
        ops.append(OpTime(kind=event.name, node="", ms=event.self_cpu_time_total / 1000.0,
                          features=_torch_features(event.name, shapes), rank=max((len(s) for s in shapes), default=0)))
    trace = []
    for event in prof.events():
        trace.append({"name": event.name, "ph": "X", "ts": event.time_range.start, "dur": event.time_range.elapsed_us(),
                      "pid": 0, "tid": event.thread, "cat": "cpu_op"})
    return RuntimeProfile(runtime=f"torch {torch.__version__} (torch.profiler)", ops=ops, trace=trace,
                          images=runs * x.shape[0])


def _torch_features(name: str, shapes: list[list[int]]) -> tuple[int, int] | None:
    """(in, out) of a linear layer from a torch operator's input shapes, where they tell."""
    if name in ("aten::addmm",) and len(shapes) >= 3 and len(shapes[2]) == 2:
        return shapes[2][0], shapes[2][1]
    if name in ("aten::mm",) and len(shapes) >= 2 and len(shapes[1]) == 2:
        return shapes[1][0], shapes[1][1]
    if name in ("aten::linear",) and len(shapes) >= 2 and len(shapes[1]) == 2:
        return shapes[1][1], shapes[1][0]
    if "qlinear" in name and len(shapes) >= 4 and len(shapes[3]) == 2:  # onednn's int8 linear: x, scales, W (in, out)
        return shapes[3][0], shapes[3][1]
    return None



class Runner:
    """A loaded variant: call it with a batch, get logits. `notes` says how it ran (e.g. a loader fallback)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], notes: dict | None = None,
                 profiler_visible: bool = True):
        self.fn = fn
        self.notes = notes or {}
        self.profiler_visible = profiler_visible  # False for runtimes torch.profiler cannot see into

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Variant:
    """Base class. Subclasses set the metadata and implement `export` and `load`."""

    key: str = ""
    title: str = ""
    family: str = ""
    description: str = ""
    suffix: str = ".pt"
    precision: str = "fp32"  # fp32 | bf16 | int8: what answer drift to expect
    version: int = 1  # bump when the conversion recipe changes, so stores rebuild instead of reusing
    deprecation: str | None = None  # one line: deprecated since ..., successor: ...
    lossy: bool = False  # True when the variant computes less on purpose (token merging): answers may change
    # False for dynamic int8: activation scales are taken over the whole batch, so one image's answer depends on the
    # others batched with it. Batched serving runs such variants one image at a time.
    batch_invariant: bool = True
    # True when the loaded runner compiles once per input shape (inductor, dynamic=False): batched serving then runs
    # one image at a time rather than compile for every new batch size while visitors wait.
    compiles_per_shape: bool = False
    # How long preparing it takes, roughly (DeiT-B, 2 CPUs): 1 seconds, 2 tens of seconds, 3 minutes. Auto prepares
    # its candidates cheapest first, so that a faster-than-original answer comes soonest.
    prepare_cost: int = 2
    # The ONNX Runtime Web backends that run this file in a visitor's browser ("wasm", "webgpu"); () for none.
    browser: tuple[str, ...] = ()

    def profiler_available(self) -> tuple[bool, str]:
        """Whether this variant's runtime can say where its time goes, and why not."""
        return True, ""

    def profile(self, artifact: Artifact, ctx: VariantContext, x: torch.Tensor, runs: int) -> RuntimeProfile | None:
        """The runtime's own profile of `runs` calls on `x`; None: the runner runs PyTorch operators, and
        torch.profiler sees them (measure.profile.torch_profile)."""
        return None

    def store_key(self, ctx: VariantContext) -> str:
        """The artifact store's name for this variant made with `ctx` (a parametrized variant adds its setting)."""
        return self.key

    def available(self) -> tuple[bool, str]:
        """Whether this build/machine can run the variant, and why not in plain words."""
        return True, ""

    def export(self, model: nn.Module, path: Path, ctx: VariantContext) -> dict:
        """Write the deployable file to `path`; return notes for the manifest."""
        raise NotImplementedError

    def load(self, artifact: Artifact, ctx: VariantContext) -> Runner:
        raise NotImplementedError

    def convert(self, model: nn.Module, out_dir: Path, ctx: VariantContext, weights_id: str = "") -> Artifact:
        """Export into `out_dir` and time it; sha256 is filled when the store commits it."""
        path = Path(out_dir) / f"{ctx.spec.key}_{self.key}{self.suffix}"
        start = time.perf_counter()
        notes = self.export(model, path, ctx) or {}
        return Artifact(path=path, variant=self.store_key(ctx), model=ctx.spec.key, weights_id=weights_id,
                        convert_s=time.perf_counter() - start, notes=notes, recipe_version=self.version,
                        size_bytes=path.stat().st_size)

    def info(self) -> dict:
        ok, reason = self.available()
        return {"key": self.key, "title": self.title, "family": self.family, "precision": self.precision,
                "lossy": self.lossy, "batch_invariant": self.batch_invariant, "description": self.description,
                "available": ok, "reason": reason, "deprecation": self.deprecation, "browser": list(self.browser)}


def missing_packages(*modules: str) -> tuple[bool, str]:
    """(True, "") if every module imports here, else (False, which to install)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"Python package(s) {', '.join(missing)} not installed: pip install -r requirements.txt."
    return True, ""


def batch_dim() -> dict:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}


def export_dynamic_batch(model: nn.Module, ctx: VariantContext) -> torch.export.ExportedProgram:
    """`torch.export` with a symbolic batch (1..64), so one file serves every batch size of a benchmark sweep.

    The example has batch 2: export specialises a size-1 dimension to a constant.
    """
    return torch.export.export(model, (ctx.example(2),), dynamic_shapes=(batch_dim(),))
