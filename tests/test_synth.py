"""deit_synth: the distilled DeiT trained here on procedural textures, the fixture that can tell variants apart."""

import json

import numpy as np
import pytest
import torch

from deit_demo.core.models import MODELS, load_model
from deit_demo.core.paths import ASSETS
from deit_demo.core.stats import accuracy_interval
from deit_demo.measure.evaluate import EVAL_BATCH, eval_batch, evaluate
from deit_demo.train import synth
from deit_demo.train.distill import DISTILLATION_TYPES, HEADS, TrainingReport, save
from deit_demo.variants import VARIANTS
from deit_demo.variants.pipeline import prepare_variants

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
    assert report_a == report_b and report_a.students["hard"]["average"].ci95[0] <= 1  # seconds aside


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


def test_the_committed_distillation_report_compares_three_settings_with_intervals():
    report = TrainingReport.load(ASSETS / "deit_synth.json")
    assert set(report.students) == set(DISTILLATION_TYPES) and report.test_images >= 1000
    for heads in report.students.values():
        assert set(heads) == set(HEADS)
        for head in heads.values():
            assert head.ci95[0] <= head.top1 <= head.ci95[1]
    assert report.teacher.top1 > 0.8 and report.distillation["soft"] == {"alpha": 0.1, "tau": 3.0}
    assert report.train_seconds < 15 * 60


def test_the_about_tab_renders_each_committed_training_report_alike():
    from deit_demo.app.about import about_markdown

    text = about_markdown()
    for key in ("deit_digits", "deit_synth"):
        report = TrainingReport.load(MODELS[key].report)
        section = text.split(f"## Distillation, measured here: `{key}`")[1].split("\n## ")[0]
        assert f"**{report.test_images} held-out test images**" in section and f"{report.teacher.top1:.2%}" in section
        rows = [line for line in section.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:]
                in report.students]
        assert [row.split(" | ")[0][2:] for row in rows] == list(report.students)
        for row, heads in zip(rows, report.students.values()):
            cells = row.strip("| ").split(" | ")[1:]
            assert [c.split(" [")[0] for c in cells] == [f"{h.top1:.2%}" if h else "not recorded" for h in
                                                         heads.values()]
        assert f"`{key}` is the **{report.shipped}** student" in section
    assert "not recorded" in text  # the digits report predates recording the control's two heads
    # each verdict reads the intervals: on digits the control leads, on textures soft distillation; neither clearly
    assert "The control (no teacher) scored highest, 0.3 points above **hard** distillation, but their" in text
    assert "**soft** distillation scored highest, but its interval overlaps the control's" in text


def shape(value):
    """A JSON document's structure: its keys and the types of its values, not the values."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def test_a_short_training_run_writes_the_committed_report_and_settings(tmp_path):
    # The committed report came from this code: a run on a few images writes a report of the same shape, with the
    # same task, classes, loss settings, shipped type and student size (what does not depend on the data's size).
    from deit_demo.train import distill_synth as train_synth

    students, report = train_synth.run(epochs=1, teacher_epochs=1, train_images=96, test_images=64)
    save(students, report, tmp_path / "deit_synth.safetensors")
    written = json.loads((tmp_path / "deit_synth.json").read_text())
    assert shape(written) == shape(REPORT)
    same = ("task", "classes", "distillation", "shipped", "params")
    assert {k: written[k] for k in same} == {k: REPORT[k] for k in same}
    recipe = train_synth.RECIPE  # and the trainer's defaults are the committed run's
    assert (recipe.epochs, recipe.teacher_epochs, train_synth.TRAIN_IMAGES, synth.TEST_IMAGES) == (
        REPORT["epochs"], REPORT["teacher_epochs"], REPORT["train_images"], REPORT["test_images"])
    assert TrainingReport.load(tmp_path / "deit_synth.json") == report and report.test_images == 64
    from safetensors import safe_open

    with safe_open(str(tmp_path / "deit_synth.safetensors"), "pt") as checkpoint:
        assert json.loads(checkpoint.metadata()["report"]) == written
    shipped = load_model("deit_synth", tmp_path / "deit_synth.safetensors")  # into the catalog's architecture
    x, y = synth.split("test", 64)
    with torch.no_grad():
        assert (shipped.model(x).argmax(-1) == y).float().mean().item() == pytest.approx(report.shipped_top1)


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


def test_the_committed_examples_are_what_the_code_draws(tmp_path):
    from deit_demo.train.distill_synth import save_examples

    written = save_examples(tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in SPEC.example_paths()]
    for path in written:
        assert path.read_bytes() == (ASSETS / "synth" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("key", list(VARIANTS))
def test_batched_answers_are_each_images_own_where_evaluation_batches(key, loaded, store, accuracy_rows):
    # Accuracy runs EVAL_BATCH images per call wherever a variant says its answers do not depend on the batch (as
    # batched serving shares a pass between visitors): check it against one image per call. 100 images are enough:
    # what makes a batch matter (activation scales taken over the batch) moves every image's logits, not a rare one.
    variant = VARIANTS[key]
    if eval_batch(variant) == 1 or accuracy_rows[key].status != "ok":
        pytest.skip(f"{key} is evaluated one image per call" if eval_batch(variant) == 1 else f"{key} did not run")
    item = next(prepare_variants(loaded, [key], store))
    assert item.reused  # the file the accuracy test converted
    x = synth.split("test", 100)[0].contiguous()
    with torch.inference_mode():
        alone = torch.cat([item.runner(x[i:i + 1]).float().reshape(1, -1) for i in range(len(x))])
        batched = torch.cat([item.runner(x[i:i + EVAL_BATCH]).float().reshape(-1, alone.shape[1])
                             for i in range(0, len(x), EVAL_BATCH)])
    assert torch.equal(alone.argmax(-1), batched.argmax(-1))
    assert (alone - batched).abs().max() < 1e-3  # float reassociation, not another computation


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
