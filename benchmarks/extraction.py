"""Extraction throughput (JPEG file -> cached features) against the bare convolution limit.

The limit is the same model's frozen blocks on ready tensors (32 real images decoded
beforehand, channels-last, bf16 where chosen), measured in the same run, before and after; extraction includes reading, decoding,
resizing, the forward pass and writing the cache. Prints a table, writes results/extraction.json.
"""
import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch

from vggtune import weights
from vggtune.cache import FeatureCache
from vggtune.config import AugmentConfig
from vggtune.extract import ImageJob, extract
from vggtune.images import open_rgb
from vggtune.model import Classifier, HeadSpec, load_backbone
from vggtune.runtime import choose_runtime
from vggtune.sources import cache_key
from vggtune.transforms import eval_view, normalise

from common import DATA, save, table


def ready_batch(jobs, prep, batch_size) -> torch.Tensor:
    """Real images, decoded and normalised beforehand, so the bare loop does only the convolutions."""
    views = [eval_view(open_rgb(job.path, short_side=prep.resize), prep) for job in jobs[:batch_size]]
    return normalise(torch.stack(views), prep)


def bare_throughput(model, cut, runtime, batch: torch.Tensor, seconds) -> float:
    batch_size = len(batch)
    x = batch.to(runtime.device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), runtime.autocast():
        model.features(x, cut)                                   # warm-up: kernels chosen, memory touched
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.features(x, cut)
            done += batch_size
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def extraction_throughput(model, cut, runtime, jobs, prep, batch_size) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as home:
        cache = FeatureCache(Path(home), cache_key("bench", prep, cut, model))
        started = time.perf_counter()
        rejected = extract(model, cache, jobs, prep, AugmentConfig(), runtime, batch_size, cut, quiet=True)
        elapsed = time.perf_counter() - started
        assert not rejected, rejected[:3]
        return sum(len(j.views) for j in jobs) / elapsed, cache.size_bytes()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--data", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    runtime = choose_runtime(args.device, args.precision)
    loaded = weights.resolve()
    prep = loaded.record.preprocessing
    model = Classifier(HeadSpec("flatten", 2), size=prep.size)
    load_backbone(model, loaded.state_dict)
    model.to(runtime.device).to(memory_format=torch.channels_last).eval()
    files = sorted(p for p in Path(args.data).rglob("*.jpg"))
    step = max(1, len(files) // args.images)
    files = files[::step][: args.images]
    jobs = [ImageJob(str(f), hashlib.sha256(f.read_bytes()).hexdigest(), (0,)) for f in files]
    rows = []
    batch = ready_batch(jobs, prep, args.batch_size)
    for cut in ("block5", "block4"):
        # The limit is the best of a window before and one after, so a passing disturbance
        # on a shared machine cannot make extraction look closer to it than it is.
        before = bare_throughput(model, cut, runtime, batch, args.seconds / 2)
        rate, size = extraction_throughput(model, cut, runtime, jobs, prep, args.batch_size)
        limit = max(before, bare_throughput(model, cut, runtime, batch, args.seconds / 2))
        rows.append({"cut": cut, "bare_images_s": round(limit, 2), "extraction_images_s": round(rate, 2),
                     "ratio": round(rate / limit, 3), "cache_mb_per_1k": round(size / len(jobs) * 1000 / 1e6, 1)})
        print(rows[-1], flush=True)
    print(f"\n{runtime.describe()}, {len(jobs)} JPEGs from {args.data}, batch {args.batch_size}")
    print(table(rows, ["cut", "bare_images_s", "extraction_images_s", "ratio", "cache_mb_per_1k"]))
    save(f"extraction-{runtime.device.type}", {"runtime": runtime.describe(), "images": len(jobs),
                                               "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
