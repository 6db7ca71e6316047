"""The Python API: the same verbs as the command line, arguments named like its flags."""
from __future__ import annotations

import dataclasses

from .config import AugmentConfig, TrainConfig, load_config
from .evaluation import evaluate as _evaluate
from .predict import Predictor, load


def train(data: str, out: str = "runs/latest", resume: bool = False, **options) -> dict:
    """Train on a folder of labelled images; returns {'val': metrics, 'test': metrics}.

    Options are the `vggtune train` flags with underscores: epochs, finetune_epochs,
    finetune_blocks, lr, finetune_lr, batch_size, size, head, views, val_split,
    test_split, seed, patience, precision, no_cache, quiet, val_data, test_data,
    weights, augment (an AugmentConfig or a dict).
    """
    from .training import fit
    if isinstance(options.get("augment"), dict):
        options["augment"] = AugmentConfig(**options["augment"])
    if resume:
        config = load_config(f"{out}/config.yaml")
        config = dataclasses.replace(config, quiet=options.get("quiet", config.quiet))
    else:
        config = TrainConfig(data=str(data), out=str(out), **options)
    return fit(config, resume=resume)


def evaluate(run: str, data: str | None = None, output: str | None = None, **options) -> dict:
    """Metrics of a trained run on its test split, or on a labelled folder `data`."""
    return _evaluate(run, data, output, **options)


__all__ = ["train", "evaluate", "load", "Predictor", "TrainConfig", "AugmentConfig"]
