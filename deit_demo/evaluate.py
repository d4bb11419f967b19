"""Accuracy per variant on labelled data: the digits test split built in, or an image folder of your own.

An image folder has one sub-folder per class, named by ImageNet synset id (``n02114367``) or by class index (``7``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deit_demo.errors import DeitDemoError, describe
from deit_demo.models import LoadedModel, ModelSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class LabelledSet:
    name: str
    size: int
    items: Callable[[], Iterator[tuple[torch.Tensor, int]]]  # (1, 3, S, S) input, class index


def digits_test_set(spec: ModelSpec) -> LabelledSet:
    from deit_demo.train_digits import digits_split

    if spec.key != "deit_digits":
        raise DeitDemoError("The built-in digits test split only fits --model deit_digits; pass --data FOLDER.")
    _, _, x_test, y_test = digits_split()
    return LabelledSet("digits test split", len(y_test),
                       lambda: ((x_test[i:i + 1], int(y_test[i])) for i in range(len(y_test))))


def folder_set(spec: ModelSpec, root: Path | str) -> LabelledSet:
    """Images under ROOT/<class>/, the class being an ImageNet synset id or an index."""
    from deit_demo.images import load_image, preprocess

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
    return folder_set(spec, data) if data else digits_test_set(spec)


@dataclass
class AccuracyResult:
    model: str
    variant: str
    status: str
    reason: str = ""
    top1: float | None = None
    top5: float | None = None
    images: int = 0
    data: str = ""
    weights: str = ""

    def to_row(self) -> dict:
        return asdict(self)


def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], dataset: LabelledSet,
             progress: Callable[[int, int], None] | None = None) -> tuple[float, float]:
    top1 = top5 = seen = 0
    with torch.inference_mode():
        for x, label in dataset.items():
            logits = fn(x).float().reshape(-1)
            top = logits.topk(min(5, logits.numel())).indices.tolist()
            top1 += int(top[0] == label)
            top5 += int(label in top)
            seen += 1
            if progress and (seen % 20 == 0 or seen == dataset.size):
                progress(seen, dataset.size)
    return top1 / seen, top5 / seen


def evaluate(loaded: LoadedModel, keys: list[str], store, data: str | Path | None = None, *,
             progress: Callable[[str, int, int], None] | None = None) -> list[AccuracyResult]:
    """Top-1/top-5 of every variant in `keys` on the same labelled set; one row each, whatever fails."""
    from deit_demo.variants import get_variant, prepare

    dataset = labelled_set(loaded.spec, data)
    rows = []
    for key in keys:
        variant = get_variant(key)
        row = AccuracyResult(model=loaded.spec.key, variant=key, status="ok", data=dataset.name,
                             weights=loaded.weights)
        ok, reason = variant.available()
        if not ok:
            row.status, row.reason = "unavailable", reason
            rows.append(row)
            continue
        try:
            _, _, runner = prepare(variant, loaded, store)
            report = (lambda i, n, k=key: progress(k, i, n)) if progress else None
            row.top1, row.top5 = accuracy(runner, dataset, report)
            row.images = dataset.size
        except DeitDemoError:
            raise
        except Exception as err:  # one broken variant never stops the others
            row.status, row.reason = "failed", describe(err)
        rows.append(row)
    return rows
