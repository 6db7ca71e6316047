"""Multi-label data in words and numbers: the images carrying each label, the label sets and how often
each occurs, labels seen once, images that carry none; and the stratum each image is split by.

Splits and cross-validation folds stratify one key per image. A multi-label image's key is its rarest
label (the label fewest images carry), so a rare label is spread over the splits as a class would be;
the images that carry none share one key. This is the first step of iterative stratification
(Sechidis et al., 2011), which assigns the rarest label's images first. A label is split exactly in
proportion where it is its images' rarest; its images filed under a rarer label land wherever that
label's split puts them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

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
