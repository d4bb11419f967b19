"""Train `deit_synth`: a distilled DeiT on procedural textures (`deit_demo.train.synth`), with DeiT's distillation compared.

    python -m deit_demo.train synth [--out assets/deit_synth.safetensors] [--epochs 16] [--train-images 5000]

A CNN teacher is trained first. Then three students of one architecture (a DeiT with a distillation token, 64 patch
tokens) learn the same data in the same order, differing only in the distillation token's target, as in the DeiT
paper (Touvron et al., 2021, section 5):
  * ``none``: labels on both heads (the control);
  * ``soft``: KL to the teacher's softened output, tau = 3, lambda = 0.1;
  * ``hard``: cross-entropy to the teacher's argmax, weighted 1/2 and 1/2.
Each is evaluated on 1200 held-out images: class head, distillation head and their average, each with a 95%
bootstrap interval. The hard-distilled student (DeiT's choice) is saved as the catalog's `deit_synth`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deit_demo.core.paths import ASSETS
from deit_demo.core.stats import accuracy_interval
from deit_demo.train import synth
from deit_demo.train.digits import student_heads, train

SEED = 0
CHECKPOINT = ASSETS / "deit_synth.safetensors"
REPORT = CHECKPOINT.with_suffix(".json")
EXAMPLES = CHECKPOINT.parent / "synth"
SOFT_TAU, SOFT_LAMBDA = 3.0, 0.1  # the DeiT paper's soft-distillation settings


class Teacher(nn.Module):
    """A small CNN: the convolutional inductive bias the distillation token learns from."""

    def __init__(self, classes: int = len(synth.CLASSES)):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.net = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                                 nn.MaxPool2d(2), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x):
        return self.net(x)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shifts of up to 6 pixels. No flips: a mirrored 45-degree stripe is a 135-degree one, another class."""
    shifts = torch.randint(-6, 7, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=shifts, dims=(2, 3))


def distillation_loss(mode: str, teacher: nn.Module):
    """The training loss of a student whose distillation token follows `mode` (none | soft | hard)."""

    def loss(model, xb, yb, idx):
        cls_logits, dist_logits = student_heads(model, xb)
        if mode == "none":
            return 0.5 * F.cross_entropy(cls_logits, yb) + 0.5 * F.cross_entropy(dist_logits, yb)
        with torch.no_grad():
            teacher_logits = teacher(xb)
        if mode == "hard":
            return 0.5 * F.cross_entropy(cls_logits, yb) + 0.5 * F.cross_entropy(dist_logits, teacher_logits.argmax(-1))
        soft = F.kl_div(F.log_softmax(dist_logits / SOFT_TAU, -1), F.log_softmax(teacher_logits / SOFT_TAU, -1),
                        reduction="batchmean", log_target=True) * SOFT_TAU**2
        return (1 - SOFT_LAMBDA) * F.cross_entropy(cls_logits, yb) + SOFT_LAMBDA * soft

    return loss


def head_report(logits: torch.Tensor, y: torch.Tensor) -> dict:
    correct = (logits.argmax(-1) == y).numpy()
    low, high = accuracy_interval(correct)
    return {"top1": float(correct.mean()), "ci95": [low, high]}


def run(epochs: int = 16, teacher_epochs: int = 6, train_images: int = 5000, test_images: int = synth.TEST_IMAGES,
        modes: tuple[str, ...] = ("none", "soft", "hard"), log=lambda line: None) -> tuple[dict[str, nn.Module], dict]:
    """Train the teacher and one student per mode; returns the students and the report."""
    start = time.perf_counter()
    x_train, y_train = synth.split("train", train_images)
    x_test, y_test = synth.split("test", test_images)
    torch.manual_seed(SEED)
    teacher = Teacher()
    train(teacher, x_train, y_train, teacher_epochs, lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb), lr=3e-3,
          augment=augment)
    with torch.no_grad():
        report = {"task": "procedural textures (deit_demo.train.synth)", "classes": list(synth.CLASSES),
                  "train_images": train_images, "test_images": test_images, "epochs": epochs,
                  "teacher_epochs": teacher_epochs, "teacher": head_report(teacher(x_test), y_test), "students": {},
                  "soft": {"tau": SOFT_TAU, "lambda": SOFT_LAMBDA}}
    log(f"teacher: {report['teacher']['top1']:.2%} after {time.perf_counter() - start:.0f} s")
    students = {}
    for mode in modes:
        torch.manual_seed(SEED)  # same initial weights and data order for every mode: only the target differs
        student = synth.build_student()
        train(student, x_train, y_train, epochs, distillation_loss(mode, teacher), lr=2e-3, augment=augment)
        with torch.no_grad():
            cls_logits, dist_logits = student_heads(student, x_test)
        report["students"][mode] = {"class": head_report(cls_logits, y_test),
                                    "distillation": head_report(dist_logits, y_test),
                                    "average": head_report((cls_logits + dist_logits) / 2, y_test)}
        students[mode] = student
        log(f"student ({mode}): average head {report['students'][mode]['average']['top1']:.2%} after "
            f"{time.perf_counter() - start:.0f} s")
    report["params"] = sum(p.numel() for p in students[modes[-1]].parameters())
    report["shipped"] = modes[-1]
    report["train_seconds"] = time.perf_counter() - start
    return students, report


def slug(name: str) -> str:
    """A class name as a plain file name: "stripes 45°" -> "stripes_45"."""
    return "".join(c if c.isalnum() else "_" for c in name.replace("°", "")).strip("_")


def save_examples(folder: Path = EXAMPLES, count: int = 10) -> list[Path]:
    """One example image per class (from the examples split, never trained on) for the gallery and answer checks."""
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[int, Path] = {}
    index = 0
    while len(found) < min(count, len(synth.CLASSES)):
        image, label = synth.render("examples", index)
        if label not in found:
            found[label] = folder / f"{slug(synth.CLASSES[label])}.png"
            image.save(found[label])
        index += 1
    return [found[k] for k in sorted(found)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(CHECKPOINT))
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deit_demo.core.models import save_weights

    students, report = run(args.epochs, args.teacher_epochs, args.train_images, log=lambda line: print(line, flush=True))
    out = Path(args.out)
    shipped = students[report["shipped"]]
    save_weights(shipped, out, metadata={"report": json.dumps(report)})
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    save_examples(out.parent / "synth")
    t = report["teacher"]
    print(f"teacher (CNN): {t['top1']:.2%} [{t['ci95'][0]:.2%}, {t['ci95'][1]:.2%}]")
    for mode, heads in report["students"].items():
        print(f"{mode:>5}: " + "  ".join(f"{h} {v['top1']:.2%} [{v['ci95'][0]:.2%}, {v['ci95'][1]:.2%}]"
                                          for h, v in heads.items()))
    print(f"{report['test_images']} test images, {report['params']} parameters, {report['train_seconds']:.0f} s; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
