"""Labelled images to judge a trained model on: its run's own test split, or a folder of class folders
mapped to the run's classes."""
from __future__ import annotations

import os
from pathlib import Path

from vggtune.data import dataset as data
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.training.rundir import RunDir


def labelled_files(run: Path, classes: list[str], data_dir: str | None) -> tuple[list[str], list[int], list]:
    """(paths, labels, rejected): a folder's images mapped to the run's classes, else the run's test split."""
    if data_dir is None:
        try:
            splits = RunDir(run).splits()
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{display_path(Path(run) / 'splits.json')}: unreadable ({exc}); allowed: --data DIR") from None
        if splits is None:
            raise UserError(f"{display_path(Path(run) / 'splits.json')}: no such file; allowed: --data DIR") from None
        if not splits.test:
            raise UserError(f"run {display_path(run)} kept no test images; allowed: --data DIR with class folders")
        paths = [item.path for item in splits.test]
        if not any(os.path.exists(path) for path in paths):
            folder = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
            raise UserError(f"the run's {len(paths)} test images were under {display_path(folder)}, which holds none "
                            "of them now; allowed: that folder back in place, or --data FOLDER with class folders")
        return paths, [item.label for item in splits.test], []
    found = data.discover(data_dir, min_classes=1)
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise UserError(f"--data: classes {unknown} in {display_path(data_dir)} are not the run's; allowed: {classes}")
    items, rejected = data.scan(found)
    index = {name: classes.index(name) for name in found.classes}
    return [i.path for i in items], [index[found.classes[i.label]] for i in items], rejected
