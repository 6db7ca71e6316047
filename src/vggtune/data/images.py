"""Opening one image safely: every way a file can be unusable becomes an `ImageRejected` reason."""

from __future__ import annotations

import io
import os
import random
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

VANISHED = "file vanished before it could be read"
MIN_SIDE = 16
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


class ImageRejected(Exception):
    """The file cannot be used as an image; str() is the reason written to rejected.csv."""


def open_rgb(path, short_side: int | None = None) -> Image.Image:
    """Decode to 8-bit RGB with EXIF orientation applied.

    With `short_side`, large JPEGs are decoded at a reduced scale (Pillow's draft mode),
    never below `short_side` on the shorter side.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data": the pixels decide
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image)
                if short_side and image.format == "JPEG":
                    scale = short_side / min(image.size)
                    image.draft("RGB", (int(image.width * scale) + 1, int(image.height * scale) + 1))
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb(upright)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected(VANISHED) from None
    except PermissionError:
        raise ImageRejected("permission denied") from None
    except IsADirectoryError:
        raise ImageRejected("a folder, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}".split(" could be")[0].rstrip(", ")) from None
    except UnidentifiedImageError:
        raise ImageRejected(_unidentified_reason(path)) from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        TypeError,
        IndexError,
        KeyError,
        MemoryError,
        RuntimeError,
        Image.UnidentifiedImageError,
    ) as exc:
        raise ImageRejected(_broken_reason(exc)) from None


def open_any(source, short_side: int | None = None) -> Image.Image:
    """`open_rgb` for a path, bytes, a binary file object, a PIL image or a numpy array (H x W, or
    H x W x 3/4, uint8), with the same checks; anything else is rejected with what is allowed."""
    if isinstance(source, (str, os.PathLike)):
        return open_rgb(source, short_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return open_rgb(io.BytesIO(bytes(source)), short_side)
    if hasattr(source, "read"):
        return open_rgb(io.BytesIO(source.read()), short_side)
    if isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (3, 4))
        ):
            raise ImageRejected(
                f"numpy array of {source.dtype} {source.shape}; allowed: uint8, H x W or H x W x 3 (RGB) or 4 (RGBA)"
            )
        source = Image.fromarray(source)
    if isinstance(source, Image.Image):
        _check_size(source)
        try:
            return to_rgb(ImageOps.exif_transpose(source))
        except (OSError, ValueError, SyntaxError) as exc:  # a lazily loaded image that is broken
            raise ImageRejected(_broken_reason(exc)) from None
    raise ImageRejected(
        f"cannot read a {type(source).__name__}; allowed: a path, bytes, a binary file object, "
        "a PIL image or a uint8 numpy array"
    )


def shorter_sides(paths: list[str], limit: int = 500, seed: int = 0) -> list[int]:
    """The shorter side of up to `limit` of these images (a seeded draw), read from their headers: nothing is
    decoded, so a million images cost what 500 do. Files that no longer open are passed over."""
    drawn = paths if len(paths) <= limit else random.Random(seed).sample(list(paths), limit)
    sides = []
    for path in drawn:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sides


def _check_size(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageRejected(f"decompression bomb: {width}x{height} pixels, more than {MAX_PIXELS}")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(f"too small: {width}x{height}; allowed: at least {MIN_SIDE} px a side")


def _unidentified_reason(source) -> str:
    try:
        empty = (source.getbuffer().nbytes == 0) if hasattr(source, "getbuffer") else os.path.getsize(source) == 0
    except OSError:
        empty = False
    return "empty file (0 bytes)" if empty else "not an image (format not recognised)"


def _broken_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "truncated" in text or isinstance(exc, EOFError):
        return f"truncated or corrupt data: {text}"
    return f"cannot decode: {text[:160]}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB: 16-bit scaled down, transparency composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        peak = 65535 if image.mode != "I" or values.max() > 255 else 255
        image = Image.fromarray((values.astype(np.float32) * (255 / peak)).clip(0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")
