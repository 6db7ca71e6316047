"""Finding labelled images: class folders, a flat folder of Kaggle names (`cat.123.jpg`) or a CSV manifest,
listed without reading an image; run folders inside the data are recognised, never taken for a class."""

from __future__ import annotations

import os
import re
from pathlib import Path

from vggtune.data.items import LAYOUT, Found, Rejected
from vggtune.data.manifest import read_manifest
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.runfiles import is_run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
KAGGLE_NAME = re.compile(r"^([A-Za-z][\w-]*?)[._]\d+\.[A-Za-z]+$")


def discover(root: str | Path, min_classes: int = 2) -> Found:
    """Class folders (root/<class>/...), else Kaggle flat names (cat.123.jpg -> cat), or a CSV manifest
    (manifest.py). Training needs two classes at least; evaluating a trained model can take one."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        found = read_manifest(root)
    elif not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise UserError(
            f"data: {display_path(root)} {what}; allowed: a folder with one sub-folder of images "
            "per class, or a CSV manifest (path,label[,split])"
        )
    else:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
        runs = [e for e in entries if _is_dir(e) and holds_runs(Path(e.path))]
        entries = [e for e in entries if e not in runs]
        folders = [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
        found = _from_folders(root, folders, entries) if folders else _from_kaggle_names(root, entries)
        found.rejected += [Rejected(e.path, "a vggtune run folder, not a class of images", LAYOUT) for e in runs]
    counts = found.counts()
    if len(found.classes) < min_classes:
        raise UserError(
            f"data: {display_path(root)} has {len(found.classes)} class(es) {found.classes}; "
            f"allowed: at least {min_classes} class folder{'s' if min_classes > 1 else ''}, "
            "or Kaggle names like cat.1.jpg"
        )
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise UserError(
            f"data: class folder(s) {empty} in {display_path(root)} hold no image files; "
            f"allowed: each class with images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return found


def holds_runs(folder: Path) -> bool:
    """A vggtune run folder (its config.yaml beside its model or checkpoints), or a folder of them
    (runs/latest): what `vggtune train` wrote, never a class of images."""

    if is_run(folder):
        return True
    try:  # scandir: a class of many images costs no stat per file
        with os.scandir(folder) as entries:
            return any(_is_dir(entry) and is_run(Path(entry.path)) for entry in entries)
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _from_folders(root: Path, folders, entries) -> Found:
    found = Found(classes=[f.name for f in folders], files=[])
    for entry in entries:
        if entry not in folders and not entry.name.startswith("."):
            found.rejected.append(Rejected(entry.path, "not inside a class folder", LAYOUT))
    for folder in folders:
        for path, reason in walk_files(Path(folder.path)):
            if reason:
                found.rejected.append(Rejected(path, reason))
            else:
                found.files.append((path, folder.name))
    return found


def _from_kaggle_names(root: Path, entries) -> Found:
    found = Found(classes=[], files=[])
    for entry in entries:
        match = KAGGLE_NAME.match(entry.name)
        if entry.name.startswith("."):
            continue
        if match:
            found.files.append((entry.path, match.group(1).lower()))
        else:
            found.rejected.append(Rejected(entry.path, "name gives no class; allowed: <class>.<number>.<ext>", LAYOUT))
    found.classes = sorted({name for _, name in found.files})
    return found


def walk_files(folder: Path):
    """(path, None) for each candidate file below folder, (path, reason) for what is skipped."""
    seen_dirs = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            yield dirpath, "symlink loop: folder already visited"
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not os.path.exists(path):
                yield path, "broken or looping symlink"
            elif Path(name).suffix.lower() not in IMAGE_SUFFIXES and not _looks_like_image(path):
                yield path, f"not an image file (suffix {Path(name).suffix or 'none'})"
            else:
                yield path, None


def _looks_like_image(path: str) -> bool:
    """A file with an unusual suffix still counts when its first bytes say image."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF"))
