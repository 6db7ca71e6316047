"""Where a stage's inputs come from: the feature cache, or the frozen blocks run every epoch."""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .cache import FeatureCache, FeatureSet
from .config import AugmentConfig
from .data import Item
from .extract import ImageJob, decode_views, decode_workers, derive, entry_name, extract
from .model import BLOCK_NAMES, Classifier
from .quantize import digest
from .runtime import Runtime
from .transforms import normalise
from .weights import Preprocessing


class CachedSource:
    """Features of (item, view) read from the cache; rows are laid out item-major."""

    def __init__(self, features: FeatureSet, n_views: int):
        self.features, self.n_views = features, n_views

    def batch(self, positions, views) -> tuple[torch.Tensor, list[int]]:
        """(features, the positions they belong to)."""
        return self.features.gather([p * self.n_views + v for p, v in zip(positions, views)]), list(positions)


class LiveSource:
    """The plain recipe: decode, augment and run the frozen blocks for every batch of every epoch."""

    def __init__(self, items: list[Item], model: Classifier, cut: str, prep: Preprocessing,
                 aug: AugmentConfig, runtime: Runtime):
        self.items, self.model, self.cut = items, model, cut
        self.prep, self.aug, self.runtime = prep, aug, runtime
        self.pool = ThreadPoolExecutor(decode_workers(runtime))
        self.rejected: list[tuple[str, str]] = []

    def batch(self, positions, views) -> tuple[torch.Tensor, list[int]]:
        """(features, the positions they belong to): a file that became unreadable is left out."""
        jobs = [ImageJob(self.items[p].path, self.items[p].sha256, (v,)) for p, v in zip(positions, views)]
        decoded = list(self.pool.map(lambda job: decode_views(job, self.prep, self.aug), jobs))
        kept = [p for p, (_, tensors, _) in zip(positions, decoded) if tensors]
        self.rejected.extend((job.path, reason) for job, _, reason in decoded if reason)
        if not kept:
            return torch.empty(0), kept
        x = normalise(torch.stack([tensors[0] for _, tensors, _ in decoded if tensors]), self.prep)
        x = x.to(self.runtime.device).contiguous(memory_format=torch.channels_last)
        # no_grad, not inference_mode: these features feed a stage that trains, and autograd
        # refuses inference tensors (under bf16 autocast a cast happened to hide that).
        with torch.no_grad(), self.runtime.autocast():
            return self.model.features(x, self.cut).float(), kept


def cache_key(weights_id: str, prep: Preprocessing, cut: str, model: Classifier) -> dict:
    widths = json.dumps(model.backbone.widths, sort_keys=True)
    key = {"weights": weights_id, "preprocessing": prep.to_dict(), "cut": cut,
           "arch": hashlib.sha256(widths.encode()).hexdigest()[:12]}
    if model.int8_frozen is not None:
        key["int8"] = digest(model.int8_frozen.calibration)
    return key


def base_cut(cuts: list[str]) -> str:
    """The earliest cut: images go through the network to it once; later cuts are derived from it."""
    return min(cuts, key=BLOCK_NAMES.index)


def build_cached_sources(model: Classifier, splits: dict[str, list[Item]], cuts: list[str], views: int,
                         prep: Preprocessing, aug: AugmentConfig, runtime: Runtime, weights_id: str,
                         cache_root: Path, batch_size: int, quiet: bool):
    """Fill the caches the stages need, split by split: returns ({cut: {split: source}}, kept splits,
    rejected, {split: seconds}).

    Images go through the network once, to the earliest cut; later cuts are derived from it.
    The test split is scored only by the final model, so it is needed at the last cut alone.
    """
    base = base_cut(cuts)
    caches = {cut: FeatureCache(cache_root, cache_key(weights_id, prep, cut, model)) for cut in cuts}
    sources, kept, rejected, seconds = {cut: {} for cut in cuts}, {}, [], {}
    for name, items in splits.items():
        started = time.perf_counter()
        n_views = views if name == "train" else 1
        jobs = [ImageJob(item.path, item.sha256, tuple(range(n_views))) for item in items]
        lost = extract(model, caches[base], jobs, prep, aug, runtime, batch_size, base, quiet,
                       label=f"{name} features")
        rejected += lost
        lost_paths = {path for path, _ in lost}
        kept[name] = [item for item in items if item.path not in lost_paths]
        entries = [entry_name(item.sha256, view, aug) for item in kept[name] for view in range(n_views)]
        for cut in (cuts[-1:] if name == "test" else cuts):
            if cut != base:
                derive(model, caches[base], caches[cut], entries, base, cut, runtime, batch_size, quiet)
            sources[cut][name] = CachedSource(caches[cut].open(entries), n_views)
        seconds[name] = round(time.perf_counter() - started, 2)
    return sources, kept, rejected, seconds


def build_live_sources(model: Classifier, splits: dict[str, list[Item]], cuts: list[str],
                       prep: Preprocessing, aug: AugmentConfig, runtime: Runtime):
    return {cut: {name: LiveSource(items, model, cut, prep, aug, runtime) for name, items in splits.items()}
            for cut in cuts}
