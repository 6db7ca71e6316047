"""Near-duplicates: images whose 64-bit perceptual hashes (dHash) differ in a few bits, found without
comparing every pair, and the groups they join.

Multi-index hashing (Norouzi et al., 2012), with pairs of pieces as keys: cut each hash into
`max_distance + 2` pieces; two hashes within `max_distance` bits agree exactly on at least two of them
(pigeonhole), so only hashes that share the values of some pair of pieces are compared. At 4 bits:
six pieces of 10-11 bits, 15 indexes with 21-22-bit keys, so a million random hashes cost 15 sorts
and about 4 * 10^6 comparisons (benchmarks/scale.py), where every pair was 5 * 10^11.
Copies with the very same hash are linked to the first of them, not to each other: a group of m
copies is m - 1 pairs, not m(m - 1)/2.
"""

from __future__ import annotations

import itertools

import numpy as np

from vggtune.data.items import DUPLICATE, Item, Rejected, Splits
from vggtune.data.labelsets import joined
from vggtune.fsutil import display_path

MAX_DISTANCE = 4  # bits: a re-saved, resized or recompressed copy stays within it (tests/test_leakage.py)
CHUNK_PAIRS = 4_000_000  # candidate pairs compared at a time: bounds the memory of a large bucket
MAX_GROUP = 5  # an image and a few copies of it; more alike than this is a look, not copies
# Before a training image is left out as a copy of a held-out one, its pixels must agree: the mean absolute
# difference of the two as 32 x 32 grey thumbnails, of 255. Measured (BENCHMARKS.md section 26,
# `python benchmarks/near_duplicates.py`): 200 resized and recompressed copies of chest X-rays at most 2.1 apart;
# the 154,061 pairs of different X-rays within 4 bits of dHash at 9.9 and more (26 identical files at 0).
PIXEL_SIDE = 32
PIXEL_DIFFERENCE = 4.0


def close_pairs(hashes, max_distance: int = MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j for the positions of hashes within `max_distance` bits, each pair once."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) < 2:
        return []
    unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    # The same hash: each copy with the first of its hash.
    copies = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
    pairs = [(int(first[inverse[i]]), int(i), 0) for i in copies]
    a, b, distance = _close_unique(unique, max_distance)
    pairs += [(int(min(x, y)), int(max(x, y)), int(d)) for x, y, d in zip(first[a], first[b], distance)]
    return sorted(pairs)


def _close_unique(unique: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of positions (a < b) in `unique` (distinct hashes) within `max_distance` bits, and their distance."""
    found_a, found_b = [], []
    pieces = _pieces(max_distance)
    for (shift_1, width_1), (shift_2, width_2) in itertools.combinations(pieces, 2):
        keys = (_piece(unique, shift_1, width_1) << np.uint64(width_2)) | _piece(unique, shift_2, width_2)
        order = np.argsort(keys, kind="stable")
        for left, right in _same_key_pairs(keys[order]):
            a, b = order[left], order[right]
            close = _bit_count(unique[a] ^ unique[b]) <= max_distance
            found_a.append(np.minimum(a, b)[close])
            found_b.append(np.maximum(a, b)[close])
    if not found_a:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    code = np.unique(a.astype(np.int64) * len(unique) + b)  # a pair found by two indexes, once
    a, b = code // len(unique), code % len(unique)
    return a, b, _bit_count(unique[a] ^ unique[b]).astype(np.int64)


def _piece(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _bit_count(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy 2's bitwise_count; a byte table on numpy 1)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return _BYTE_BITS[np.ascontiguousarray(values).view(np.uint8).reshape(-1, 8)].sum(axis=1)


def _pieces(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of each of the max_distance + 2 pieces of a 64-bit hash: two hashes within
    max_distance bits differ in at most max_distance pieces, so at least two pieces agree exactly, and
    an index on each pair of pieces (keys of about 2 * 64 / (max_distance + 2) bits) finds them."""
    count = max_distance + 2
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    return [(sum(widths[:i]), width) for i, width in enumerate(widths)]


def _same_key_pairs(keys: np.ndarray):
    """Yields (left, right) position arrays, left < right, of every pair with the same value in the sorted
    `keys`, about CHUNK_PAIRS pairs at a time."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    bucket_end = np.repeat(ends, ends - starts)
    partners = bucket_end - np.arange(len(keys)) - 1  # each position pairs with those after it
    cumulative = np.cumsum(partners)
    begin = 0
    while begin < len(keys):
        end = int(np.searchsorted(cumulative, (cumulative[begin - 1] if begin else 0) + CHUNK_PAIRS, "right"))
        end = max(end, begin + 1)
        counts = partners[begin:end]
        if counts.sum():
            left = np.repeat(np.arange(begin, end), counts)
            run_starts = np.cumsum(counts) - counts
            right = left + 1 + np.arange(counts.sum()) - np.repeat(run_starts, counts)
            yield left, right
        begin = end


def groups(count: int, pairs, max_group: int | None = None) -> np.ndarray:
    """The group of each of `count` positions once every pair (i, j, ...) is joined: the smallest
    position of its group (union-find). A group of more than `max_group` is broken up, each position its
    own group again."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    group = np.array([root(i) for i in range(count)], dtype=np.int64)
    if max_group is not None and count:
        sizes = np.bincount(group, minlength=count)
        large = sizes[group] > max_group
        group[large] = np.flatnonzero(large)
    return group


def copy_groups(hashes, max_distance: int = MAX_DISTANCE) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """(the close pairs within a group, each position's group) where a group is what close pairs join, up
    to MAX_GROUP images: re-saved, resized or recompressed copies. A larger one is many images that merely
    look alike at 9 x 8 pixels (a texture, one X-ray layout, stripes), not copies: it is not a group."""
    pairs = close_pairs(hashes, max_distance)
    group = groups(len(hashes), pairs, MAX_GROUP)
    return [pair for pair in pairs if group[pair[0]] == group[pair[1]]], group


# ---- near-duplicates among a dataset's items --------------------------------------------------------


def near_duplicates(items: list[Item], max_distance: int = MAX_DISTANCE) -> list[tuple[Item, Item, int]]:
    """Pairs of different files in one copy group (`copy_groups`: dHashes within `max_distance` bits;
    copies with the same hash each paired with the first of them)."""
    pairs, _ = copy_groups([item.dhash for item in items], max_distance)
    return [(items[i], items[j], d) for i, j, d in pairs]


def without_near_copies(
    items: list[Item], held: dict[str, list[Item]], rejected: list, keep: bool = False
) -> tuple[list[Item], list[Item]]:
    """(the images left to split, those left out): less each one in a near-duplicate group with a held-out
    (val or test) image whose pixels it matches too (`pixel_difference` at most PIXEL_DIFFERENCE): a given
    split cannot move, so its copies leave the others, as exact copies do. A hash alone decides nothing: at
    9 x 8 pixels different photos of one object on one background look alike. `keep`: none left out."""
    outside = [(item, name) for name, part in held.items() for item in part]
    if not outside or keep:
        return items, []
    pool = items + [item for item, _ in outside]
    _, group = copy_groups([item.dhash for item in pool])
    held_in: dict[int, list[tuple]] = {}
    for position in range(len(items), len(pool)):
        held_in.setdefault(int(group[position]), []).append(outside[position - len(items)])
    kept, left_out = [], []
    for item, group_id in zip(items, group[: len(items)]):
        match = _pixel_match(item, held_in.get(int(group_id), []))
        if match is None:
            kept.append(item)
            continue
        (other, name), difference = match
        rejected.append(
            Rejected(
                item.path,
                f"near-duplicate of {name} file {display_path(other.path)} (mean pixel difference "
                f"{difference:.1f} of 255; kept out of two splits)",
                DUPLICATE,
            )
        )
        left_out.append(item)
    return kept, left_out


def _pixel_match(item: Item, candidates: list[tuple]) -> tuple[tuple, float] | None:
    """The first held-out (item, split) whose pixels `item` matches, with the difference; None for none."""
    for candidate in candidates:
        difference = _alike(item.path, candidate[0].path)
        if difference is not None:
            return candidate, difference
    return None


def pixel_difference(first: str, second: str) -> float | None:
    """The mean absolute difference of two images as PIXEL_SIDE-square grey thumbnails (0-255); None where
    either cannot be read (it was read when scanned: only a file changed since fails here)."""
    try:
        a, b = thumbnail(first), thumbnail(second)
    except (OSError, ValueError):
        return None
    return float(np.abs(a - b).mean())


def thumbnail(path: str) -> np.ndarray:
    """An image as the PIXEL_SIDE-square grey thumbnail `pixel_difference` compares (float32, 0-255)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("L", (PIXEL_SIDE * 4, PIXEL_SIDE * 4))  # JPEG: decoded at a fraction of its size
        grey = ImageOps.exif_transpose(image).convert("L").resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX)
        return np.asarray(grey, dtype=np.float32)


def report(splits: Splits, max_distance: int = MAX_DISTANCE):
    """One search over a dataset's splits: (rows, conflicts). rows: (path, its split, path, its split,
    distance) of each near-duplicate pair, cross-split ones first; conflicts: (path, its class, path, its
    class, distance) of the pairs filed under two classes whose pixels match too (`pixel_difference`): one
    image with two labels. A pair alike by hash alone is a row, not a conflict."""
    tagged = [(item, name) for name in ("train", "val", "test") for item in getattr(splits, name)]
    split_of = {item.path: name for item, name in tagged}
    pairs = near_duplicates([item for item, _ in tagged], max_distance)
    rows = sorted(
        ((a.path, split_of[a.path], b.path, split_of[b.path], d) for a, b, d in pairs),
        key=lambda row: (row[1] == row[3], row[4]),
    )
    conflicts = [
        (a.path, _labelled(a, splits.classes), b.path, _labelled(b, splits.classes), d)
        for a, b, d in pairs
        if a.label_key != b.label_key and _alike(a.path, b.path) is not None
    ]
    return rows, conflicts


def _alike(first: str, second: str) -> float | None:
    """Their pixel difference where the two images match (at most PIXEL_DIFFERENCE), else None."""
    difference = pixel_difference(first, second)
    return difference if difference is not None and difference <= PIXEL_DIFFERENCE else None


def _labelled(item: Item, classes: list[str]) -> str:
    """Its class, or its label set ("cat;dog"; "" for none)."""
    if item.targets is None:
        return classes[item.label]
    return joined([classes[label] for label in item.targets])
