"""A DeiT trained here, with a distillation token, on scikit-learn's bundled digits: DeiT's central idea, offline.

    python -m deit_demo.train digits [--out assets/deit_digits.safetensors] [--epochs 80]

A small CNN teacher is trained first; then a small DeiT student (timm's `VisionTransformerDistilled`) learns with
*hard-label distillation*: cross-entropy to the labels on the class token, cross-entropy to the teacher's argmax on
the distillation token. A student with the same architecture trained without distillation (labels on both heads) is
the control. Deterministic seeds and a fixed stratified split, so the committed checkpoint can be regenerated; the
training itself is `deit_demo.train.distill`'s, shared with deit_synth.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deit_demo.core.paths import ASSETS
from deit_demo.train.distill import SEED, Recipe, TrainingReport, distill, report_lines, save

IMG = 32  # 8x8 digits upsampled 4x: 4x4 = 16 patches of 8x8 pixels (2x2 original pixels each)
DIGIT_MEAN = (0.5, 0.5, 0.5)
DIGIT_STD = (0.5, 0.5, 0.5)
ARCH = dict(img_size=IMG, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10)
CHECKPOINT = ASSETS / "deit_digits.safetensors"
REPORT = CHECKPOINT.with_suffix(".json")


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): images as (N, 3, 32, 32) normalised like `preprocess` does, 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.images, digits.target, test_size=0.2, random_state=SEED,
                                              stratify=digits.target)
    return to_tensor(x_tr), torch.as_tensor(y_tr), to_tensor(x_te), torch.as_tensor(y_te)


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split (360 images) as (x, y): the built-in evaluation set of `deit_digits`."""
    _, _, x_test, y_test = digits_split()
    return x_test, y_test


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """8x8 digits (0..16, ink bright) -> (N, 3, 32, 32) in the model's normalisation."""
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(IMG, IMG), mode="bilinear", align_corners=False).clamp(0, 1)
    return ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)


def build_student() -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(**ARCH)


# Hard distillation against the control; the hard-distilled student (last) is the one shipped.
RECIPE = Recipe(task="scikit-learn's bundled handwritten digits (8×8 images upsampled to 32×32)",
                classes=tuple(str(d) for d in range(10)), build_student=build_student, teacher_channels=(32, 64, 128),
                max_shift=3, epochs=80, teacher_epochs=15, types=("none", "hard"))


def run(epochs: int = RECIPE.epochs, teacher_epochs: int = RECIPE.teacher_epochs,
        log=lambda line: None) -> tuple[dict[str, nn.Module], TrainingReport]:
    """Train the teacher and the two students; returns the students by distillation type and the report."""
    x_train, y_train, x_test, y_test = digits_split()
    recipe = replace(RECIPE, epochs=epochs, teacher_epochs=teacher_epochs)
    return distill(recipe, (x_train, y_train), (x_test, y_test), log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(CHECKPOINT))
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--teacher-epochs", type=int, default=RECIPE.teacher_epochs)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    students, report = run(args.epochs, args.teacher_epochs, log=lambda line: print(line, flush=True))
    save(students, report, args.out)
    print("\n".join(report_lines(report)) + f"; wrote {args.out}")


if __name__ == "__main__":
    main()
