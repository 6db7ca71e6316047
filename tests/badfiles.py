"""Makers of unusable and awkward image files, for the data, cache and CLI tests."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import synthetic_image


def jpeg_bytes(label=0, index=0, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    synthetic_image(label, index, size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_bomb_bytes(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header declares a huge image."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def write_unusable(folder: Path, rng: np.random.Generator, index: int = 0) -> dict[Path, str]:
    """One file of each unusable kind; returns path -> a word its rejection reason contains."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(0, 900 + index)
    files = {
        f"zero-{index}.jpg": (b"", "empty"),
        f"random-{index}.jpg": (rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(), "not an image"),
        f"truncated-{index}.jpg": (good[: int(len(good) * rng.uniform(0.3, 0.9))], "truncated"),
        f"header-only-{index}.jpg": (good[:20], ""),
        f"tiny-{index}.png": (_png(Image.new("RGB", (1, 1), "red")), "too small"),
        f"bomb-{index}.png": (png_bomb_bytes(), "decompression bomb"),
        f"text-{index}.png": (b"this is not a picture\n" * 10, "not an image"),
    }
    expected = {}
    for name, (content, word) in files.items():
        (folder / name).write_bytes(content)
        expected[folder / name] = word
    return expected


def write_convertible(folder: Path, label: int, start: int = 500) -> list[Path]:
    """Usable files that need converting: each must be used, not rejected."""
    folder.mkdir(parents=True, exist_ok=True)
    base = synthetic_image(label, start, (48, 40))
    paths = []

    def save(name, image, fmt, **kwargs):
        path = folder / name
        image.save(path, fmt, **kwargs)
        paths.append(path)

    save(f"cmyk-{start}.jpg", synthetic_image(label, start + 1).convert("CMYK"), "JPEG")
    save(f"gray-{start}.jpg", synthetic_image(label, start + 2).convert("L"), "JPEG")
    save(f"rgba-{start}.png", synthetic_image(label, start + 3).convert("RGBA"), "PNG")
    palette = synthetic_image(label, start + 4).convert("P", palette=Image.ADAPTIVE, colors=16)
    save(f"palette-{start}.png", palette, "PNG", transparency=0)
    sixteen = (np.asarray(synthetic_image(label, start + 5).convert("L"), dtype=np.uint16) * 257)
    save(f"sixteen-{start}.png", Image.fromarray(sixteen.astype(np.uint16)), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    save(f"rotated-{start}.jpg", synthetic_image(label, start + 6), "JPEG", exif=exif.tobytes())
    frames = [synthetic_image(label, start + 7 + i) for i in range(3)]
    frames[0].save(folder / f"animated-{start}.gif", save_all=True, append_images=frames[1:])
    paths.append(folder / f"animated-{start}.gif")
    save(f"png-named-{start}.jpg", synthetic_image(label, start + 10), "PNG")
    save(f"jpeg-named-{start}.dat", synthetic_image(label, start + 11), "JPEG")
    del base
    return paths


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
