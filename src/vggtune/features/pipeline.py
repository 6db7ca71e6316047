"""Where a stage's inputs come from: the frozen blocks' outputs, stored in the cache once
(`FeaturePipeline.cached`) or computed for every batch of every epoch (`FeaturePipeline.live`).

A `FeaturePipeline` holds what every feature computation shares (model, preprocessing,
augmentation, runtime, batch size, the weights' id and the cache's place), so filling,
deriving and reading take only what differs: which images, which views, which cut.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vggtune import distributed
from vggtune.features.cache import FeatureCache, FeatureKey, entry_name, require_room, view_bytes
from vggtune.features.choice import resolve
from vggtune.features.engine import Engine, frozen
from vggtune.features.extract import ImageJob, clean_views, decode_batch, decode_workers, view_batches
from vggtune.model import quantize
from vggtune.model.policy import CLEAN
from vggtune.progress import progress, say

if TYPE_CHECKING:  # annotations only
    from vggtune.data.items import Item
    from vggtune.features.settings import AugmentConfig
    from vggtune.model.classifier import Classifier
    from vggtune.model.runtime import Runtime
    from vggtune.model.weights import Preprocessing


class CachedSource:
    """Features of (item, view) read from the cache; rows are laid out item-major. A batch names each
    item's view by its slot: its place in `view_ids`."""

    def __init__(self, cache: FeatureCache, entries: list[str], view_ids: tuple[int, ...]):
        self.features, self.view_ids = cache.open(entries), view_ids

    def batch(self, positions, slots) -> tuple[torch.Tensor, list[int]]:
        """(features, the positions they belong to)."""
        n = len(self.view_ids)
        return self.features.gather([p * n + s for p, s in zip(positions, slots)]), list(positions)


class LiveSource:
    """The plain recipe: decode, augment and run the frozen blocks for every batch of every epoch.
    A file that fails here (gone, or changed since the scan) is left out and added to `rejected`."""

    def __init__(
        self, pipeline: FeaturePipeline, items: list[Item], cut: str, rejected: list, view_ids: tuple[int, ...]
    ):
        self.pipeline, self.items, self.cut, self.rejected, self.view_ids = pipeline, items, cut, rejected, view_ids
        self.pool = ThreadPoolExecutor(decode_workers(pipeline.runtime))

    def batch(self, positions, slots) -> tuple[torch.Tensor, list[int]]:
        """(features, the positions they belong to)."""
        pipeline = self.pipeline
        jobs = [
            ImageJob(self.items[p].path, self.items[p].sha256, (self.view_ids[s],)) for p, s in zip(positions, slots)
        ]
        batch, decoded, rejected = decode_batch(jobs, pipeline.prep, pipeline.augment, self.pool)
        self.rejected.extend(row for row in rejected if row not in self.rejected)
        kept = [p for p, ok in zip(positions, decoded) if ok]
        if not kept:  # no rows, in the shape of features at the cut
            arch = pipeline.model.arch
            side = pipeline.prep.size // arch.reduction(self.cut)
            return torch.empty(0, arch.channels(self.cut), side, side), kept
        return pipeline.frozen(upto=self.cut)(batch), kept


@dataclass
class Sources:
    """Each stage's inputs, {cut: {split: source}}, and what happened to the images on the way."""

    by_cut: dict[str, dict[str, CachedSource | LiveSource]]
    kept: dict[str, list[Item]]  # split -> the items that gave features
    rejected: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    damaged_shards: int = 0
    reuse: dict = field(default_factory=lambda: {"views_wanted": 0, "views_computed": 0})


@dataclass
class FeaturePipeline:
    model: Classifier
    prep: Preprocessing
    augment: AugmentConfig
    runtime: Runtime
    batch_size: int
    weights_id: str
    cache_root: Path | None = None
    storage: str = "float16"  # cache.STORAGES
    engine: Engine | str = "torch"  # what runs the frozen blocks: an Engine, or a name (ENGINES) resolved here

    def __post_init__(self):
        if isinstance(self.engine, str):
            self.engine = resolve(self.engine, self.runtime, self.model)

    def frozen(self, after: str | None = None, upto: str | None = None):
        """The frozen blocks (after, upto] on this pipeline's engine: normalised inputs in, float32 features out."""
        return frozen(self.model, self.runtime, self.chosen_engine, after, upto)

    @property
    def chosen_engine(self) -> Engine:
        """The Engine the given name was resolved to when the pipeline was made."""
        if not isinstance(self.engine, Engine):
            raise TypeError(f"engine {self.engine!r} was not resolved")
        return self.engine

    def cache(self, cut: str) -> FeatureCache:
        calibration = self.model.int8_frozen.calibration if self.model.int8_frozen is not None else None
        key = FeatureKey(self.weights_id, self.prep.to_dict(), self.model.arch, calibration, self.chosen_engine)
        if self.cache_root is None:
            raise ValueError("a pipeline made without a cache folder has no cache (--no-cache)")
        return FeatureCache(self.cache_root, key.at(cut), self.storage)

    def cached(
        self, splits: dict[str, list[Item]], cuts: list[str], views: int, eval_views: tuple[int, ...] = (CLEAN,)
    ) -> Sources:
        """Fill the caches the stages need, split by split, and open them: `views` views of each training
        image (the clean one and augmented ones), `eval_views` of the others (the clean view, and its
        mirror image for test-time augmentation).

        Images go through the network once, to the earliest cut; later cuts are derived from it.
        The test split is scored only by the final model, so it is needed at the last cut alone.
        Under torchrun each rank computes its share of the missing views, then all read them all.
        """
        base = self.model.arch.earliest(cuts)
        caches = {cut: self.cache(cut) for cut in cuts}
        sources = Sources({cut: {} for cut in cuts}, {})
        wanted = {name: tuple(range(views)) if name == "train" else eval_views for name in splits}
        self._check_room(
            caches, {name: [(item.sha256, wanted[name]) for item in items] for name, items in splits.items()}, base
        )
        for name, items in splits.items():
            started = time.perf_counter()
            view_ids = wanted[name]
            jobs = [ImageJob(item.path, item.sha256, view_ids) for item in items]
            lost, computed = self.fill(caches[base], jobs, base, label=f"{name} features")
            lost = distributed.concat(lost)
            sources.reuse["views_wanted"] += len(items) * len(view_ids)
            sources.reuse["views_computed"] += int(distributed.total(computed)[0])
            sources.rejected += lost
            lost_paths = {path for path, _ in lost}
            sources.kept[name] = [item for item in items if item.path not in lost_paths]
            _check_visible(
                caches[base],
                [entry_name(item.sha256, view, self.augment) for item in sources.kept[name] for view in view_ids],
            )
            for cut in cuts[-1:] if name == "test" else cuts:
                # Epochs score validation images on the clean view; the other views count at the last cut.
                cut_views = view_ids if name == "train" or cut == cuts[-1] else (CLEAN,)
                entries = [
                    entry_name(item.sha256, view, self.augment) for item in sources.kept[name] for view in cut_views
                ]
                if cut != base:
                    self.derive(caches[base], caches[cut], entries, base, cut)
                    _check_visible(caches[cut], entries)
                sources.by_cut[cut][name] = CachedSource(caches[cut], entries, cut_views)
            sources.seconds[name] = round(time.perf_counter() - started, 2)
        sources.damaged_shards = sum(len(cache.damaged) for cache in caches.values())
        if sources.damaged_shards:
            say(f"feature cache: {sources.damaged_shards} damaged shards failed their checksum and were computed again")
        return sources

    def _check_room(
        self, caches: dict[str, FeatureCache], views: dict[str, list[tuple[str, tuple]]], base: str
    ) -> None:
        """Before any view is computed: what the missing views will take against the free space where the
        cache lives, so that a disk too small is one line now, not an error an hour into the fill. Counted
        at every cut a split may be stored at (the validation split's middle cuts hold its clean view
        alone: a small overestimate); rank 0 counts and every rank takes its numbers."""
        counts: tuple[int, int, int] | None = None  # (views, bytes needed, bytes free)
        if distributed.is_main():
            needed, count = 0, 0
            for name, items in views.items():
                for cut in {base, *(list(caches)[-1:] if name == "test" else caches)}:
                    missing = caches[cut].missing(
                        [entry_name(sha, view, self.augment) for sha, ids in items for view in ids]
                    )
                    count += len(missing) if cut == base else 0
                    needed += len(missing) * view_bytes(self.model.arch, cut, self.prep.size, self.storage)
            counts = (count, needed, shutil.disk_usage(caches[base].dir).free)
        views_count, needed, free = distributed.from_main(counts)
        require_room(views_count, needed, free, caches[base].dir.parent.parent, self.storage)

    def live(
        self, splits: dict[str, list[Item]], cuts: list[str], views: int, eval_views: tuple[int, ...] = (CLEAN,)
    ) -> Sources:
        sources = Sources({}, dict(splits))
        sources.by_cut = {
            cut: {
                name: LiveSource(
                    self, items, cut, sources.rejected, tuple(range(views)) if name == "train" else eval_views
                )
                for name, items in splits.items()
            }
            for cut in cuts
        }
        return sources

    def fill(self, cache: FeatureCache, jobs: list[ImageJob], cut: str, label: str = "features"):
        """Compute and store every wanted view not yet in the cache, of this rank's share of the jobs:
        ([(path, reason)] rejected, the number of views computed)."""
        present = cache.index()
        todo: list = []
        queued: set = set()
        for job in distributed.share(jobs):
            # a test folder scored whole may hold the same content twice: one computation serves both
            views = tuple(
                v
                for v in job.views
                if entry_name(job.sha256, v, self.augment) not in present and (job.sha256, v) not in queued
            )
            queued.update((job.sha256, v) for v in views)
            if views:
                todo.append(ImageJob(job.path, job.sha256, views))
        rejected: list[tuple[str, str]] = []
        computed = sum(len(job.views) for job in todo)
        if not todo:
            return rejected, computed
        self.model.eval()
        bar = progress(total=sum(len(job.views) for job in todo), desc=f"{label} to {cut}", unit="view")
        batches = view_batches(todo, self.prep, self.augment, self.batch_size, decode_workers(self.runtime), rejected)
        network = self.frozen(upto=cut)
        with cache.writer() as writer:  # on Ctrl-C too: the views computed so far are kept
            for names, batch in batches:
                writer.add(names, network(batch))
                bar.update(len(names))
        bar.close()
        return rejected, computed

    def derive(self, source: FeatureCache, target: FeatureCache, entries: list[str], after: str, upto: str) -> None:
        """Features at a later cut computed from a cached earlier cut (block4 -> block5, say); this rank's share."""
        todo = target.missing(distributed.share(entries))
        if not todo:
            return
        features = source.open(todo)
        self.model.eval()
        bar = progress(total=len(todo), desc=f"features {after} -> {upto}", unit="view")
        network = self.frozen(after, upto)
        with target.writer() as writer:
            for start in range(0, len(todo), self.batch_size):
                positions = range(start, min(start + self.batch_size, len(todo)))
                writer.add([todo[i] for i in positions], network(features.gather(positions).float()))
                bar.update(len(positions))
        bar.close()

    def use_int8(self, train: list[Item], upto: str, saved: dict | None = None) -> dict:
        """From now on the frozen blocks up to `upto` run in int8: with the `saved` calibration of a
        resumed run, else calibrated on the clean views of the first training images. Returns it."""
        if saved is not None:
            quantize.attach(self.model, saved)
            return saved
        images = clean_views([item.path for item in train], self.prep, quantize.CALIBRATION_IMAGES)
        return quantize.calibrate_model(self.model, upto, images, self.runtime.autocast)


def _check_visible(cache: FeatureCache, entries: list[str]) -> None:
    """After the ranks filled a cache side by side, each must see every entry: the others' too."""
    if distributed.world().size > 1:
        distributed.barrier()
        cache.refresh()
        cache.require(entries, f"written by other ranks, not visible on {distributed.world().describe()}")
