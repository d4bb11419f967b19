"""Bad and awkward images, generated on the fly: (name, bytes, expected) where expected is "ok" or an error regex."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))


def exif_rotated() -> bytes:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    return _save(image, "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), i) for i in (1, 2, 3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def corpus() -> list[tuple[str, bytes, str]]:
    jpeg = _save(photo(), "JPEG", quality=90)
    png = _save(photo(), "PNG")
    sixteen = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    return [
        ("empty", b"", "empty"),
        ("text renamed .jpg", b"hello, this is not a picture\n" * 10, "not an image in a supported format"),
        ("truncated JPEG", jpeg[: len(jpeg) // 2], "damaged or truncated"),
        ("truncated PNG", png[: len(png) // 2], "damaged or truncated"),
        ("PNG header claiming 100M pixels", _png_header_claiming(10_000, 10_000), "megapixels|exhaust memory"),
        ("20000x20000 PNG header", _png_header_claiming(20_000, 20_000), "megapixels|exhaust memory"),
        ("16-bit PNG", _save(sixteen, "PNG"), "ok"),
        ("CMYK JPEG", _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "ok"),
        ("palette PNG with transparency", _save(palette, "PNG", transparency=0), "ok"),
        ("animated GIF", animated_gif(), "ok"),
        ("1x1 image", _save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "ok"),
        ("EXIF rotated photo", exif_rotated(), "ok"),
        ("SVG", b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><rect width='10' height='10'/></svg>",
         "not an image in a supported format"),
        ("HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
         "not an image in a supported format"),
        ("ICO (unsupported format)", _save(Image.new("RGB", (16, 16)), "ICO"), "not an image in a supported format"),
        ("over the 20 MB cap", b"\xff\xd8\xff" + b"\x00" * (20 * 1024 * 1024 + 10), "larger than the 20 MB"),
    ]
