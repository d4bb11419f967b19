"""The DeiT trained here (assets/deit_digits.safetensors) and accuracy per variant on labelled data."""

import json
import shutil

import pytest

from deit_demo.core.models import MODELS, load_model
from deit_demo.core.paths import ASSETS
from deit_demo.measure.evaluate import evaluate, folder_set
from deit_demo.train.distill import TrainingReport
from deit_demo.variants import VARIANTS
from tests.test_synth import shape

# A few representatives; every variant's accuracy is measured on deit_synth (test_synth), the fixture that can tell
# variants apart, so the digits model is not converted 17 times.
DIGITS_VARIANTS = ["original", "scripted", "scripted_int8", "onnx_int8", "openvino_int8"]


@pytest.fixture(scope="module")
def digits():
    return load_model("deit_digits")  # "hub" means the bundled checkpoint for this model


@pytest.fixture(scope="module")
def accuracy_rows(digits, store):
    return {r.variant: r for r in evaluate(digits, DIGITS_VARIANTS, store)}


def test_bundled_checkpoint_is_reported_as_such(digits):
    assert digits.weights == "checkpoint:deit_digits.safetensors"
    assert MODELS["deit_digits"].distilled and MODELS["deit_digits"].labels == tuple("0123456789")


def test_student_reaches_85_percent_on_the_test_split(accuracy_rows):
    original = accuracy_rows["original"]
    assert original.n_images == 360 and original.top1 >= 0.85
    report = TrainingReport.load(ASSETS / "deit_digits.json")
    assert original.top1 == pytest.approx(report.shipped_top1, abs=1e-6)  # the committed report is true


@pytest.mark.parametrize("key", DIGITS_VARIANTS)
def test_accuracy_per_variant(key, accuracy_rows):
    row = accuracy_rows[key]
    variant = VARIANTS[key]
    if not variant.available()[0]:
        assert row.status == "unavailable" and row.reason
        pytest.skip(f"{key} is unavailable in this build: {row.reason}")
    assert row.status == "ok", row.reason
    drop_points = 100 * (accuracy_rows["original"].top1 - row.top1)
    limit = {"int8": 1.0, "bf16": 0.5, "fp32": 100 / 360}[variant.precision]  # fp32: at most one image of 360
    if key == "scripted":
        limit = 0.0
    assert drop_points <= limit + 1e-9, f"{key} lost {drop_points:.2f} points"
    assert 0 <= row.top5 <= 1 and row.top5 >= row.top1


def test_image_folder_by_class_index(digits, store, tmp_path):
    for path in sorted((ASSETS / "digits").glob("digit_*.png")):
        folder = tmp_path / path.stem.split("_")[1]
        folder.mkdir()
        shutil.copy(path, folder / path.name)
    rows = evaluate(digits, ["original", "onnx_int8"], store, tmp_path)
    assert [r.n_images for r in rows] == [10, 10]
    assert rows[0].top1 >= 0.9


def test_image_folder_by_synset_and_bad_folder(tiny, tmp_path):
    from deit_demo import DeitDemoError

    (tmp_path / "n02123045").mkdir()
    shutil.copy(ASSETS / "chelsea_cat.jpg", tmp_path / "n02123045" / "cat.jpg")
    dataset = folder_set(tiny.spec, tmp_path)
    (x, label), = list(dataset.items())
    assert label == 281 and x.shape == (1, 3, 224, 224)  # n02123045 is ImageNet class 281, tabby cat
    (tmp_path / "cats").mkdir()
    with pytest.raises(DeitDemoError, match="synset"):
        folder_set(tiny.spec, tmp_path)


@pytest.mark.slow
def test_training_script_runs_and_distills():
    from deit_demo.train import digits as train_digits

    students, report = train_digits.run(epochs=2, teacher_epochs=5)
    assert report.teacher.top1 > 0.8  # a CNN learns digits in five epochs; the student gets its argmax as labels
    assert 0.1 <= report.shipped_top1 <= 1 and report.params == MODELS["deit_digits"].params
    assert set(students[report.shipped].state_dict()) == set(load_model("deit_digits").model.state_dict())
    # the committed report's shape and settings; it predates recording the control's class and distillation heads
    committed = json.loads((ASSETS / "deit_digits.json").read_text())
    written = json.loads(report.to_json())
    written["students"]["none"].update({"class": None, "distillation": None})
    assert shape(written) == shape(committed)
    same = ("task", "classes", "distillation", "shipped", "params", "train_images", "test_images")
    assert {k: written[k] for k in same} == {k: committed[k] for k in same}
    assert (train_digits.RECIPE.epochs, train_digits.RECIPE.teacher_epochs) == (committed["epochs"],
                                                                                committed["teacher_epochs"])
