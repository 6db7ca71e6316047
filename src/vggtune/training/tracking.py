"""What a run records as it goes (`Log`): metrics.jsonl, the timings, and TensorBoard event files in
every run (RUN/tensorboard), the convention of timm, Keras and Ultralytics: `tensorboard --logdir
runs` shows all runs side by side.

    each epoch:   <stage>/train_loss, <stage>/train_accuracy, <stage>/val_loss, <stage>/val_accuracy,
                  <stage>/learning_rate          (step: the epoch within its stage)
    at the end:   the hyperparameters (the HParams tab) with final/<split>_<metric>

tensorboardX writes them: a light writer, no TensorFlow. A writer that fails (a full disk) costs one
line and the run goes on: the event files are a view of metrics.jsonl and metrics.json, not the record.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vggtune import distributed, runfiles
from vggtune.progress import say
from vggtune.training.figures import Blend, EpochRow
from vggtune.training.rundir import Environment, RunDir, Timing

if TYPE_CHECKING:  # annotations only
    from vggtune.training.session import Run

FINAL_METRICS = ("accuracy", "log_loss", "f1_macro", "roc_auc")
HPARAM_TYPES = (bool, int, float, str)


class Log:
    """What the stages record as they go: each stage's epochs (metrics.jsonl, rewritten after every
    epoch, and TensorBoard's event files), the epoch each stage kept, and the seconds each part of the
    run took (metrics.json)."""

    def __init__(self, folder: RunDir, started: float | None = None):
        self.folder = folder
        self.histories: dict[str, list[EpochRow]] = {}
        self.timing: dict[str, float] = {}
        self.kept_epochs: dict[str, int] = {}
        self.blend: Blend | None = None  # the share of the fine-tuning kept, where --blend is not 1
        self.started = time.perf_counter() if started is None else started
        self.events = EventLog(folder.path) if distributed.is_main() else None  # rank 0 alone writes

    def finished_timing(self) -> Timing:
        """The seconds each part took, as metrics.json records them."""
        return Timing(dict(self.timing))

    def epochs(self, stage: str, history: list[EpochRow], learning_rate: float | None = None) -> None:
        """The stage's epochs so far, written to metrics.jsonl with the stages before it; with the
        `learning_rate` it trained at, the newest epoch also goes to the event files."""
        self.histories[stage] = list(history)
        if self.events is not None:
            self.folder.write_history([row for rows in self.histories.values() for row in rows])
            if learning_rate is not None:
                self.events.epoch(history[-1], learning_rate)

    def finish(self, config: dict, results: dict) -> None:
        """The run's hyperparameters and final metrics in the event files."""
        if self.events is not None:
            self.events.finish(config, results)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


class EventLog:
    """One run's TensorBoard writer; `finish` writes the last of it and closes it."""

    def __init__(self, run_folder: Path):
        self.writer = None
        try:
            from tensorboardX import SummaryWriter

            # Named by the second it opens in: a resumed run's writer could take over (and empty) the file of
            # the call it continues, without a suffix of its own.
            self.writer = SummaryWriter(
                logdir=str(Path(run_folder) / runfiles.TENSORBOARD),
                flush_secs=10,
                filename_suffix=f".{os.getpid()}.{time.time_ns()}",
            )
        except Exception as exc:  # noqa: BLE001 - a view of the run's records must never stop it
            say(f"tensorboard: not written ({type(exc).__name__}: {exc})")

    def epoch(self, row: EpochRow, learning_rate: float) -> None:
        values = {**row.figures(), "learning_rate": learning_rate}

        def write(writer):
            for key, value in values.items():
                writer.add_scalar(f"{row.stage}/{key}", float(value), row.epoch)

        self._write(write)

    def finish(self, config: dict, results: dict) -> None:
        """The hyperparameters and the final metrics, then the files closed."""
        metrics = {
            f"final/{split}_{name}": float(values[name])
            for split, values in results.items()
            for name in FINAL_METRICS
            if values.get(name) is not None
        }
        self._write(lambda writer: _hparams(writer, hyperparameters(config), metrics))
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self, action) -> None:
        if self.writer is None:
            return
        try:
            action(self.writer)
        except Exception as exc:  # noqa: BLE001
            say(f"tensorboard: writing stopped ({type(exc).__name__}: {exc}); the run goes on")
            self.writer = None


def flat_config(config: dict) -> dict:
    """The config with its nested sections (augment) as dotted keys: augment.flip, ..."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def hyperparameters(config: dict) -> dict:
    """The config as TensorBoard's HParams tab takes it: flat, plain values."""
    return {key: value for key, value in flat_config(config).items() if isinstance(value, HPARAM_TYPES)}


def _hparams(writer, hparams: dict, metrics: dict) -> None:
    from tensorboardX.summary import hparams as summaries

    for summary in summaries(hparams, metrics):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value)


def environment(run: Run) -> Environment:
    """What a reader of the results needs to reproduce them: versions, device, precision, cache use."""
    import platform

    import numpy as np
    import torch
    import torchvision

    from vggtune.version import __version__

    return Environment(
        vggtune=__version__,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        device=run.runtime.describe(),
        processor=run.runtime.processor(),
        weights=run.spec.weights,
        weights_source=run.weights_source,
        precision=run.runtime.precision,
        engine=run.engine.describe(),
        processes=distributed.world().size,
        feature_cache=dict(run.sources.reuse),
    )
