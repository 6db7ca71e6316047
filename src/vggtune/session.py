"""Everything one training run holds: data splits, weights, model, feature sources, run directory."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data, quantize, weights
from .config import AugmentConfig, TrainConfig, save_config
from .errors import UserError
from .extract import ImageJob, decode_views
from .fsutil import atomic_write_json
from .metrics import classification_metrics
from .model import Classifier, HeadSpec, blocks_from_state_dict, load_backbone, logits_to_probabilities
from .progress import say
from .rundir import check_new_or_resumable, make_dirs, save_model, write_metrics_log, write_splits
from .runtime import Runtime, choose_runtime
from .sources import base_cut, build_cached_sources, build_live_sources
from .transforms import normalise


@dataclass
class Session:
    config: TrainConfig
    out: Path
    model: Classifier
    runtime: Runtime
    classes: list[str]
    sources: dict                          # cut -> split -> source
    labels: dict[str, torch.Tensor]        # split -> labels
    items: dict[str, list]                 # split -> Items
    rejected: list[tuple[str, str]]
    description: dict                      # what model.json will say
    n_views: int
    timing: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
        return torch.nn.functional.cross_entropy(logits, labels)

    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] > 0).long() if self.binary else logits.argmax(1)

    def probabilities(self, split: str, cut: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, class probabilities) of a split's clean views through the current model."""
        source, labels = self.sources[cut][split], self.labels[split]
        self.model.eval()
        all_probs, all_labels = [], []
        with torch.inference_mode():
            for start in range(0, len(labels), self.config.batch_size):
                positions = list(range(start, min(start + self.config.batch_size, len(labels))))
                x, kept = source.batch(positions, [0] * len(positions))
                if not kept:
                    continue
                x = x.to(self.runtime.device).float().contiguous(memory_format=torch.channels_last)
                with self.runtime.autocast():
                    logits = self.model.from_features(x, cut).float()
                all_probs.append(logits_to_probabilities(logits, self.binary).cpu().numpy())
                all_labels.append(labels[kept].numpy())
        if not all_probs:
            return np.zeros(0, np.int64), np.zeros((0, len(self.classes)))
        return np.concatenate(all_labels), np.concatenate(all_probs)

    def validate(self, cut: str) -> dict | None:
        if not len(self.labels["val"]):
            return None
        labels, probs = self.probabilities("val", cut)
        result = classification_metrics(labels, probs, self.classes)
        return {"loss": result["log_loss"], "accuracy": result["accuracy"]}

    def record(self, stage: str, history: list[dict]) -> None:
        self.histories[stage] = list(history)
        write_metrics_log(self.out, [row for rows in self.histories.values() for row in rows])

    def finish(self, cut: str) -> dict:
        """Test metrics of the final model; writes model.safetensors, model.json, metrics.json."""
        results = {}
        for split in ("val", "test"):
            if len(self.labels[split]):
                started = time.perf_counter()
                labels, probs = self.probabilities(split, cut)
                results[split] = classification_metrics(labels, probs, self.classes)
                self.timing[f"score_{split}_s"] = round(time.perf_counter() - started, 2)
        save_model(self.out, self.model.cpu(), self.description)
        self.model.to(self.runtime.device)
        atomic_write_json(self.out / "metrics.json", {**results, "timing": self.timing})
        return results


def _warn_near_duplicates(splits: data.Splits, out: Path, quiet: bool) -> None:
    rows = data.near_duplicate_rows(splits)
    data.write_near_duplicates(out / "near_duplicates.csv", rows)
    across = sum(1 for row in rows if row[1] != row[3])
    if across:
        say(f"warning: {across} near-duplicate image pairs fall in different splits "
            "(perceptual hash; see near_duplicates.csv)", quiet)


def calibrated_int8(model: Classifier, train: list[data.Item], upto: str, prep, runtime: Runtime):
    """int8 frozen blocks, calibrated on the clean views of the first readable training images."""
    views = []
    for item in train:
        _, tensors, _ = decode_views(ImageJob(item.path, item.sha256, (0,)), prep, AugmentConfig())
        views += tensors or []
        if len(views) == quantize.CALIBRATION_IMAGES:
            break
    if not views:
        raise UserError("--precision int8: no readable training image to calibrate on; "
                        "allowed: int8 with a training split, or bf16/fp32")
    return quantize.calibrate(model.backbone, upto, normalise(torch.stack(views), prep), runtime.autocast)


def gather_data(config: TrainConfig) -> data.Splits:
    return data.prepare_splits(config.data, config.val_data, config.test_data,
                               config.val_split, config.test_split, config.seed)


def open_session(config: TrainConfig, resume: bool, cuts: list[str]) -> Session:
    """Check everything that can be wrong before writing anything, then set up the run."""
    out = Path(config.out)
    check_new_or_resumable(out, resume)
    runtime = choose_runtime(config.device, config.precision)
    splits = gather_data(config)
    loaded = weights.resolve(user_file=config.weights)
    prep = loaded.record.preprocessing.at_size(config.size)
    make_dirs(out)
    if not resume:
        save_config(config, out / "config.yaml")
    say(f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test images in "
        f"{len(splits.classes)} classes; {len(splits.rejected)} files skipped (rejected.csv)", config.quiet)
    say(f"weights: {loaded.source}; running on {runtime.describe()}", config.quiet)
    head = HeadSpec(config.head, len(splits.classes), config.hidden, config.dropout)
    torch.manual_seed(config.seed)          # the head's initial weights
    model = Classifier(head, size=config.size, blocks=blocks_from_state_dict(loaded.state_dict))
    load_backbone(model, loaded.state_dict)
    model.to(runtime.device).to(memory_format=torch.channels_last)
    if runtime.int8:
        model.use_int8_frozen(calibrated_int8(model, splits.train, base_cut(cuts), prep, runtime))
    by_split = {"train": splits.train, "val": splits.val, "test": splits.test}
    started = time.perf_counter()
    seconds = {}
    if config.no_cache:
        sources, kept, rejected = build_live_sources(model, by_split, cuts, prep, config.augment, runtime), by_split, []
    else:
        sources, kept, rejected, seconds = build_cached_sources(
            model, by_split, cuts, config.views, prep, config.augment, runtime, loaded.id,
            weights.home() / "features", config.batch_size, config.quiet)
    all_rejected = splits.rejected + rejected
    data.write_rejected(out / "rejected.csv", all_rejected)
    _warn_near_duplicates(splits, out, config.quiet)
    write_splits(out, splits.classes, kept)
    description = {"classes": splits.classes, "head": head.to_dict(), "size": config.size,
                   "preprocessing": prep.to_dict(), "weights": loaded.id, "arch": "vgg16",
                   "blocks": {k: list(v) for k, v in model.backbone.widths.items()},
                   "precision": runtime.precision}
    if model.int8_frozen is not None:
        description["int8"] = model.int8_frozen.calibration
    session = Session(config, out, model, runtime, splits.classes, sources,
                      {name: torch.tensor([i.label for i in items], dtype=torch.long) for name, items in kept.items()},
                      kept, all_rejected, description, n_views=config.views)
    session.timing["features_s"] = round(time.perf_counter() - started, 2)
    session.timing.update({f"features_{split}_s": value for split, value in seconds.items()})
    return session
