"""Deployment variants: one small class each, registered by key (like timm's ``@register_model``).

Adding a variant is one class plus ``@register``; the CLI, the UI and the tests pick it up from `VARIANTS`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from deit_demo.artifacts import Artifact, ArtifactStore
from deit_demo.errors import DeitDemoError, describe
from deit_demo.models import LoadedModel


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

    def available(self) -> tuple[bool, str]:
        """Whether this build/machine can run the variant, and why not in plain words."""
        return True, ""

    def export(self, model: nn.Module, example: torch.Tensor, path: Path, calibration: list[torch.Tensor]) -> dict:
        """Write the deployable file to `path`; return notes for the manifest.

        `calibration` holds real preprocessed images (the bundled examples) for variants that quantize activations.
        """
        raise NotImplementedError

    def load(self, artifact: Artifact) -> Runner:
        raise NotImplementedError

    def convert(self, model: nn.Module, example: torch.Tensor, out_dir: Path, *, model_key: str = "",
                weights_id: str = "", calibration: list[torch.Tensor] | None = None) -> Artifact:
        """Export into `out_dir` and time it; size and sha256 are filled when the store commits it."""
        path = Path(out_dir) / f"{model_key or 'model'}_{self.key}{self.suffix}"
        start = time.perf_counter()
        notes = self.export(model, example, path, calibration or [example]) or {}
        artifact = Artifact(path=path, variant=self.key, model=model_key, weights_id=weights_id,
                            convert_s=time.perf_counter() - start, notes=notes, recipe_version=self.version)
        artifact.size_bytes = path.stat().st_size
        return artifact

    def info(self) -> dict:
        ok, reason = self.available()
        return {"key": self.key, "title": self.title, "family": self.family, "precision": self.precision,
                "description": self.description,
                "available": ok, "reason": reason, "deprecation": self.deprecation}


VARIANTS: dict[str, Variant] = {}


def register(cls: type[Variant]) -> type[Variant]:
    VARIANTS[cls.key] = cls()
    return cls


def get_variant(key: str) -> Variant:
    try:
        return VARIANTS[key]
    except KeyError:
        raise DeitDemoError(f"Unknown variant {key!r}. Choose from: {', '.join(VARIANTS)}.") from None


def missing_packages(*modules: str) -> tuple[bool, str]:
    """(True, "") if every module imports here, else (False, which to install)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"Python package(s) {', '.join(missing)} not installed: pip install -r requirements.txt."
    return True, ""


def list_variants(family: str | None = None) -> list[Variant]:
    return [v for v in VARIANTS.values() if family is None or v.family == family]


def parse_variant_keys(text: str | Iterable[str]) -> list[str]:
    """``all`` or a comma list -> registry keys in registry order (``original`` always first)."""
    keys = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    if not keys or keys == ["all"]:
        return list(VARIANTS)
    for key in keys:
        get_variant(key)
    return ["original"] + [k for k in VARIANTS if k in keys and k != "original"]


MAX_BATCH = 64


def batch_dim() -> dict:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}


def export_dynamic_batch(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`torch.export` with a symbolic batch (1..64), so one file serves every batch size of a benchmark sweep.

    The example must have batch > 1: export specialises a size-1 dimension to a constant.
    """
    example2 = example[:1].repeat(2, 1, 1, 1)
    return torch.export.export(model, (example2,), dynamic_shapes=(batch_dim(),))


# ---------------------------------------------------------------------------------------------------- answer checks


@dataclass
class AnswerCheck:
    """A variant's answers against the original's on the same inputs."""

    top1_agreement: float
    top5_overlap: float
    max_abs_diff: float
    top1_unchanged: dict[str, bool] = field(default_factory=dict)


def check_inputs(spec, *, noise: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """The bundled example images plus a few fixed-seed noise tensors, preprocessed for `spec`."""
    from deit_demo.images import load_image, preprocess

    if spec.key == "deit_digits":
        inputs = {path.stem: preprocess(load_image(path), spec) for path in sorted((ASSETS / "digits").glob("*.png"))}
    else:
        inputs = {path.stem: preprocess(load_image(path), spec) for path in example_images()}
    generator = torch.Generator().manual_seed(seed)
    for i in range(noise):
        inputs[f"noise{i}"] = torch.randn(1, 3, spec.input_size, spec.input_size, generator=generator)
    return inputs


ASSETS = Path(__file__).resolve().parents[2] / "assets"


def example_images() -> list[Path]:
    """The bundled photographs (the digits model's examples live in assets/digits/)."""
    return sorted(p for p in ASSETS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def compare_answers(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]) -> AnswerCheck:
    agree, overlap, max_diff, unchanged = [], [], 0.0, {}
    for name, ref in reference.items():
        got = candidate[name].float()
        same = bool(ref.argmax(-1).item() == got.argmax(-1).item())
        unchanged[name] = same
        agree.append(same)
        ref5, got5 = set(ref.topk(5).indices.flatten().tolist()), set(got.topk(5).indices.flatten().tolist())
        overlap.append(len(ref5 & got5) / 5)
        max_diff = max(max_diff, float((ref - got).abs().max()))
    return AnswerCheck(top1_agreement=sum(agree) / len(agree), top5_overlap=sum(overlap) / len(overlap),
                       max_abs_diff=max_diff, top1_unchanged=unchanged)


def run_inputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {name: fn(x).float().reshape(1, -1) for name, x in inputs.items()}


# ---------------------------------------------------------------------------------------------------- conversion run


@dataclass
class ConversionResult:
    """One row of a conversion run; field names follow the project's result vocabulary."""

    model: str
    variant: str
    status: str  # ok | unavailable | failed
    reason: str = ""
    title: str = ""
    path: str = ""
    size_bytes: int = 0
    sha256: str = ""
    convert_s: float = 0.0
    reused: bool = False
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    max_abs_diff: float | None = None
    top1_unchanged: dict = field(default_factory=dict)
    weights: str = ""
    notes: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)


def convert_variant(variant: Variant, loaded: LoadedModel, store: ArtifactStore,
                    example: torch.Tensor | None = None) -> tuple[Artifact, bool]:
    """The verified artifact for (model, weights, variant): reused from the store, or converted and committed."""
    found = store.lookup(loaded.spec.key, loaded.weights_id, variant.key, variant.version)
    if found is not None:
        return found, True
    if example is None:
        example = torch.randn(1, 3, loaded.spec.input_size, loaded.spec.input_size,
                              generator=torch.Generator().manual_seed(0))
    calibration = list(check_inputs(loaded.spec, noise=0).values())
    workdir = store.new_workdir()
    try:
        artifact = variant.convert(loaded.model, example, workdir, model_key=loaded.spec.key,
                                   weights_id=loaded.weights_id, calibration=calibration)
        return store.commit(workdir, artifact), False
    finally:
        if workdir.exists():
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def load_verified(variant: Variant, artifact: Artifact, store: ArtifactStore) -> Runner:
    store.verify(artifact)  # only a file matching its manifest's sha256 is ever loaded
    return variant.load(artifact)


def require_available(variant: Variant) -> None:
    ok, reason = variant.available()
    if not ok:
        raise DeitDemoError(f"{variant.title} is unavailable here: {reason}")


def prepare(variant: Variant, loaded: LoadedModel, store: ArtifactStore,
            example: torch.Tensor | None = None) -> tuple[Artifact, bool, Runner]:
    """Convert (or reuse) and load a variant: (artifact, reused, runner)."""
    artifact, reused = convert_variant(variant, loaded, store, example)
    return artifact, reused, load_verified(variant, artifact, store)


ProgressFn = Callable[[str, int, int, str], None]


def run_conversion(loaded: LoadedModel, keys: Iterable[str], store: ArtifactStore, *,
                   progress: ProgressFn | None = None, check: bool = True) -> list[ConversionResult]:
    """Convert, load back and check every variant in `keys`; one row each, whatever happens to the others."""
    keys = list(keys)
    inputs = check_inputs(loaded.spec) if check else {}
    reference = run_inputs(loaded.model, inputs) if check else {}
    example = next(iter(inputs.values())) if inputs else None
    rows = []
    for i, key in enumerate(keys):
        variant = get_variant(key)
        if progress:
            progress(key, i, len(keys), "converting")
        row = ConversionResult(model=loaded.spec.key, variant=key, status="ok", title=variant.title,
                               weights=loaded.weights)
        ok, reason = variant.available()
        if not ok:
            row.status, row.reason = "unavailable", reason
            rows.append(row)
            continue
        try:
            artifact, row.reused, runner = prepare(variant, loaded, store, example)
            row.path, row.size_bytes, row.sha256 = str(artifact.path), artifact.size_bytes, artifact.sha256
            row.convert_s, row.notes = artifact.convert_s, {**artifact.notes, **runner.notes}
            if check:
                answers = compare_answers(reference, run_inputs(runner, inputs))
                row.top1_agreement, row.top5_overlap = answers.top1_agreement, answers.top5_overlap
                row.max_abs_diff, row.top1_unchanged = answers.max_abs_diff, answers.top1_unchanged
        except Exception as err:  # one broken variant must never stop the others
            row.status = "failed"
            row.reason = describe(err)
            row.notes["traceback"] = traceback.format_exc(limit=4)
        rows.append(row)
    if progress:
        progress("", len(keys), len(keys), "done")
    return rows


def size_reference(rows: list[ConversionResult]) -> int:
    return next((r.size_bytes for r in rows if r.variant == "original" and r.size_bytes), 0)


# Registration order is the order of tables and charts: the tutorial's pipeline first, then its successors.
from deit_demo.variants import torchscript  # noqa: E402,F401
from deit_demo.variants import executorch  # noqa: E402,F401
from deit_demo.variants import onnx  # noqa: E402,F401
from deit_demo.variants import compiled  # noqa: E402,F401
