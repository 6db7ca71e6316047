"""The classes' sizes and what an imbalance among them does to the figures people read first.

With 1 normal X-ray to 2.9 of pneumonia, a model that recognises half the normal ones still scores
0.79 accuracy: accuracy weighs each image alike, so the larger class hides the smaller one's errors.
Where the largest class outnumbers the smallest beyond IMBALANCE_RATIO, the command line, the report
and the model card say so in words and point to balanced accuracy and per-class recall.
"""

from __future__ import annotations


def per_class(items, classes: list[str]) -> dict[str, int]:
    """Images per class of `items` (anything with a `label`: the index of its class); multi-label items
    (`targets` not None) count under each label they carry."""
    counts = [0] * len(classes)
    for item in items:
        targets = getattr(item, "targets", None)
        for label in targets if targets is not None else (item.label,):
            counts[label] += 1
    return dict(zip(classes, counts))


def counts_line(counts: dict[str, int], where: str) -> str:
    """ "classes in training: a 1,073, b 3,100 (1 : 2.9)"."""
    listed = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    ratio = class_ratio(counts)
    return f"classes in {where}: {listed}" + (
        f" (1 : {ratio:.1f})" if len(counts) > 1 and ratio != float("inf") else ""
    )


IMBALANCE_RATIO = 1.5  # beyond this ratio of the largest class to the smallest, accuracy misleads


def class_ratio(counts: dict[str, int]) -> float:
    """The largest class's images over the smallest's (inf where a class has none)."""
    values = list(counts.values())
    smallest = min(values, default=0)
    return max(values) / smallest if smallest else float("inf")


def _count_of(counts: dict[str, int]):
    return lambda name: counts[name]


def imbalance(counts: dict[str, int]) -> str | None:
    """One sentence where the classes are imbalanced beyond IMBALANCE_RATIO: what it does to accuracy and
    what to read instead. `counts`: images per class."""
    counts = {name: count for name, count in counts.items() if count}  # an empty class is warned of apart
    if len(counts) < 2 or class_ratio(counts) <= IMBALANCE_RATIO:
        return None
    largest = max(counts, key=_count_of(counts))
    share = counts[largest] / sum(counts.values())
    smallest = min(counts, key=_count_of(counts))
    return (
        f"the classes are imbalanced, 1 : {class_ratio(counts):.1f} ({smallest} {counts[smallest]:,}, "
        f"{largest} {counts[largest]:,}): always answering {largest} would score {share:.3f} accuracy, so "
        "read the balanced accuracy and each class's recall, which accuracy hides"
    )


FEW_IMAGES = 5  # a class with fewer images than this can hardly be learned or judged


def class_warnings(counts: dict[str, int]) -> list[str]:
    """Every warning the classes' names and sizes call for: an imbalance, classes with very few images,
    names that differ only in case or spacing (`Rose` beside `rose` made a third class of one image), names
    holding ";" (a `label` column's `cat;dog` is a class of its own: a user who meant two labels trained a
    single-label model without a word; not guessed, since it can be a real name)."""
    warnings = [imbalance(counts)]
    few = [f"{name} ({count})" for name, count in counts.items() if count < FEW_IMAGES]
    if few:
        warnings.append(
            f"{len(few)} class(es) with fewer than {FEW_IMAGES} images: {', '.join(few)}; a model can "
            "hardly learn them, nor a split judge them"
        )
    alike: dict[str, list[str]] = {}
    for name in counts:
        alike.setdefault("".join(name.casefold().split()).replace("_", "").replace("-", ""), []).append(name)
    for names in alike.values():
        if len(names) > 1:
            warnings.append(
                f"classes {', '.join(repr(n) for n in names)} differ only in case or spacing: one "
                "class under two names? rename the folders or labels to one"
            )
    joined = [name for name in counts if ";" in name]
    if joined:
        shown = ", ".join(repr(name) for name in joined[:3]) + (
            f" and {len(joined) - 3} more" if len(joined) > 3 else ""
        )
        warnings.append(
            f"{len(joined)} class name(s) hold ';' ({shown}), each read as one class of its own; for several "
            "labels an image, name the manifest's column labels (path,labels with cells like cat;dog)"
        )
    return [warning for warning in warnings if warning]
