"""A corpus of hostile files mixed into a folder of good images, as scraped datasets have them.

`make_corpus` returns what a correct tool must do with each file: the unusable ones (with a
word their reason contains) and the usable ones (converted where needed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from badfiles import jpeg_bytes, png_bomb_bytes, _png
from conftest import synthetic_image


@dataclass
class Corpus:
    root: Path
    unusable: dict[str, str] = field(default_factory=dict)       # path -> word in its reason
    usable: list[str] = field(default_factory=list)
    vanish_after_scan: list[str] = field(default_factory=list)    # usable at scan, gone at load
    deny_after_scan: list[str] = field(default_factory=list)      # usable at scan, unreadable at load

    @property
    def kinds(self) -> set[str]:
        return {Path(p).name.split("-")[0] for p in [*self.unusable, *self.usable]}


def make_corpus(root: Path, seed: int = 0, good_per_class: int = 30, copies: int = 20) -> Corpus:
    rng = np.random.default_rng(seed)
    corpus = Corpus(root)
    for label, name in enumerate(("cat", "dog")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(good_per_class):
            path = folder / f"good-{i}.jpg"
            synthetic_image(label, i).save(path, quality=90)
            corpus.usable.append(str(path))
        for i in range(copies):
            _unusable(corpus, folder, rng, label, i)
        for i in range(copies // 4):
            _awkward(corpus, folder, label, 1000 + 20 * i)
            _moving(corpus, folder, label, 3000 + 10 * i)
    _layout(corpus, root, rng)
    return corpus


def _unusable(corpus: Corpus, folder: Path, rng, label: int, i: int) -> None:
    good = jpeg_bytes(label, 2000 + i)
    files = {
        f"truncated-{i}.jpg": (good[: int(len(good) * rng.uniform(0.2, 0.95))], ""),
        f"random-{i}.jpg": (rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes(), ""),
        f"zero-{i}.jpg": (b"", "empty"),
        f"pixel-{i}.png": (_png(Image.new("RGB", (1, 1), (i, 0, 0))), "too small"),
        f"bomb-{i}.png": (png_bomb_bytes(60_000 + i, 60_000), "decompression bomb"),
    }
    if i % 2 == 0:
        files[f"text-{i}.png"] = (f"<html>not an image {i}</html>".encode(), "not an image")
    for name, (content, word) in files.items():
        (folder / name).write_bytes(content)
        corpus.unusable[str(folder / name)] = word


def _awkward(corpus: Corpus, folder: Path, label: int, start: int) -> None:
    """Usable files that need converting or care."""
    def keep(path: Path):
        corpus.usable.append(str(path))

    image = lambda k: synthetic_image(label, start + k)  # noqa: E731
    image(0).convert("CMYK").save(folder / f"cmyk-{start}.jpg"); keep(folder / f"cmyk-{start}.jpg")
    image(1).convert("L").save(folder / f"gray-{start}.jpg"); keep(folder / f"gray-{start}.jpg")
    sixteen = np.asarray(image(2).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(sixteen).save(folder / f"sixteen-{start}.png"); keep(folder / f"sixteen-{start}.png")
    frames = [image(3 + k) for k in range(3)]
    frames[0].save(folder / f"animated-{start}.gif", save_all=True, append_images=frames[1:]); keep(folder / f"animated-{start}.gif")
    image(6).convert("P", palette=Image.ADAPTIVE, colors=8).save(folder / f"palette-{start}.png", transparency=0)
    keep(folder / f"palette-{start}.png")
    exif = Image.Exif()
    exif[0x0112] = 3 + start % 6
    image(7).save(folder / f"exif-{start}.jpg", exif=exif.tobytes()); keep(folder / f"exif-{start}.jpg")
    image(8).save(folder / f"wrongext-{start}.jpg", "PNG"); keep(folder / f"wrongext-{start}.jpg")
    image(9).save(folder / f"noext-{start}", "JPEG"); keep(folder / f"noext-{start}")
    long_name = folder / (f"long-{start}-" + "x" * 200 + ".jpg")
    image(10).save(long_name); keep(long_name)
    raw_name = os.fsdecode(bytes(folder) + b"/undecodable-" + str(start).encode() + b"-\xff\xfe.jpg")
    image(11).save(raw_name, "JPEG"); keep(Path(raw_name))
    target = folder / f"linked-target-{start}.jpg"
    image(12).save(target); keep(target)
    outside = folder.parent.parent / f"outside-{label}-{start}.jpg"
    image(13).save(outside)
    os.symlink(outside, folder / f"symlink-{start}.jpg"); keep(folder / f"symlink-{start}.jpg")


def _moving(corpus: Corpus, folder: Path, label: int, start: int) -> None:
    """Files that are fine when scanned and gone or unreadable when loaded."""
    for offset, kind, bucket in ((0, "vanish", corpus.vanish_after_scan), (5, "denied", corpus.deny_after_scan)):
        path = folder / f"{kind}-{start}.jpg"
        synthetic_image(label, start + offset).save(path)
        bucket.append(str(path))


def _layout(corpus: Corpus, root: Path, rng) -> None:
    """Hostile structure: broken and looping symlinks, a class 'folder' that is a file."""
    cat = root / "cat"
    for i in range(5):
        os.symlink(root / f"nowhere-{i}.jpg", cat / f"dangling-{i}.jpg")
        corpus.unusable[str(cat / f"dangling-{i}.jpg")] = "symlink"
    os.symlink(cat / "selfloop.jpg", cat / "selfloop.jpg")
    corpus.unusable[str(cat / "selfloop.jpg")] = "symlink"
    (cat / "sub").mkdir()
    os.symlink(cat, cat / "sub" / "loop")
    corpus.unusable[str(cat / "sub" / "loop")] = "symlink loop"
    (root / "horse").write_bytes(jpeg_bytes(0, 77))              # a class "folder" that is a file
    corpus.unusable[str(root / "horse")] = "not inside a class folder"
