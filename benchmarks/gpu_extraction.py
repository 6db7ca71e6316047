"""Extraction throughput on a GPU, and a short DDP training on all of a machine's GPUs, ready to run
in one go on a lent CUDA machine:

    PYTHONPATH=src python3 benchmarks/gpu_extraction.py --images 8192 --json $OUT/gpu.json

The device machine has no ../shared and no network, so it writes its own JPEGs (500x375,
like the Kaggle photos) and uses random-init VGG16 weights: throughput does not depend on
the values. Three figures, same run: the bare bf16 convolutions (the limit); vggtune's
extraction with Pillow decoding in CPU threads; and decoding on the GPU with
torchvision.io.decode_jpeg (nvJPEG), resizing there too. Then `vggtune train` under torchrun with one
process per GPU (NCCL; gloo on CPU) on those photos, filed as two classes, with a random-init VGG16
weights file: the run's own timing gives features and fine-tune images/s per GPU. Runs on CPU as a
smoke test (`--images 64 --seconds 2 --ddp-processes 2`).
"""
import argparse
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as F
from vggtune.training.config import AugmentConfig
from vggtune.features.extract import ImageJob
from vggtune.features.pipeline import FeaturePipeline
from vggtune.model.classifier import Classifier
from vggtune.model.heads import HeadSpec
from vggtune.progress import verbosity
from vggtune.model.runtime import choose_runtime
from vggtune.features.transforms import normalise
from vggtune.model.weights import VGG16_IMAGENET1K_V1

from common import images_per_second, write_json


def write_photos(folder: Path, count: int) -> list[Path]:
    def one(i):
        rng = np.random.default_rng(i)
        image = Image.new("RGB", (500, 375), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y, r = rng.integers(0, 500), rng.integers(0, 375), int(rng.integers(20, 120))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-20, 20, (375, 500, 3))
        path = folder / f"photo.{i}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        return path
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(count)))


def bare(model, runtime, batch, size, seconds):
    x = torch.randn(batch, 3, size, size, device=runtime.device).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), runtime.autocast():
            model.features(x, "block5")
    return images_per_second(step, batch, seconds, runtime.device, warmup=3)


def sync(runtime):
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


def gpu_decode(model, runtime, paths, prep, batch, cache):
    """Bytes read in threads, decoded and resized on the device, features written to the cache."""
    writer = cache.writer()
    read = lambda p: torchvision.io.read_file(str(p))  # noqa: E731
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool, torch.inference_mode():
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            data = list(pool.map(read, chunk))
            images = torchvision.io.decode_jpeg(data, device=runtime.device)
            views = torch.stack([F.center_crop(F.resize(im, [prep.resize], antialias=True), [prep.size] * 2)
                                 for im in images])
            x = normalise(views, prep).contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                features = model.features(x, "block5")
            writer.add([f"{p.name}/clean" for p in chunk], features)
    writer.close()
    sync(runtime)
    return len(paths) / (time.perf_counter() - started)


def ddp_train(work: Path, paths: list[Path], processes: int, batch: int) -> dict:
    """`torchrun --nproc-per-node=N -m vggtune train` on the photos, split into two classes by index."""
    import subprocess
    import sys
    from safetensors.torch import save_file
    from vggtune.model.arch import VGG16
    from vggtune.model.classifier import Backbone
    data = work / "classes"
    for i, path in enumerate(paths):
        (data / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        os.symlink(path, data / "ab"[i % 2] / path.name)
    torch.manual_seed(0)
    weights = work / "random-vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in Backbone(VGG16).state_dict().items()}, str(weights))
    out = work / "ddp-run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "vggtune", "train", str(data), "--out", str(out), "--weights", str(weights), "--epochs", "1",
               "--finetune-epochs", "1", "--batch-size", str(batch), "--no-report", "--quiet", "--patience", "0"]
    env = dict(os.environ, VGGTUNE_HOME=str(work / "home"), VGGTUNE_OFFLINE="1",
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes)))
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    timing, reuse = metrics["timing"], metrics["environment"]["feature_cache"]
    train_images = len(json.loads((out / "splits.json").read_text())["train"])
    return {"processes": processes, "wall_s": round(time.perf_counter() - started, 1), "timing": timing,
            "device": metrics["environment"]["device"],
            "features_views_s_per_process": round(reuse["views_computed"] / timing["features_s"] / processes, 1),
            "finetune_images_s_per_process": round(train_images / timing["finetune_s"] / processes, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default="gpu_extraction.json")
    parser.add_argument("--ddp-processes", type=int, default=None,
                        help="processes for the DDP training (default: every GPU, or 2 on CPU)")
    args = parser.parse_args()
    runtime = choose_runtime(args.device, "auto")
    prep = VGG16_IMAGENET1K_V1.preprocessing
    model = Classifier(HeadSpec("flatten", 2), size=prep.size).to(runtime.device).to(memory_format=torch.channels_last).eval()
    work = Path(tempfile.mkdtemp())
    paths = write_photos(work, args.images)
    result = {"device": torch.cuda.get_device_name() if runtime.device.type == "cuda" else "cpu",
              "runtime": runtime.describe(), "images": len(paths), "batch": args.batch_size, "cpus": os.cpu_count()}
    result["bare_images_s"] = round(bare(model, runtime, args.batch_size, prep.size, args.seconds), 1)
    print(result, flush=True)
    jobs = [ImageJob(str(p), hashlib.sha256(p.read_bytes()).hexdigest(), (0,)) for p in paths]
    pipeline = FeaturePipeline(model, prep, AugmentConfig(), runtime, args.batch_size, "random", work / "cpu-decode")
    started = time.perf_counter()
    with verbosity(quiet=True):
        pipeline.fill(pipeline.cache("block5"), jobs, "block5")
    sync(runtime)
    result["cpu_decode_images_s"] = round(len(jobs) / (time.perf_counter() - started), 1)
    print(result, flush=True)
    pipeline.cache_root = work / "gpu-decode"
    cache = pipeline.cache("block5")
    result["gpu_decode_images_s"] = round(gpu_decode(model, runtime, paths, prep, args.batch_size, cache), 1)
    print(json.dumps(result), flush=True)
    write_json(Path(args.json), result)
    processes = args.ddp_processes or (torch.cuda.device_count() if runtime.device.type == "cuda" else 2)
    result["ddp_train"] = ddp_train(work, paths, processes, min(args.batch_size, 64))
    print(json.dumps(result), flush=True)
    write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
