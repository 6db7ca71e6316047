"""How cost grows: wall time, peak memory and cache size against the number of images
(petimages-180-10k subsets, cold cache each) and against the number of head epochs (warm cache).
Prints tables, writes results/scaling.json.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import DATA, convert_weights, link_subset, save, table
from recipe import run


def train(data: Path, out: Path, home: Path, epochs: int, finetune_epochs: int, views: int) -> dict:
    command = [sys.executable, "-m", "vggtune", "train", str(data), "--out", str(out), "--epochs", str(epochs),
               "--finetune-epochs", str(finetune_epochs), "--views", str(views), "--patience", "0", "--quiet"]
    result = run(command, dict(os.environ, VGGTUNE_HOME=str(home)))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": result["wall_s"], "peak_rss_mb": result["peak_rss_mb"], **metrics["timing"],
            "test_accuracy": metrics["test"]["accuracy"],
            "cache_mb": round(sum(p.stat().st_size for p in home.rglob("shard-*.npy")) / 1e6, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 2000, 10000])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--views", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vggtune-scaling-"))
    convert_weights(work / "home-weights")
    by_size = []
    for size in args.sizes:
        data = link_subset(DATA / "petimages-180-10k", work / f"data-{size}", size // 2)
        home = work / f"home-{size}"
        shutil.copytree(work / "home-weights", home)
        row = {"images": size, **train(data, work / f"run-{size}", home, 10, 0, args.views)}
        by_size.append(row)
        print(row, flush=True)
    data, home = work / f"data-{args.sizes[1]}", work / f"home-{args.sizes[1]}"
    by_epochs = []
    for epochs in args.epochs:                     # the cache is warm: only the head trains
        row = {"images": args.sizes[1], "epochs": epochs, **train(data, work / f"epochs-{epochs}", home, epochs, 0, args.views)}
        by_epochs.append(row)
        print(row, flush=True)
    print(f"\nhead-only recipe (10 epochs, --views {args.views}), cold cache for each size:")
    print(table(by_size, ["images", "wall_s", "features_s", "head_s", "peak_rss_mb", "cache_mb", "test_accuracy"]))
    print(f"\nwarm cache, {args.sizes[1]} images, head epochs:")
    print(table(by_epochs, ["epochs", "wall_s", "features_s", "head_s", "peak_rss_mb"]))
    save("scaling", {"views": args.views, "by_images": by_size, "by_epochs": by_epochs})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
