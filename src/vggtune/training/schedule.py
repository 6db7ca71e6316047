"""The training schedule: head on frozen features, then fine-tune the last block(s).

    run = open_run(config, resume, cuts)    # data, weights, model, feature sources
    for stage in plan(config):              # head, then finetune
        run.model.set_trainable(stage.trainable)
        run_stage(run, stage, log)          # epochs from cached features, best kept, early stop
    blend(run, cut, start)                  # --blend: the fine-tuning kept whole, in part or as validation says
    return finish(run, log)                 # calibrated, scored on val and test, saved (then the report)

Every completed epoch is saved (trainable tensors, optimiser moments, progress), so
`--resume` continues from the last one and reaches the same result as a run that was
never interrupted: each epoch's shuffling and dropout are seeded by (seed, stage, epoch).
The files are written by a background thread while the next epoch trains (`Checkpoints`), so
a crash loses at most the epoch in progress and the one before it.

Under torchrun (distributed.py) every rank runs this same schedule: each takes its share of
every batch, DistributedDataParallel averages the gradients, validation is scored in shares and
gathered, so every rank makes the same choices; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vggtune import distributed
from vggtune.progress import progress, say, verbosity
from vggtune.training.callbacks import Callback, Epoch, for_stage
from vggtune.training.checkpoints import Checkpoints, EpochRow, StageProgress, load_params, resume_state
from vggtune.training.objective import Anchor, Average, Objective, parameter_groups, rate_factor, set_rates
from vggtune.training.session import Run, open_run
from vggtune.training.tracking import Log, environment
from vggtune.training.validation import (
    blend,
    calibrated,
    chosen_rule,
    scorer,
    starting_point,
    validate,
    weights_of,
)

if TYPE_CHECKING:  # annotations only
    from vggtune.features.engine import Engine
    from vggtune.training.figures import Figures, Validation


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: tuple[str, ...]  # backbone blocks that learn besides the head
    cut: str  # features come from the cache at this block
    epochs: int
    lr: float
    average: bool = False  # validate and keep the average of the epochs' parameters (--swa)


def plan(config) -> list[Stage]:
    arch = config.architecture
    stages = [Stage("head", (), arch.cut_before(()), config.epochs, config.lr)]
    if config.finetune_epochs:
        blocks = arch.last(config.finetune_blocks)
        stages.append(Stage("finetune", blocks, arch.cut_before(blocks), config.finetune_epochs, config.finetune_lr))
    # SWA starts from a trained solution: the last stage's epochs are averaged, not the head's first ones.
    stages[-1] = dataclasses.replace(stages[-1], average=config.swa)
    return stages


# Told (stage, epoch, validation figures: loss, accuracy, balanced_loss) after each validated epoch.
Observer = Callable[[str, int, "Validation"], None]


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns: the run folder and the metrics of its validation and test splits (None where a
    split held no images). `to_dict()` is what metrics.json holds of them."""

    run: str
    val: Figures | None  # Metrics, or a multi-label run's MultiLabelMetrics
    test: Figures | None

    def to_dict(self) -> dict:
        return {name: scores.to_dict() for name, scores in (("val", self.val), ("test", self.test)) if scores}


@dataclass(frozen=True)
class Trained:
    """A finished run: its metrics, and the engine every rank agreed on for the frozen blocks, which
    whatever runs after training on one rank (the report) reuses instead of choosing again."""

    results: TrainResult
    engine: Engine


def fit(config, resume: bool = False) -> TrainResult:
    """Train as `config` says, in config.run.out."""
    return train_run(config, resume).results


def train_run(config, resume: bool = False, observer: Observer | None = None) -> Trained:
    """Train as `config` says, in config.run.out. `observer` is told each epoch's validation figures (`vggtune
    tune` stops a hopeless trial by raising from it)."""
    stages, started = plan(config), time.perf_counter()
    with verbosity(config.run.quiet or not distributed.is_main()):
        run = open_run(config, resume, cuts=[stage.cut for stage in stages])
        log = Log(run.folder, started)
        log.timing.update(run.setup_seconds)
        weights = weights_of(run)
        if weights is not None:
            say(
                f"{run.spec.task.weights_name}: "
                + ", ".join(f"{name} {w:.3f}" for name, w in zip(run.spec.classes, weights.tolist()))
            )
        try:
            for stage in stages:
                run.model.set_trainable(stage.trainable)
                start = starting_point(run.model) if stage.name == "finetune" and config.blend != 1 else None
                run_stage(run, stage, log, observer)
                if start is not None:
                    log.blend = blend(run, stage.cut, start)
            return Trained(finish(run, stages[-1].cut, log), run.engine)
        finally:
            log.close()  # an interrupted run's event files too, with what they have


def finish(run: Run, cut: str, log: Log) -> TrainResult:
    """Calibrates the final model, scores it on the validation and test splits, then saves it with its
    metrics, each image's probabilities (predictions.csv), the report and the model card."""
    results: dict[str, Figures] = {}
    predictions: list[tuple] = []
    spec = dataclasses.replace(run.spec, scoring=calibrated(run, cut)) if run.config.calibrate else run.spec
    spec = dataclasses.replace(spec, scoring=chosen_rule(run, cut, spec.scoring))
    final = scorer(run, spec.scoring)
    for split in ("val", "test"):
        if len(run.labels[split]):
            started = time.perf_counter()
            positions, labels, probabilities = final.scored(run.sources.by_cut[cut][split], run.labels[split], cut)
            results[split] = final.summary(labels, probabilities, intervals=True)
            items = run.sources.kept[split]
            predictions += [
                (split, items[p].path, final.label_text(label), row.tolist())
                for p, label, row in zip(positions, labels, probabilities)
            ]
            log.timing[f"score_{split}_s"] = round(time.perf_counter() - started, 2)
    if run.sources.damaged_shards:
        log.timing["damaged_cache_shards"] = run.sources.damaged_shards
    # From the start of this process's part (a resumed run's earlier parts are not in it) to the scores.
    log.timing["this_call_s"] = round(time.perf_counter() - log.started, 1)
    # --no-cache: files lost mid-run, on any rank (the cache's sources already share theirs)
    lost = list(dict.fromkeys(distributed.concat(run.sources.rejected)))
    result = TrainResult(str(run.config.run.out), results.get("val"), results.get("test"))
    if distributed.is_main():
        save(run, spec, result, predictions, run.rejected + lost, log)
    log.finish(run.config.to_dict(), result.to_dict())
    return result


def save(run: Run, spec, result: TrainResult, predictions: list, rejected: list, log: Log) -> None:
    """The finished run's files: the model, each image's probabilities, metrics (the report and model card
    are the API's next step: vggtune.api.train_with)."""
    run.folder.write_rejected(rejected)
    run.folder.save_model(run.model, spec)
    run.folder.write_predictions(predictions, spec)
    run.folder.write_metrics(result.to_dict(), log.finished_timing(), environment(run), log.kept_epochs, log.blend)
    if not run.config.run.keep_state:
        run.folder.remove_state()


class StageNet(torch.nn.Module):
    """A stage's network from its cut to the output, as one module: what DistributedDataParallel wraps.
    It holds the blocks after the cut and the head (so only they are synchronised), not the whole model."""

    def __init__(self, model, cut: str):
        super().__init__()
        self.blocks = torch.nn.ModuleList(getattr(model.backbone, name) for name in model.arch.between(after=cut))
        self.head = model.head
        self.__dict__["classifier"], self.cut = model, cut  # not a submodule

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.__dict__["classifier"].from_features(features, self.cut)


def run_stage(run: Run, stage: Stage, log: Log, observer: Observer | None = None) -> None:
    model, config = run.model, run.config
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(parameter_groups(parameters, stage.trainable, stage.lr, config.block_lr_ratio))
    if config.l2sp and stage.trainable:  # taken before a resume loads the parameters: the pretrained ones
        optimizer.register_step_pre_hook(Anchor(parameters, config.l2sp).pull)
    net = distributed.wrap(StageNet(model, stage.cut), run.runtime.device)
    average = Average(parameters) if stage.average else None
    last, best = run.folder.state(stage.name, "last"), run.folder.state(stage.name, "best")
    state = resume_state(last, best, parameters, optimizer, average)
    if state.history:
        log.epochs(stage.name, list(state.history))
        if not state.done:
            say(f"{stage.name}: resuming after epoch {state.epoch}")
    if state.done:
        log.kept_epochs[stage.name] = state.best_epoch
        return
    writer = Checkpoints()
    plateau = parameters if config.schedule == "plateau" else None
    callbacks = for_stage(run.folder, writer, log, average, config.patience, observer, plateau)
    started = time.perf_counter()
    try:
        state = _epochs(run, stage, net, Epoch(stage, state.epoch, parameters, optimizer, state), callbacks)
    finally:
        writer.close()  # also when interrupted: the last finished epoch is saved
    log.timing[f"{stage.name}_s"] = round(time.perf_counter() - started, 2)
    log.kept_epochs[stage.name] = state.best_epoch
    if stage.epochs > 1 and state.best_epoch == stage.epochs and not stage.average:
        say(
            f"warning: {stage.name}: kept its last epoch ({stage.epochs}), its validation loss still falling: "
            f"the epochs may be too few (--{'epochs' if stage.name == 'head' else 'finetune-epochs'} more)"
        )
    distributed.barrier()  # rank 0 has written the best parameters
    load_params(best, parameters)


def _epochs(run: Run, stage: Stage, net, epoch_state: Epoch, callbacks: list[Callback]) -> StageProgress:
    """The stage's epochs from `epoch_state.state` on: each trained, validated and its best score kept, the
    rest (weight averaging, checkpoints, early stopping, records, the observer) done by `callbacks`."""
    config = run.config
    for index in range(epoch_state.state.epoch, stage.epochs):
        epoch = dataclasses.replace(epoch_state, index=index, val=None, row=None, improved=False, stop=False)
        set_rates(epoch.optimizer, rate_factor(config.schedule, index, stage.epochs, epoch.state.setbacks))
        seed = epoch_seed(config.seed, stage.name, index)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        train_loss, train_accuracy = train_epoch(run, stage, net, epoch.optimizer, rng)
        for callback in callbacks:
            callback.before_validation(epoch)
        epoch.val = validate(run, stage.cut)
        score = epoch.val.loss if epoch.val else train_loss
        epoch.row = EpochRow.of(stage.name, index + 1, train_loss, train_accuracy, epoch.val)
        state = dataclasses.replace(epoch.state, history=(*epoch.state.history, epoch.row), epoch=index + 1)
        epoch.improved = score < state.best_score
        if epoch.improved:
            state = dataclasses.replace(state, best_score=score, best_epoch=index + 1, bad_epochs=0)
        else:
            state = dataclasses.replace(state, bad_epochs=state.bad_epochs + 1)
        epoch.state = state
        for callback in callbacks:
            callback.after_validation(epoch)
        epoch.state = dataclasses.replace(epoch.state, done=epoch.stop or epoch.state.epoch == stage.epochs)
        for callback in callbacks:
            callback.after_epoch(epoch)
        epoch_state = epoch
        if epoch.stop:
            break
    return epoch_state.state


def make_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
    """Adam over parameter groups with their own rates; the fused kernel where this torch has it for the
    device (a third faster on the head)."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups)


def train_epoch(run: Run, stage: Stage, net, optimizer, rng) -> tuple[float, float]:
    """One pass over the training images, one random cached view of each. Under torchrun each rank
    takes its share of every batch, and its loss is weighted so that the averaged gradient is the
    one-process gradient of the whole batch."""
    model, config, runtime = run.model, run.config, run.runtime
    objective = Objective(
        model.head_spec,
        config.label_smoothing,
        config.mixup,
        weights_of(run),
        config.for_task("loss", run.spec.task.several) == "asymmetric",
    )
    ranks = distributed.world().size
    source, labels = run.sources.by_cut[stage.cut]["train"], run.labels["train"]
    order = rng.permutation(len(labels))
    views = rng.integers(config.views, size=len(labels))
    model.eval()  # the frozen blocks (batch norms too) as they were pretrained ...
    net.train()  # ... and the blocks after the cut and the head learning
    total_loss, correct, seen = 0.0, 0.0, 0
    bar = progress(total=len(order), desc=f"{stage.name} epoch", unit="image")
    for start in range(0, len(order), config.batch_size):
        positions = distributed.share(order[start : start + config.batch_size])
        x, kept = source.batch(positions, views[positions])
        batch_images = distributed.total(len(kept))[0]
        if not batch_images:
            continue
        y = labels[kept].to(runtime.device)
        x, weight = objective.mix(runtime.to_input(x), rng)
        with runtime.autocast():
            logits = net(x)
        # A rank whose share is empty still runs the step: every rank joins each gradient average.
        loss = objective.loss(logits.float(), y, weight) if kept else logits.sum() * 0.0
        step_loss = loss * (len(kept) * ranks / batch_images) if ranks > 1 else loss
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(kept)
        hits = model.head_spec.predicted(logits.float()) == y
        correct += float(hits.float().mean(1).sum()) if hits.dim() > 1 else int(hits.sum())  # multi-label: labels
        seen += len(kept)
        bar.update(len(positions))
    bar.close()
    summed_loss, summed_correct, summed_seen = distributed.total(total_loss, correct, seen)
    return summed_loss / max(summed_seen, 1), summed_correct / max(summed_seen, 1)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Stable across processes (unlike hash()), so a resumed epoch repeats exactly."""
    return zlib.crc32(f"{seed}:{stage}:{epoch}".encode())
