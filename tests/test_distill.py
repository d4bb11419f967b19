"""The training pieces both fixtures share (deit_demo.train.distill): DeiT's loss per distillation type, the teacher
builder, the shift augmentation and the report format."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deit_demo.train import digits, distill_synth
from deit_demo.train.distill import DistillationLoss, Head, RandomShift, TrainingReport, build_teacher, deit_loss


class Fixed(torch.nn.Module):
    """A teacher that answers given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    cls_logits, dist_logits, teacher_logits = (torch.randn(6, 4, generator=generator) for _ in range(3))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    return torch.zeros(6, 3, 8, 8), (cls_logits, dist_logits), labels, teacher_logits


def test_each_distillation_type_sets_the_distillation_heads_target(batch):
    inputs, (cls_logits, dist_logits), labels, teacher_logits = batch
    teacher = Fixed(teacher_logits)
    on_labels = F.cross_entropy(cls_logits, labels)
    expected = {
        "none": 0.5 * on_labels + 0.5 * F.cross_entropy(dist_logits, labels),
        "hard": 0.5 * on_labels + 0.5 * F.cross_entropy(dist_logits, teacher_logits.argmax(-1)),
        # the DeiT paper's soft setting: lambda = 0.1, KL at tau = 3, scaled by tau squared, averaged over the batch
        "soft": 0.9 * on_labels + 0.1 * 9 * (F.softmax(teacher_logits / 3, -1) * (
            F.log_softmax(teacher_logits / 3, -1) - F.log_softmax(dist_logits / 3, -1))).sum(-1).mean(),
    }
    for mode, value in expected.items():
        assert deit_loss(mode, teacher)(inputs, (cls_logits, dist_logits), labels) == pytest.approx(value.item()), mode
    # one head (the teacher's own training): the base criterion only
    assert DistillationLoss(F.cross_entropy)(inputs, cls_logits, labels) == pytest.approx(on_labels.item())


def test_a_distillation_loss_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="distillation_type"):
        DistillationLoss(F.cross_entropy, None, "medium")
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss(F.cross_entropy, None, "hard")
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(F.cross_entropy, Fixed(None), "soft", alpha=0.1)


def test_one_builder_makes_both_teachers():
    # the architectures the committed students were distilled from (parameters counted on the earlier classes)
    for recipe, params in ((digits.RECIPE, 94_986), (distill_synth.RECIPE, 242_826)):
        teacher = build_teacher(len(recipe.classes), recipe.teacher_channels)
        assert sum(p.numel() for p in teacher.parameters()) == params
        blocks = ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] * (len(recipe.teacher_channels) - 1)
        assert [type(m).__name__ for m in teacher] == blocks + ["Conv2d", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d",
                                                                "Flatten", "Dropout", "Linear"]
        size = 32 if recipe is digits.RECIPE else 64
        assert teacher(torch.zeros(2, 3, size, size)).shape == (2, len(recipe.classes))


def test_a_shift_moves_the_whole_batch_by_at_most_its_maximum():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 8, 8] = 1
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        rows, cols = torch.nonzero(RandomShift(3)(x, generator)[0, 0], as_tuple=True)
        seen.add((int(rows) - 8, int(cols) - 8))
    assert seen == {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}


def test_the_report_round_trips_through_json(tmp_path):
    head = Head(0.5, (0.4, 0.6))
    report = TrainingReport(task="t", classes=("a", "b"), train_images=4, test_images=2, epochs=1, teacher_epochs=1,
                            teacher=head, students={"none": {"class": None, "distillation": head, "average": head}},
                            distillation={"none": {"alpha": 0.5, "tau": None}}, params=3, shipped="none",
                            train_seconds=1.0)
    (tmp_path / "r.json").write_text(report.to_json())
    assert TrainingReport.load(tmp_path / "r.json") == report and report.shipped_top1 == 0.5


@pytest.mark.parametrize("key", ["deit_digits", "deit_synth"])
def test_the_committed_checkpoints_carry_their_committed_report(key):
    import json

    from safetensors import safe_open

    from deit_demo.core.models import MODELS

    spec = MODELS[key]
    with safe_open(spec.bundled, "pt") as checkpoint:
        assert json.loads(checkpoint.metadata()["report"]) == json.loads(Path(spec.report).read_text())
