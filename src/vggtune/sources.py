"""Where a stage's inputs come from: the feature cache, or the frozen blocks run every epoch."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .cache import FeatureCache, FeatureSet
from .config import AugmentConfig
from .data import Item
from .extract import ImageJob, decode_views, decode_workers, derive, entry_name, extract
from .model import BLOCK_NAMES, Classifier
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
        with torch.inference_mode(), self.runtime.autocast():
            return self.model.features(x, self.cut).float().clone(), kept


def cache_key(weights_id: str, prep: Preprocessing, cut: str, model: Classifier) -> dict:
    widths = json.dumps(model.backbone.widths, sort_keys=True)
    return {"weights": weights_id, "preprocessing": prep.to_dict(), "cut": cut,
            "arch": hashlib.sha256(widths.encode()).hexdigest()[:12]}


def build_cached_sources(model: Classifier, splits: dict[str, list[Item]], cuts: list[str], views: int,
                         prep: Preprocessing, aug: AugmentConfig, runtime: Runtime, weights_id: str,
                         cache_root: Path, batch_size: int, quiet: bool):
    """Fill the caches for every cut the stages need: returns ({cut: {split: source}}, kept splits, rejected).

    Images go through the network once, to the earliest cut; later cuts are derived from it.
    """
    base = min(cuts, key=BLOCK_NAMES.index)
    base_cache = FeatureCache(cache_root, cache_key(weights_id, prep, base, model))
    n_views = {name: views if name == "train" else 1 for name in splits}
    jobs = [ImageJob(item.path, item.sha256, tuple(range(n_views[name])))
            for name, items in splits.items() for item in items]
    rejected = extract(model, base_cache, jobs, prep, aug, runtime, batch_size, base, quiet)
    lost = {path for path, _ in rejected}
    kept = {name: [item for item in items if item.path not in lost] for name, items in splits.items()}
    entries = {name: [entry_name(item.sha256, view, aug) for item in items for view in range(n_views[name])]
               for name, items in kept.items()}
    sources = {}
    for cut in cuts:
        cache = base_cache
        if cut != base:
            cache = FeatureCache(cache_root, cache_key(weights_id, prep, cut, model))
            derive(model, base_cache, cache, [e for names in entries.values() for e in names],
                   base, cut, runtime, batch_size, quiet)
        sources[cut] = {name: CachedSource(cache.open(entries[name]), n_views[name]) for name in kept}
    return sources, kept, rejected


def build_live_sources(model: Classifier, splits: dict[str, list[Item]], cuts: list[str],
                       prep: Preprocessing, aug: AugmentConfig, runtime: Runtime):
    return {cut: {name: LiveSource(items, model, cut, prep, aug, runtime) for name, items in splits.items()}
            for cut in cuts}
