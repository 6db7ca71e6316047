"""README.md in a run folder: the model card, in Hugging Face's layout (YAML metadata, then what
the model does, its intended use and limits, its data, how it was trained, how it scored, how
to load it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from vggtune.data import balance
from vggtune.data.items import LABEL_CONFLICT
from vggtune.fsutil import atomic_write_text, display_path
from vggtune.model.spec import ModelSpec
from vggtune.results.analysis import describe_interval, per_class_rows
from vggtune.results.evaluated import TEST_SPLIT, Evaluated
from vggtune.training.rundir import RunDir

if TYPE_CHECKING:  # annotations only
    from vggtune.training.config import TrainConfig
    from vggtune.training.multilabel import MultiLabelMetrics


def write_model_card(folder: RunDir, evaluated: Evaluated | None) -> Path:
    spec = ModelSpec.load(folder.path)
    config = folder.config()
    name = folder.path.resolve().name
    scores = evaluated.headline if evaluated else []
    front = {
        "library_name": "vggtune",
        "pipeline_tag": "image-classification",
        "base_model": spec.weights,
        "tags": ["vggtune", spec.arch.name, "transfer-learning", "image-classification"],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification"},
                        "dataset": {
                            "name": Path(config.test_data or config.data or "data").name,
                            "type": "imagefolder",
                            "split": "test",
                        },
                        "metrics": [
                            {"type": row.key, "value": round(row.value, 4)} for row in scores if row.value is not None
                        ],
                    }
                ],
            }
        ],
    }
    sections = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n",
        f"# {name}\n",
        _description(spec, config),
        _intended_use(spec),
        _training_data(folder, spec),
        _procedure(config, spec),
        _results(folder, evaluated, scores),
        _how_to_load(folder.path),
    ]
    target = folder.model_card_file()
    atomic_write_text(target, "\n".join(sections))
    return target


def _description(spec: ModelSpec, config: TrainConfig) -> str:
    classes = ", ".join(spec.classes) if len(spec.classes) <= 12 else f"{', '.join(spec.classes[:12])}, ..."
    what = spec.task.describe(spec.classes, classes)
    return (
        "## Model description\n\n"
        f"{what}, made by transfer learning with "
        f"vggtune: {spec.arch.name.upper().replace('_', '-')} pretrained on ImageNet ({spec.weights}) "
        f"with a `{spec.head.kind}` head, the head "
        f"trained on frozen features, then the last {config.finetune_blocks} block(s) fine-tuned. "
        f"It takes RGB images, {spec.preprocessing.resizing()}, then the centre "
        f"{spec.preprocessing.size} px kept.\n"
    )


def _what_it_sees(spec: ModelSpec) -> str:
    if spec.preprocessing.fit == "pad":
        return (
            "It sees the whole image, shrunk until its longer side fits: a small subject in a wide image gets few "
            "pixels."
        )
    return "It sees only the centre crop: subjects at the edge of a wide image are cut off."


def _how_it_answers(spec: ModelSpec) -> str:
    if spec.task.several:
        return (
            "It says yes or no to each label by that label's threshold, so an image of anything else can still "
            "get labels, and an image of these may get none; check the probabilities, not only the labels."
        )
    return (
        "It always answers with one of these classes, so an image of anything else still gets one; check the "
        "probabilities, not only the label."
    )


def _intended_use(spec: ModelSpec) -> str:
    return (
        "## Intended uses and limitations\n\n"
        f"Sorting images of the kind it was trained on into {', '.join(spec.classes[:5])}"
        f"{'...' if len(spec.classes) > 5 else ''}. {_how_it_answers(spec)} {_what_it_sees(spec)} "
        "Its accuracy holds for images like "
        "the training ones; photos from another camera, place or population can score lower: the evaluation "
        "below says where its test images come from; read its figures with their intervals. Not for decisions "
        "about people, or where a mistake is costly, without a human check.\n"
    )


def _training_data(folder: RunDir, spec: ModelSpec) -> str:
    splits = folder.splits()
    counts = {name: len(getattr(splits, name)) if splits else 0 for name in ("train", "val", "test")}
    rejected = folder.rejected()
    conflicts = sum(1 for row in rejected if row.kind == LABEL_CONFLICT)
    pairs = folder.near_duplicates()
    across = sum(1 for pair in pairs if pair.across)
    trained_on = balance.imbalance(dict(zip(spec.classes, splits.counts("train")))) if splits else None
    return (
        "## Training data\n\n"
        f"From `{display_path(folder.config().data)}`: {counts['train']} training, {counts['val']} validation and "
        f"{counts['test']} test images with {len(spec.classes)} {spec.task.noun} "
        f"(split by {'iterative stratification of the labels' if spec.task.several else 'class'}, no image content in "
        f"two splits). {len(rejected)} files were left out (`rejected.csv`), {conflicts} of them label "
        f"conflicts (the same image under two classes). {len(pairs)} near-duplicate pairs were found by "
        f"perceptual hash, {across} across splits (`near_duplicates.csv`)."
        + (f" In training, {trained_on}." if trained_on else "")
        + "\n"
    )


def _procedure(config: TrainConfig, spec: ModelSpec) -> str:
    keys = (
        "recipe",
        "epochs",
        "finetune_epochs",
        "finetune_blocks",
        "lr",
        "finetune_lr",
        "batch_size",
        "size",
        "head",
        "hidden",
        "dropout",
        "views",
        "schedule",
        "class_weights",
        "threshold",
        "tta",
        "calibrate",
        "patience",
        "seed",
        "precision",
    )
    shown = {key: getattr(config, key) for key in keys}
    if config.size == "auto":  # what --size auto chose
        shown["size"] = f"auto ({spec.preprocessing.size})"
    rows = "".join(f"| {key} | {value} |\n" for key, value in shown.items())
    augment = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(config.augment).items())
    return (
        "## Training procedure\n\n"
        "Adam; binary cross-entropy on one sigmoid unit for two classes, cross-entropy otherwise; each stage "
        "keeps the epoch with the lowest validation loss (weighted by class as the training loss is) and "
        "stops early after `patience` epochs without a better one."
        f" Computed in {spec.precision}. Augmentation of the cached training views: {augment}. "
        f"Scoring: {_scoring(spec)}.\n\n"
        f"| hyperparameter | value |\n|---|---|\n{rows}"
    )


def _scoring(spec: ModelSpec) -> str:
    scoring = spec.scoring
    views = "the mean of the image's and its mirror image's probabilities" if scoring.tta else "the centre crop alone"
    scale = (
        f"logits divided by a temperature of {scoring.temperature:.3f} fitted on the validation split"
        if scoring.temperature != 1.0
        else "logits as trained"
    )
    return f"{views}; {scale}{spec.task.describe_rule(spec.classes, scoring)}{_calibration(spec)}"


def _calibration(spec: ModelSpec) -> str:
    """The sample the rule in force was refitted on (`vggtune calibrate`), in the card's words."""
    sample = spec.calibration
    if sample is None:
        return ""
    if sample.get("restored"):
        return f'. The rule in force is the earlier rule "{sample["name"]}", restored'
    counts = ", ".join(f"{name} {count}" for name, count in sample["per_class"].items())
    before, after = sample["before"], sample["after_out_of_sample"]
    figure = "accuracy" if "accuracy" in before else "subset_accuracy"
    return (
        f'. The rule was refitted by `vggtune calibrate` ("{sample["name"]}", {sample["method"]}) on '
        f"{sum(sample['per_class'].values())} labelled images of `{sample['data']}` ({counts}): "
        f"{figure.replace('_', ' ')} there {before.get(figure, 0):.3f} under the rule before, "
        f"{after.get(figure, 0):.3f} out of sample after; {sample['spread']}. The evaluation results below are "
        "of the training source's test split, as training scored it"
    )


def _results(folder: RunDir, evaluated: Evaluated | None, scores) -> str:
    if evaluated is None:
        return "## Evaluation results\n\nThis run kept no test images.\n"
    rows = "".join(
        f"| {row.name} | {row.value:.4f} | {describe_interval(row.interval)} |\n" for row in scores if row.interval
    )
    findings = "".join(f"- {sentence}.\n" for sentence in evaluated.findings(folder))
    if evaluated.task.several:
        return _multilabel_results(folder, evaluated, evaluated.multilabel_figures, rows, findings)
    title, classes = per_class_rows(evaluated.metrics)
    per_class = "".join(f"| {name} | {p:.3f} | {r:.3f} | {f:.3f} | {n} |\n" for name, p, r, f, n in classes)
    return (
        "## Evaluation results\n\n"
        f"On {len(evaluated.rows)} images: {_source(folder, evaluated)}. 95% intervals from their number "
        "(Wilson for accuracy, a bootstrap resampled within each class for the others). "
        "`report.html` shows the curves, confusions, "
        f"calibration and the worst mistakes.\n\n{findings + chr(10) if findings else ''}"
        f"| metric | value | 95% interval |\n|---|---|---|\n{rows}\n"
        f"{title[0].upper() + title[1:]}:\n\n| class | precision | recall | F1 | images |\n|---|---|---|---|---|\n"
        f"{per_class}"
    )


def _multilabel_results(
    folder: RunDir, evaluated: Evaluated, result: MultiLabelMetrics, rows: str, findings: str
) -> str:
    per_label = "".join(
        f"| {name} | {row.precision:.3f} | {row.recall:.3f} | {row.f1:.3f} | "
        f"{'-' if row.average_precision is None else f'{row.average_precision:.3f}'} | {row.support} | "
        f"{row.threshold:.3f} |\n"
        for name, row in result.per_label.items()
    )
    return (
        "## Evaluation results\n\n"
        f"On {len(evaluated.rows)} images: {_source(folder, evaluated)}. 95% intervals from their number "
        "(Wilson for subset accuracy, a bootstrap over the images for the others). `report.html` shows each "
        f"label's worst mistakes.\n\n{findings + chr(10) if findings else ''}"
        f"| metric | value | 95% interval |\n|---|---|---|\n{rows}\n"
        "Per label:\n\n| label | precision | recall | F1 | average precision | images | threshold |\n"
        f"|---|---|---|---|---|---|---|\n{per_label}"
    )


def _source(folder: RunDir, evaluated: Evaluated) -> str:
    """Where the evaluated images come from, in words: the folder given as --test-data, or a split of DATA."""
    config = folder.config()
    left_out = (
        f"; {len(evaluated.rejected)} of its files left out (report.html lists them)" if evaluated.rejected else ""
    )
    if evaluated.own and evaluated.data != TEST_SPLIT and config.test_data:
        return f"the test folder `{display_path(config.test_data)}`, given apart from the training data{left_out}"
    if evaluated.own and evaluated.data == TEST_SPLIT:
        return (
            f"a held-out {config.test_split:.0%} of `{display_path(config.data)}`, split by class from the "
            f"same folder as the training images (images from elsewhere can score lower){left_out}"
        )
    return f"{evaluated.data}{left_out}"


def _how_to_load(path: Path) -> str:
    return (
        "## How to use\n\n"
        "```bash\n"
        f"vggtune predict {display_path(path)} photo.jpg            # label and probabilities, as CSV\n"
        f"vggtune explain {display_path(path)} photo.jpg            # Grad-CAM overlay PNG\n"
        "```\n\n```python\nimport vggtune\n"
        f"predictor = vggtune.load({display_path(path)!r})\n"
        'predictions, rejected = predictor.predict(["photo.jpg"])\n'
        "print(predictions[0].label, predictions[0].probabilities)\n```\n\n"
        "The folder holds everything needed: `model.safetensors` (weights), `model.json` (classes, "
        "preprocessing, architecture), `config.yaml` (how it was trained).\n"
    )
