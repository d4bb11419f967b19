"""Writes the golden tensors the page's preprocessing is tested against in Node (tests/js/preprocess.test.mjs):
bundled example images decoded by PIL (RGB bytes in, since Node decodes no JPEG) and the float32 tensor
`deit_demo.core.images.preprocess` makes of them. tests/test_golden_tensors.py checks the committed files still match.

    python scripts/golden_tensors.py   # after a deliberate change to preprocessing or to PIL (pip install -e .)

Small models' tensors are stored whole; the 224-pixel model's (600 KB) as its sha256 and three rows per channel.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from deit_demo.core.images import load_image, preprocess
from deit_demo.core.models import MODELS
from deit_demo.service.device import page_spec

FOLDER = Path(__file__).resolve().parents[1] / "tests" / "js" / "golden"
# (model, example index, tensor stored whole): no resampling (synth), a 4x downscale (digits), a wide photo resized
# and cropped to 224 (DeiT-Ti)
CASES = (("deit_synth", 0, True), ("deit_digits", 0, True), ("deit_tiny", 1, False))
SPEC_KEYS = ("key", "input_size", "resize_size", "interpolation", "mean", "std")


def up_filtered(rgb: np.ndarray) -> bytes:
    """PNG's Up filter (each row minus the one above, mod 256): a photo's pixels then compress to about half."""
    out = rgb.astype(np.int16)
    out[1:] -= rgb[:-1].astype(np.int16)
    return (out % 256).astype(np.uint8).tobytes()


def case(model: str, index: int, whole: bool) -> dict[str, bytes]:
    """One case's files: name -> bytes."""
    spec = MODELS[model]
    path = spec.example_paths()[index]
    image = load_image(path)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    tensor = preprocess(image, spec).numpy().astype("<f4")
    size = spec.input_size
    channels = tensor.reshape(3, size, size)
    rows = sorted({0, size // 2, size - 1})
    meta = {"model": model, "image": path.name, "width": image.width, "height": image.height,
            "spec": {k: page_spec(spec, ())[k] for k in SPEC_KEYS}, "rgb": "up-filtered, gzip",
            "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "tensor_sha256": hashlib.sha256(tensor.tobytes()).hexdigest(),
            # each value as its shortest float32 text: read back as float32, it is the same number
            "rows": {str(r): [[float(str(v)) for v in channels[c, r]] for c in range(3)]
                     for r in ([] if whole else rows)}}
    stem = f"{model}-{path.stem}"
    files = {f"{stem}.json": (json.dumps(meta) + "\n").encode(),
             f"{stem}.rgb.gz": gzip.compress(up_filtered(rgb), 9, mtime=0)}
    if whole:
        files[f"{stem}.f32.gz"] = gzip.compress(tensor.tobytes(), 9, mtime=0)
    return files


def golden_files() -> dict[str, bytes]:
    return {name: data for c in CASES for name, data in case(*c).items()}


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, data in golden_files().items():
        (FOLDER / name).write_bytes(data)
        print(f"{FOLDER / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
