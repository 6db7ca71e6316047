"""How often the near-duplicate check calls different images copies, on a homogeneous set, and how often it
finds real copies: the 64-bit dHash proposes (within 4 bits), the pixels decide (32 x 32 grey thumbnails,
mean absolute difference at most similar.PIXEL_DIFFERENCE).

    python benchmarks/near_duplicates.py [--data ../shared/data/chest-xray-train] [--copies 200]

1. Every pair of the folder's images within 4 bits of dHash, and how many of them the pixels confirm.
2. `--copies` images resized to 70 % and saved again as JPEG quality 70: how many the pixels confirm.
3. A fifth of the folder held out as a test folder (seeded): how many training images the hash alone
   left out of training (vggtune before this check), and how many the hash and the pixels leave out,
   by class.
Prints the figures and writes benchmarks/results/near_duplicates.json.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from common import DATA, ROOT, cpu_model, save

sys.path.insert(0, str(ROOT / "src"))
from vggtune.data.dataset import difference_hash  # noqa: E402
from vggtune.data.items import Item  # noqa: E402
from vggtune.data.similar import PIXEL_DIFFERENCE, close_pairs, copy_groups, thumbnail, without_near_copies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "chest-xray-train")
    parser.add_argument("--copies", type=int, default=200)
    args = parser.parse_args()
    classes = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((args.data / name).iterdir())]
    hashes, thumbs = [], []
    for path, _ in files:
        with Image.open(path) as image:
            hashes.append(difference_hash(image))
        thumbs.append(thumbnail(str(path)))
    pairs = close_pairs(hashes, 4)
    differences = np.array([np.abs(thumbs[i] - thumbs[j]).mean() for i, j, _ in pairs])
    confirmed = int((differences <= PIXEL_DIFFERENCE).sum())
    identical = int((differences == 0).sum())

    rng = random.Random(0)
    copy_differences = []
    for k in rng.sample(range(len(files)), min(args.copies, len(files))):
        with Image.open(files[k][0]) as image:
            small = image.convert("RGB").resize((int(image.width * 0.7), int(image.height * 0.7)), Image.BILINEAR)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=70)
        copy_path = Path("/tmp") / f"vggtune-copy-{k}.jpg"
        copy_path.write_bytes(buffer.getvalue())
        copy_differences.append(float(np.abs(thumbnail(str(copy_path)) - thumbs[k]).mean()))
        copy_path.unlink()
    copy_differences_array = np.array(copy_differences)

    items = [Item(str(path), label, str(i), hashes[i]) for i, (path, label) in enumerate(files)]
    order = np.random.default_rng(0).permutation(len(items))
    test = [items[i] for i in order[: len(items) // 5]]
    train = [items[i] for i in order[len(items) // 5 :]]
    hash_alone = _left_by_hash(train, test)
    kept, left_out = without_near_copies(train, {"test": test}, [])
    by_class = lambda group: {name: sum(1 for item in group if item.label == c) for c, name in enumerate(classes)}  # noqa: E731

    result = {
        "data": str(args.data),
        "images": len(files),
        "processor": cpu_model(),
        "pixel_difference_allowed": PIXEL_DIFFERENCE,
        "hash_close_pairs": len(pairs),
        "confirmed_by_pixels": confirmed,
        "identical_pixels": identical,
        "smallest_difference_not_identical": float(differences[differences > 0].min()) if len(pairs) > identical else None,
        "false_duplicate_rate": (confirmed - identical) / max(len(pairs) - identical, 1),
        "copies": len(copy_differences),
        "copies_confirmed": int((copy_differences_array <= PIXEL_DIFFERENCE).sum()),
        "copy_difference_max": float(copy_differences_array.max()),
        "held_out_test_images": len(test),
        "left_out_by_hash_alone": by_class(hash_alone),
        "left_out_by_hash_and_pixels": by_class(left_out),
    }
    for key, value in result.items():
        print(f"{key:34} {value}")
    save("near_duplicates", result)


def _left_by_hash(train: list[Item], test: list[Item]) -> list[Item]:
    """What vggtune left out before the pixels were asked: every training image in a hash group with a test one."""
    pool = train + test
    _, group = copy_groups([item.dhash for item in pool])
    held_groups = {int(group[i]) for i in range(len(train), len(pool))}
    return [item for item, g in zip(train, group[: len(train)]) if int(g) in held_groups]


if __name__ == "__main__":
    main()
