"""The training schedule: head on frozen features, then fine-tune the last block(s).

    for stage in plan(config):          # head, then finetune
        set_trainable(model, stage.trainable)
        run_stage(session, stage)       # epochs from cached features, best kept, early stop

Every completed epoch is saved (trainable tensors, optimiser moments, progress), so
`--resume` continues from the last one and reaches the same result as a run that was
never interrupted: each epoch's shuffling and dropout are seeded by (seed, stage, epoch).
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError
from .model import cut_before, last_blocks, set_trainable
from .progress import progress, say
from .rundir import load_tensors, save_tensors
from .session import Session, open_session


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: tuple[str, ...]       # backbone blocks that learn besides the head
    cut: str                         # features come from the cache at this block
    epochs: int
    lr: float


def plan(config) -> list[Stage]:
    stages = [Stage("head", (), "block5", config.epochs, config.lr)]
    if config.finetune_epochs:
        blocks = last_blocks(config.finetune_blocks)
        stages.append(Stage("finetune", blocks, cut_before(blocks), config.finetune_epochs, config.finetune_lr))
    return stages


def fit(config, resume: bool = False) -> dict:
    """Train as `config` says, in config.out; returns the test metrics."""
    stages = plan(config)
    session = open_session(config, resume, cuts=[stage.cut for stage in stages])
    for stage in stages:
        set_trainable(session.model, stage.trainable)
        run_stage(session, stage)
    return session.finish(stages[-1].cut)


def run_stage(session: Session, stage: Stage) -> None:
    model, config = session.model, session.config
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(list(parameters.values()), stage.lr)
    state = _resume_state(session, stage, parameters, optimizer)
    if state["done"]:
        return
    started = time.perf_counter()
    for epoch in range(state["epoch"], stage.epochs):
        seed = epoch_seed(config.seed, stage.name, epoch)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        train_loss, train_accuracy = train_epoch(session, stage, optimizer, rng)
        val = session.validate(stage.cut)
        score = val["loss"] if val else train_loss
        row = {"stage": stage.name, "epoch": epoch + 1, "train_loss": train_loss,
               "train_accuracy": train_accuracy, **({f"val_{k}": val[k] for k in ("loss", "accuracy")} if val else {})}
        state["history"].append(row)
        if score < state["best_score"]:
            state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
            save_tensors(_state_path(session, stage, "best"), {f"param.{n}": p for n, p in parameters.items()})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        stop = bool(config.patience) and state["bad_epochs"] >= config.patience and state["epoch"] < stage.epochs
        state["done"] = bool(stop) or state["epoch"] == stage.epochs
        _save_state(session, stage, parameters, optimizer, state)
        session.record(stage.name, state["history"])
        say(_epoch_line(row, stage), config.quiet)
        if stop:
            say(f"{stage.name}: early stop, no better validation loss for {config.patience} epochs", config.quiet)
            break
    session.timing[f"{stage.name}_s"] = round(time.perf_counter() - started, 2)
    _load_params(session, stage, parameters, "best")


def make_optimizer(parameters: list, lr: float) -> torch.optim.Optimizer:
    """Adam; the fused kernel where this torch has it for the device (a third faster on the head)."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr)


def train_epoch(session: Session, stage: Stage, optimizer, rng) -> tuple[float, float]:
    """One pass over the training images, one random cached view of each."""
    model, config, runtime = session.model, session.config, session.runtime
    source, labels = session.sources[stage.cut]["train"], session.labels["train"]
    order = rng.permutation(len(labels))
    views = rng.integers(session.n_views, size=len(labels))
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = progress(total=len(order), desc=f"{stage.name} epoch", unit="image", quiet=config.quiet)
    for start in range(0, len(order), config.batch_size):
        positions = order[start:start + config.batch_size]
        x, kept = source.batch(positions, views[positions])
        if not kept:
            continue
        y = labels[kept].to(runtime.device)
        x = x.to(runtime.device).float().contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model.from_features(x, stage.cut)
        loss = session.loss(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(kept)
        correct += int((session.predict_labels(logits.float()) == y).sum())
        seen += len(kept)
        bar.update(len(positions))
    bar.close()
    return total_loss / max(seen, 1), correct / max(seen, 1)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Stable across processes (unlike hash()), so a resumed epoch repeats exactly."""
    return zlib.crc32(f"{seed}:{stage}:{epoch}".encode())


def _epoch_line(row: dict, stage: Stage) -> str:
    text = f"{stage.name} {row['epoch']:>2}/{stage.epochs}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}"
    if "val_loss" in row:
        text += f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}"
    return text


def _state_path(session: Session, stage: Stage, which: str):
    return session.out / "state" / f"{stage.name}-{which}.safetensors"


def _save_state(session, stage, parameters, optimizer, state) -> None:
    """Parameters, optimiser moments and progress in one file, so they can never disagree."""
    saved = optimizer.state_dict()
    tensors = {f"param.{name}": p for name, p in parameters.items()}
    for index, moments in saved["state"].items():
        for key, value in moments.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    save_tensors(_state_path(session, stage, "last"), tensors,
                 {"progress": state, "param_groups": saved["param_groups"]})


def _resume_state(session, stage, parameters, optimizer) -> dict:
    fresh = {"epoch": 0, "best_score": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": [], "done": False}
    path = _state_path(session, stage, "last")
    if not path.is_file():
        return fresh
    tensors, metadata = load_tensors(path)
    if not isinstance(metadata.get("progress"), dict) or "param_groups" not in metadata:
        raise UserError(f"{path}: no training progress recorded; allowed: a state file written by vggtune train")
    state = metadata["progress"]
    session.record(stage.name, state["history"])
    if state["done"]:
        _load_params(session, stage, parameters, "best")
        return state
    _assign(parameters, tensors, "param.")
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
    say(f"{stage.name}: resuming after epoch {state['epoch']}", session.config.quiet)
    return state


def _load_params(session, stage, parameters, which: str) -> None:
    path = _state_path(session, stage, which)
    if path.is_file():
        _assign(parameters, load_tensors(path)[0], "param.")


def _assign(parameters: dict, tensors: dict, prefix: str) -> None:
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[prefix + name])
