"""Filling the feature cache: decode (in background threads), run the frozen blocks, store."""
from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .cache import FeatureCache
from .config import AugmentConfig
from .images import ImageRejected, open_rgb
from .model import Classifier
from .progress import progress
from .runtime import Runtime
from .transforms import augment_digest, make_view, normalise
from .weights import Preprocessing


@dataclass(frozen=True)
class ImageJob:
    """One image and the views of it that are wanted."""
    path: str
    sha256: str
    views: tuple[int, ...]


def entry_name(sha256: str, view: int, aug: AugmentConfig) -> str:
    """The clean view does not depend on the augmentation settings, so it is shared."""
    return f"{sha256}/clean" if view == 0 else f"{sha256}/{augment_digest(aug)}-{view}"


def decode_views(job: ImageJob, prep: Preprocessing, aug: AugmentConfig):
    """(job, [uint8 view tensors], None) or (job, None, reason)."""
    try:
        image = open_rgb(job.path, short_side=prep.resize)
    except ImageRejected as exc:
        return job, None, str(exc)
    return job, [make_view(image, prep, aug, job.sha256, view) for view in job.views], None


def prefetch(function, jobs, workers: int, ahead: int):
    """function(job) for each job, in order, run by `workers` threads at most `ahead` jobs early."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = collections.deque()
        for job in jobs:
            pending.append(pool.submit(function, job))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def view_batches(jobs, prep, aug, batch_size: int, workers: int, rejected: list):
    """Batches of (entry names, normalised float tensor); unusable files are added to `rejected`."""
    names, views = [], []
    decoded = prefetch(lambda job: decode_views(job, prep, aug), jobs, workers, ahead=2 * batch_size)
    for job, tensors, reason in decoded:
        if reason:
            rejected.append((job.path, reason))
            continue
        for view, tensor in zip(job.views, tensors):
            names.append(entry_name(job.sha256, view, aug))
            views.append(tensor)
        while len(names) >= batch_size:
            yield names[:batch_size], normalise(torch.stack(views[:batch_size]), prep)
            names, views = names[batch_size:], views[batch_size:]
    if names:
        yield names, normalise(torch.stack(views), prep)


def decode_workers(runtime: Runtime) -> int:
    """On a 2-core CPU one decoding thread keeps up with the convolutions; a GPU needs many."""
    cores = os.cpu_count() or 1
    return min(16, cores) if runtime.device.type == "cuda" else max(1, cores // 2)


def extract(model: Classifier, cache: FeatureCache, jobs: list[ImageJob], prep: Preprocessing,
            aug: AugmentConfig, runtime: Runtime, batch_size: int, cut: str, quiet: bool = False,
            label: str = "features"):
    """Compute and store every wanted view not yet in the cache; returns [(path, reason)] rejected."""
    present = cache.index()
    todo = []
    for job in jobs:
        views = tuple(v for v in job.views if entry_name(job.sha256, v, aug) not in present)
        if views:
            todo.append(ImageJob(job.path, job.sha256, views))
    total = sum(len(job.views) for job in todo)
    rejected: list[tuple[str, str]] = []
    if not todo:
        return rejected
    model.eval()
    writer = cache.writer()
    bar = progress(total=total, desc=f"{label} to {cut}", unit="view", quiet=quiet)
    with torch.inference_mode():
        for names, batch in view_batches(todo, prep, aug, batch_size, decode_workers(runtime), rejected):
            if runtime.device.type == "cuda":
                batch = batch.pin_memory()        # lets the copy overlap the previous batch's work
            batch = batch.to(runtime.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                features = model.features(batch, cut)
            writer.add(names, features)
            bar.update(len(names))
    writer.close()
    bar.close()
    return rejected


def derive(model: Classifier, source: FeatureCache, target: FeatureCache, entries: list[str],
           after: str, upto: str, runtime: Runtime, batch_size: int, quiet: bool = False) -> None:
    """Features at a later cut computed from a cached earlier cut (block4 -> block5, say)."""
    todo = target.missing(entries)
    if not todo:
        return
    features = source.open(todo)
    model.eval()
    writer = target.writer()
    bar = progress(total=len(todo), desc=f"features {after} -> {upto}", unit="view", quiet=quiet)
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            positions = range(start, min(start + batch_size, len(todo)))
            x = features.gather(positions).to(runtime.device).float().contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                out = model.backbone.run(x, after=after, upto=upto)
            writer.add([todo[i] for i in positions], out)
            bar.update(len(positions))
    writer.close()
    bar.close()
