"""The shift warning's false alarms and hits (issue #56): batches of unlabelled images of the training source,
held out, against batches from elsewhere, each checked as `predict` checks a batch (results/shift.py).

Pools, for a finished run (give its folder):
  same source   images of the training source the run never saw (--same: a folder, a manifest, or the run's
                own test split where that is the training source)
  elsewhere     images of another source (--elsewhere), and the same-source pool darkened and washed out
                (a camera or exposure change, made here)
Each pool is scored and embedded once; --batches batches of --size images are drawn from each and checked.
Writes results/<--name>.json.

    cd benchmarks && ../.venv/bin/python shift_warning.py --run RUN --same SAME --elsewhere OTHER
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

import vggtune
from vggtune.deploy.inputs import expand_paths
from vggtune.results import shift
from vggtune.results.auditscores import embed
from vggtune.training.rundir import RunDir

from common import machine, provenance, save, table


def pool_paths(source: str, limit: int, rng) -> list[str]:
    """Image files of a folder (recursively) or a manifest's `path` column, at most `limit`, drawn at random."""
    if source.endswith(".csv"):
        with open(source, newline="") as handle:
            paths = [row["path"] for row in csv.DictReader(handle)]
    else:
        paths, _ = expand_paths([source])
    return [paths[i] for i in sorted(rng.choice(len(paths), min(limit, len(paths)), replace=False))]


def darkened(paths: list[str], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        image = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(0.6)).enhance(0.6)
        written.append(str(folder / f"{i}.jpg"))
        image.save(written[-1], quality=90)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--same", required=True, help="held-out images of the training source")
    parser.add_argument("--elsewhere", required=True, help="images of another source")
    parser.add_argument("--pool", type=int, default=400, help="images taken from each source (default 400)")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--size", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--work", default="/tmp/shift-warning")
    parser.add_argument("--name", default="shift-warning")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    folder = RunDir(args.run)
    predictor = vggtune.load(args.run)
    reference = shift.training_embeddings(folder, predictor)
    splits = folder.saved_splits()
    counts = np.bincount([item.label for item in splits.train], minlength=len(splits.classes))
    same = pool_paths(args.same, args.pool, rng)
    pools = {"same source": same, "elsewhere": pool_paths(args.elsewhere, args.pool, rng),
             "same source, darkened": darkened(same, Path(args.work) / "darkened")}
    scored = {}
    for name, paths in pools.items():
        kept_file = Path(args.work) / f"{Path(args.run).parent.name}-{name.replace(' ', '_').replace(',', '')}.npz"
        if kept_file.is_file():  # embedded before (the same pool of the same run): the statistics alone again
            kept = np.load(kept_file)
            scored[name] = (kept["embeddings"], kept["labels"].tolist())
            continue
        predictions, _ = predictor.predict(paths)
        labels = {p.path: p.label for p in predictions}
        kept = [p for p in paths if p in labels]
        scored[name] = (embed(predictor, kept, f"{name}: embeddings"), [labels[p] for p in kept])
        np.savez(kept_file, embeddings=scored[name][0], labels=np.array(scored[name][1]))
    rows = []
    for name, (embeddings, labels) in scored.items():
        for size in args.size:
            warned = far = farther = mix = 0
            for _ in range(args.batches):
                pick = rng.choice(len(labels), min(size, len(labels)), replace=False)
                found = shift.compare(reference, embeddings[pick], [labels[i] for i in pick], splits.classes, counts)
                warned += found.warning is not None
                far += found.warning is not None and "fence" in found.warning
                farther += found.warning is not None and "farther from the training images" in found.warning
                mix += found.warning is not None and "training mix" in found.warning
            rows.append({"pool": name, "images": len(labels), "batch": size, "warned": f"{warned}/{args.batches}",
                         "by the fence": far, "farther as a whole": farther, "by the class mix": mix})
    print(f"run {args.run}: {len(reference)} training images as the reference")
    print(table(rows, list(rows[0])))
    save(args.name, {"machine": machine(), "provenance": provenance(), "run": args.run, "same": args.same,
                     "elsewhere": args.elsewhere, "rows": rows})


if __name__ == "__main__":
    main()
