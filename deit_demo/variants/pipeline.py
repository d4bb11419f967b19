"""The one way a variant becomes usable: available? convert (or reuse) -> verified load, then its answers checked.

`prepare_variants` is the only loop over requested variants; conversion, evaluation, benchmarks, the app and the CLI
all go through it, with one failure policy: a variant that cannot be prepared becomes a row that says why (status
``unavailable`` or ``failed``), and the others go on.
"""

from __future__ import annotations

import copy
import errno
import shutil
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from deit_demo.core.artifacts import Artifact, ArtifactStore
from deit_demo.core.errors import DeitDemoError, check_cancel, describe
from deit_demo.core.models import DEFAULT_MODEL, MODELS, LoadedModel, ModelSpec, get_spec
from deit_demo.variants.base import COMPILE_LOCK, Runner, Variant, VariantContext
from deit_demo.variants.converter import convert_in_child
from deit_demo.variants.registry import ORIGINAL, get_variant

ProgressFn = Callable[[str, int, int], None]  # (what is happening, done, total): the one progress callback type


def example_images(spec: ModelSpec | None = None) -> list[Path]:
    """The bundled example images of `spec` (default: the photographs the ImageNet models use)."""
    return (spec or MODELS[DEFAULT_MODEL]).example_paths()


def check_inputs(spec: ModelSpec, *, noise: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's example images plus a few fixed-seed noise tensors, preprocessed for `spec`."""
    from deit_demo.core.images import load_image, preprocess

    inputs = {path.stem: preprocess(load_image(path), spec) for path in spec.example_paths()}
    generator = torch.Generator().manual_seed(seed)
    for i in range(noise):
        inputs[f"noise{i}"] = torch.randn(1, 3, spec.input_size, spec.input_size, generator=generator)
    return inputs


def variant_context(spec: ModelSpec, store: ArtifactStore, tome_r: int | None = None,
                    weights_id: str | None = None) -> VariantContext:
    """What variants get for `spec`: compile caches inside the store, the example images as calibration, and the
    token-merging setting (None: the r tuned for these weights and stored, else the model's default r)."""
    tuned = {k: v["r"] for k, v in store.tuned(spec.key, weights_id).items()} if weights_id else {}
    return VariantContext(spec=spec, cache_dir=store.root / ".compile-cache",
                          calibration=list(check_inputs(spec, noise=0).values()), tome_r=tome_r, tuned_r=tuned)


# ---------------------------------------------------------------------------------------------------- answer checks


@dataclass
class AnswerCheck:
    """A variant's answers against the original's on the same inputs."""

    top1_agreement: float
    top5_overlap: float
    max_abs_diff: float
    top1_unchanged: dict[str, bool] = field(default_factory=dict)
    images: int = 0  # how many images (rows of the inputs) the figures above come from

    @property
    def images_named(self) -> str:
        """The images these figures come from, named, with their count."""
        names = list(self.top1_unchanged)
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return f"check inputs: {shown} ({self.images} images)"


def compare_answers(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]) -> AnswerCheck:
    """Agreement over every row of every input (an input may be a batch); `top1_unchanged` per input name."""
    agree, overlap, max_diff, unchanged = [], [], 0.0, {}
    for name, ref in reference.items():
        got = candidate[name].float().reshape(ref.shape)
        same = (ref.argmax(-1) == got.argmax(-1)).flatten().tolist()
        unchanged[name] = all(same)
        agree += same
        k = min(5, ref.shape[-1])
        for ref_row, got_row in zip(ref.topk(k).indices.reshape(-1, k), got.topk(k).indices.reshape(-1, k)):
            overlap.append(len(set(ref_row.tolist()) & set(got_row.tolist())) / k)
        max_diff = max(max_diff, float((ref - got).abs().max()))
    return AnswerCheck(top1_agreement=sum(agree) / len(agree), top5_overlap=sum(overlap) / len(overlap),
                       max_abs_diff=max_diff, top1_unchanged=unchanged, images=len(agree))


def run_inputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {name: fn(x).float().reshape(x.shape[0], -1) for name, x in inputs.items()}


def answer_check(model: Callable[[torch.Tensor], torch.Tensor],
                 inputs: dict[str, torch.Tensor]) -> Callable[[Callable], AnswerCheck]:
    """A check of any runner's answers against `model`'s on `inputs` (the reference computed once, here)."""
    reference = run_inputs(model, inputs)
    return lambda runner: compare_answers(reference, run_inputs(runner, inputs))


# ---------------------------------------------------------------------------------------------------- preparation

STORAGE_ERRORS = {errno.ENOSPC: "is full (no space left on device)", errno.EDQUOT: "is over its disk quota",
                  errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)",
                  errno.EPERM: "is not writable (operation not permitted)"}


def failure_reason(err: BaseException, store: ArtifactStore) -> str:
    """One line for a variant that could not be prepared, in words a person can act on."""
    if isinstance(err, DeitDemoError):
        return str(err)
    number = store.storage_errno(err)
    if number in STORAGE_ERRORS:
        return (f"The artifact store ({store.root}) {STORAGE_ERRORS[number]}: nothing was saved. Free space or "
                "start with --store pointing somewhere writable.")
    text = str(err)
    if isinstance(err, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text:
        return ("Ran out of memory while preparing this variant (the process's memory limit was reached); nothing "
                "was saved. Try a smaller model, or fewer variants at once.")
    return describe(err)


def require_available(variant: Variant) -> None:
    ok, reason = variant.available()
    if not ok:
        raise DeitDemoError(f"{variant.title} is unavailable here: {reason}")


def convert_variant(variant: Variant, loaded: LoadedModel, store: ArtifactStore,
                    ctx: VariantContext | None = None) -> tuple[Artifact, bool]:
    """The verified artifact for (model, weights, variant): reused from the store, or converted and committed."""
    ctx = ctx or variant_context(loaded.spec, store, weights_id=loaded.weights_id)
    key = (loaded.spec.key, loaded.weights_id, variant.store_key(ctx))
    found = store.lookup(*key, variant.version)
    if found is not None:
        return found, True
    with store.converting(*key):
        found = store.lookup(*key, variant.version)  # made by another process while this one waited
        if found is not None:
            return found, True
        workdir = store.new_workdir()
        try:
            if store.isolate:
                artifact = convert_in_child(variant.key, loaded.model, workdir, ctx, loaded.weights_id)
            else:
                # A copy: exporters patch the module while tracing (non-strict torch.export swaps in fake parameters),
                # and the same module may answer on other threads meanwhile; they saw fake tensors and failed.
                with COMPILE_LOCK:
                    artifact = variant.convert(copy.deepcopy(loaded.model), workdir, ctx,
                                               weights_id=loaded.weights_id)
            return store.commit(workdir, artifact), False
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def load_verified(variant: Variant, artifact: Artifact, store: ArtifactStore,
                  ctx: VariantContext | None = None) -> Runner:
    store.verify(artifact)  # only a file matching its manifest's sha256 is ever loaded
    return variant.load(artifact, ctx or VariantContext(get_spec(artifact.model), store.root / ".compile-cache"))


def prepare(variant: Variant, loaded: LoadedModel, store: ArtifactStore,
            ctx: VariantContext | None = None) -> tuple[Artifact, bool, Runner]:
    """Convert (or reuse) and load one variant: (artifact, reused, runner). Raises if it cannot be prepared."""
    require_available(variant)
    ctx = ctx or variant_context(loaded.spec, store, weights_id=loaded.weights_id)
    try:
        artifact, reused = convert_variant(variant, loaded, store, ctx)
    except Exception as err:  # the store's faults in words a person can act on, for every caller
        if store.storage_errno(err) is None:
            raise
        raise DeitDemoError(failure_reason(err, store)) from err
    with COMPILE_LOCK:
        return artifact, reused, load_verified(variant, artifact, store, ctx)


@dataclass
class Prepared:
    """One requested variant after preparation: a runner, or the reason there is none."""

    variant: Variant
    status: str  # ok | unavailable | failed
    reason: str = ""
    artifact: Artifact | None = None
    reused: bool = False
    runner: Runner | None = None
    traceback: str = ""

    @property
    def key(self) -> str:
        return self.variant.key


def prepare_variants(loaded: LoadedModel, keys: Iterable[str], store: ArtifactStore, *,
                     progress: ProgressFn | None = None, cancel=None, tome_r: int | None = None) -> Iterator[Prepared]:
    """Prepare each variant in turn, yielding as it goes (so a caller can use and drop a runner before the next)."""
    keys = list(keys)
    ctx = variant_context(loaded.spec, store, tome_r, loaded.weights_id)
    for i, key in enumerate(keys):
        check_cancel(cancel)
        variant = get_variant(key)
        if progress:
            progress(f"preparing {key}", i, len(keys))
        ok, reason = variant.available()
        if not ok:
            yield Prepared(variant, "unavailable", reason)
            continue
        try:
            artifact, reused, runner = prepare(variant, loaded, store, ctx)
        except Exception as err:  # one broken variant must never stop the others
            yield Prepared(variant, "failed", failure_reason(err, store), traceback=traceback.format_exc(limit=4))
            continue
        yield Prepared(variant, "ok", artifact=artifact, reused=reused, runner=runner)
    if progress:
        progress("prepared", len(keys), len(keys))


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
    agreement_on: str = ""  # the images the agreement figures come from, named, with their count
    weights: str = ""
    notes: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)


def run_conversion(loaded: LoadedModel, keys: Iterable[str], store: ArtifactStore, *,
                   progress: ProgressFn | None = None, check: bool = True, tome_r: int | None = None,
                   keep: Callable[[str, Runner], None] | None = None) -> list[ConversionResult]:
    """Convert, load back and check every variant in `keys`; one row each, whatever happens to the others.
    `keep(key, runner)` receives each runner whose answers could be checked (otherwise they are dropped)."""
    inputs = check_inputs(loaded.spec) if check else {}
    reference = run_inputs(loaded.model, inputs) if check else {}
    rows = []
    for item in prepare_variants(loaded, keys, store, progress=progress, tome_r=tome_r):
        row = ConversionResult(model=loaded.spec.key, variant=item.key, status=item.status, reason=item.reason,
                               title=item.variant.title, weights=loaded.weights, reused=item.reused)
        if item.traceback:
            row.notes["traceback"] = item.traceback
        if item.artifact is not None:
            artifact = item.artifact
            row.path, row.size_bytes, row.sha256 = str(artifact.path), artifact.size_bytes, artifact.sha256
            row.convert_s, row.notes = artifact.convert_s, {**artifact.notes, **item.runner.notes}
        if item.runner is not None and check:
            try:
                answers = compare_answers(reference, run_inputs(item.runner, inputs))
                row.top1_agreement, row.top5_overlap = answers.top1_agreement, answers.top5_overlap
                row.max_abs_diff, row.top1_unchanged = answers.max_abs_diff, answers.top1_unchanged
                row.agreement_on = answers.images_named
            except Exception as err:  # converted and loaded, but its runtime fails on a real input
                row.status, row.reason = "failed", describe(err)
                row.notes["traceback"] = traceback.format_exc(limit=4)
            else:
                if keep is not None:
                    keep(item.key, item.runner)
        rows.append(row)
    return rows


def size_reference(rows: list) -> int:
    """The original's size in a list of result rows (0 when it is not among them)."""
    return next((r.size_bytes for r in rows if r.variant == ORIGINAL and r.size_bytes), 0)
