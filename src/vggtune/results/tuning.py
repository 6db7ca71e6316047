"""`vggtune tune`: a search over the recipe's levers with Optuna, each trial a training run scored on
the validation split, the best setting then trained into an ordinary run folder.

    study = TUNE/study.db (SQLite)            # an interrupted search resumes from it
    trial 1 = the defaults, then TPE's picks   # each: train in TUNE/trial, score, remove the folder
    hopeless trials pruned after an epoch      # MedianPruner on the validation split's balanced log loss
    TUNE/trials.csv, TUNE/tune.json            # every trial's setting and figures
    TUNE/best                                  # the best setting, trained with the report

Every trial uses the same split (the config's seed), so the test split the best run reports on is
one no trial was scored on. The trials share the feature cache: a head-only trial costs seconds, one
that fine-tunes costs what its stage costs. The score is the validation split's balanced log loss
(each class's mean log loss, averaged), which respects an imbalance and, unlike accuracy, still
ranks settings that make no validation error.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vggtune.errors import UserError
from vggtune.fsutil import atomic_write_json, display_path, write_csv
from vggtune.progress import say
from vggtune.training.config import TrainConfig
from vggtune.training.metrics import balanced_log_loss
from vggtune.training.rundir import RunDir

if TYPE_CHECKING:  # annotations only
    from vggtune.training.figures import Figures, Validation

STUDY = "vggtune"  # the study's name inside study.db
SETTINGS_FILE = "tune.json"


@dataclass(frozen=True)
class Lever:
    """One option the search sets: its TrainConfig field and how a trial draws it."""

    name: str
    draw: Callable  # (optuna trial, the base config) -> value


def _log_range(low: float, high: float):
    return lambda trial, base, name: trial.suggest_float(name, low, high, log=True)


def _range(low: float, high: float):
    return lambda trial, base, name: trial.suggest_float(name, low, high)


def _as_searched(base: TrainConfig, name: str):
    """The base config's value of a lever, as the search names it: --head auto is one class an image's head
    (tune takes no multi-label data)."""
    return base.for_task("head", several=False) if name == "head" else getattr(base, name)


def _among(*values):
    return lambda trial, base, name: trial.suggest_categorical(name, list(values))


def _int_range(low: int, high: int):
    return lambda trial, base, name: trial.suggest_int(name, low, high)


# The levers the panel measured (BENCHMARKS.md section 22), each with the range a search may try.
LEVERS = (
    Lever("head", _among("gap", "flatten")),
    Lever("lr", _log_range(1e-4, 1e-2)),
    Lever("dropout", _range(0.0, 0.7)),
    Lever("class_weights", _among("auto", "balanced", "off")),
    Lever("finetune_epochs", _int_range(0, 8)),
    Lever("finetune_blocks", _among(1, 2)),
    Lever("finetune_lr", _log_range(1e-6, 1e-4)),
    Lever("views", _among(2, 4)),
    Lever("schedule", _among("constant", "cosine")),
)


@dataclass(frozen=True)
class TrialResult:
    """One trial: its number (from 1), how it ended, the levers' values it tried and its figures."""

    number: int
    state: str  # complete, pruned or failed
    settings: dict
    score: float | None  # the validation split's balanced log loss (lower is better)
    balanced_accuracy: float | None
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TuneResult:
    """What `vggtune tune` returns: the base config the search varied, every trial (the first is the
    defaults), the best complete one, the run it was trained into and that run's test Metrics (None where
    it kept no test images). `to_dict()` is tune.json."""

    base: TrainConfig
    trials: tuple[TrialResult, ...]
    best: TrialResult
    best_run: str
    test: Figures | None  # Metrics (tune refuses multi-label data)

    @property
    def default_trial(self) -> TrialResult:
        return self.trials[0]

    def to_dict(self) -> dict:
        return {
            "base": self.base.to_dict(),
            "trials": [row.to_dict() for row in self.trials],
            "best": self.best.to_dict(),
            "best_run": self.best_run,
            "default_trial": self.default_trial.to_dict(),
            "test": self.test.to_dict() if self.test else None,
        }


def tune(base: TrainConfig, trials: int, timeout: float | None = None) -> TuneResult:
    """Searches the levers around `base` (its out is the TUNE folder) until `trials` trials have ended
    (counting those of an earlier, interrupted call) or `timeout` seconds pass; trains the best setting
    into TUNE/best. Returns the TuneResult tune.json holds."""
    optuna = _optuna()
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"--trials: received {trials!r}; allowed: a whole number >= 1")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout: received {timeout}; allowed: seconds > 0")
    folder = Path(base.run.out)
    base.check_out()
    _check_same_search(folder, base)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / SETTINGS_FILE, {"base": base.to_dict()})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{folder / 'study.db'}",
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
    )
    _close_interrupted(study, optuna)
    if not study.trials:  # the defaults first: the search starts from what users get
        study.enqueue_trial({lever.name: _as_searched(base, lever.name) for lever in LEVERS})
    remaining = trials - len(_ended(study, optuna))
    if remaining > 0:
        say(f"tune: {remaining} trial(s) to run ({trials} in all), each scored on the validation split")
        study.optimize(
            lambda trial: _objective(trial, base, trials, optuna),
            n_trials=remaining,
            timeout=timeout,
            catch=(RuntimeError, ValueError),
        )
    return _finish(study, base, optuna)


def _objective(trial, base: TrainConfig, total: int, optuna) -> float:
    settings = {lever.name: lever.draw(trial, base, lever.name) for lever in LEVERS}
    config = trial_config(base, settings)
    started = time.perf_counter()
    epochs = {"step": 0}

    def observe(stage: str, epoch: int, val: Validation) -> None:
        epochs["step"] += 1
        trial.report(val.balanced_loss, epochs["step"])
        if trial.should_prune():
            raise optuna.TrialPruned()

    from vggtune.training.schedule import train_run

    try:
        train_run(config, observer=observe)
        score, balanced = _scored(Path(config.run.out))
    except optuna.TrialPruned:
        say(
            f"trial {trial.number + 1}/{total}: {describe(settings)}: pruned after {epochs['step']} epoch(s) "
            f"({time.perf_counter() - started:.0f} s)"
        )
        raise
    finally:
        shutil.rmtree(config.run.out, ignore_errors=True)
    trial.set_user_attr("balanced_accuracy", balanced)
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
    say(
        f"trial {trial.number + 1}/{total}: {describe(settings)}: validation balanced log loss {score:.4f}, "
        f"balanced accuracy {balanced:.4f} ({time.perf_counter() - started:.0f} s)"
    )
    return score


def trial_config(base: TrainConfig, settings: dict) -> TrainConfig:
    """A trial's run: the base config with the trial's settings, in TUNE/trial, no report, quiet."""
    trial = dataclasses.replace(base, **settings)
    return trial.with_run(out=str(Path(base.run.out) / "trial"), no_report=True, quiet=True, mlflow=None)


def _scored(run: Path) -> tuple[float, float]:
    """(balanced log loss, balanced accuracy) of a trial run on its validation split."""
    metrics = RunDir(run).metrics()
    if metrics is None or not metrics.val:
        raise UserError(
            "tune: the trial run scored no validation images; allowed: data with a validation split "
            "(--val-split above 0, or --val-data)"
        )
    classes = list(metrics.val.classes)
    rows = [row for row in RunDir(run).predictions(classes) or [] if row.split == "val"]
    labels = [classes.index(row.label) for row in rows]
    return balanced_log_loss(labels, [row.probabilities for row in rows]), _number(metrics.val.balanced_accuracy)


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def describe(settings: dict) -> str:
    return ", ".join(
        f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}" for name, value in settings.items()
    )


def _ended(study, optuna) -> list:
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return [trial for trial in study.trials if trial.state in ended]


def _close_interrupted(study, optuna) -> None:
    """A trial left running by an interrupted call is failed, so the search counts it and goes on."""
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _check_same_search(folder: Path, base: TrainConfig) -> None:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise UserError(
                f"tune: {display_path(folder)} is not empty and holds no search; allowed: an empty or "
                "new --out, or the folder of an earlier `vggtune tune` to continue it"
            )
        return
    earlier = TrainConfig.from_dict(json.loads(path.read_text())["base"])
    before, now = earlier.options(), base.options()
    changed = [name for name in now if name != "quiet" and before[name] != now[name]]
    if changed:
        raise UserError(
            f"tune: {display_path(folder)} holds a search with other options ({', '.join(changed)}); "
            "allowed: the same DATA and options to continue it, or a new --out"
        )


def results(study, optuna) -> list[TrialResult]:
    rows = []
    for trial in study.trials:
        state = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}.get(
            trial.state, "failed"
        )
        rows.append(
            TrialResult(
                trial.number + 1,
                state,
                dict(trial.params),
                trial.value,
                trial.user_attrs.get("balanced_accuracy"),
                float(trial.user_attrs.get("seconds", 0)),
            )
        )
    return rows


def _finish(study, base: TrainConfig, optuna) -> TuneResult:
    """trials.csv, tune.json, and the best setting trained into TUNE/best (with its report)."""
    from vggtune.results.documents import write_documents_or_warn
    from vggtune.training.schedule import train_run

    folder = Path(base.run.out)
    rows = results(study, optuna)
    _write_trials(folder / "trials.csv", rows)
    complete = [row for row in rows if row.state == "complete"]
    if not complete:
        raise UserError("tune: no trial finished; allowed: more --trials or a longer --timeout")
    best = min(complete, key=lambda row: row.score if row.score is not None else float("inf"))
    best_config = dataclasses.replace(base, **best.settings).with_run(out=str(folder / "best"))
    if RunDir(best_config.run.out).metrics() is None:
        shutil.rmtree(best_config.run.out, ignore_errors=True)
        say(f"tune: training the best setting (trial {best.number}) into {display_path(best_config.run.out)}")
        trained = train_run(best_config)
        if not best_config.run.no_report:
            write_documents_or_warn(RunDir(best_config.run.out), trained.engine)
    best_run = RunDir(best_config.run.out)
    result = TuneResult(base, tuple(rows), best, str(best_run.path), best_run.finished_metrics().test)
    atomic_write_json(folder / SETTINGS_FILE, result.to_dict())
    return result


def _write_trials(path: Path, rows: list[TrialResult]) -> None:
    names = [lever.name for lever in LEVERS]
    write_csv(
        path,
        ["trial", "state", "val_balanced_log_loss", "val_balanced_accuracy", "seconds", *names],
        (
            [
                row.number,
                row.state,
                row.score,
                row.balanced_accuracy,
                row.seconds,
                *(row.settings.get(n) for n in names),
            ]
            for row in rows
        ),
    )


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("tune: needs Optuna; allowed: pip install optuna (vggtune's own install has it)") from None
    return optuna
