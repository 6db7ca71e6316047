"""Datasets listed in a CSV file instead of class folders: `path,label[,split]`, as Keras's
`flow_from_dataframe` and fastai's `from_df` take them, so a million images need no directory walk.

Multi-label: a `labels` column instead of `label`, each cell the image's labels separated by ";"
(`cat;dog`), an empty cell for an image that carries none of them (fastai's `label_delim`).

Paths are absolute or relative to the CSV's folder. Other columns are ignored. A row that cannot
be used (no path, no label, a split other than train/val/test) is rejected with its row number,
like an unreadable image; the files themselves are checked by the scan, as for folders.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from vggtune import tasks
from vggtune.data.items import MANIFEST_ROW, SPLIT_NAMES, Found, Rejected
from vggtune.data.labelsets import joined, label_names
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.tasks import Task

LABEL, LABELS = "label", "labels"  # one label per image; several (multi-label)


def read_manifest(path: Path) -> Found:
    """The rows of a manifest as discovery's files, rejected rows and the split each row names."""
    found = Found(classes=[], files=[], manifest=True)
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.reader(handle)
            columns = _columns(next(reader, None), path)
            found.multi_label = LABELS in columns
            for row in reader:
                if any(cell.strip() for cell in row):
                    _add_row(found, columns, row, reader.line_num, base)
    except OSError as exc:
        raise UserError(
            f"data: cannot read the manifest {display_path(path)} ({exc.strerror}); allowed: a readable CSV file"
        ) from None
    except csv.Error as exc:
        raise UserError(
            f"data: the manifest {display_path(path)} is not valid CSV ({exc}); "
            "allowed: comma-separated rows path,label[,split]"
        ) from None
    found.classes = sorted({name for _, key in found.files for name in _names(key, found.multi_label)})
    return found


def _names(key: str, multi_label: bool) -> list[str]:
    return label_names(key) if multi_label else [key]


def _columns(header: list[str] | None, path: Path) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header or []]
    given = [name for name in (LABEL, LABELS) if name in names]
    allowed = (
        "allowed: a header row with path and label (or labels: several per image, separated by ;), and optionally split"
    )
    if len(given) == 2:
        raise UserError(f"data: the manifest {display_path(path)} has both a label and a labels column; {allowed}")
    absent = [name for name in ("path",) if name not in names] + ([] if given else [LABEL])
    if absent:
        raise UserError(f"data: the manifest {display_path(path)} has columns {names} and lacks {absent}; {allowed}")
    return {name: names.index(name) for name in ("path", *given, "split") if name in names}


def _add_row(found: Found, columns: dict[str, int], row: list[str], line: int, base: Path) -> None:
    cell = {name: row[index].strip() if index < len(row) else "" for name, index in columns.items()}
    where = f"manifest line {line}"
    if not cell["path"]:
        found.rejected.append(Rejected(where, "no path", MANIFEST_ROW))
        return
    path = os.path.normpath(os.path.join(base, cell["path"]))
    split = cell.get("split", "").lower()
    if LABELS in cell:  # several labels, or none: an empty cell is an image that carries none of them
        cell[LABEL] = joined(sorted({name.strip() for name in label_names(cell[LABELS]) if name.strip()}))
    elif not cell[LABEL]:
        found.rejected.append(Rejected(path, f"{where}: empty label", MANIFEST_ROW))
        return
    if split and split not in SPLIT_NAMES:
        found.rejected.append(
            Rejected(
                path, f"{where}: split {cell['split']!r}; allowed: {', '.join(SPLIT_NAMES)} or empty", MANIFEST_ROW
            )
        )
    else:
        found.files.append((path, cell[LABEL]))
        if split:
            found.split_of[path] = split


def task_of(path: str | Path) -> Task:
    """The task data asks for, read before any image: multi-label for a CSV manifest with a `labels` column
    (its header alone is read), else single-label."""
    return tasks.of(_has_labels_column(path))


def _has_labels_column(path: str | Path) -> bool:
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            header = next(csv.reader(handle), None) or []
    except (OSError, csv.Error):
        return False  # read again, and said why, when the data is read
    return LABELS in [cell.strip().lower() for cell in header]
