"""Typed run configuration: frozen dataclasses, validated on creation, YAML in and out."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from vggtune import tasks
from vggtune.errors import UserError, choice_error
from vggtune.features.settings import ENGINES, FITS, STORAGES, AugmentConfig
from vggtune.fsutil import atomic_write_text, display_path
from vggtune.model import arch as archs
from vggtune.model.heads import HEADS

PRECISIONS = ("auto", "bf16", "fp32", "int8")
# Class weights in the loss: off; balanced (each class weighs as much as every other in total, scikit-learn's
# "balanced"); auto: balanced where the largest class holds at least IMBALANCED times the smallest's images.
CLASS_WEIGHTS = ("off", "balanced", "auto")
IMBALANCED = 1.5
# The rate over a stage's epochs: constant; cosine (from the stage's rate down towards 0 at its end); or
# plateau: after an epoch that does not lower the validation loss, the stage goes back to its best parameters
# and goes on at a third of its rate (objective.PLATEAU_FACTOR)
SCHEDULES = ("constant", "cosine", "plateau")
CHOSEN_ON_VALIDATION = "val"  # --threshold val: chosen on the validation split
# --size auto: the weights' own input side, or, for training images whose median shorter side lies in
# SMALL_IMAGES, the multiple of 32 nearest to it. Enlarging a small image blurs it in a way ImageNet's were not;
# on the panel (BENCHMARKS.md section 22) 128 px flowers gained at 128 and 180 px pet photos at 192. Below the
# range nothing was measured, and tiny images are known to gain from enlarging: they keep the weights' side.
SIZE_FROM_IMAGES = "auto"
FROM_TASK = "auto"  # --head, --loss, --fit auto: what the task asks for (tasks.py's default_head, ...)
LOSSES = (FROM_TASK, "cross-entropy", "asymmetric")
HEAD_CHOICES = (FROM_TASK, *HEADS)
FIT_CHOICES = (FROM_TASK, *FITS)
SMALL_IMAGES = (112, 224)
# What a config saved before an option existed ran with: a run folder resumed today trains as it began.
WRITTEN_BEFORE = {"class_weights": "off", "loss": "cross-entropy", "fit": "crop"}
PATHS = ("data", "val_data", "test_data", "weights")
DEVICES = ("auto", "cpu", "cuda")
# A recipe names a set of defaults; options given beside it win. "vggtune" is the defaults below, chosen
# by cross-validation (BENCHMARKS.md sections 14 and 19); "classic" is the recipe as the seed document
# writes it and vggtune ran it until 2026-11-30: Flatten -> Dense(256) -> sigmoid, block5 fine-tuned,
# one clean view scored, the logits as trained.
RECIPES = {
    "vggtune": {},
    "classic": {
        "head": "flatten",
        "lr": 3e-4,
        "tta": False,
        "calibrate": False,
        "class_weights": "off",
        "finetune_lr": 1e-5,
        "dropout": 0.5,
        "size": 224,
    },
}


@dataclass(frozen=True)
class RunSettings:
    """Where a run is written, how loud it is, what runs it and which part of a job it is: what `cv`, `tune`
    and `--resume` may set without changing the recipe. A seeded recipe trains the same model whatever these
    say (the engine and the device only as closely as their arithmetic agrees)."""

    out: str = "runs/train"  # vggtune.train and the command line number it when it is taken (runfiles.default_run)
    quiet: bool = False
    no_report: bool = False  # report.html and README.md (the model card) are written by default
    keep_state: bool = False  # state/ is only needed to resume; removed when the run ends
    mlflow: str | None = None  # an MLflow tracking URI the finished run is sent to (results/mlflowlog.py)
    device: str = "auto"
    engine: str = "auto"  # what runs the frozen blocks (ENGINES); auto: the fastest measured here
    no_cache: bool = False
    cv_folds: int = 0  # cross-validation: the images fall into this many folds (0: no folds)
    cv_fold: int = 0  # ... and this one (1..cv_folds) is the test split

    def __post_init__(self):
        object.__setattr__(self, "out", os.path.abspath(os.fspath(self.out)))  # works from any directory
        if self.device not in DEVICES:
            raise choice_error("--device", self.device, DEVICES)
        if self.engine not in ENGINES:
            raise choice_error("--engine", self.engine, ENGINES)
        if self.cv_folds or self.cv_fold:
            _check_int("--folds", self.cv_folds, 2)
            if not isinstance(self.cv_fold, int) or not 1 <= self.cv_fold <= self.cv_folds:
                raise choice_error("cv_fold", self.cv_fold, range(1, self.cv_folds + 1))


RUN_SETTINGS = tuple(f.name for f in fields(RunSettings))


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: everything that decides the model a run trains, and the run's settings beside it (`run`);
    saved as config.yaml in the run directory."""

    data: str
    recipe: str = "vggtune"  # the set of defaults the other options started from (RECIPES)
    arch: str = "vgg16"  # the backbone (model/arch.py ARCHS); its ImageNet weights come with it
    val_data: str | None = None
    test_data: str | None = None
    weights: str | None = None  # a file to load instead of the default sources
    epochs: int = 10
    finetune_epochs: int = 5
    finetune_blocks: int = 1
    lr: float = 1e-3  # the GAP head's, chosen by cross-validation (BENCHMARKS.md section 19)
    finetune_lr: float = 3e-5  # chosen on the panel of domains (BENCHMARKS.md section 22); 1e-5 before
    batch_size: int = 32
    size: int | str = SIZE_FROM_IMAGES  # input side; auto: input_size() picks it from the training images
    crop: float | None = None  # the centre crop's share of the resized shorter side; None: the weights'
    # FITS; auto: the task's (tasks.py): crop for one class an image, pad for several labels
    fit: str = FROM_TASK
    # auto: the task's (tasks.py): gap for one class an image (BENCHMARKS.md section 19), places for several
    # (section 29); the classic recipe's is flatten
    head: str = FROM_TASK
    hidden: int = 256
    dropout: float = 0.2  # the head's, chosen on the panel (BENCHMARKS.md section 22); 0.5 before
    views: int = 2
    label_smoothing: float = 0.0  # off: it raised the log loss in cross-validation (BENCHMARKS.md section 19)
    mixup: float = 0.0  # alpha of mixup on the cached features; off for the same reason
    block_lr_ratio: float = 1.0  # with --finetune-blocks 2+: each earlier block learns this much slower
    # L2-SP (Li et al., 2018): the fine-tuned blocks pulled toward their pretrained weights with this strength
    # (the penalty l2sp/2 * |w - w0|^2 added to the loss); 0: off
    l2sp: float = 0.0
    swa: bool = False  # the last stage keeps the average of its epochs' parameters
    tta: bool = True  # test-time augmentation: average the image and its mirror image
    calibrate: bool = False  # fit a temperature on the validation split for the log loss
    val_split: float = 0.1
    test_split: float = 0.1
    seed: int = 1337
    patience: int = 3
    precision: str = "auto"
    feature_storage: str = "float16"  # STORAGES; uint8 halves the cache, for very large datasets
    # training images whose pixels match a held-out image's are left out of training (said by class) unless set
    keep_near_duplicates: bool = False
    class_weights: str = "auto"  # CLASS_WEIGHTS; auto chosen on the panel (BENCHMARKS.md section 22)
    schedule: str = "constant"  # SCHEDULES
    # two classes: the second class's probability above which an image gets it; "val": the threshold that
    # maximises balanced accuracy on the validation split
    threshold: float | str = 0.5
    # two classes: the class the rule is said and set in terms of (the second class where None); its recall is
    # the sensitivity; --threshold is its probability
    positive_class: str | None = None
    # two classes: the positive class's recall the threshold is chosen on validation to reach (instead of --threshold)
    target_recall: float | None = None
    # two classes: what a missed positive image costs in false alarms; the threshold with the least cost on
    # validation (instead of --threshold)
    cost_ratio: float | None = None
    # LOSSES; auto: the task's (tasks.py): cross-entropy for one class an image, asymmetric (Ridnik et al.
    # 2021) for several labels (BENCHMARKS.md section 31), and only for them
    loss: str = FROM_TASK
    # WiSE-FT: the share of the fine-tuning kept, blended with where it started (training/blend.py); val: the
    # share with the lowest validation loss
    blend: float | str = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunSettings = field(default_factory=lambda: RunSettings())  # where, how loud, which process

    def __post_init__(self):
        if isinstance(self.augment, dict):  # from YAML or the Python API's keyword
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        if isinstance(self.run, dict):  # from YAML
            object.__setattr__(self, "run", RunSettings(**self.run))
        for name in PATHS:  # absolute: a run folder works from any working directory
            if getattr(self, name) is not None:
                object.__setattr__(self, name, os.path.abspath(os.fspath(getattr(self, name))))
        if self.recipe not in RECIPES:
            raise choice_error("--recipe", self.recipe, RECIPES)
        if self.head not in HEAD_CHOICES:
            raise choice_error("--head", self.head, HEAD_CHOICES)
        if self.precision not in PRECISIONS:
            raise choice_error("--precision", self.precision, PRECISIONS)
        if self.feature_storage not in STORAGES:
            raise choice_error("--feature-storage", self.feature_storage, STORAGES)
        if self.class_weights not in CLASS_WEIGHTS:
            raise choice_error("--class-weights", self.class_weights, CLASS_WEIGHTS)
        if self.fit not in FIT_CHOICES:
            raise choice_error("--fit", self.fit, FIT_CHOICES)
        if self.loss not in LOSSES:
            raise choice_error("--loss", self.loss, LOSSES)
        if self.schedule not in SCHEDULES:
            raise choice_error("--schedule", self.schedule, SCHEDULES)
        if self.swa and self.schedule == "plateau":
            # stepping back to the best parameters would break the epochs' running average
            raise UserError("--swa with --schedule plateau: received both; allowed: one of them")
        self._check_threshold()
        self._check_target_recall()
        self._check_cost_ratio()
        self._check_one_rule()
        self._check_blend()
        _check_int("--epochs", self.epochs, 1)
        _check_int("--finetune-epochs", self.finetune_epochs, 0)
        _check_int("--batch-size", self.batch_size, 1)
        _check_int("--views", self.views, 1)
        _check_int("--patience", self.patience, 0)
        _check_int("--hidden", self.hidden, 1)
        blocks = len(archs.get(self.arch).blocks)
        if not isinstance(self.finetune_blocks, int) or not 1 <= self.finetune_blocks < blocks:
            raise choice_error("--finetune-blocks", self.finetune_blocks, range(1, blocks))
        self._check_size()
        for name in ("lr", "finetune_lr"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')}: received {getattr(self, name)}; allowed: > 0")
        for name in ("val_split", "test_split"):
            if not 0 <= getattr(self, name) < 0.5:
                raise UserError(f"--{name.replace('_', '-')}: received {getattr(self, name)}; allowed: 0 <= x < 0.5")
        self._check_fold()
        if self.crop is not None and not 0.5 <= self.crop <= 1:
            raise UserError(f"--crop: received {self.crop}; allowed: 0.5 <= x <= 1 (1: the whole shorter side)")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"--label-smoothing: received {self.label_smoothing}; allowed: 0 <= x < 0.5")
        if not 0 <= self.l2sp <= 100:
            raise UserError(f"--l2sp: received {self.l2sp}; allowed: 0 (off) <= x <= 100")
        if not 0 <= self.mixup <= 10:
            raise UserError(f"--mixup: received {self.mixup}; allowed: 0 (off) <= x <= 10")
        if not self.block_lr_ratio >= 1:
            raise UserError(f"--block-lr-ratio: received {self.block_lr_ratio}; allowed: >= 1")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout: received {self.dropout}; allowed: 0 <= x < 1")

    def with_run(self, **changes) -> TrainConfig:
        """The same recipe with other run settings (a cv fold's folder, a trial's quiet)."""
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    def option(self, name: str):
        """An option's value by its flag's name, whichever of the recipe and the run settings holds it."""
        return getattr(self.run if name in RUN_SETTINGS else self, name)

    def options(self) -> dict:
        """Every option by its flag's name, the recipe's then the run settings' (as the command line lists them)."""
        return {name: self.option(name) for name in option_names()}

    def check_out(self) -> None:
        """A run written inside a data folder would be read back as one of its classes (or its images).
        Checked where a run starts (not on creation: a config is a value, its folders need not exist yet)."""
        out = Path(self.run.out).resolve()
        for name in ("data", "val_data", "test_data"):
            folder = getattr(self, name)
            if folder and Path(folder).is_dir() and out.is_relative_to(Path(folder).resolve()):
                raise UserError(
                    f"--out: received {display_path(out)}, inside the {name.replace('_', ' ')} folder "
                    f"{display_path(folder)}; allowed: a folder outside it (for example --out ../runs/NAME)"
                )

    def _check_size(self) -> None:
        if self.size == SIZE_FROM_IMAGES:
            return
        try:
            value = int(self.size)
        except (TypeError, ValueError):
            value = 0
        if isinstance(self.size, (bool, float)) or value < 32 or value % 32:
            raise UserError(
                f"--size: received {self.size}; allowed: a multiple of 32, at least 32, or "
                f"{SIZE_FROM_IMAGES} (from the training images)"
            )
        object.__setattr__(self, "size", value)

    def _check_threshold(self) -> None:
        self._number_or_val("threshold", lambda x: 0 < x < 1, "0 < x < 1")

    def _check_blend(self) -> None:
        self._number_or_val("blend", lambda x: 0 <= x <= 1, "0 <= x <= 1 (the share of the fine-tuning kept)")

    def _number_or_val(self, name: str, allowed, allowed_words: str) -> None:
        """An option that is a number in a range, or val (chosen on the validation split); kept as a float."""
        given = getattr(self, name)
        if given == CHOSEN_ON_VALIDATION:
            return
        try:
            value = float(given)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(given, bool) or not allowed(value):
            raise UserError(
                f"--{name}: received {given}; allowed: {allowed_words}, or {CHOSEN_ON_VALIDATION} (chosen on the "
                "validation split)"
            )
        object.__setattr__(self, name, value)

    def _check_target_recall(self) -> None:
        if self.target_recall is None:
            return
        if isinstance(self.target_recall, bool) or not isinstance(self.target_recall, (int, float)):
            raise UserError(f"--target-recall: received {self.target_recall!r}; allowed: 0 < x < 1")
        if not 0 < self.target_recall < 1:
            raise UserError(f"--target-recall: received {self.target_recall}; allowed: 0 < x < 1")

    def _check_cost_ratio(self) -> None:
        if self.cost_ratio is None:
            return
        if (
            isinstance(self.cost_ratio, bool)
            or not isinstance(self.cost_ratio, (int, float))
            or not self.cost_ratio > 0
        ):
            raise UserError(
                f"--cost-ratio: received {self.cost_ratio!r}; allowed: x > 0 (what a missed positive image costs in "
                "false alarms)"
            )

    def _check_one_rule(self) -> None:
        given = [
            f"--{name.replace('_', '-')} {value}"
            for name, value in (
                ("threshold", None if self.threshold == 0.5 else self.threshold),
                ("target_recall", self.target_recall),
                ("cost_ratio", self.cost_ratio),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise UserError(f"{' with '.join(given)}: each sets the rule; allowed: one of them")

    def check_rule(self, classes: list[str], several: bool) -> None:
        """--positive-class, --target-recall and --cost-ratio name one of two classes, --loss asymmetric wants several
        labels an image; checked once the classes are known."""
        if self.loss == "asymmetric" and not several:
            raise UserError(
                "--loss asymmetric: received for data of one class an image; allowed: several labels an image "
                "(a manifest with a labels column), or --loss cross-entropy"
            )
        named = [
            flag
            for flag, value in (
                ("--positive-class", self.positive_class),
                ("--target-recall", self.target_recall),
                ("--cost-ratio", self.cost_ratio),
            )
            if value is not None
        ]
        if not named:
            return
        flag = named[0]
        if several or len(classes) != 2:
            kind = "labels, several an image" if several else "classes"
            raise UserError(f"{flag}: received for data of {len(classes)} {kind}; allowed: two classes only")
        if self.positive_class is not None and self.positive_class not in classes:
            raise UserError(
                f"--positive-class: received {self.positive_class!r}; allowed: one of the classes {', '.join(classes)}"
            )

    def _check_fold(self) -> None:
        if self.run.cv_folds and self.test_data is not None:
            raise UserError(
                f"--test-data: received {self.test_data} with {self.run.cv_folds} folds; "
                "allowed: no --test-data, since each fold is a test split in turn"
            )

    def for_task(self, name: str, several: bool) -> str:
        """This recipe's `name` ("head", "loss" or "fit") for data of one class an image or of several labels:
        the value given, or where it is auto the task's (tasks.py's default_head, default_loss, default_fit)."""
        value = getattr(self, name)
        return getattr(tasks.of(several), f"default_{name}") if value == FROM_TASK else value

    @property
    def architecture(self) -> archs.Arch:
        """The backbone's record (model/arch.py) that `arch` names."""
        return archs.get(self.arch)

    @property
    def size_from_images(self) -> bool:
        return self.size == SIZE_FROM_IMAGES

    def input_size(self, native: int, training_images: list[str]) -> tuple[int, int | None]:
        """(the input side this run uses, the training images' median shorter side where --size auto read it)."""
        from vggtune.data.images import shorter_sides  # PIL: not for the command line's start

        if not self.size_from_images:
            return int(self.size), None
        sides = sorted(shorter_sides(training_images, seed=self.seed))
        median = sides[len(sides) // 2] if sides else None
        return input_size(self.size, native, median), median

    @classmethod
    def from_recipe(cls, recipe: str = "vggtune", **options) -> TrainConfig:
        """The recipe's defaults, then the options given."""
        if recipe not in RECIPES:
            raise choice_error("--recipe", recipe, RECIPES)
        check_option_names(options)
        settings = {name: options.pop(name) for name in RUN_SETTINGS if name in options}
        return cls(**{**RECIPES[recipe], **options, "recipe": recipe, "run": RunSettings(**settings)})

    def to_dict(self) -> dict:
        """config.yaml: the recipe's fields, then the run's settings under `run`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From config.yaml; one written before the run settings had their own section holds them at the top."""
        values = dict(values)
        settings = dict(values.pop("run", None) or {})
        settings.update({name: values.pop(name) for name in RUN_SETTINGS if name in values})
        known = set(option_names()) | {"recipe", "run"}
        unknown = sorted(set(values) - known) + sorted(set(settings) - set(RUN_SETTINGS))
        if unknown:
            raise UserError(f"config: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**{**WRITTEN_BEFORE, **values, "run": RunSettings(**settings)})


def option_fields() -> list[dataclasses.Field]:
    """Every option a user gives, as fields: the recipe's, then the run settings'."""
    return [f for f in fields(TrainConfig) if f.name != "run"] + list(fields(RunSettings))


def option_names() -> list[str]:
    return [f.name for f in option_fields()]


def check_option_names(options: dict) -> None:
    """A misspelt option is a user's mistake: one line with the closest name, never a TypeError."""
    known = sorted(option_names())
    for name in options:
        if name not in known:
            close = _closest(name, known)
            hint = f" (did you mean {close}=?)" if close else ""
            raise UserError(f"received an unknown option {name}={options[name]!r}{hint}; allowed: {', '.join(known)}")


def input_size(size: int | str, native: int, median_side: int | None) -> int:
    """The input side a run uses: `size` where a number was given, else (auto) the weights' `native` side, or
    the multiple of 32 nearest to the training images' median shorter side where that lies in SMALL_IMAGES."""
    if size != SIZE_FROM_IMAGES:
        return int(size)
    low, high = SMALL_IMAGES
    if median_side is None or not low <= median_side < min(high, native):
        return native
    return min(native, 32 * round(median_side / 32))


def _check_int(flag: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{flag}: received {value!r}; allowed: a whole number >= {minimum}")


def save_config(config: TrainConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


AUGMENT_KEYS = ("flip", "rotation", "zoom", "shift", "colour")
SET_BY_CV = ("cv_fold", "cv_folds")  # in a cv fold's config.yaml; not options a user gives


def options_file(path: str | Path) -> dict:
    """`--config FILE.yaml`: a mapping of options by the flags' names (`finetune-lr` or `finetune_lr`; `data`
    for DATA; the augmentation's strengths at the top or under `augment`), as a dict of TrainConfig fields and
    augmentation keys. A run's config.yaml is such a file. An unknown name is a one-line error."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--config: cannot read {display_path(path)} ({str(exc).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(
            f"--config: {display_path(path)} holds a {type(values).__name__}; allowed: a mapping of options"
        )
    known = option_names() + list(AUGMENT_KEYS)
    options: dict = {}
    settings = values.pop("run", None)
    if isinstance(settings, dict):  # a run's config.yaml holds its run settings in a section of their own
        values = {**settings, **values}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "augment" and isinstance(value, dict):
            options.update(options_file_augment(path, value))
        elif name in SET_BY_CV:
            continue
        elif name in known:
            options[name] = value
        else:
            close = _closest(name, known)
            hint = f" (did you mean {close.replace('_', '-')}?)" if close else ""
            raise UserError(
                f"--config: {display_path(path)} names an unknown option {key!r}{hint}; allowed: the train flags' "
                "names without their dashes, data, augment"
            )
    return options


def _closest(name: str, known: list[str]) -> str | None:
    """The known option a misspelt `name` most likely meant (difflib), or None."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def options_file_augment(path: str | Path, values: dict) -> dict:
    unknown = sorted(str(key) for key in values if key not in AUGMENT_KEYS)
    if unknown:
        raise UserError(f"--config: {display_path(path)}: augment has {unknown}; allowed: {', '.join(AUGMENT_KEYS)}")
    return dict(values)


def load_config(path: Path) -> TrainConfig:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"config: cannot read {display_path(path)}: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"config: {display_path(path)} holds {type(values).__name__}; allowed: a mapping of options")
    return TrainConfig.from_dict(values)
