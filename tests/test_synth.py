"""deit_synth: the distilled DeiT trained here on procedural textures, the fixture that can tell variants apart."""

import json

import numpy as np
import pytest
import torch

from deit_demo.core.models import MODELS, load_model
from deit_demo.core.paths import ASSETS
from deit_demo.core.stats import accuracy_interval
from deit_demo.measure.evaluate import evaluate
from deit_demo.train import synth
from deit_demo.variants import VARIANTS

SPEC = MODELS["deit_synth"]
REPORT = json.loads((ASSETS / "deit_synth.json").read_text())
# Allowed top-1 loss in points against the original: dynamic int8 and bf16 as the issue sets them; a variant that
# computes the same fp32 graph (scripted) must be exact; other fp32 runtimes may differ by float reassociation only.
LIMITS = {"int8": 1.0, "bf16": 0.5, "fp16": 0.5, "fp32": 100 / synth.TEST_IMAGES}


@pytest.fixture(scope="module")
def loaded():
    return load_model("deit_synth")


@pytest.fixture(scope="module")
def accuracy_rows(loaded, store):
    return {r.variant: r for r in evaluate(loaded, list(VARIANTS), store)}


def test_the_fixture_meets_its_design(loaded):
    assert loaded.weights == "checkpoint:deit_synth.safetensors"
    assert loaded.model.patch_embed.num_patches >= 64 and SPEC.distilled
    assert (ASSETS / "deit_synth.safetensors").stat().st_size <= 10 * 2**20
    assert sum(p.numel() for p in loaded.model.parameters()) == SPEC.params
    x, y = synth.test_set()
    assert len(y) == synth.TEST_IMAGES >= 1000 and x.shape[1:] == (3, synth.IMG, synth.IMG)
    assert sorted(set(y.tolist())) == list(range(len(synth.CLASSES)))  # every class is tested


def test_rendering_is_deterministic_and_splits_differ():
    first, label = synth.render("test", 7)
    again, label_again = synth.render("test", 7)
    assert label == label_again and np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(synth.render("train", 7)[0]))


def test_the_same_seed_trains_the_same_student():
    from deit_demo.train import distill_synth as train_synth

    kwargs = dict(epochs=1, teacher_epochs=1, train_images=96, test_images=64, modes=("hard",))
    students_a, report_a = train_synth.run(**kwargs)
    students_b, report_b = train_synth.run(**kwargs)
    for (name, a), b in zip(students_a["hard"].state_dict().items(), students_b["hard"].state_dict().values()):
        assert torch.equal(a, b), name
    report_a.pop("train_seconds"), report_b.pop("train_seconds")
    assert report_a == report_b and report_a["students"]["hard"]["average"]["ci95"][0] <= 1


def test_accuracy_band_and_the_committed_report_is_true(accuracy_rows):
    original = accuracy_rows["original"]
    assert original.n_images == synth.TEST_IMAGES
    assert 0.80 <= original.top1 <= 0.97, f"fp32 top-1 {original.top1:.2%} is outside the 80-97% band"
    shipped = REPORT["students"][REPORT["shipped"]]["average"]
    assert original.top1 == pytest.approx(shipped["top1"], abs=1e-9)
    assert SPEC.top1 == pytest.approx(100 * shipped["top1"])


def test_intervals_are_computed_on_every_test_image(accuracy_rows):
    original = accuracy_rows["original"]
    low, high = original.top1_ci95
    assert low < original.top1 < high
    # a 95% interval of a proportion over n images is about 2 * 1.96 * sqrt(p (1 - p) / n) wide
    expected = 2 * 1.96 * (original.top1 * (1 - original.top1) / synth.TEST_IMAGES) ** 0.5
    assert 0.8 * expected < high - low < 1.2 * expected
    assert accuracy_interval([1, 0] * 500) == pytest.approx((0.469, 0.531), abs=0.005)


def test_distillation_report_compares_three_settings_with_intervals():
    assert set(REPORT["students"]) == {"none", "soft", "hard"} and REPORT["test_images"] >= 1000
    for heads in REPORT["students"].values():
        assert set(heads) == {"class", "distillation", "average"}
        for head in heads.values():
            assert head["ci95"][0] <= head["top1"] <= head["ci95"][1]
    assert REPORT["teacher"]["top1"] > 0.8 and REPORT["soft"] == {"tau": 3.0, "lambda": 0.1}
    assert REPORT["train_seconds"] < 15 * 60


@pytest.mark.parametrize("key", list(VARIANTS))
def test_accuracy_cost_per_variant(key, accuracy_rows):
    row, variant = accuracy_rows[key], VARIANTS[key]
    if not variant.available()[0]:
        assert row.status == "unavailable" and row.reason
        pytest.skip(f"{key} is unavailable in this build: {row.reason}")
    assert row.status == "ok", row.reason
    assert row.n_images == synth.TEST_IMAGES and row.top5 >= row.top1
    drop_points = 100 * (accuracy_rows["original"].top1 - row.top1)
    # token merging at the model's default r: the r chosen because it cost at most one point (tome-sweep)
    limit = 0.0 if key == "scripted" else 1.0 if variant.lossy else LIMITS[variant.precision]
    assert drop_points <= limit + 1e-9, f"{key} lost {drop_points:.2f} points (limit {limit})"


def test_examples_are_in_the_gallery():
    from deit_demo.app.ui import gallery

    paths = SPEC.example_paths()
    rows = gallery("deit_base")
    assert len(paths) == len(synth.CLASSES) and all([str(p), "deit_synth"] in rows for p in paths[:4])
    assert all([str(p), "deit_base"] in rows for p in MODELS["deit_base"].example_paths())  # photos: the app's model


def test_tome_sweep_measures_each_r(loaded):
    from deit_demo.measure.bench import BenchSettings
    from deit_demo.measure.tome_sweep import tome_sweep

    rows = tome_sweep(loaded, [0, SPEC.tome_r], BenchSettings(runs=2, warmup=0, threads=1))
    assert [row.r for row in rows] == [0, SPEC.tome_r] and rows[0].top1_agreement == 1.0
    assert rows[0].tokens_last_block == 66 and rows[1].tokens_last_block == 66 - 6 * SPEC.tome_r
    assert rows[0].top1 == pytest.approx(REPORT["students"][REPORT["shipped"]]["average"]["top1"])
    assert rows[0].n_images == synth.TEST_IMAGES and len(rows[1].latency.samples_ms) == 2
    assert 100 * (rows[0].top1 - rows[1].top1) <= 1.0  # the default r costs at most one point
