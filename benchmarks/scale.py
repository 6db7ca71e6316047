"""Cost at scale (BENCHMARKS.md section 15): finding 100,000 files with class folders and with a
manifest; extraction with 1 and 2 processes (torchrun, gloo) on this machine; cache bytes per view
at each cut; and from those, what a million images cost in disk and time. Then the steps after the
files are read, at 10^4, 10^5 and 10^6 synthetic entries: the scan's bookkeeping, the near-duplicate
search (multi-index hashing, against every pair as before where that ends in minutes) and the split.

    .venv/bin/python benchmarks/scale.py --json benchmarks/results/scale.json
    .venv/bin/python benchmarks/scale.py --steps-only --json benchmarks/results/scale-steps.json

Extraction runs vggtune's own FeaturePipeline.fill, under torchrun with 2 processes of one thread
each against one process of two threads, into empty caches, alternating, `--repeats` times each.
The model is random-init VGG16: speed does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vggtune import distributed

from vggtune.data import dataset as data, discovery, similar
from vggtune.data.items import Found, Item
from vggtune.training.config import AugmentConfig
from vggtune.features.extract import ImageJob, decode_views
from vggtune.features.pipeline import FeaturePipeline
from vggtune.model.arch import VGG16
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.progress import verbosity
from vggtune.model.runtime import Runtime, choose_runtime
from vggtune.model.weights import VGG16_IMAGENET1K_V1

from common import DATA, write_json

PREP = VGG16_IMAGENET1K_V1.preprocessing


def processor() -> str:
    return Runtime(torch.device("cpu"), False).processor()


# -- finding files ---------------------------------------------------------------------------

def write_tiny_jpegs(root: Path, count: int) -> Path:
    """count unique 16x16 JPEGs in root/{a,b}/ and root/manifest.csv listing them."""
    def one(i):
        name = "ab"[i % 2]
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        path = root / name / f"{i:06d}.jpg"
        path.write_bytes(buffer.getvalue())
        return str(path), name
    for name in "ab":
        (root / name).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(count)))
    with open(root.parent / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return root


def time_call(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def scan_costs(work: Path, count: int, repeats: int) -> dict:
    """Discovery (walk vs reading the CSV) several times, alternating, then one whole scan of each."""
    folders = write_tiny_jpegs(work / "files", count)
    manifest = work / "manifest.csv"
    found_walk, found_csv, walks, reads = None, None, [], []
    for _ in range(repeats):
        seconds, found_walk = time_call(lambda: discovery.discover(folders))
        walks.append(seconds)
        seconds, found_csv = time_call(lambda: discovery.discover(manifest))
        reads.append(seconds)
    assert len(found_walk.files) == len(found_csv.files) == count
    result = {"files": count, "discover_folders_s": round(statistics.median(walks), 3),
              "discover_manifest_s": round(statistics.median(reads), 3), "repeats": repeats}
    for name, found in (("folders", found_walk), ("manifest", found_csv)):
        seconds, (items, rejected) = time_call(lambda: data.scan(found, workers=2))
        assert len(items) == count and not rejected
        result[f"scan_{name}_s"] = round(seconds, 2)
    print(json.dumps(result), flush=True)
    return result


# -- the steps after the files are read, at a million entries ---------------------------------------

def synthetic_hashes(count: int, seed: int = 0) -> np.ndarray:
    """Random 64-bit dHashes, 2 % of them near copies (1-4 bits flipped) of another entry."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, count, dtype=np.uint64) ^ (rng.integers(0, 2, count, dtype=np.uint64) << np.uint64(63))
    copies = rng.choice(count, count // 50, replace=False)
    for flips in range(1, 5):
        chosen = copies[flips - 1::4]
        noise = np.zeros(len(chosen), dtype=np.uint64)
        for _ in range(flips):
            noise ^= np.uint64(1) << rng.integers(0, 64, len(chosen)).astype(np.uint64)
        hashes[chosen] = hashes[rng.integers(0, count, len(chosen))] ^ noise
    return hashes


def all_pairs(hashes: np.ndarray, max_distance: int = similar.MAX_DISTANCE) -> int:
    """Pairs within max_distance by comparing every pair in blocks of 512 rows (the search before #28)."""
    found = 0
    for start in range(0, len(hashes), 512):
        distance = np.bitwise_count(hashes[start:start + 512, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        found += int(np.sum(rows + start < cols))
    return found


def step_costs(counts: list[int], all_pairs_up_to: int) -> list[dict]:
    """Seconds of each step after the files are read: the scan's bookkeeping (content hashes, label
    conflicts, duplicates) on entries whose checks are done, the near-duplicate search and the split."""
    rows = []
    for count in counts:
        hashes = synthetic_hashes(count)
        paths = [f"/data/{'ab'[i % 2]}/{i:07d}.jpg" for i in range(count)]
        found = Found(["a", "b"], [(path, "ab"[i % 2]) for i, path in enumerate(paths)])
        checks = [(f"{i:064x}", None, int(h)) for i, h in enumerate(hashes)]
        original = data.check_file
        results = iter(checks)
        data.check_file = lambda path: next(results)
        try:
            with verbosity(True):
                scan_s, (items, _) = time_call(lambda: data.scan(found, workers=1))
        finally:
            data.check_file = original
        search_s, pairs = time_call(lambda: similar.close_pairs(hashes))
        split_s, (train, val, test) = time_call(lambda: data.stratified_split(items, (0.1, 0.1), 0))
        assert len(train) + len(val) + len(test) == count
        row = {"entries": count, "scan_bookkeeping_s": round(scan_s, 2), "near_duplicates_s": round(search_s, 2),
               "pairs": len(pairs), "split_s": round(split_s, 2)}
        if count <= all_pairs_up_to:
            row["all_pairs_s"], found_all = time_call(lambda: all_pairs(hashes))
            row["all_pairs_s"] = round(row["all_pairs_s"], 2)
            row["all_pairs_found"] = found_all
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# -- extraction with 1 and 2 processes -----------------------------------------------------------

def photo_jobs(count: int) -> list[ImageJob]:
    files = [path for name in ("cat", "dog") for path in sorted((DATA / "cats-vs-dogs-2k" / name).iterdir())[:count // 2]]
    return [ImageJob(str(path), hashlib.sha256(path.read_bytes()).hexdigest(), (0,)) for path in files]


def extract_worker(args) -> None:
    """One rank of the torchrun job: its share of the images to block4, into the cache in args.home."""
    with distributed.joined("cpu") as world, verbosity(True):
        runtime = choose_runtime("cpu", args.precision)
        torch.manual_seed(0)
        model = Classifier(HeadSpec("flatten", 2), size=PREP.size).to(memory_format=torch.channels_last).eval()
        jobs = photo_jobs(args.images)
        pipeline = FeaturePipeline(model, PREP, AugmentConfig(), runtime, 32, "random", Path(args.home))
        cache = pipeline.cache("block4")
        distributed.barrier()
        started = time.perf_counter()
        rejected, computed = pipeline.fill(cache, jobs, "block4")
        computed = distributed.total(computed)[0]
        seconds = time.perf_counter() - started
        if world.main:
            cache.refresh()
            entries = [e for m in cache.dir.glob("shard-*.json") for e in json.loads(m.read_text())["entries"]]
            Path(args.result).write_text(json.dumps({
                "processes": world.size, "threads_each": torch.get_num_threads(), "views": int(computed),
                "seconds": round(seconds, 2), "views_s": round(computed / seconds, 2),
                "entries": len(entries), "unique_entries": len(set(entries)), "runtime": runtime.describe()}))


def extraction_costs(work: Path, images: int, repeats: int, precision: str) -> dict:
    runs = {1: [], 2: []}
    for repeat in range(repeats):
        for processes in (1, 2):
            home, result = work / f"cache-{processes}-{repeat}", work / f"extract-{processes}-{repeat}.json"
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)))
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc-per-node={processes}", __file__, "--extract-worker", "--images", str(images),
                            "--home", str(home), "--result", str(result), "--precision", precision],
                           env=env, check=True, timeout=3600)
            runs[processes].append(json.loads(result.read_text()))
            print(json.dumps(runs[processes][-1]), flush=True)
    rates = {p: [r["views_s"] for r in rows] for p, rows in runs.items()}
    pairs = [two / one for one, two in zip(rates[1], rates[2])]
    return {"images": images, "runs": runs, "median_views_s": {p: statistics.median(v) for p, v in rates.items()},
            "two_over_one": [round(x, 3) for x in pairs], "two_over_one_median": round(statistics.median(pairs), 3)}


def decode_rate(count: int) -> float:
    """Decoded, resized and cropped clean views per second on one core (Pillow), as extraction decodes."""
    jobs = photo_jobs(count)
    started = time.perf_counter()
    for job in jobs:
        decode_views(job, PREP)
    return round(len(jobs) / (time.perf_counter() - started), 1)


# -- bytes per view, and the projection ------------------------------------------------------------

def bytes_per_view(work: Path) -> dict:
    """Shard bytes over entries, at each cut, for 8 clean views at 224 px (float16 storage)."""
    torch.manual_seed(0)
    model = Classifier(HeadSpec("flatten", 2), size=PREP.size).eval()
    pipeline = FeaturePipeline(model, PREP, AugmentConfig(), Runtime(torch.device("cpu"), False), 8, "random",
                               work / "bytes")
    jobs = photo_jobs(8)
    result = {}
    with verbosity(True):
        for cut in VGG16.block_names:
            cache = pipeline.cache(cut)
            pipeline.fill(cache, jobs, cut)
            result[cut] = round(cache.size_bytes() / len(jobs))
    return result


def conv_flops(upto: str) -> float:
    """Multiply-adds x 2 of VGG16's convolutions from the image to the end of `upto`, at 224 px."""
    side, channels, total = PREP.size, 3, 0.0
    for name in VGG16.between(upto=upto):
        for width in VGG16.widths[name]:
            total += 2 * 9 * channels * width * side * side
            channels = width
        side //= 2
    return total


def projection(bytes_by_cut: dict, cpu_views_s: float, decode_per_core: float) -> dict:
    """A million images with the default recipe: 2 views each (train: clean + 1 augmented; val/test: clean
    + mirror), stored at block4 (fine-tune block5's input) and block5 (the head's input)."""
    views = 2 * 1_000_000
    disk = views * (bytes_by_cut["block4"] + bytes_by_cut["block5"])
    # ESTIMATE, not measured (no GPU was lent): an H200's dense bf16 peak (989 TFLOP/s) at 40 % in
    # cuDNN's convolutions, and decoding by 16 CPU cores a GPU (the lent machine's ratio) at this
    # machine's measured Pillow rate per core; whichever is lower bounds a GPU.
    compute = 989e12 * 0.40 / conv_flops("block4")
    decode = 16 * decode_per_core
    per_gpu = min(compute, decode)
    per_view = bytes_by_cut["block4"] + bytes_by_cut["block5"]
    return {"views": views, "disk_bytes": disk, "disk_gb": round(disk / 1e9, 1),
            "this_cpu_hours": round(views / cpu_views_s / 3600, 1),
            "gpu_estimate": {"per_gpu_views_s": round(per_gpu), "compute_bound_views_s": round(compute),
                             "decode_bound_views_s": round(decode),
                             "seconds": {n: round(views / (per_gpu * n)) for n in (1, 8, 64)},
                             "cache_write_gb_s": {n: round(n * per_gpu * per_view / 1e9, 1) for n in (1, 8, 64)},
                             "finetune_epoch_read_gb": round(views * bytes_by_cut["block4"] / 1e9, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=160, help="photos extracted per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default="scale.json")
    parser.add_argument("--extract-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--steps-only", action="store_true", help="only the steps after reading, at 10^4-10^6 entries")
    parser.add_argument("--all-pairs-up-to", type=int, default=100_000,
                        help="largest count the every-pair search is timed at (it grows as the square)")
    args = parser.parse_args()
    if args.extract_worker:
        extract_worker(args)
        return
    if args.steps_only:
        result = {"processor": processor(), "steps": step_costs([10_000, 100_000, 1_000_000], args.all_pairs_up_to)}
        write_json(Path(args.json), result)
        return
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        result = {"processor": processor(), "cores": os.cpu_count(), "torch": torch.__version__}
        result["bytes_per_view"] = bytes_per_view(work)
        print(json.dumps(result), flush=True)
        result["decode_views_s_one_core"] = decode_rate(64)
        result["extraction"] = extraction_costs(work, args.images, args.repeats, args.precision)
        result["scan"] = scan_costs(work, args.files, 3)
    result["million"] = projection(result["bytes_per_view"], result["extraction"]["median_views_s"][1],
                                   result["decode_views_s_one_core"])
    print(json.dumps(result, indent=2))
    write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
