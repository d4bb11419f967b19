"""What both trainers share: DeiT's distillation, once. A CNN teacher builder, a random-shift augmentation, the
seeded training loop, DeiT's `DistillationLoss`, one recipe runner (teacher, then one student per distillation type)
and the training report both fixtures ship (assets/deit_*.json).

Every student of a run starts from the same seed and sees the same data in the same order; only its distillation
token's target differs, as in the DeiT paper (Touvron et al., 2021, section 5).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deit_demo.core.stats import accuracy_interval

SEED = 0
DISTILLATION_TYPES = ("none", "soft", "hard")
HEADS = ("class", "distillation", "average")
# The DeiT paper's settings: hard distillation weighs labels and teacher alike; soft, lambda = 0.1 at tau = 3. The
# control ('none') weighs its two label-trained heads alike.
SETTINGS = {"none": {"alpha": 0.5, "tau": None}, "soft": {"alpha": 0.1, "tau": 3.0},
            "hard": {"alpha": 0.5, "tau": None}}


def build_teacher(classes: int, channels: Sequence[int] = (32, 64, 128), dropout: float = 0.2) -> nn.Sequential:
    """A small CNN, one conv-BN-ReLU block per entry of `channels` (max-pooled between blocks, averaged after the
    last): the convolutional inductive bias the distillation token learns from."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c_out in enumerate(channels):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.MaxPool2d(2) if i < len(channels) - 1 else nn.AdaptiveAvgPool2d(1)]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, classes))


@dataclass(frozen=True)
class RandomShift:
    """One random shift of a whole batch by up to `max_pixels` each way, wrapping around: the small-data
    regularisation a ViT needs. No flips: a mirrored 45-degree stripe is a 135-degree one, another class."""

    max_pixels: int

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shifts = torch.randint(-self.max_pixels, self.max_pixels + 1, (2,), generator=generator).tolist()
        return torch.roll(x, shifts=shifts, dims=(2, 3))


class DistillationLoss(nn.Module):
    """DeiT's loss (facebookresearch/deit, losses.py): `base_criterion` on the class head, and on the distillation
    head the teacher's softened output (``soft``: KL at temperature `tau`) or its argmax (``hard``), weighted `alpha`
    against 1 - `alpha`. With ``none`` the distillation head learns the labels (DeiT's own leaves it untrained), so
    the control differs from the distilled students in that head's target only. A single output (a model without a
    distillation head, such as the teacher) gets `base_criterion` alone."""

    def __init__(self, base_criterion: Callable, teacher: nn.Module | None = None, distillation_type: str = "none",
                 alpha: float = 0.5, tau: float | None = None):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type {distillation_type!r} is not one of {DISTILLATION_TYPES}")
        if distillation_type != "none" and teacher is None:
            raise ValueError(f"{distillation_type} distillation needs a teacher")
        if distillation_type == "soft" and not tau:
            raise ValueError("soft distillation needs a temperature tau")
        self.base_criterion, self.teacher, self.distillation_type = base_criterion, teacher, distillation_type
        self.alpha, self.tau = alpha, tau

    def forward(self, inputs: torch.Tensor, outputs, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base_criterion(outputs, labels)
        cls_logits, dist_logits = outputs
        base = self.base_criterion(cls_logits, labels)
        if self.distillation_type == "none":
            return (1 - self.alpha) * base + self.alpha * self.base_criterion(dist_logits, labels)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        if self.distillation_type == "hard":
            distillation = F.cross_entropy(dist_logits, teacher_logits.argmax(-1))
        else:
            tau = self.tau
            distillation = F.kl_div(F.log_softmax(dist_logits / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                                    reduction="batchmean", log_target=True) * tau**2
        return (1 - self.alpha) * base + self.alpha * distillation


def deit_loss(distillation_type: str, teacher: nn.Module | None) -> DistillationLoss:
    """The loss of a student whose distillation token follows `distillation_type`, with the paper's settings."""
    return DistillationLoss(F.cross_entropy, teacher, distillation_type, **SETTINGS[distillation_type])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, criterion: Callable, augment: Callable,
          lr: float = 2e-3, batch: int = 64) -> None:
    """AdamW with a one-cycle schedule; `criterion(inputs, outputs, labels)`; seeded, so a rerun gives the same
    weights."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            inputs = augment(x[idx], generator)
            loss = criterion(inputs, model(inputs), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def student_heads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The class head's and the distillation head's logits of a distilled DeiT (its output is their average)."""
    tokens = model.forward_features(x)
    return model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])


@dataclass(frozen=True)
class Head:
    """One head's top-1 on the test images, with its 95% bootstrap interval."""

    top1: float
    ci95: tuple[float, float] | None

    @classmethod
    def measure(cls, logits: torch.Tensor, y: torch.Tensor) -> Head:
        correct = (logits.argmax(-1) == y).numpy()
        return cls(float(correct.mean()), accuracy_interval(correct))


@dataclass(frozen=True)
class TrainingReport:
    """What a distillation run measured, in the one shape both fixtures ship: the teacher, and for each distillation
    type its student's class, distillation and average heads (None: a head that was not recorded)."""

    task: str  # a phrase that says what the images are
    classes: tuple[str, ...]
    train_images: int
    test_images: int
    epochs: int
    teacher_epochs: int
    teacher: Head
    students: dict[str, dict[str, Head | None]]  # distillation type -> head name (HEADS) -> accuracy
    distillation: dict[str, dict[str, float | None]]  # distillation type -> its loss settings (alpha, tau)
    params: int  # the student's
    shipped: str  # the distillation type of the student saved as the catalog's model
    train_seconds: float = field(compare=False)

    @property
    def shipped_top1(self) -> float:
        """The catalog model's top-1: the shipped student's average head, DeiT's output."""
        return self.students[self.shipped]["average"].top1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> TrainingReport:
        def head(found: dict | None) -> Head | None:
            return None if found is None else Head(found["top1"], tuple(found["ci95"]) if found["ci95"] else None)

        return cls(**{**data, "classes": tuple(data["classes"]), "teacher": head(data["teacher"]),
                      "students": {mode: {name: head(h) for name, h in heads.items()}
                                   for mode, heads in data["students"].items()}})

    @classmethod
    def load(cls, path: Path | str) -> TrainingReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Recipe:
    """One fixture's distillation run: its task, teacher, schedules and augmentation."""

    task: str
    classes: tuple[str, ...]
    build_student: Callable[[], nn.Module]
    teacher_channels: tuple[int, ...]
    max_shift: int
    epochs: int
    teacher_epochs: int
    teacher_lr: float = 2e-3
    lr: float = 2e-3
    types: tuple[str, ...] = DISTILLATION_TYPES  # the last is the one shipped


def distill(recipe: Recipe, train_set: tuple[torch.Tensor, torch.Tensor], test_set: tuple[torch.Tensor, torch.Tensor],
            log: Callable[[str], None] = lambda line: None) -> tuple[dict[str, nn.Module], TrainingReport]:
    """Train the teacher, then one student per distillation type; returns the students and the report."""
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = train_set, test_set
    augment = RandomShift(recipe.max_shift)
    torch.manual_seed(SEED)
    teacher = build_teacher(len(recipe.classes), recipe.teacher_channels)
    train(teacher, x_train, y_train, recipe.teacher_epochs, DistillationLoss(F.cross_entropy), augment,
          lr=recipe.teacher_lr)
    with torch.no_grad():
        teacher_head = Head.measure(teacher(x_test), y_test)
    log(f"teacher: {teacher_head.top1:.2%} after {time.perf_counter() - start:.0f} s")
    students, heads = {}, {}
    for mode in recipe.types:
        torch.manual_seed(SEED)  # same initial weights and data order for every type: only the target differs
        student = recipe.build_student()
        student.set_distilled_training(True)  # in training mode it answers (class logits, distillation logits)
        train(student, x_train, y_train, recipe.epochs, deit_loss(mode, teacher), augment, lr=recipe.lr)
        student.set_distilled_training(False)  # as the catalog builds it
        with torch.no_grad():
            cls_logits, dist_logits = student_heads(student, x_test)
        heads[mode] = {"class": Head.measure(cls_logits, y_test), "distillation": Head.measure(dist_logits, y_test),
                       "average": Head.measure((cls_logits + dist_logits) / 2, y_test)}
        students[mode] = student
        log(f"student ({mode}): average head {heads[mode]['average'].top1:.2%} after "
            f"{time.perf_counter() - start:.0f} s")
    shipped = recipe.types[-1]
    report = TrainingReport(
        task=recipe.task, classes=tuple(recipe.classes), train_images=len(y_train), test_images=len(y_test),
        epochs=recipe.epochs, teacher_epochs=recipe.teacher_epochs, teacher=teacher_head, students=heads,
        distillation={mode: dict(SETTINGS[mode]) for mode in recipe.types},
        params=sum(p.numel() for p in students[shipped].parameters()), shipped=shipped,
        train_seconds=time.perf_counter() - start)
    return students, report


def save(students: dict[str, nn.Module], report: TrainingReport, out: Path | str) -> None:
    """The shipped student as a safetensors checkpoint (its report in the metadata) and the report beside it."""
    from deit_demo.core.models import save_weights

    out = Path(out)
    save_weights(students[report.shipped], out, metadata={"report": json.dumps(asdict(report))})
    out.with_suffix(".json").write_text(report.to_json())


def report_lines(report: TrainingReport) -> list[str]:
    """The report as a trainer prints it."""
    def text(head: Head | None) -> str:
        if head is None:
            return "not recorded"
        return f"{head.top1:.2%}" + (f" [{head.ci95[0]:.2%}, {head.ci95[1]:.2%}]" if head.ci95 else "")

    lines = [f"teacher (CNN): {text(report.teacher)}"]
    lines += [f"{mode:>5}: " + "  ".join(f"{name} {text(head)}" for name, head in heads.items())
              for mode, heads in report.students.items()]
    lines.append(f"{report.test_images} test images, {report.params} parameters, {report.train_seconds:.0f} s")
    return lines
