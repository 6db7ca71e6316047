"""`vggtune data check`: a dataset scanned as training would scan it, read back as one record: each
folder's usable images per class and its rejected files, the near-duplicate pairs, and the pairs filed
under two classes (likely one image with two labels)."""

from __future__ import annotations

from dataclasses import dataclass

from vggtune.data import balance, dataset, labelsets, similar
from vggtune.data.items import IN_DATA, IN_TEST, IN_VAL, Rejected, Splits

# (path, its split, path, its split, perceptual hash distance); with classes instead of splits for conflicts
Pair = tuple[str, str, str, str, int]


@dataclass(frozen=True)
class FolderCheck:
    """One folder read: the folder as given, the name its rejected rows carry (`where`: "data", or "val" /
    "test" for a folder given apart), its usable images per class (multi-label: carrying each label), its
    rejected files, what its classes' sizes call for (`warnings`) and, for multi-label data, the images per
    label set (labelsets.NONE_SET: carrying none)."""

    folder: str
    where: str
    counts: dict[str, int]
    rejected: list[Rejected]
    warnings: list[str]
    images: int
    label_sets: dict[str, int] | None = None

    @property
    def without_labels(self) -> int | None:
        """Multi-label: the images that carry none of the labels."""
        return None if self.label_sets is None else self.label_sets.get(labelsets.NONE_SET, 0)

    def summary(self, name: str) -> str:
        """ "classes in NAME: a 10, b 29 (1 : 2.9)" (balance.counts_line)."""
        return balance.counts_line(self.counts, name)


@dataclass(frozen=True)
class DataCheck:
    """What `vggtune data check` finds: the splits training would make, each folder read (DATA first),
    the near-duplicate pairs (across splits first) and the near-duplicates under two classes."""

    splits: Splits
    folders: list[FolderCheck]
    near_duplicates: list[Pair]
    conflicts: list[Pair]

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    @property
    def rejected(self) -> list[Rejected]:
        return [Rejected.of(row) for row in self.splits.rejected]

    @property
    def clean(self) -> bool:
        """Every file usable and no near-duplicates under two classes."""
        return not self.rejected and not self.conflicts


def check(folder: str, val_data: str | None = None, test_data: str | None = None) -> DataCheck:
    """Scans `folder` (and a validation or test folder given apart) as `train` would, and searches the
    usable images for near-duplicates."""
    splits = dataset.prepare_splits(folder, val_data, test_data, 0.1, 0.1, seed=0)
    near_duplicates, conflicts = similar.report(splits)
    return DataCheck(splits, _folders(splits, folder, val_data, test_data), near_duplicates, conflicts)


def _folders(splits: Splits, folder: str, val_data: str | None, test_data: str | None) -> list[FolderCheck]:
    """DATA, and each folder given apart, each counted under its own name: DATA's images are the splits
    made from it, a folder given apart is its split alone."""
    apart = [
        (path, items, where)
        for path, items, where in ((val_data, splits.val, IN_VAL), (test_data, splits.test, IN_TEST))
        if path
    ]
    taken = {where for _, _, where in apart}
    own = splits.train + (splits.val if IN_VAL not in taken else []) + (splits.test if IN_TEST not in taken else [])
    rejected = [Rejected.of(row) for row in splits.rejected]
    return [
        _folder_check(str(path), where, items, splits, [row for row in rejected if row.where == where])
        for path, items, where in [(folder, own, IN_DATA), *apart]
    ]


def _folder_check(folder: str, where: str, items: list, splits: Splits, rejected: list[Rejected]) -> FolderCheck:
    counts = balance.per_class(items, splits.classes)
    if not splits.multi_label:
        return FolderCheck(folder, where, counts, rejected, balance.class_warnings(counts), len(items))
    said = labelsets.warnings(items, splits.classes)
    return FolderCheck(folder, where, counts, rejected, said, len(items), labelsets.label_sets(items, splits.classes))
