"""Extraction throughput (JPEG file -> cached features) against the bare convolution limit.

The limit is the same model's frozen blocks on ready tensors, on the same engine (`--engine`; 32 real
images decoded beforehand, bf16 where chosen), measured in windows on both sides of each
chunk of the extraction (the median of the per-chunk ratios is reported); extraction includes reading, decoding,
resizing, the forward pass and writing the cache. Prints a table, writes results/extraction.json.
"""
import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from vggtune.model import quantize
from vggtune.model import weights
from vggtune.training.config import AugmentConfig
from vggtune.features.extract import ImageJob
from vggtune.features.engine import frozen
from vggtune.features.pipeline import FeaturePipeline
from vggtune.features.settings import ENGINES
from vggtune.data.images import open_rgb
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.progress import verbosity
from vggtune.model.runtime import choose_runtime
from vggtune.features.transforms import eval_view, normalise

from common import DATA, images_per_second, save, table


def ready_batch(jobs, prep, batch_size) -> torch.Tensor:
    """Real images, decoded and normalised beforehand, so the bare loop does only the convolutions."""
    views = [eval_view(open_rgb(job.path, short_side=prep.resize), prep) for job in jobs[:batch_size]]
    return normalise(torch.stack(views), prep)


def bare_throughput(model, cut, runtime, batch: torch.Tensor, seconds, engine) -> float:
    """The engine's own speed on ready tensors: the frozen blocks and nothing else."""
    network = frozen(model, runtime, engine, upto=cut)
    return images_per_second(lambda: network(batch), len(batch), seconds, runtime.device)


def interleaved(model, cut, runtime, jobs, prep, batch, rounds: int, seconds: float, int8=None, engine=None) -> dict:
    """Bare windows and chunks of extraction in turn, B E B E ... E B, each chunk's rate over
    the mean of the two windows beside it: on a shared machine the limit drifts by a quarter
    within minutes, so only neighbours in time are compared. With `int8` (quantize.Int8Frozen)
    both the extraction and the bare windows run the frozen blocks in int8."""
    size = -(-len(jobs) // rounds)
    bare_rates, rates = [], []
    with tempfile.TemporaryDirectory() as home:
        pipeline = FeaturePipeline(model, prep, AugmentConfig(), runtime, len(batch), "bench", Path(home),
                                   engine=engine)
        model.use_int8_frozen(int8)
        cache = pipeline.cache(cut)
        model.use_int8_frozen(None)
        for start in range(0, len(jobs), size):
            chunk = jobs[start:start + size]
            model.use_int8_frozen(int8)
            bare_rates.append(bare_throughput(model, cut, runtime, batch, seconds, pipeline.engine))
            model.use_int8_frozen(None)
            started = time.perf_counter()
            model.use_int8_frozen(int8)
            with verbosity(quiet=True):
                rejected, _ = pipeline.fill(cache, chunk, cut)
            model.use_int8_frozen(None)
            assert not rejected, rejected[:3]
            rates.append(len(chunk) / (time.perf_counter() - started))
        model.use_int8_frozen(int8)
        bare_rates.append(bare_throughput(model, cut, runtime, batch, seconds, pipeline.engine))
        model.use_int8_frozen(None)
        cache_bytes = cache.size_bytes()
    ratios = [rate / ((before + after) / 2) for rate, before, after in zip(rates, bare_rates, bare_rates[1:])]
    return {"bare_images_s": round(float(np.median(bare_rates)), 2),
            "extraction_images_s": round(float(np.median(rates)), 2),
            "ratio": round(float(np.median(ratios)), 3), "ratios": [round(r, 3) for r in ratios],
            "cache_mb_per_1k": round(cache_bytes / len(jobs) * 1000 / 1e6, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--data", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6, help="length of each bare window")
    parser.add_argument("--rounds", type=int, default=10, help="extraction chunks, each between two bare windows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--engine", default="torch", choices=ENGINES[1:], help="what runs the frozen blocks")
    parser.add_argument("--int8", action="store_true", help="also extract with the frozen blocks in int8 "
                        "(calibrated on the first 16 images), against the same bare windows")
    args = parser.parse_args()
    runtime = choose_runtime(args.device, args.precision)
    loaded = weights.resolve()
    prep = loaded.record.preprocessing
    model = Classifier(HeadSpec("flatten", 2), size=prep.size)
    model.backbone.load_state_dict(loaded.state_dict)
    model.to(runtime.device).to(memory_format=torch.channels_last).eval()
    files = sorted(p for p in Path(args.data).rglob("*.jpg"))
    step = max(1, len(files) // args.images)
    files = files[::step][: args.images]
    jobs = [ImageJob(str(f), hashlib.sha256(f.read_bytes()).hexdigest(), (0,)) for f in files]
    rows = []
    batch = ready_batch(jobs, prep, args.batch_size)
    for in_int8 in (False, True) if args.int8 else (False,):
        for cut in ("block5", "block4"):
            int8 = quantize.calibrate(model.backbone, cut, batch[:quantize.CALIBRATION_IMAGES], runtime.autocast) \
                if in_int8 else None
            engine = "torch" if in_int8 else args.engine
            measured = interleaved(model, cut, runtime, jobs, prep, batch, args.rounds, args.seconds, int8, engine)
            rows.append({"cut": cut, "engine": engine, "frozen_blocks": "int8" if in_int8 else runtime.precision,
                         **measured})
            print(rows[-1], flush=True)
    print(f"\n{runtime.describe()}, {len(jobs)} JPEGs from {args.data}, batch {args.batch_size}")
    print(table(rows, ["cut", "engine", "frozen_blocks", "bare_images_s", "extraction_images_s", "ratio",
                       "cache_mb_per_1k"]))
    save(f"extraction-{runtime.device.type}-{args.engine}", {"runtime": runtime.describe(), "images": len(jobs),
                                               "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
