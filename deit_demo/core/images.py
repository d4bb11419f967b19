"""Image input for a public server: files, bytes, PIL images and http(s) URLs (fetched by `urls`), checked before
they are trusted, then preprocessed for a model as its catalog entry says."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.core.models import ModelSpec
from deit_demo.core.urls import MAX_IMAGE_BYTES, FetchSettings, fetch_url

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_IMAGE_PIXELS = 40_000_000  # ~ 8000 x 5000; decoding one costs ~120 MB as RGB
ImageSource = str | Path | bytes | Image.Image


_WARNINGS_LOCK = threading.Lock()


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode `data` into an upright RGB image, refusing anything unsafe or unsupported."""
    if not data:
        raise DeitDemoError("The image is empty (0 bytes).")
    if len(data) > MAX_IMAGE_BYTES:
        raise DeitDemoError(f"The image is larger than the {MAX_IMAGE_BYTES // 2**20} MB limit.")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        # catch_warnings swaps the process's filter list: two threads inside at once could restore each other's
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            if image.width * image.height > max_pixels:
                raise DeitDemoError(
                    f"The image is {image.width}x{image.height} pixels; the limit is {max_pixels / 1e6:g} megapixels. "
                    "Please use a smaller image."
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated: classify the first frame
        image.load()  # the decoding itself, outside the lock: a batch's images decode side by side
        image = ImageOps.exif_transpose(image)
    except DeitDemoError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DeitDemoError("The image claims so many pixels that decoding it could exhaust memory.") from None
    except UnidentifiedImageError:
        raise DeitDemoError(f"This is not an image in a supported format ({', '.join(ALLOWED_FORMATS)}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        detail = str(err)[:120] or type(err).__name__
        raise DeitDemoError(f"The image file is damaged or truncated ({detail}).") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white and high bit depths scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def fetch_image_file(url: str, folder: Path, settings: FetchSettings = FetchSettings()) -> Path:
    """The image at `url` fetched and checked as `load_image` would, then kept as it came in `folder`, named by its
    content (so fetching it twice keeps one file)."""
    data = fetch_url(url, settings)
    decode_image(data)  # refuses what is not a supported, safe image before anything is written
    kind = Image.open(io.BytesIO(data)).format.lower()
    path = Path(folder) / f"url-{hashlib.sha256(data).hexdigest()[:16]}.{'jpg' if kind == 'jpeg' else kind}"
    path.write_bytes(data)
    return path


def is_url(source: ImageSource) -> bool:
    """Whether `load_image` would fetch `source` (any scheme://; fetch_url refuses all but http and https)."""
    return isinstance(source, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


def load_image(source: ImageSource, *, fetch: FetchSettings = FetchSettings()) -> Image.Image:
    """An RGB image from a path, bytes, a PIL image or an http(s) URL."""
    if isinstance(source, Image.Image):
        if source.width * source.height > MAX_IMAGE_PIXELS:
            raise DeitDemoError(f"The image is {source.width}x{source.height} pixels; please use a smaller one.")
        return to_rgb(ImageOps.exif_transpose(source) or source)
    if isinstance(source, (bytes, bytearray)):
        return decode_image(bytes(source))
    text = str(source)
    if is_url(text):
        return decode_image(fetch_url(text, fetch))
    try:
        found = len(text) <= 4096 and Path(text).expanduser().is_file()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
        found = False
    if not found:
        raise DeitDemoError(f"{quoted(text)} is neither an http(s) URL nor an existing image file.")
    path = Path(text).expanduser()
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise DeitDemoError(f"The image is larger than the {MAX_IMAGE_BYTES // 2**20} MB limit.")
    return decode_image(path.read_bytes())


def read_images(sources: list[ImageSource], specs: list[ModelSpec], *, fetch: FetchSettings, workers: int,
                pixels: bool = False) -> list[torch.Tensor | np.ndarray | DeitDemoError]:
    """Each image fetched, decoded and preprocessed for its model, or the error that met it, so that one visitor's
    bad upload never fails the others. URLs are fetched first, several side by side (a slow host, up to
    `fetch.deadline_s`, holds up only its own visitor); then the images decode side by side on up to `workers`
    threads (PIL decodes and resizes without the GIL). With `pixels`, each is the cropped uint8 pixels (`crop`),
    for a forward pass elsewhere to `normalize`."""

    def get(source: ImageSource) -> ImageSource | DeitDemoError:
        try:
            return fetch_url(str(source), fetch) if is_url(source) else source
        except DeitDemoError as err:
            return err

    def read(source: ImageSource | DeitDemoError, spec: ModelSpec) -> torch.Tensor | DeitDemoError:
        try:
            if isinstance(source, DeitDemoError):
                raise source
            image = load_image(source)
            return crop(image, spec) if pixels else preprocess(image, spec)
        except DeitDemoError as err:
            return err

    fetched = _side_by_side(get, sources, workers=min(8, sum(map(is_url, sources))), name="deit-fetch")
    return _side_by_side(read, fetched, specs, workers=workers, name="deit-read")


def _side_by_side(fn, *columns: list, workers: int, name: str) -> list:
    """`fn` over the rows of `columns`, in order, on up to `workers` short-lived threads (inline for fewer than 2)."""
    workers = min(workers, len(columns[0]))
    if workers <= 1:
        return [fn(*row) for row in zip(*columns)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        return list(pool.map(fn, *columns))


# ---------------------------------------------------------------------------------------------------- preprocessing


RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST}


def preprocess(image: Image.Image, spec: ModelSpec) -> torch.Tensor:
    """A (1, 3, S, S) tensor as the DeiT authors evaluate: resize the short side with the model's interpolation
    (bicubic for DeiT), centre crop, normalise.

    Written with PIL and NumPy (no torchvision at serving time); tests prove it equals the tutorial's torchvision
    pipeline tensor for tensor.
    """
    return normalize(crop(image, spec), spec)


def crop(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """The (S, S, 3) uint8 pixels the model sees: the short side resized, then the centre cropped. A quarter of the
    normalised tensor's bytes, which is what a cluster's replicas are sent (`normalize` there gives the same tensor)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short = spec.resize_size
    new_long = int(new_short * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = image.resize(size, RESAMPLING[spec.interpolation]) if size != image.size else image
    side = spec.input_size
    top = int(round((resized.height - side) / 2.0))
    left = int(round((resized.width - side) / 2.0))
    return np.asarray(resized.crop((left, top, left + side, top + side)), dtype=np.uint8)


def normalize(pixels: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """(S, S, 3) uint8 pixels -> the (1, 3, S, S) float32 tensor, with the model's mean and std."""
    scaled = np.asarray(pixels, dtype=np.float32) / 255.0
    scaled = (scaled - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return torch.from_numpy(scaled.transpose(2, 0, 1).copy()).unsqueeze(0)
