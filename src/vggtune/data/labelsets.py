"""Multi-label data in words and numbers: the images carrying each label, the label sets and how often
each occurs, labels seen once, images that carry none; and the stratum each image is split by.

Splits and cross-validation folds of multi-label images are dealt by iterative stratification (Sechidis et
al., 2011; `iterative_parts`): the rarest label's images first, each to the part that still wants most of
that label, so every label, not only each image's rarest, is spread over the parts in proportion. An image's
stratum (`strata`: its rarest label) remains the key it is counted and shown by.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from vggtune.data.balance import counts_line, per_class
from vggtune.tasks import SEPARATOR


class Labelled(Protocol):
    """What the counts here read of an image (items.py's Item): the indices of its labels."""

    @property
    def targets(self) -> tuple[int, ...] | None: ...


LABEL_SEPARATOR = SEPARATOR  # between the labels of one image: a manifest's `labels` cell, predictions.csv, `predict`
NONE_SET = "(none)"  # how an image with no label is named in the label sets' counts


def label_names(key: str) -> list[str]:
    """The labels a multi-label key ("cat;dog", "" for none) names, in its order."""
    return [name for name in key.split(LABEL_SEPARATOR) if name]


def joined(names: Sequence[str]) -> str:
    """Labels as one key: "cat;dog" ("" for none)."""
    return LABEL_SEPARATOR.join(names)


def strata(targets: Sequence[tuple[int, ...]], n_labels: int) -> list[int]:
    """Each image's stratum: its rarest label (ties to the first), or `n_labels` for an image with none."""
    counts = Counter(label for labels in targets for label in labels)
    return [min(labels, key=lambda label: (counts[label], label)) if labels else n_labels for labels in targets]


def iterative_parts(targets: Sequence[tuple[int, ...]], fractions: Sequence[float], seed: int) -> list[int]:
    """Each image's part (an index of `fractions`) by iterative stratification: while images are left, the label
    the fewest of them carry is dealt, its images in a seeded order, each to the part that wants most of that
    label (then most images; then the first); images without a label go to the part that wants most images."""
    rng = np.random.default_rng(seed)
    wanted = np.asarray(fractions, dtype=np.float64) * len(targets)
    labels = sorted({label for labels in targets for label in labels})
    wanted_label = {label: np.asarray(fractions) * sum(label in t for t in targets) for label in labels}
    part = [-1] * len(targets)
    left = set(range(len(targets)))

    closed = np.asarray(fractions) <= 0  # a part of no share takes no image, however the others' wants fall

    def deal(image: int, label: int | None) -> None:
        wants = np.where(closed, -np.inf, wanted_label[label] if label is not None else wanted)
        best = np.flatnonzero(wants >= wants.max() - 1e-9)
        best = best[wanted[best] >= wanted[best].max() - 1e-9]  # then the part that wants most images
        part[image] = int(best[0])
        wanted[part[image]] -= 1
        for each in targets[image]:
            wanted_label[each][part[image]] -= 1
        left.discard(image)

    while any(targets[i] for i in left):
        counts = Counter(label for i in left for label in targets[i])
        rarest = min(counts, key=lambda label: (counts[label], label))
        carrying = sorted(i for i in left if rarest in targets[i])
        for image in rng.permutation(carrying):
            deal(int(image), rarest)
    for image in rng.permutation(sorted(left)):
        deal(int(image), None)
    return part


def label_sets(items: Sequence[Labelled], classes: list[str]) -> dict[str, int]:
    """Images per label set ("cat;dog", NONE_SET), most common first."""
    counts = Counter(joined([classes[i] for i in item.targets or ()]) or NONE_SET for item in items)
    return dict(sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))


def training_lines(items: Sequence[Labelled], classes: list[str]) -> list[str]:
    """What a multi-label run says of its training split: images per label, label sets, and warnings."""
    return [
        counts_line(per_class(items, classes), "training (images carrying each label)"),
        sets_line(items, classes),
        *(f"warning: {line}" for line in warnings(items, classes)),
    ]


def sets_line(items: Sequence[Labelled], classes: list[str]) -> str:
    """ "5 label sets; 12 of 400 images carry none of the labels"."""
    without = sum(1 for item in items if not item.targets)
    return f"{len(label_sets(items, classes))} label sets; {without} of {len(items)} images carry none of the labels"


def warnings(items: Sequence[Labelled], classes: list[str]) -> list[str]:
    """Labels that no image, or one image, carries: nothing to learn them from."""
    counts = per_class(items, classes)
    absent = [name for name, count in counts.items() if count == 0]
    once = [name for name, count in counts.items() if count == 1]
    return ([f"no image carries {', '.join(absent)}: nothing to learn it from"] if absent else []) + (
        [f"label(s) seen once: {', '.join(once)}; one example can be neither learned nor checked"] if once else []
    )
