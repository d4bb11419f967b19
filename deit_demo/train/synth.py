"""Procedural textures: a 10-class image task drawn here, offline and deterministically, hard enough to show a loss.

Each 64x64 image holds one texture (the class) inside a random elliptical region on a gradient background: stripes
at four orientations, a checkerboard, dots, a grid, concentric rings, waves and blobs. Every image varies the
texture's scale (period), rotation (up to +-15 degrees, so neighbouring stripe orientations stay apart but close),
phase, colours and contrast (sometimes low), adds clutter (lines and dots) and pixel noise. Low contrast under heavy
noise makes some images genuinely ambiguous, so even a good model stays below 100% and a reduced-precision or
token-merged variant can lose accuracy visibly. The background outside the region carries no class signal, as in
a photograph, which is what token merging exploits.

Image ``i`` of a split is drawn from its own seed ``(SEED, split, i)``: the same index always gives the same image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

IMG = 64
SEED = 0
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
CLASSES = ("stripes 0°", "stripes 45°", "stripes 90°", "stripes 135°", "checker", "dots", "grid", "rings", "waves",
           "blobs")
SPLITS = {"train": 1, "test": 2, "examples": 3}
_YY, _XX = np.mgrid[0:IMG, 0:IMG].astype(np.float32)


def texture(name: str, rng: np.random.Generator) -> np.ndarray:
    """A (64, 64) pattern in 0..1 for class `name`, with random period, rotation, phase and centre."""
    period = rng.uniform(5.0, 11.0)
    jitter = np.deg2rad(rng.uniform(-15, 15))
    phase = rng.uniform(0, 2 * np.pi)
    angle = {"stripes 0°": 0, "stripes 45°": 45, "stripes 90°": 90, "stripes 135°": 135}.get(name)
    theta = (np.deg2rad(angle) if angle is not None else rng.uniform(0, np.pi)) + jitter
    u = _XX * np.cos(theta) + _YY * np.sin(theta)
    v = -_XX * np.sin(theta) + _YY * np.cos(theta)
    k = 2 * np.pi / period
    if angle is not None:
        wave = np.sin(k * v + phase)
    elif name == "checker":
        wave = np.sin(k * u + phase) * np.sin(k * v + phase) * 2
    elif name == "dots":
        wave = (np.sin(k * u + phase) * np.sin(k * v) > 0.45) * 2.0 - 1
    elif name == "grid":
        wave = ((np.abs(np.sin(k * u / 2 + phase)) < 0.35) | (np.abs(np.sin(k * v / 2)) < 0.35)) * 2.0 - 1
    elif name == "rings":
        cx, cy = rng.uniform(8, 56, 2)
        wave = np.sin(k * np.hypot(_XX - cx, _YY - cy) + phase)
    elif name == "waves":
        wave = np.sin(k * (v + rng.uniform(2.0, 4.0) * np.sin(2 * np.pi * u / rng.uniform(14, 24))) + phase)
    elif name == "blobs":
        wave = sum(np.sin(rng.uniform(0.15, 0.35) * (_XX * np.cos(a) + _YY * np.sin(a)) + rng.uniform(0, 6.3))
                   for a in rng.uniform(0, np.pi, 4)) / 2
    else:
        raise ValueError(name)
    return np.clip(0.5 + 0.5 * np.tanh(2.5 * wave), 0, 1)


def render(split: str, index: int) -> tuple[Image.Image, int]:
    """Image `index` of `split` and its class index; the same arguments always give the same pixels."""
    rng = np.random.default_rng((SEED, SPLITS[split], index))
    label = int(rng.integers(len(CLASSES)))
    base = rng.uniform(30, 225, 3)
    tilt = rng.uniform(-40, 40, 3)
    axis = (_XX if rng.random() < 0.5 else _YY) / IMG - 0.5
    background = base + axis[..., None] * tilt
    # the texture's two colours: around the background, contrast random and sometimes low
    contrast = rng.uniform(25, 110)
    dark = base - contrast / 2 + rng.uniform(-25, 25, 3)
    light = base + contrast / 2 + rng.uniform(-25, 25, 3)
    pattern = texture(CLASSES[label], rng)[..., None]
    textured = dark + pattern * (light - dark)
    cx, cy = rng.uniform(20, 44, 2)
    rx, ry = rng.uniform(16, 34, 2)
    region = (((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1)[..., None]
    pixels = np.where(region, textured, background)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):  # clutter: lines and dots across everything
        x0, y0, x1, y1 = rng.uniform(0, IMG, 4).tolist()
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(1.5, 4)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(4, 30), (IMG, IMG, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB"), label


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> (N, 3, 64, 64) in the model's normalisation (what `images.preprocess` gives at crop 1.0)."""
    pixels = torch.as_tensor(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def split(name: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for the first `count` images of a split."""
    pairs = [render(name, i) for i in range(count)]
    return to_tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


TEST_IMAGES = 1200
# The student: a DeiT with a distillation token; 64 px in patches of 8 gives 64 patch tokens (+ class + distillation).
ARCH = dict(img_size=IMG, patch_size=8, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0, num_classes=len(CLASSES))


def build_student() -> torch.nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(**ARCH)


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out evaluation set: 1200 images, never seen in training."""
    return split("test", TEST_IMAGES)
