"""Accuracy per variant on labelled data: the digits test split built in, or an image folder of your own.

An image folder has one sub-folder per class, named by ImageNet synset id (``n02114367``) or by class index (``7``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deit_demo.core.errors import DeitDemoError, describe
from deit_demo.core.models import MODELS, LoadedModel, ModelSpec
from deit_demo.core.stats import accuracy_interval
from deit_demo.variants.pipeline import ProgressFn, prepare_variants
from deit_demo.variants.registry import ORIGINAL, get_variant

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class LabelledSet:
    name: str
    size: int
    items: Callable[[], Iterator[tuple[torch.Tensor, int]]]  # (1, 3, S, S) input, class index


def builtin_set(spec: ModelSpec) -> LabelledSet:
    """The labelled data a model trained here ships with (`spec.eval_set`)."""
    if spec.eval_set is None:
        with_data = ", ".join(key for key, s in MODELS.items() if s.eval_set is not None)
        raise DeitDemoError(f"{spec.key} has no built-in labelled data (models that do: {with_data}); pass "
                            "--data FOLDER with one sub-folder per class.")
    x, y = spec.eval_set()
    return LabelledSet(spec.eval_name or f"{spec.key} test set", len(y),
                       lambda: ((x[i:i + 1], int(y[i])) for i in range(len(y))))


def folder_set(spec: ModelSpec, root: Path | str) -> LabelledSet:
    """Images under ROOT/<class>/, the class being an ImageNet synset id or an index."""
    from deit_demo.core.images import load_image, preprocess

    root = Path(root)
    if not root.is_dir():
        raise DeitDemoError(f"--data {root} is not a folder.")
    synsets: dict[str, int] = {}
    if not spec.labels:
        from timm.data import ImageNetInfo

        synsets = {name: i for i, name in enumerate(ImageNetInfo().label_names())}
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in synsets:
            index = synsets[folder.name]
        elif folder.name.isdigit() and int(folder.name) < spec.num_classes:
            index = int(folder.name)
        else:
            raise DeitDemoError(f"Sub-folder {folder.name!r} is neither an ImageNet synset id (like n02114367) nor a "
                                f"class index below {spec.num_classes}.")
        pairs += [(path, index) for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not pairs:
        raise DeitDemoError(f"No images found under {root}/<class>/.")
    return LabelledSet(str(root), len(pairs), lambda: ((preprocess(load_image(p), spec), i) for p, i in pairs))


def labelled_set(spec: ModelSpec, data: str | Path | None) -> LabelledSet:
    return folder_set(spec, data) if data else builtin_set(spec)


@dataclass
class AccuracyResult:
    """One variant's accuracy on one labelled set; intervals are 95% percentile-bootstrap intervals."""

    model: str
    variant: str
    status: str
    reason: str = ""
    top1: float | None = None
    top5: float | None = None
    top1_ci95: tuple[float, float] | None = None
    top5_ci95: tuple[float, float] | None = None
    n_images: int = 0
    data: str = ""
    weights: str = ""
    top1_agreement: float | None = None  # same top-1 as the original's, on the same images as top1
    agreement_on: str = ""

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class Outcomes:
    """Per-image results of one runner on one labelled set, in the set's order (so two runners pair up)."""

    data: str
    top1: list[bool]
    top5: list[bool]
    predicted: list[int]

    @property
    def n_images(self) -> int:
        return len(self.top1)


EVAL_BATCH = 50  # images per call where a runner's answers do not depend on the batch (deit_synth: 5x faster)


def eval_batch(variant) -> int:
    """How many labelled images `variant`'s runner may take per call without changing an answer: one for dynamic int8
    (its activation scales span the batch) and for graphs compiled per input shape, EVAL_BATCH otherwise."""
    return EVAL_BATCH if variant.batch_invariant and not variant.compiles_per_shape else 1


def outcomes(fn: Callable[[torch.Tensor], torch.Tensor], dataset: LabelledSet,
             progress: Callable[[int, int], None] | None = None, batch: int = 1) -> Outcomes:
    """Per-image top-1 and top-5 outcomes of `fn` on `dataset`, and its top-1 class for each image; `batch` images
    per call (see `eval_batch`)."""
    top1, top5, predicted = [], [], []
    items = iter(dataset.items())
    while chunk := list(itertools.islice(items, batch)):
        # Made as a preprocessed visitor's image is (contiguous, outside inference mode): an inductor graph compiles
        # anew for other strides or dispatch keys, and the built-in sets come channels-last (15 s per compiled
        # variant of deit_synth).
        x = torch.cat([x for x, _ in chunk]).contiguous()
        with torch.inference_mode():
            logits = fn(x).float().reshape(len(chunk), -1)
        tops = logits.topk(min(5, logits.shape[-1])).indices.tolist()
        for top, (_, label) in zip(tops, chunk):
            top1.append(top[0] == label)
            top5.append(label in top)
            predicted.append(top[0])
        if progress and (len(top1) % 20 < len(chunk) or len(top1) == dataset.size):
            progress(len(top1), dataset.size)
    return Outcomes(dataset.name, top1, top5, predicted)


def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], dataset: LabelledSet,
             progress: Callable[[int, int], None] | None = None) -> tuple[list[bool], list[bool]]:
    """Per-image top-1 and top-5 outcomes of `fn` on `dataset`."""
    found = outcomes(fn, dataset, progress)
    return found.top1, found.top5


def evaluate(loaded: LoadedModel, keys: list[str], store, data: str | Path | None = None, *,
             progress: ProgressFn | None = None, tome_r: int | None = None) -> list[AccuracyResult]:
    """Top-1/top-5 of every variant in `keys` on the same labelled set, and its top-1 agreement with the original on
    those images; one row each, whatever fails."""
    dataset = labelled_set(loaded.spec, data)
    # agreement is taken on the very images accuracy is; batches only where answers do not depend on them
    reference = outcomes(loaded.model, dataset, batch=eval_batch(get_variant(ORIGINAL)))
    rows = []
    for item in prepare_variants(loaded, keys, store, progress=progress, tome_r=tome_r):
        row = AccuracyResult(model=loaded.spec.key, variant=item.key, status=item.status, reason=item.reason,
                             data=dataset.name, weights=loaded.weights)
        if item.runner is not None:
            report = (lambda i, n, k=item.key: progress(f"accuracy of {k}", i, n)) if progress else None
            try:
                found = outcomes(item.runner, dataset, report, eval_batch(item.variant))
            except Exception as err:  # loaded, but its runtime fails on the data: that row says so
                row.status, row.reason = "failed", describe(err)
            else:
                top1, top5 = found.top1, found.top5
                row.top1, row.top5 = sum(top1) / len(top1), sum(top5) / len(top5)
                row.top1_agreement = sum(a == b for a, b in zip(found.predicted, reference.predicted)) / len(top1)
                row.agreement_on = f"{dataset.name} ({len(top1)} images)"
                row.top1_ci95, row.top5_ci95 = accuracy_interval(top1), accuracy_interval(top5)
                row.n_images = len(top1)
        rows.append(row)
    return rows


def with_accuracy(results: list, accuracy: list[AccuracyResult]) -> str:
    """Conversion rows given the accuracy measured on labelled data: their agreement then comes from the same images
    as their top-1 (the answer check's figure is kept in their notes). Returns the line that says on what."""
    measured = {r.variant: r for r in accuracy if r.n_images}
    for row in results:
        if row.variant in measured:
            row.notes["check_agreement"] = row.top1_agreement
            row.top1_agreement = measured[row.variant].top1_agreement
            row.agreement_on = measured[row.variant].agreement_on
    first = next(iter(measured.values()), None)
    return f"Accuracy: top-1 on {first.data} ({first.n_images} labelled images)." if first else ""
