"""What happens around each epoch besides training and validating it, as callbacks of one small interface
(the shape of fastai's and Keras's): the loop (schedule.py's `_epochs`) trains an epoch, asks each callback
`before_validation`, validates, keeps the best parameters' score, asks `after_validation`, marks the stage
done, then asks `after_epoch`; it stops where a callback set `stop`.

    WeightAveraging   --swa: the average of the epochs' parameters is what is validated and kept
    Saving            the best parameters (STAGE-best) and the resume state (STAGE-last), rank 0
    SteppingBack      --schedule plateau: after an epoch without a better validation loss, back to the best
                      parameters (the rate falls with the count of such epochs: objective.rate_factor)
    EarlyStopping     --patience: stop after that many epochs without a better validation loss
    Recording         metrics.jsonl, TensorBoard and the epoch's line in the terminal
    Observing         `tune`'s pruner told each epoch's validation figures

A callback holds what it needs from the run; the loop hands each the `Epoch` it is in, in the order of
`for_stage`'s list (the best parameters are saved before the average swaps back; the early stop is said last).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vggtune import distributed
from vggtune.progress import say
from vggtune.training import checkpoints
from vggtune.training.checkpoints import EpochRow, StageProgress

if TYPE_CHECKING:  # annotations only
    from vggtune.training.figures import Validation
    from vggtune.training.objective import Average
    from vggtune.training.rundir import RunDir
    from vggtune.training.tracking import Log


@dataclass
class Epoch:
    """One epoch of one stage as the loop fills it in: what the callbacks read, and `state` and `stop`,
    which they may set."""

    stage: Any  # schedule.Stage: name, epochs
    index: int  # from 0
    parameters: dict  # name -> the stage's trainable parameters
    optimizer: Any
    state: StageProgress  # as of the epoch before; the loop brings it up to this one
    val: Validation | None = None
    row: EpochRow | None = None
    improved: bool = False  # this epoch's validation loss is the best so far
    stop: bool = False

    @property
    def last(self) -> bool:
        return self.index + 1 == self.stage.epochs


class Callback:
    """Does nothing at each point; a callback overrides the points it acts at."""

    def before_validation(self, epoch: Epoch) -> None:
        pass

    def after_validation(self, epoch: Epoch) -> None:
        pass

    def after_epoch(self, epoch: Epoch) -> None:
        pass


class WeightAveraging(Callback):
    """Stochastic weight averaging (Izmailov et al., 2018): after each epoch the parameters join their running
    average, which is validated (and, if best, kept) in their place; then the training parameters return."""

    def __init__(self, average: Average):
        self.average = average

    def before_validation(self, epoch: Epoch) -> None:
        self.average.add(epoch.parameters)
        self.average.swap(epoch.parameters)

    def after_validation(self, epoch: Epoch) -> None:
        self.average.swap(epoch.parameters)  # back to the parameters that train
        epoch.state = dataclasses.replace(epoch.state, averaged=self.average.count)


class Saving(Callback):
    """The best parameters so far and, after each epoch, everything `--resume` needs, written by a background
    thread (checkpoints.Checkpoints) on rank 0 while the next epoch trains."""

    def __init__(self, folder: RunDir, writer: checkpoints.Checkpoints, average: Average | None):
        self.folder, self.writer, self.average = folder, writer, average

    def after_validation(self, epoch: Epoch) -> None:
        self.writer.wait()  # the previous epoch's files, written while this one trained
        if epoch.improved and distributed.is_main():
            best = self.folder.state(epoch.stage.name, "best")
            self.writer.save(best, {f"param.{name}": p for name, p in epoch.parameters.items()})

    def after_epoch(self, epoch: Epoch) -> None:
        if distributed.is_main():
            last = self.folder.state(epoch.stage.name, "last")
            checkpoints.save_state(last, epoch.parameters, epoch.optimizer, epoch.state, self.writer, self.average)


class SteppingBack(Callback):
    """An epoch that did not lower the validation loss is undone: the parameters go back to the best ones
    (kept in memory) and the state counts a setback, which lowers the rate of the epochs after it. A stage
    begins, and resumes, at its best parameters: "last" is saved after the step back."""

    def __init__(self, parameters: dict):
        self.best = _copied(parameters)

    def after_validation(self, epoch: Epoch) -> None:
        if epoch.improved:
            self.best = _copied(epoch.parameters)
            return
        with torch.no_grad():
            for name, parameter in epoch.parameters.items():
                parameter.copy_(self.best[name])
        epoch.state = dataclasses.replace(epoch.state, setbacks=epoch.state.setbacks + 1)


def _copied(parameters: dict) -> dict:
    return {name: p.detach().clone() for name, p in parameters.items()}


class EarlyStopping(Callback):
    """Stops the stage after `patience` epochs without a better validation loss (0: never)."""

    def __init__(self, patience: int):
        self.patience = patience

    def after_validation(self, epoch: Epoch) -> None:
        epoch.stop = bool(self.patience) and epoch.state.bad_epochs >= self.patience and not epoch.last

    def after_epoch(self, epoch: Epoch) -> None:
        if epoch.stop:
            say(f"{epoch.stage.name}: early stop, no better validation loss for {self.patience} epochs")


class Recording(Callback):
    """The stage's history to metrics.jsonl and TensorBoard (tracking.Log), and the epoch's line."""

    def __init__(self, log: Log):
        self.log = log

    def after_epoch(self, epoch: Epoch) -> None:
        rate = max(group["lr"] for group in epoch.optimizer.param_groups)
        self.log.epochs(epoch.stage.name, list(epoch.state.history), rate)
        if epoch.row is not None:
            say(epoch_line(epoch.row, epoch.stage.epochs))


class Observing(Callback):
    """Tells `observer` (stage, epoch, validation figures) after each validated epoch: `tune`'s pruner stops a
    hopeless trial by raising from it."""

    def __init__(self, observer: Callable[[str, int, Validation], None]):
        self.observer = observer

    def after_epoch(self, epoch: Epoch) -> None:
        if epoch.val is not None:
            self.observer(epoch.stage.name, epoch.index + 1, epoch.val)


def epoch_line(row: EpochRow, epochs: int) -> str:
    text = f"{row.stage} {row.epoch:>2}/{epochs}  loss {row.train_loss:.4f}  acc {row.train_accuracy:.4f}"
    if row.val_loss is not None and row.val_accuracy is not None:
        text += f"  val_loss {row.val_loss:.4f}  val_acc {row.val_accuracy:.4f}"
    return text


def for_stage(
    folder: RunDir,
    writer: checkpoints.Checkpoints,
    log: Log,
    average: Average | None,
    patience: int,
    observer: Callable[[str, int, Validation], None] | None = None,
    parameters: dict | None = None,
) -> list[Callback]:
    """A stage's callbacks, in the order they act; `parameters`: the stage's, to step back to on a
    plateau (--schedule plateau), None otherwise."""
    chosen: list[Callback] = [Saving(folder, writer, average)]
    if average is not None:
        chosen.append(WeightAveraging(average))
    if parameters is not None:
        chosen.append(SteppingBack(parameters))
    chosen.append(Recording(log))
    if observer is not None:
        chosen.append(Observing(observer))
    chosen.append(EarlyStopping(patience))
    return chosen
