"""What discovery and the scan hand on: the items (usable images), what a folder or manifest holds
(`Found`), the splits, and each file that could not be used with its reason and kind (`Rejected`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vggtune import tasks
from vggtune.data import labelsets
from vggtune.tasks import Task

SPLIT_NAMES = ("train", "val", "test")

# The kinds of rejected file, written in rejected.csv beside the reason a person reads.
UNREADABLE = "unreadable"  # not an image we can decode: missing, empty, broken, too small, a bomb ...
LAYOUT = "layout"  # not where a class can be read from (outside the class folders, a Kaggle-less name)
MANIFEST_ROW = "manifest-row"  # a manifest row without a path or label, or with another split
DUPLICATE = "duplicate"  # the same content again (in its class, or in another split)
LABEL_CONFLICT = "label-conflict"  # the same content filed under two classes: every copy kept out
KINDS = (UNREADABLE, LAYOUT, MANIFEST_ROW, DUPLICATE, LABEL_CONFLICT)


# Where a rejected file was: the training data (DATA: a folder or manifest), or a folder given apart.
IN_DATA, IN_VAL, IN_TEST = "data", "val", "test"
WHERE = (IN_DATA, IN_VAL, IN_TEST)


class Rejected(tuple):
    """(path, reason): a file that could not be used, with its `kind` and the folder it was in (`where`:
    DATA, or a given --val-data or --test-data folder) beside. A plain (path, reason) pair everywhere a
    pair is expected; a bare pair is of kind "unreadable", in DATA."""

    kind: str
    where: str

    def __new__(cls, path: str, reason: str, kind: str = UNREADABLE, where: str = IN_DATA):
        if kind not in KINDS:
            raise ValueError(f"rejection kind {kind!r}; allowed: {', '.join(KINDS)}")
        if where not in WHERE:
            raise ValueError(f"rejected file's folder {where!r}; allowed: {', '.join(WHERE)}")
        row = super().__new__(cls, (path, reason))
        row.kind, row.where = kind, where
        return row

    def __getnewargs__(self):  # pickled (torchrun gathers them) with its kind and folder
        return (self[0], self[1], self.kind, self.where)

    def found_in(self, where: str) -> Rejected:
        return Rejected(self[0], self[1], self.kind, where)

    @classmethod
    def of(cls, row) -> Rejected:
        return row if isinstance(row, Rejected) else cls(row[0], row[1])

    @property
    def path(self) -> str:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]


@dataclass(frozen=True)
class Item:
    """A usable image. Single-label: `label` is its class's index and `targets` None. Multi-label: `targets`
    holds the indexes of its labels (empty: none of them) and `label` is its stratum, the key it is counted by
    (labelsets.strata: its rarest label; images with none share one); splits and folds deal the labels
    themselves (label_parts)."""

    path: str
    label: int
    sha256: str
    dhash: int = 0  # perceptual hash, for near-duplicate warnings
    targets: tuple[int, ...] | None = None

    @property
    def label_key(self) -> tuple[int, ...] | int:
        """What two copies of one image must share to be one labelling: the class, or the label set."""
        return self.targets if self.targets is not None else self.label


@dataclass
class Found:
    """What discovery saw: candidate files per class and files it could not take. A multi-label manifest's
    files name their label set as a key ("cat;dog", sorted; "" for none) and `classes` are its labels."""

    classes: list[str]
    files: list[tuple[str, str]]  # (path, class name; multi-label: the label set's key)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    split_of: dict[str, str] = field(default_factory=dict)  # path -> split a manifest assigns
    manifest: bool = False
    multi_label: bool = False

    @property
    def task(self) -> Task:
        """The task these files ask for (tasks.py): chosen here, once, from the data."""
        return tasks.of(self.multi_label)

    def item(self, index: dict[str, int], path: str, name: str, sha256: str, dhash: int) -> Item:
        """The usable image `path` filed under `name` (a class, or a multi-label key), labels as `index` numbers
        them. A multi-label item's stratum is set once all are known (`stratified`)."""
        if not self.multi_label:
            return Item(path, index[name], sha256, dhash)
        return Item(path, 0, sha256, dhash, tuple(index[label] for label in labelsets.label_names(name)))

    def counts(self) -> dict[str, int]:
        """Candidate files per class (multi-label: carrying each label), in the classes' order (before any file
        is read)."""
        counts = dict.fromkeys(self.classes, 0)
        for _, name in self.files:
            for label in labelsets.label_names(name) if self.multi_label else [name]:
                counts[label] += 1
        return counts


@dataclass
class Splits:
    classes: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    rejected: list[tuple[str, str]]
    multi_label: bool = False
    # training images left out as copies of a held-out (val or test) image: their pixels match too
    near_copies: list[Item] = field(default_factory=list)

    @property
    def task(self) -> Task:
        """The task this data asks for (tasks.py): chosen here, once, from whether an image carries several labels."""
        return tasks.of(self.multi_label)

    def near_copies_by_class(self) -> dict[str, int]:
        """The images left out as copies of held-out ones, per class (multi-label: per label they carry)."""
        from vggtune.data import balance

        return {name: count for name, count in balance.per_class(self.near_copies, self.classes).items() if count}

    def class_lines(self) -> list[str]:
        """The training images per class, and the warnings their names and sizes call for (balance.py); for
        multi-label data, the images carrying each label (labelsets.py)."""
        from vggtune.data import balance

        if self.multi_label:
            return labelsets.training_lines(self.train, self.classes)
        counts = balance.per_class(self.train, self.classes)
        return [balance.counts_line(counts, "training"), *(f"warning: {w}" for w in balance.class_warnings(counts))]


def stratified(items: list[Item], n_labels: int) -> list[Item]:
    """Multi-label items with their stratum as `label` (labelsets.strata): what splits and folds stratify."""
    keys = labelsets.strata([item.targets or () for item in items], n_labels)
    return [dataclasses.replace(item, label=key) for item, key in zip(items, keys)]


def label_parts(items: list[Item], shares, seed: int) -> tuple[list[Item], ...]:
    """Multi-label items dealt into len(shares) parts by iterative stratification (labelsets.iterative_parts)."""
    parts = labelsets.iterative_parts([item.targets or () for item in items], shares, seed)
    dealt: tuple[list[Item], ...] = tuple([] for _ in shares)
    for item, part in zip(items, parts):
        dealt[part].append(item)
    return dealt
