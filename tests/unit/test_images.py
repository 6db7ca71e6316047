"""Property-based tests of the decode and validation path: any input, no crash, a sane answer."""
import io

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from vggtune.data import dataset as data
from vggtune.data.images import MIN_SIDE, ImageRejected, open_rgb

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODES = ["RGB", "L", "CMYK", "RGBA", "P", "LA", "I;16", "1"]
FORMATS = {"JPEG": ("RGB", "L", "CMYK"), "PNG": ("RGB", "L", "RGBA", "P", "LA", "I;16", "1"), "GIF": ("P", "L"),
           "BMP": ("RGB", "L", "P", "1"), "WEBP": ("RGB", "RGBA"), "TIFF": ("RGB", "L", "CMYK", "RGBA", "I;16")}


@st.composite
def encoded_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    image = image.convert("L").point(lambda v: v * 2) if mode == "I;16" else image.convert(mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), (width, height)


def _check_bytes(tmp_path, content: bytes, name="x.jpg"):
    path = tmp_path / name
    path.write_bytes(content)
    sha, reason, _ = data.check_file(str(path))
    return sha, reason


@SETTINGS
@given(content=st.binary(max_size=4000))
def test_any_bytes_give_an_answer_not_a_crash(tmp_path, content):
    sha, reason = _check_bytes(tmp_path, content)
    assert (sha is None) != (reason is None)
    assert reason is None or isinstance(reason, str) and reason


@SETTINGS
@given(sample=encoded_images())
def test_every_valid_encoding_decodes_to_rgb_or_is_too_small(tmp_path, sample):
    content, (width, height) = sample
    path = tmp_path / "image"
    path.write_bytes(content)
    try:
        image = open_rgb(path)
    except ImageRejected as exc:
        assert min(width, height) < MIN_SIDE and "too small" in str(exc)
        return
    assert min(width, height) >= MIN_SIDE
    assert image.mode == "RGB" and sorted(image.size) == sorted((width, height))


@SETTINGS
@given(sample=encoded_images(), fraction=st.floats(0.0, 0.999))
def test_truncation_anywhere_is_rejected_or_read(tmp_path, sample, fraction):
    content, _ = sample
    sha, reason = _check_bytes(tmp_path, content[: int(len(content) * fraction)])
    assert (sha is None) != (reason is None)


@SETTINGS
@given(width=st.integers(16, 1200), height=st.integers(16, 1200), short_side=st.integers(16, 300))
def test_draft_decoding_never_goes_below_the_asked_size(tmp_path, width, height, short_side):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "JPEG")
    image = open_rgb(io.BytesIO(buffer.getvalue()), short_side=short_side)
    assert min(image.size) >= min(short_side, width, height)
