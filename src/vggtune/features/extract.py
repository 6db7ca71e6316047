"""From image files to the views the network takes: decoded in background threads, batched."""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from vggtune.data.images import ImageRejected, open_any, open_rgb
from vggtune.features.cache import entry_name
from vggtune.features.settings import AugmentConfig
from vggtune.features.transforms import make_view, normalise
from vggtune.model.runtime import Runtime
from vggtune.model.weights import Preprocessing


@dataclass(frozen=True)
class ImageJob:
    """One image and the views of it that are wanted."""

    path: str
    sha256: str
    views: tuple[int, ...]


def decode_views(job: ImageJob, prep: Preprocessing, aug: AugmentConfig | None = None):
    """(job, [uint8 view tensors], None) or (job, None, reason); `aug` is needed for views 1.. only."""
    try:
        image = open_rgb(job.path, short_side=prep.resize)
    except ImageRejected as exc:
        return job, None, str(exc)
    return job, [make_view(image, prep, aug, job.sha256, view) for view in job.views], None


def decode_clean(source, prep: Preprocessing) -> tuple[torch.Tensor | None, str | None]:
    """(the clean view, None) of a path, bytes, file object, PIL image or numpy array; (None, reason)."""
    try:
        return make_view(open_any(source, short_side=prep.resize), prep, None, "", 0), None
    except ImageRejected as exc:
        return None, str(exc)


def prefetch(function, jobs, workers: int, ahead: int):
    """function(job) for each job, in order, run by `workers` threads at most `ahead` jobs early."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
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


def decode_batch(jobs: list[ImageJob], prep: Preprocessing, aug: AugmentConfig, pool):
    """(normalised batch of each readable job's first view, [whether each job decoded], rejected)."""
    decoded = list(pool.map(lambda job: decode_views(job, prep, aug), jobs))
    rejected = [(job.path, reason) for job, _, reason in decoded if reason]
    views = [tensors[0] for _, tensors, _ in decoded if tensors]
    batch = normalise(torch.stack(views), prep) if views else torch.empty(0)
    return batch, [tensors is not None for _, tensors, _ in decoded], rejected


def clean_views(paths: list[str], prep: Preprocessing, count: int) -> torch.Tensor:
    """The normalised clean views of the first `count` readable files."""
    views = []
    for path in paths:
        view, _ = decode_clean(path, prep)
        views += [view] if view is not None else []
        if len(views) == count:
            break
    return normalise(torch.stack(views), prep) if views else torch.empty(0)


def decode_workers(runtime: Runtime) -> int:
    """On a 2-core CPU one decoding thread keeps up with the convolutions; a GPU needs many."""
    cores = os.cpu_count() or 1
    return min(16, cores) if runtime.device.type == "cuda" else max(1, cores // 2)
