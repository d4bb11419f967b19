"""Train `deit_synth`: a distilled DeiT on procedural textures (`deit_demo.train.synth`), with DeiT's distillation
compared.

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
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from deit_demo.core.paths import ASSETS
from deit_demo.train import synth
from deit_demo.train.distill import DISTILLATION_TYPES, Recipe, TrainingReport, distill, report_lines, save

CHECKPOINT = ASSETS / "deit_synth.safetensors"
REPORT = CHECKPOINT.with_suffix(".json")
EXAMPLES = CHECKPOINT.parent / "synth"
TRAIN_IMAGES = 5000
RECIPE = Recipe(task="procedurally drawn textures (64×64 pixels, the texture inside a random region, with random "
                     "scale, rotation, colour, contrast, clutter and noise, so 64 patch tokens)",
                classes=synth.CLASSES, build_student=synth.build_student, teacher_channels=(32, 64, 128, 128),
                max_shift=6, epochs=16, teacher_epochs=6, teacher_lr=3e-3)


def run(epochs: int = RECIPE.epochs, teacher_epochs: int = RECIPE.teacher_epochs, train_images: int = TRAIN_IMAGES,
        test_images: int = synth.TEST_IMAGES, modes: tuple[str, ...] = DISTILLATION_TYPES,
        log=lambda line: None) -> tuple[dict[str, nn.Module], TrainingReport]:
    """Train the teacher and one student per mode (the last is shipped); returns the students and the report."""
    recipe = replace(RECIPE, epochs=epochs, teacher_epochs=teacher_epochs, types=tuple(modes))
    return distill(recipe, synth.split("train", train_images), synth.split("test", test_images), log)


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
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--teacher-epochs", type=int, default=RECIPE.teacher_epochs)
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    students, report = run(args.epochs, args.teacher_epochs, args.train_images,
                           log=lambda line: print(line, flush=True))
    save(students, report, args.out)
    save_examples(Path(args.out).parent / "synth")
    print("\n".join(report_lines(report)) + f"; wrote {args.out}")


if __name__ == "__main__":
    main()
