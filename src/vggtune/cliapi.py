"""What the command line needs beyond the Python API (api.py): the checks a launcher runs before it starts
processes, this process as one rank of torchrun's job, the choices and help each flag offers, and the
helpers it prints with. The API's second face: cli/ imports api.py and this module, nothing else, and
users of the Python API never need it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from vggtune.api import train_config
from vggtune.errors import UserError, command_line
from vggtune.features.settings import ENGINES, STORAGES
from vggtune.fsutil import atomic_write_text, display_path
from vggtune.model.arch import ARCHS
from vggtune.model.heads import HEADS
from vggtune.results.runs import SORT_COLUMNS as RUN_COLUMNS
from vggtune.runfiles import default_run
from vggtune.tasks import two_class_rule
from vggtune.training.config import (
    CLASS_WEIGHTS,
    DEVICES,
    FIT_CHOICES,
    HEAD_CHOICES,
    LOSSES,
    PRECISIONS,
    RECIPES,
    SCHEDULES,
    option_fields,
    options_file,
)

if TYPE_CHECKING:  # annotations only: importing this module imports no torch
    from vggtune.training.metrics import Metrics

# The values each option of `train` allows, from the registries that define them.
CHOICES = {
    "recipe": tuple(RECIPES),
    "arch": tuple(ARCHS),
    "head": HEAD_CHOICES,
    "precision": PRECISIONS,
    "device": DEVICES,
    "engine": ENGINES,
    "feature_storage": STORAGES,
    "class_weights": CLASS_WEIGHTS,
    "schedule": SCHEDULES,
    "loss": LOSSES,
    "fit": FIT_CHOICES,
}
HEAD_HELP = {"auto": "gap for one class an image, places for several (the default)"} | {
    name: kind.help for name, kind in HEADS.items()
}
EXPORT_PRECISIONS = ("fp32", "int8")
EXPORT_FORMATS = ("onnx", "openvino", "tflite")


def check_train(data: str | None = None, out: str | None = None, resume: bool = False, **options) -> None:
    """The checks `train` makes before it reads any image (its options, the --out folder): what a launcher
    runs before it starts processes."""
    from vggtune.data import discovery
    from vggtune.training.rundir import RunDir

    config = train_config(data, out or default_run(resume), resume, options)
    config.check_out()
    RunDir.prepared(config.run.out, resume)
    if not resume:
        discovery.discover(config.data)  # a listing, no image read: the class folders are there


def check_run(run: str, data: str | None = None) -> None:
    """What `predict` and `evaluate` check before they read an image: RUN is a trained run, and DATA
    (where given) a folder or manifest of labelled images."""
    from vggtune.data import discovery
    from vggtune.model.spec import ModelSpec

    ModelSpec.load(Path(run))
    if data is not None:
        discovery.discover(data, min_classes=1)


def torch_pair_problem() -> str | None:
    """Why torch and torchvision do not work together here, as one line with the fix; None where they do.
    A pair from two builds (PyPI's CUDA torchvision beside a CPU torch) or two releases fails on the first
    `import torchvision` of every command, with 20 lines of traceback."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import torchvision  # noqa: F401  # its import registers the operators every command needs
    except Exception as exc:  # noqa: BLE001  # whatever the import raised is the problem to name
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        return None
    try:
        torch_version, vision_version = version("torch"), version("torchvision")
    except PackageNotFoundError as missing:
        return f"{missing.name} is not installed ({reason}); allowed: pip install torch torchvision"
    release = torch_version.split("+")[0]
    minor = int(release.split(".")[1])
    return (
        f"torch {torch_version} and torchvision {vision_version} do not work together ({reason}); allowed: both "
        f"from one index, of one release: pip install --force-reinstall 'torch=={release}' "
        f"'torchvision==0.{minor + 15}.*' (with --index-url https://download.pytorch.org/whl/cpu for the CPU build)"
    )


def check_processes(processes: int) -> None:
    """`--nproc N`'s checks, before any process starts: a count of 1 or more, and not under torchrun already."""
    from vggtune import launcher

    launcher.check(processes)


def refused(message: str) -> bool:
    """In a rank that `--nproc` started: the one-line error left for the launcher to print once (True);
    False elsewhere, where the caller prints it."""
    from vggtune import launcher

    return launcher.refused(message)


def launch(arguments: list[str], processes: int) -> tuple[int, list[str]]:
    """Runs `vggtune ARGUMENTS` as `processes` processes on this host, as torchrun would start them:
    (exit status, lines to print once: the ranks' one-line refusal, or which process failed)."""
    from vggtune.launcher import launch as launch_ranks

    return launch_ranks(arguments, processes)


@contextlib.contextmanager
def as_rank(device: str = "auto"):
    """Inside: this process is one rank of torchrun's job where torchrun started it (a world of one
    otherwise), and only rank 0 speaks. Yields the world."""
    from vggtune import distributed
    from vggtune.progress import verbosity

    with distributed.joined(device) as world:
        if world.main:
            yield world
            return
        with verbosity(True):
            yield world


def describe_interval(bound) -> str:
    """A 95 % interval as the report and the command line write it (results/analysis.py)."""
    from vggtune.results.analysis import describe_interval as describe

    return describe(bound)


def disagreement(validation: Metrics | None, test: Metrics | None, tested_on: str) -> str | None:
    """The sentence the command line, the report and the model card say when test accuracy falls below the
    validation accuracy's 95 % interval, or None (results/analysis.py)."""
    from vggtune.results.analysis import disagreement as said

    return said(validation, test, tested_on)


def per_class_rows(result: Metrics) -> tuple[str, list[tuple]]:
    """(title, rows of class, precision, recall, F1, images) of a set's metrics (results/analysis.py)."""
    from vggtune.results.analysis import per_class_rows as rows

    return rows(result)


def most_confused(confusion, classes: list[str], limit: int = 10) -> list[tuple[str, str, int]]:
    """(true class, predicted class, count) of the largest off-diagonal cells of a confusion matrix."""
    from vggtune.results.analysis import most_confused as largest

    return largest(confusion, classes, limit)


__all__ = [
    "CHOICES",
    "default_run",
    "command_line",
    "options_file",
    "option_fields",
    "HEAD_HELP",
    "EXPORT_PRECISIONS",
    "EXPORT_FORMATS",
    "RUN_COLUMNS",
    "UserError",
    "atomic_write_text",
    "display_path",
    "check_train",
    "check_run",
    "check_processes",
    "refused",
    "launch",
    "as_rank",
    "torch_pair_problem",
    "describe_interval",
    "disagreement",
    "per_class_rows",
    "most_confused",
    "two_class_rule",
]
