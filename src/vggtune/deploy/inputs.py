"""The images a finished run is applied to: the files and folders a user names (`expand_paths`), and
labelled ones to judge it on (`labelled_files`: its own test split, or class folders mapped to its classes)."""

from __future__ import annotations

import os
from pathlib import Path

from vggtune import runfiles
from vggtune.data import dataset as data
from vggtune.data import discovery
from vggtune.data.labelsets import joined
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.tasks import SINGLE_LABEL, Task
from vggtune.training.rundir import RunDir


def expand_paths(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given, folders walked for image files; missing paths are reported, not fatal."""
    files, rejected = [], []
    for path in paths:
        if os.path.isdir(path):
            for found, reason in discovery.walk_files(Path(path)):
                (rejected.append((found, reason)) if reason else files.append(found))
        elif os.path.isfile(path):
            files.append(path)
        else:
            rejected.append((path, "no such file or folder"))
    return files, rejected


def labelled_files(
    folder: RunDir, classes: list[str], data_dir: str | None, task: Task = SINGLE_LABEL
) -> tuple[list[str], list[str], list]:
    """(paths, labels, rejected): a folder's (or manifest's) images with their class names, else the run's test
    split's; a multi-label image's label is its labels joined by ";" ("" for none). `task`: the model's (a
    multi-label model is judged on class folders too, each image carrying its folder's label)."""
    if data_dir is None:
        try:
            splits = folder.splits()
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{display_path(folder.path / runfiles.SPLITS)}: unreadable ({exc}); allowed: --data DIR"
            ) from None
        if splits is None:
            raise UserError(
                f"{display_path(folder.path / runfiles.SPLITS)}: no such file; allowed: --data DIR"
            ) from None
        if not splits.test:
            raise UserError(
                f"run {display_path(folder.path)} kept no test images; allowed: --data DIR with class folders"
            )
        paths = [item.path for item in splits.test]
        if not any(os.path.exists(path) for path in paths):
            was = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
            raise UserError(
                f"the run's {len(paths)} test images were under {display_path(was)}, which holds none "
                "of them now; allowed: that folder back in place, or --data FOLDER with class folders"
            )
        return paths, [_name(classes, item.label, item.targets) for item in splits.test], []
    found = discovery.discover(data_dir, min_classes=1)
    if found.task.several and not task.several:
        raise UserError(
            f"--data: {display_path(data_dir)} gives several labels per image; allowed: one label per image for "
            "this model (trained on one label per image)"
        )
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise UserError(f"--data: classes {unknown} in {display_path(data_dir)} are not the run's; allowed: {classes}")
    items, rejected = data.scan(found, whole=True, classes=classes)  # scored whole: copies within it too
    return [i.path for i in items], [_name(classes, i.label, i.targets) for i in items], rejected


def joined_labels(names: list[str]) -> str:
    """A multi-label image's labels as one text ("cat;dog", "" for none): labelsets.joined."""
    return joined(names)


def _name(classes: list[str], label: int, targets: tuple[int, ...] | None) -> str:
    return classes[label] if targets is None else joined([classes[t] for t in targets])
