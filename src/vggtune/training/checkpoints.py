"""A stage's state files: the parameters, their average, the optimiser's moments and the progress after
each epoch (STAGE-last), and the parameters of the best epoch (STAGE-best), so that `--resume`
continues from the last finished epoch. Written by a background thread while the next epoch trains."""

from __future__ import annotations

import copy
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from vggtune.errors import UserError
from vggtune.fsutil import load_tensors, save_tensors
from vggtune.training.figures import EpochRow
from vggtune.training.objective import Average


@dataclass(frozen=True)
class StageProgress:
    """Where a stage stands after its last finished epoch: saved in STAGE-last with the tensors, read back by
    --resume. `history` holds each epoch's row (stage, epoch, train and validation loss and accuracy)."""

    epoch: int = 0  # epochs finished
    best_score: float = float("inf")  # the lowest validation loss so far (the training loss without validation)
    best_epoch: int = 0  # the epoch that scored it, whose parameters STAGE-best holds
    bad_epochs: int = 0  # epochs since it, for early stopping
    history: tuple[EpochRow, ...] = ()
    done: bool = False
    averaged: int = 0  # epochs in the parameters' running average (SWA); 0 without one
    setbacks: int = 0  # --schedule plateau: epochs that went back to the best parameters at a lower rate

    def to_dict(self) -> dict:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**values, "history": [row.to_dict() for row in self.history]}

    @classmethod
    def from_dict(cls, values: dict) -> StageProgress:
        known = {field.name for field in dataclasses.fields(cls)}
        history = tuple(EpochRow.from_dict(row) for row in values.get("history", ()))
        return cls(**{**{k: v for k, v in values.items() if k in known}, "history": history})


class Checkpoints:
    """State files written in the background, one at a time, in the order asked: the next epoch trains
    while the last one's parameters and moments (about 160 MB for block5 and the flatten head) are
    written and synced. What is written is a copy taken when asked, so training may change the tensors."""

    def __init__(self):
        self.writer, self.pending = ThreadPoolExecutor(1, thread_name_prefix="checkpoints"), []

    def save(self, path, tensors: dict, metadata: dict | None = None) -> None:
        snapshot = {name: tensor.detach().clone() for name, tensor in tensors.items()}
        self.pending.append(self.writer.submit(save_tensors, path, snapshot, copy.deepcopy(metadata)))

    def wait(self) -> None:
        """Every file asked for is on disk (a write's error is raised here)."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.writer.shutdown()


def save_state(
    path: Path, parameters: dict, optimizer, state: StageProgress, checkpoints: Checkpoints, average: Average | None
) -> None:
    """Parameters, their average, optimiser moments and progress in one file, so they can never disagree."""
    saved = optimizer.state_dict()
    tensors = {f"param.{name}": p for name, p in parameters.items()}
    tensors.update({f"average.{name}": mean for name, mean in (average.mean if average else {}).items()})
    for index, moments in saved["state"].items():
        for key, value in moments.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    checkpoints.save(path, tensors, {"progress": state.to_dict(), "param_groups": saved["param_groups"]})


def resume_state(last: Path, best: Path, parameters: dict, optimizer, average: Average | None) -> StageProgress:
    """The progress saved in `last`, with the parameters, their average and the moments put back (the best
    epoch's parameters if the stage had finished); a fresh start where there is no such file."""
    if not last.is_file():
        return StageProgress()
    tensors, metadata = load_tensors(last)
    if not isinstance(metadata.get("progress"), dict) or "param_groups" not in metadata:
        raise UserError(f"{last}: no training progress recorded; allowed: a state file written by vggtune train")
    state = StageProgress.from_dict(metadata["progress"])
    if state.done:
        load_params(best, parameters)
        return state
    assign(parameters, tensors, "param.")
    if average and state.averaged:
        average.load({name: tensors[f"average.{name}"] for name in parameters}, state.averaged)
    moments: dict[int, dict] = {}
    ordered = list(parameters.values())
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            if value.shape == ordered[int(index)].shape:
                # Moments take their parameter's memory layout (channels-last convs): the
                # fused Adam kernel walks both tensors' storage in the same order.
                value = torch.empty_like(ordered[int(index)]).copy_(value)
            moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": metadata["param_groups"]})
    return state


def load_params(path: Path, parameters: dict) -> None:
    """The parameters saved in `path`, where it exists."""
    if path.is_file():
        assign(parameters, load_tensors(path)[0], "param.")


def assign(parameters: dict, tensors: dict, prefix: str) -> None:
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[prefix + name])
