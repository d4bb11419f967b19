"""A DeiT trained here, with a distillation token, on scikit-learn's bundled digits: DeiT's central idea, offline.

    python -m deit_demo.train digits [--out assets/deit_digits.safetensors] [--epochs 80]

A small CNN teacher is trained first; then a small DeiT student (timm's `VisionTransformerDistilled`) learns with
*hard-label distillation*: cross-entropy to the labels on the class token, cross-entropy to the teacher's argmax on
the distillation token. A student with the same architecture trained without distillation (labels on both heads) is
the control. Deterministic seeds and a fixed stratified split, so the committed checkpoint can be regenerated.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deit_demo.core.paths import ASSETS

IMG = 32  # 8x8 digits upsampled 4x: 4x4 = 16 patches of 8x8 pixels (2x2 original pixels each)
SEED = 0
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


def build_student(distilled: bool = True) -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    return (VisionTransformerDistilled if distilled else VisionTransformer)(**ARCH)


class Teacher(nn.Module):
    """A small CNN: the convolutional inductive bias DeiT's distillation token learns from."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 3 pixels (on the 32 grid): the small-data regularisation a ViT needs."""
    shifts = torch.randint(-3, 4, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=shifts, dims=(2, 3))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, loss_fn, lr: float = 2e-3,
          batch: int = 64, augment=augment) -> None:
    """AdamW with a one-cycle schedule; `loss_fn(model, xb, yb, idx)`; seeded, so a rerun gives the same weights."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = loss_fn(model, augment(x[idx], generator), y[idx], idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


@dataclass
class DigitsReport:
    teacher: float
    student_class_head: float
    student_distillation_head: float
    student_average: float
    student_without_distillation: float
    train_seconds: float
    test_images: int
    params: int


def student_heads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = model.forward_features(x)
    return model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])


def run(epochs: int = 80, teacher_epochs: int = 15) -> tuple[nn.Module, DigitsReport]:
    torch.manual_seed(SEED)
    start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = digits_split()

    teacher = Teacher()
    train(teacher, x_tr, y_tr, teacher_epochs, lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb))
    with torch.no_grad():
        teacher_acc = accuracy(teacher(x_te), y_te)

    torch.manual_seed(SEED)
    student = build_student(distilled=True)

    def hard_distillation(model, xb, yb, idx):
        with torch.no_grad():
            teacher_labels = teacher(xb).argmax(-1)  # hard distillation: the teacher's argmax is a second label
        cls_logits, dist_logits = student_heads(model, xb)
        return 0.5 * F.cross_entropy(cls_logits, yb) + 0.5 * F.cross_entropy(dist_logits, teacher_labels)

    train(student, x_tr, y_tr, epochs, hard_distillation)

    torch.manual_seed(SEED)
    control = build_student(distilled=True)

    def labels_only(model, xb, yb, idx):
        cls_logits, dist_logits = student_heads(model, xb)
        return 0.5 * F.cross_entropy(cls_logits, yb) + 0.5 * F.cross_entropy(dist_logits, yb)

    train(control, x_tr, y_tr, epochs, labels_only)

    with torch.no_grad():
        cls_logits, dist_logits = student_heads(student, x_te)
        report = DigitsReport(
            teacher=teacher_acc, student_class_head=accuracy(cls_logits, y_te),
            student_distillation_head=accuracy(dist_logits, y_te),
            student_average=accuracy((cls_logits + dist_logits) / 2, y_te),
            student_without_distillation=accuracy(control(x_te), y_te),
            train_seconds=time.perf_counter() - start, test_images=len(y_te),
            params=sum(p.numel() for p in student.parameters()))
    return student, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(CHECKPOINT))
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deit_demo.core.models import save_weights

    student, report = run(args.epochs, args.teacher_epochs)
    out = Path(args.out)
    save_weights(student, out, metadata={"report": json.dumps(asdict(report))})
    out.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"teacher (CNN)                     {report.teacher:.2%}")
    print(f"student class head                {report.student_class_head:.2%}")
    print(f"student distillation head         {report.student_distillation_head:.2%}")
    print(f"student average (DeiT's output)   {report.student_average:.2%}")
    print(f"same student, no distillation     {report.student_without_distillation:.2%}")
    print(f"{report.test_images} test images, {report.params} student parameters, "
          f"{report.train_seconds:.0f} s to train; wrote {out}")


if __name__ == "__main__":
    main()
