"""The catalog entries of the models trained here (deit_digits, deit_synth): registered into the catalog on import,
with their builders, labelled test sets and training reports."""

from __future__ import annotations

from pathlib import Path

import deit_demo.train.digits as train_digits
import deit_demo.train.synth as synth
from deit_demo.core.models import QUICK_VARIANTS, ModelSpec, register_model
from deit_demo.core.paths import ASSETS
from deit_demo.train.distill import TrainingReport


def _top1(report: Path) -> float:
    """The catalog's top-1 (percent): the shipped student's, from its training report."""
    return TrainingReport.load(report).shipped_top1 * 100 if report.is_file() else float("nan")


def _digits_spec() -> ModelSpec:
    report = ASSETS / "deit_digits.json"
    return ModelSpec(key="deit_digits", timm_name="deit_digits_patch8_32", tag="bundled",
                     label="DeiT-digits ⚗ (offline demo)", params=148_948, input_size=train_digits.IMG,
                     distilled=True, top1=_top1(report), family="trained here", crop_pct=1.0,
                     mean=train_digits.DIGIT_MEAN, std=train_digits.DIGIT_STD,
                     accuracy_source="measured here: digits test split, 360 images (assets/deit_digits.json)",
                     num_classes=10, labels=tuple(str(d) for d in range(10)),
                     bundled=str(train_digits.CHECKPOINT), builder=train_digits.build_student,
                     examples="digits/*.png", eval_set=train_digits.test_set, eval_name="digits test split",
                     report=str(report), quick_variants=tuple(QUICK_VARIANTS), tome_r=2)


def _synth_spec() -> ModelSpec:
    report = ASSETS / "deit_synth.json"
    return ModelSpec(key="deit_synth", timm_name="deit_synth_patch8_64", tag="bundled",
                     label="DeiT-synth ⚗ (textures, trained here)", params=218_964, input_size=synth.IMG,
                     distilled=True, top1=_top1(report), family="trained here", crop_pct=1.0, mean=synth.MEAN,
                     std=synth.STD,
                     accuracy_source=f"measured here: textures test split, {synth.TEST_IMAGES} images "
                                     "(assets/deit_synth.json)",
                     num_classes=len(synth.CLASSES), labels=synth.CLASSES, builder=synth.build_student,
                     bundled=str(ASSETS / "deit_synth.safetensors"), examples="synth/*.png", eval_set=synth.test_set,
                     eval_name="synthetic textures test split", report=str(report),
                     tome_r=4)  # the largest r that cost <= 1 point on its 1200 test images (tome-sweep)


register_model(_digits_spec())
register_model(_synth_spec())
