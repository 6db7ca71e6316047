"""Assembling one training run: check everything that can be wrong, then gather the data, the
weights, the model and its feature sources into a `Run`. Training (schedule.py) runs it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vggtune import distributed
from vggtune.data import dataset as data
from vggtune.features.pipeline import FeaturePipeline, Sources
from vggtune.model import weights
from vggtune.model.runtime import Runtime, choose_runtime
from vggtune.model.spec import ModelSpec, build_classifier
from vggtune.progress import say
from vggtune.training.rundir import RunDir

if TYPE_CHECKING:  # annotations only
    from vggtune.features.engine import Engine
    from vggtune.model.classifier import Classifier
    from vggtune.training.config import TrainConfig


@dataclass(frozen=True)
class Run:
    """What a training run starts from. Training changes the model's parameters and writes the folder;
    it never reassigns these fields: what it decides (epochs, temperature) it returns."""

    config: TrainConfig
    folder: RunDir
    model: Classifier
    runtime: Runtime
    engine: Engine  # what runs the frozen blocks
    spec: ModelSpec  # what model.json will say, before calibration
    sources: Sources
    labels: dict[str, torch.Tensor]  # split -> labels of the kept items
    rejected: list[tuple[str, str]]  # files the scan could not use (the sources add theirs)
    weights_source: str  # where the pretrained weights were loaded from
    setup_seconds: dict  # the feature extraction's time, per split


def gather_data(config: TrainConfig) -> data.Splits:
    splits = data.prepare_splits(
        config.data,
        config.val_data,
        config.test_data,
        config.val_split,
        config.test_split,
        config.seed,
        fold=(config.run.cv_fold, config.run.cv_folds) if config.run.cv_folds else None,
        keep_near_duplicates=config.keep_near_duplicates,
    )
    return data.require_training_images(splits, config.data)


def open_run(config: TrainConfig, resume: bool, cuts: list[str]) -> Run:
    """Check everything that can be wrong before writing anything, then set up the run. Under torchrun
    every rank does this, and rank 0 alone writes the run folder."""
    folder, main = RunDir(config.run.out), distributed.is_main()
    config.check_out()
    folder.prepare(resume)
    runtime = choose_runtime(config.run.device, config.precision)
    splits = gather_data(config)
    config.check_rule(splits.classes, splits.task.several)
    loaded = weights.resolve(weights.for_arch(config.arch), user_file=config.weights)
    distributed.barrier()  # every rank has checked the folder before rank 0 fills it
    if main:
        folder.make()
    if main and not resume:
        folder.write_config(config)
    say(
        f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test images in "
        f"{len(splits.classes)} {splits.task.noun}; {len(splits.rejected)} files skipped (rejected.csv)"
    )
    for line in splits.class_lines():  # the classes' sizes, and any warning they call for
        say(line)
    if splits.near_copies:
        counts = ", ".join(f"{name} {count}" for name, count in splits.near_copies_by_class().items())
        say(
            f"left out of training: {len(splits.near_copies)} copies of held-out images, their "
            f"pixels alike ({counts}; rejected.csv names each; --keep-near-duplicates keeps them)"
        )
    say(f"weights: {loaded.source}; running on {runtime.describe()}")
    spec = ModelSpec.for_training(
        config, splits.classes, loaded, runtime.precision, _input_size(config, splits, loaded), splits.task
    )
    torch.manual_seed(config.seed)  # the head's initial weights
    model = build_classifier(spec, loaded.state_dict, runtime)
    _start_biases(model, splits, config.for_task("loss", splits.task.several) == "asymmetric")
    pipeline = FeaturePipeline(
        model,
        spec.preprocessing,
        config.augment,
        runtime,
        config.batch_size,
        loaded.id,
        weights.home() / "features",
        config.feature_storage,
        config.run.engine,
    )
    say(f"frozen blocks on {pipeline.chosen_engine.describe()}")
    if runtime.int8:
        spec = dataclasses.replace(spec, int8=_int8_blocks(pipeline, folder, splits, spec.arch.earliest(cuts)))
    started = time.perf_counter()
    by_split = {"train": splits.train, "val": splits.val, "test": splits.test}
    fill = pipeline.live if config.run.no_cache else pipeline.cached
    sources = fill(by_split, cuts, config.views, spec.scoring.views)
    seconds = {
        "features_s": round(time.perf_counter() - started, 2),
        **{f"features_{split}_s": value for split, value in sources.seconds.items()},
    }
    if main:
        _write_data_reports(folder, splits, splits.rejected + sources.rejected)
        folder.write_splits(splits.classes, sources.kept)
    labels = {name: splits.task.targets(items, len(splits.classes)) for name, items in sources.kept.items()}
    return Run(
        config,
        folder,
        model,
        runtime,
        pipeline.chosen_engine,
        spec,
        sources,
        labels,
        splits.rejected,
        loaded.source,
        seconds,
    )


def _start_biases(model: Classifier, splits: data.Splits, asymmetric: bool) -> None:
    """The head's output biases where the task starts them (tasks.py: a multi-label head's at each label's
    log-odds in the training split; PyTorch's own initialisation otherwise). With the asymmetric loss they
    start at 0, every label at 0.5: its clip counts no negative below a probability of 0.05, so a label rarer
    than one image in twenty, started at its prior, would learn from its positives alone (37 breeds as
    labels: mAP 0.70 from the priors, 0.86 from 0; BENCHMARKS.md section 31)."""
    bias = splits.task.initial_bias(splits.task.targets(splits.train, len(splits.classes)))
    if bias is None:
        return
    if asymmetric:
        bias = torch.zeros_like(bias)
    out = model.head.get_parameter("out.bias")  # every head's last layer is `out` (model/heads.py)
    with torch.no_grad():
        out.copy_(bias)


def _input_size(config: TrainConfig, splits: data.Splits, loaded: weights.LoadedWeights) -> int:
    """config.size, or what --size auto picks from the training images (said when it is not the weights' side)."""
    native = loaded.record.preprocessing.size
    size, median = config.input_size(native, [item.path for item in splits.train])
    if median is not None and size != native:  # auto read the images and chose another side
        say(
            f"input size: {size} px, near the training images' median shorter side of {median} px "
            f"(--size auto; --size {native} enlarges them to the weights' own)"
        )
    return size


def _int8_blocks(pipeline: FeaturePipeline, folder: RunDir, splits: data.Splits, cut: str) -> dict:
    """The frozen blocks up to `cut` in int8 from now on; their calibration. Rank 0 calibrates and every
    rank uses its scales; a resumed run keeps the scales it calibrated."""
    main = distributed.is_main()
    calibration = distributed.from_main(pipeline.use_int8(splits.train, cut, folder.calibration()) if main else None)
    if main:
        folder.save_calibration(calibration)
    else:
        pipeline.use_int8(splits.train, cut, calibration)
    return calibration


def _write_data_reports(folder: RunDir, splits: data.Splits, rejected: list[tuple[str, str]]) -> None:
    across, conflicts = folder.write_data_reports(splits, rejected)
    if across:  # only where a given --val-data, --test-data or manifest split holds both
        say(
            f"warning: {across} near-duplicate image pairs fall in different splits "
            "(perceptual hash; see near_duplicates.csv)"
        )
    if conflicts:
        say(
            f"warning: {conflicts} near-duplicate image pairs are filed under two classes, likely one image "
            "with two labels (`vggtune data check` lists them)"
        )
