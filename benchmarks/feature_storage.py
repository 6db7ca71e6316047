"""uint8 against float16 cached features (BENCHMARKS.md section 15): the default run on cats-vs-dogs-2k
twice, one after the other, differing only in --feature-storage, judged on its validation split
(and, paired, on validation + test images).

    .venv/bin/python benchmarks/feature_storage.py --json benchmarks/results/feature-storage.json

So that the uint8 run does not extract everything again, its block4 cache is made from the float16
one (each stored view quantized: one more float16 rounding than extracting straight to uint8, far
below uint8's step). The block5 features are then derived from the uint8 block4 ones, as a run does.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vggtune.results.analysis import mcnemar
from vggtune.features.cache import FeatureCache
from vggtune.model.weights import home

from common import DATA, write_json

STORAGES = ("float16", "uint8")


def convert_block4(root: Path) -> dict:
    """Every float16 block4 cache under `root` copied into its uint8 twin; returns bytes per view of each."""
    sizes = {}
    for key_file in sorted(root.glob("block4-*/key.json")):
        source = FeatureCache.existing(key_file.parent)
        if source.storage != "float16":
            continue
        key = {k: v for k, v in source.key.items() if k not in ("storage", "format")}
        target = FeatureCache(root, key, "uint8")
        entries = target.missing(list(source.index()))
        writer = target.writer()
        for start in range(0, len(entries), 256):
            chunk = entries[start:start + 256]
            writer.add(chunk, source.open(chunk).gather(range(len(chunk))))
        writer.close()
        count = len(source.index())
        sizes = {"views": count, "float16_bytes_per_view": round(source.size_bytes() / count),
                 "uint8_bytes_per_view": round(target.size_bytes() / len(target.index()))}
    return sizes


def train(data: Path, out: Path, storage: str) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vggtune", "train", str(data), "--out", str(out), "--feature-storage",
                    storage, "--quiet", "--no-report"], check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds": round(time.perf_counter() - started, 1), "val": metrics["val"], "test": metrics["test"],
            "timing": metrics["timing"]}


def paired(runs: dict[str, Path]) -> dict:
    """Validation + test images of both runs, right or wrong, image by image."""
    rows = {}
    for storage, out in runs.items():
        with open(out / "predictions.csv", newline="") as handle:
            rows[storage] = {row["path"]: row for row in csv.DictReader(handle)}
    paths = sorted(rows["float16"])
    right = {s: np.array([rows[s][p]["label"] == rows[s][p]["predicted"] for p in paths]) for s in STORAGES}
    classes = [c for c in next(iter(rows["float16"].values())) if c not in ("split", "path", "label", "predicted")]
    largest = max(abs(float(rows["float16"][p][c]) - float(rows["uint8"][p][c])) for p in paths for c in classes)
    test = mcnemar(right["float16"], right["uint8"])
    return {"images": len(paths), "right": {s: int(r.sum()) for s, r in right.items()},
            "mcnemar": test, "largest_probability_difference": round(largest, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--json", default="feature-storage.json")
    args = parser.parse_args()
    result = {"data": args.data}
    with tempfile.TemporaryDirectory() as folder:
        runs = {s: Path(folder) / s for s in STORAGES}
        result["float16"] = train(Path(args.data), runs["float16"], "float16")   # fills the float16 cache if cold
        print(json.dumps(result["float16"]), flush=True)
        started = time.perf_counter()
        result["bytes"] = convert_block4(home() / "features")
        result["convert_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result["bytes"]), flush=True)
        result["uint8"] = train(Path(args.data), runs["uint8"], "uint8")
        result["paired"] = paired(runs)
    print(json.dumps(result, indent=2))
    write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
