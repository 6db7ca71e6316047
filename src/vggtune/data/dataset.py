"""Checking every labelled image that discovery found, and splitting them without leakage."""

from __future__ import annotations

import functools
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from vggtune import distributed
from vggtune.data.discovery import discover
from vggtune.data.images import VANISHED, ImageRejected, open_rgb
from vggtune.data.items import (
    DUPLICATE,
    IN_DATA,
    LABEL_CONFLICT,
    Found,
    Item,
    Rejected,
    Splits,
    label_parts,
    stratified,
)
from vggtune.data.similar import MAX_DISTANCE, copy_groups, without_near_copies
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.progress import progress

SCAN_SIDE = 32  # decoding at about this size still reads every byte, so breakage shows


def check_file(path: str) -> tuple[str | None, str | None, int]:
    """(sha256, None, perceptual hash) for a usable image, (None, reason, 0) otherwise: what the scan asks of
    each file."""
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except FileNotFoundError:
        return None, VANISHED, 0
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}", 0
    if not content:
        return None, "empty file (0 bytes)", 0
    try:
        image = open_rgb(io.BytesIO(content), short_side=SCAN_SIDE)
    except ImageRejected as exc:
        return None, str(exc), 0
    return hashlib.sha256(content).hexdigest(), None, difference_hash(image)


def difference_hash(image) -> int:
    """64-bit dHash: is each pixel of a 9x8 grey thumbnail brighter than its left neighbour."""
    pixels = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def scan(
    found: Found, workers: int = 2, whole: bool = False, classes: list[str] | None = None
) -> tuple[list[Item], list[tuple[str, str]]]:
    """Check every file once: usable items and rejected files with reasons. To train on, the same content
    twice in one class is kept once, and the same content under two classes is a label conflict whose
    every copy is kept out. A folder to be judged on (`whole`: --test-data, --val-data, evaluate --data)
    keeps every readable file as it is: a copy within a test set leaks nothing, and a published test
    folder scored less than whole is comparable with nothing. Under torchrun each rank checks its share.
    `classes`: the indexes labels get (default the found ones; a held-out multi-label manifest's are the
    training labels)."""
    index = {name: i for i, name in enumerate(classes or found.classes)}
    mine = distributed.share([path for path, _ in found.files])
    with ThreadPoolExecutor(max(1, workers)) as pool:
        checks = pool.map(check_file, mine)
        bar = progress(total=len(mine), desc="checking images", unit="file")
        results: list[tuple[Any, Any, int]] = []  # (sha256 or None, reason or None, dhash)
        for result in checks:
            results.append(result)
            bar.update()
        bar.close()
    results = distributed.gather(results)
    if found.manifest:
        results = [
            (None, "no such file (named in the manifest)", 0) if reason == VANISHED else (sha, reason, dhash)
            for sha, reason, dhash in results
        ]
    classes_of: dict[str, set[str]] = {}
    for (_, name), (sha, _, _) in zip(found.files, results):
        if sha:
            classes_of.setdefault(sha, set()).add(name)
    items: list[Item] = []
    rejected = list(found.rejected)
    first_path: dict[str, str] = {}
    for (path, name), (sha, reason, dhash) in zip(found.files, results):
        if reason:
            rejected.append(Rejected(path, reason))
        elif whole:
            items.append(found.item(index, path, name, sha, dhash))
        elif len(classes_of[sha]) > 1:
            rejected.append(
                Rejected(
                    path, f"label conflict: the same content is filed under {sorted(classes_of[sha])}", LABEL_CONFLICT
                )
            )
        elif sha in first_path:
            rejected.append(Rejected(path, f"duplicate content of {display_path(first_path[sha])}", DUPLICATE))
        else:
            first_path[sha] = path
            items.append(found.item(index, path, name, sha, dhash))
    return (stratified(items, len(index)) if found.multi_label else items), rejected


def shuffled_classes(items: list[Item], seed: int):
    """Each class's items in an order drawn from `seed`, class by class: what stratified splits deal out."""
    rng = np.random.default_rng(seed)
    for label in sorted({item.label for item in items}):
        members = [item for item in items if item.label == label]
        yield [members[position] for position in rng.permutation(len(members))]


def with_near_duplicates(split_function):
    """`split_function`, then each near-duplicate group moved into the split of its first image (its
    leader): a re-saved or resized copy never lands in another split. The images are dealt as they
    always were, so a dataset without near-duplicates is split as before, and one with a few of them
    differs only by those."""

    @functools.wraps(split_function)
    def split(items: list[Item], *args, max_distance: int = MAX_DISTANCE, **kwargs):
        _, leader = copy_groups([item.dhash for item in items], max_distance)
        dealt = split_function(items, *args, **kwargs)
        where = {item.path: part for part, members in enumerate(dealt) for item in members}
        parts: tuple[list[Item], ...] = tuple([] for _ in dealt)
        for item, lead in zip(items, leader):
            parts[where[items[lead].path]].append(item)
        return tuple(sorted(part, key=lambda item: item.path) for part in parts)

    return split


def _multi_label(items: list[Item]) -> bool:
    return bool(items) and items[0].targets is not None


@with_near_duplicates
def stratified_split(items: list[Item], fractions: tuple[float, float], seed: int):
    """(train, val, test) with each class split in the same proportions (multi-label: each label, by iterative
    stratification); content is already unique."""
    if _multi_label(items):
        shares = (1 - fractions[0] - fractions[1], *fractions)
        train, val, test = label_parts(items, shares, seed)
        return train, val, test
    splits: tuple[list[Item], list[Item], list[Item]] = ([], [], [])
    for members in shuffled_classes(items, seed):
        n_val = int(round(len(members) * fractions[0]))
        n_test = int(round(len(members) * fractions[1]))
        for rank, item in enumerate(members):
            which = 1 if rank < n_val else 2 if rank < n_val + n_test else 0
            splits[which].append(item)
    return splits


@with_near_duplicates
def fold_split(items: list[Item], fold: tuple[int, int], val_fraction: float, seed: int):
    """(train, val, test): test is fold k of n stratified folds (k counts from 1), val is drawn from the
    rest. The folds depend on the seed alone, so the n runs of one cross-validation test each image once."""
    k, n = fold
    test: list[Item] = []
    rest: list[Item] = []
    if _multi_label(items):
        folds = label_parts(items, [1 / n] * n, seed)
        test, rest = folds[k - 1], [item for j, part in enumerate(folds) if j != k - 1 for item in part]
    else:
        for members in shuffled_classes(items, seed):
            for rank, item in enumerate(members):
                (test if rank % n == k - 1 else rest).append(item)
    train, val, _ = stratified_split.__wrapped__(rest, (val_fraction, 0.0), seed)  # the groups: moved once, above
    return train, val, test


def prepare_splits(
    data_dir,
    val_dir,
    test_dir,
    val_split: float,
    test_split: float,
    seed: int,
    workers: int = 2,
    fold: tuple[int, int] | None = None,
    keep_near_duplicates: bool = False,
) -> Splits:
    """Scan every image, then split; a content hash never appears in two splits. With `fold` (k, n)
    the test split is the k-th of n cross-validation folds and `test_split` is not used."""
    found = discover(data_dir)
    items, rejected = scan(found, workers)
    held: dict[str, list[Item]] = {}
    taken: dict[str, tuple[str, str]] = {}  # sha256 -> (split, path) of held-out files
    for name, folder in (("test", test_dir), ("val", val_dir)):
        listed = [item for item in items if found.split_of.get(item.path) == name]
        if folder and listed:
            raise UserError(
                f"--{name}-data: received {display_path(folder)}, but the manifest {display_path(data_dir)} "
                f"already names {len(listed)} {name} rows; allowed: one of the two"
            )
        if folder:
            listed = _scan_held(folder, name, found, workers, rejected)
        if fold and name == "test" and listed:
            raise UserError(
                f"data: the manifest {display_path(data_dir)} names {len(listed)} test rows; allowed: "
                "no test rows for cross-validation, where each fold is the test split in turn"
            )
        if folder or listed:
            held[name] = _without_content(listed, taken, rejected, name if folder else IN_DATA)
            taken.update({item.sha256: (name, item.path) for item in held[name]})
    items = _without_content([item for item in items if found.split_of.get(item.path) not in held], taken, rejected)
    items, left_out = without_near_copies(items, held, rejected, keep_near_duplicates)
    fractions = (0.0 if "val" in held else val_split, 0.0 if "test" in held else test_split)
    if fold:
        train, val, test = fold_split(items, fold, fractions[0], seed)
    else:
        train, val, test = stratified_split(items, fractions, seed)
    held_val, held_test = held.get("val", val), held.get("test", test)
    return Splits(found.classes, train, held_val, held_test, rejected, found.multi_label, left_out)


def _scan_held(folder, name: str, found: Found, workers: int, rejected: list) -> list[Item]:
    """The items of a --val-data or --test-data folder, which must hold the training classes (multi-label:
    a manifest whose labels are among the training ones)."""
    other = discover(folder, min_classes=1 if found.multi_label else 2)
    if other.multi_label != found.multi_label:
        kinds = ("one label per image", "several labels per image (a labels column)")
        raise UserError(
            f"--{name}-data: {display_path(folder)} has {kinds[other.multi_label]}; allowed: data like the training "
            f"data, {kinds[found.multi_label]}"
        )
    unknown = sorted(set(other.classes) - set(found.classes))
    if (other.classes != found.classes and not found.multi_label) or unknown:
        raise UserError(
            f"--{name}-data: classes {other.classes} in {display_path(folder)}; allowed: the training classes "
            f"{found.classes}"
        )
    held_items, held_rejected = scan(other, workers, whole=True, classes=found.classes)
    rejected += [Rejected.of(row).found_in(name) for row in held_rejected]
    return held_items


def require_training_images(splits: Splits, data_dir) -> Splits:
    if not splits.train:
        raise UserError(
            f"data: no usable training images in {display_path(data_dir)} "
            f"({len(splits.rejected)} rejected; `vggtune data check` lists why); "
            "allowed: folders of readable images, not all of them in --val-data or --test-data"
        )
    return splits


def _without_content(
    items: list[Item], taken: dict[str, tuple[str, str]], rejected: list, where: str = IN_DATA
) -> list[Item]:
    kept = []
    for item in items:
        if item.sha256 in taken:
            split, path = taken[item.sha256]
            rejected.append(
                Rejected(
                    item.path,
                    f"same content as {split} file {display_path(path)} (kept out of two splits)",
                    DUPLICATE,
                    where,
                )
            )
        else:
            kept.append(item)
    return kept
