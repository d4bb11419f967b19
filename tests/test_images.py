import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deit_demo import DeitDemoError
from deit_demo.core.images import decode_image, load_image, preprocess
from deit_demo.core.models import MODELS
from tests.image_corpus import corpus, exif_rotated

CASES = corpus()


@pytest.mark.parametrize("name,data,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_and_awkward_images(name, data, expected):
    start = time.perf_counter()
    if expected == "ok":
        image = decode_image(data)
        assert image.mode == "RGB" and image.width >= 1
    else:
        with pytest.raises(DeitDemoError, match=expected):
            decode_image(data)
    assert time.perf_counter() - start < 5


def test_sixteen_bit_is_scaled_not_saturated():
    data = np.full((4, 4), 32768, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, "PNG")
    pixel = decode_image(buf.getvalue()).getpixel((0, 0))
    assert 120 <= pixel[0] <= 135  # half of full scale, not 255


def test_transparency_composited_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, "PNG")
    assert decode_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied():
    image = decode_image(exif_rotated())
    assert image.size == (20, 40)  # landscape 40x20 stored, portrait shown
    top = image.getpixel((10, 5))
    assert top[2] > 200 and top[0] < 60  # the blue half ends up on top after a 90° clockwise turn


def test_cmyk_becomes_rgb_colour():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, "JPEG")
    r, g, b = decode_image(buf.getvalue()).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # pure red


def test_missing_file_and_pil_input(tmp_path):
    with pytest.raises(DeitDemoError, match="neither an http\\(s\\) URL nor an existing image file"):
        load_image(tmp_path / "nope.jpg")
    assert load_image(Image.new("L", (5, 5))).mode == "RGB"


@pytest.mark.parametrize("key", ["deit_tiny", "deit_base_384"])
def test_preprocess_equals_the_tutorial_torchvision_pipeline(key):
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import transforms

    spec = MODELS[key]
    size = spec.input_size
    tutorial = transforms.Compose([  # as in the original DeiT tutorial (256 -> 224; 384 models crop 1.0)
        transforms.Resize(int(size / spec.crop_pct), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])
    for path in ["assets/chelsea_cat.jpg", "assets/grace_hopper.jpg"]:
        image = load_image(path)
        ours = preprocess(image, spec)
        assert ours.shape == (1, 3, size, size)
        torch.testing.assert_close(ours, tutorial(image).unsqueeze(0), atol=1e-6, rtol=0)
    assert MODELS["deit_tiny"].resize_size == 256
