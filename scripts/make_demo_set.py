"""Builds the committed demo set, examples/pets/{cat,dog}/, from the Oxford-IIIT Pet images in
../shared/data/oxford-pets-370: every cat (12 breeds x 10) and five dogs of each of the 25 dog breeds,
the shorter side resized to 160 px (JPEG quality 85), about 2 MB. Run once; the images are committed with
their licence (examples/pets-LICENSE.md).

    python scripts/make_demo_set.py [--source ../shared/data/oxford-pets-370] [--out examples/pets]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageOps

SIDE = 160
DOGS_A_BREED = 5


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=root.parent / "shared" / "data" / "oxford-pets-370")
    parser.add_argument("--out", type=Path, default=root / "examples" / "pets")
    args = parser.parse_args()
    written = 0
    for breed in sorted(p for p in args.source.iterdir() if p.is_dir()):
        cat = breed.name[0].isupper()  # the dataset's convention: cat breeds are capitalised
        files = sorted(breed.glob("*.jpg"), key=lambda p: (len(p.name), p.name))
        for file in files if cat else files[:DOGS_A_BREED]:
            with Image.open(file) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                scale = SIDE / min(image.size)
                small = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            target = args.out / ("cat" if cat else "dog") / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            small.save(target, quality=85, optimize=True)
            written += 1
    size = sum(p.stat().st_size for p in args.out.rglob("*.jpg")) / 1e6
    print(f"wrote {written} images to {args.out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
