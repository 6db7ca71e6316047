"""The `vggtune` sub-commands: each takes the parsed flags, calls the API and prints what it returned."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vggtune import api, cliapi
from vggtune.api import UserError
from vggtune.cli import text
from vggtune.cli.parser import train_options
from vggtune.cliapi import display_path


def cmd_train(args) -> int:
    options = train_options(args)
    out = options.pop("out", None) or cliapi.default_run(args.resume)
    args.out = out  # the folder an interruption names
    if args.resume:
        if options["augment"] == api.AugmentConfig():  # no augmentation flag given
            options.pop("augment")
        results = api.train(args.data, out=out, resume=True, **options)
    else:
        results = api.train(args.data, out=out, **options)
    test_data = options.get("test_data")
    tested_on = f"the test folder {display_path(test_data)}" if test_data else "the test split"
    _print_results({"val": results.val, "test": results.test}, out, tested_on)
    return 0


def cmd_cv(args) -> int:
    options = train_options(args)
    out = options.pop("out", "runs/cv")
    result = api.cv(args.data, out=out, folds=args.folds, **options)
    print(f"cross-validation, {result.folds} folds ({out}):")
    print("\n".join("  " + line for line in text.cv_lines(result)))
    return 0


def cmd_tune(args) -> int:
    options = train_options(args)
    out = options.pop("out", "runs/tune")
    result = api.tune(args.data, out=out, trials=args.trials, timeout=args.timeout, **options)
    print(f"trials ({display_path(out)}/trials.csv):")
    print("\n".join("  " + line for line in text.trials_table(result.trials).splitlines()))
    best = result.best
    print(
        f"best: trial {best.number}, validation balanced log loss {best.score:.4f}; trained into "
        f"{display_path(result.best_run)}"
    )
    _print_results({"test": result.test}, result.best_run)
    return 0


def cmd_runs(args) -> int:
    rows = api.runs(args.folder, args.sort)
    if args.format == "json":
        print(json.dumps([row.to_dict() for row in rows], indent=1))
    elif rows:
        print(text.runs_table(rows))
    else:
        print(f"no finished runs under {display_path(args.folder)}")
    return 0


def _print_results(scores: dict, out: str, tested_on: str = "the test split", gap: str | None = None) -> None:
    """The test split's metrics (else the validation split's) of `scores` (split -> Metrics or None), and
    the warning where the test accuracy falls below validation's interval (`gap`, or worked out here)."""
    for split in ("test", "val"):
        if scores.get(split) is not None:
            print(f"{split} metrics ({out}):")
            print("\n".join("  " + line for line in text.figures_lines(scores[split])))
            gap = gap or cliapi.disagreement(scores.get("val"), scores.get("test"), tested_on)
            if gap:
                print(f"warning: {gap}")
            return
    print(f"run saved in {out} (no validation or test images to measure)")


def cmd_calibrate(args) -> int:
    if args.restore:
        if args.data:
            raise UserError(f"calibrate: received DATA {args.data} with --restore; allowed: one of them")
        print(f"rule in force: {api.restore_rule(args.run, args.restore)}")
        return 0
    if not args.data:
        raise UserError("calibrate: no DATA given; allowed: vggtune calibrate RUN DATA, or RUN --restore NAME")
    result = api.calibrate(args.run, args.data, name=args.name, engine=args.engine)
    for path, reason in result.rejected:
        print(f"skipped {display_path(path)}: {reason}", file=sys.stderr)
    print("\n".join(text.calibration_lines(result)))
    return 0


def cmd_evaluate(args) -> int:
    result = api.evaluate(
        args.run,
        args.data,
        args.output,
        report=not args.no_report,
        engine=args.engine,
        threshold=args.threshold,
        positive_class=args.positive_class,
    )
    judged = args.run if args.data is None else f"{args.run} on {display_path(args.data)}"
    _print_results({"test": result.metrics}, judged, gap=result.validation_gap)
    if result.shift:
        print(f"warning: {result.shift}")
    return 0


def cmd_report(args) -> int:
    page, card = api.report(args.run, args.data, args.out, args.engine)
    print(f"report: {display_path(page)} ({page.stat().st_size / 1e6:.1f} MB)")
    if card:
        print(f"model card: {display_path(card)}")
    return 0


def cmd_export(args) -> int:
    """Exit status 1 when the exported model failed its parity check (the file is then not kept)."""
    try:
        result = api.export(args.run, args.out, args.precision, args.format)
    except api.ExportCheckFailed as exc:
        print(f"vggtune export: parity check failed: {exc}", file=sys.stderr)
        return 1
    files = [result.path] + [result.path.with_suffix(".bin")] * (args.format == "openvino")  # the IR's weights
    size = sum(path.stat().st_size for path in files)
    line = (
        f"exported {' + '.join(display_path(path) for path in files)} ({size / 1e6:.1f} MB, {args.format} "
        f"{result.precision}); parity on {result.images_checked} test images: largest probability difference "
        f"{result.max_difference:.2e}, same label on {result.label_agreement:.1%}"
    )
    if result.accuracy_exported is not None:
        line += f"; test accuracy {result.accuracy_exported:.4f} (the run: {result.accuracy_run:.4f})"
    print(line)
    return 0


def cmd_serve(args) -> int:
    api.serve(
        args.run,
        args.host,
        args.port,
        max_upload_mb=args.max_upload_mb,
        max_batch=args.max_batch,
        wait_ms=args.wait_ms,
        token=args.token,
        no_auth=args.no_auth,
        engine=args.engine,
    )
    return 0


def cmd_explain(args) -> int:
    """Exit status 1 when some input could not be explained (each one is named on stderr)."""
    result = api.explain(args.run, args.paths, args.target, args.out, args.engine)
    for path, reason in result.rejected:
        print(f"skipped {display_path(path)}: {reason}", file=sys.stderr)
    for explanation, png in zip(result.explanations, result.files):
        print(
            f"{display_path(explanation.name)}: predicted {explanation.label} "
            f"({explanation.probabilities[explanation.label]:.3f}), map for {explanation.target} -> {display_path(png)}"
        )
    return 1 if result.rejected else 0


def cmd_predict(args) -> int:
    """Writes every prediction it can; exit status 1 when some input could not be predicted."""
    if args.kaggle and args.format == "json":
        raise UserError(
            "--kaggle writes Kaggle's CSV (id,label); received --format json; "
            "allowed: --kaggle alone, or --format json without it"
        )
    result = api.predict(
        args.run,
        args.paths,
        kaggle=args.kaggle,
        engine=args.engine,
        threshold=args.threshold,
        positive_class=args.positive_class,
    )
    for path, reason in result.rejected:
        print(f"skipped {display_path(path)}: {reason}", file=sys.stderr)
    if not args.kaggle:  # Kaggle's file is a probability; the labels written follow this rule
        print(f"rule: {result.rule}", file=sys.stderr)
    if result.shift:
        print(f"warning: {result.shift}", file=sys.stderr)
    written = text.predictions_text(result.predictions, result.classes, args.format, args.kaggle)
    if args.output:
        cliapi.atomic_write_text(Path(args.output), written)
    else:
        sys.stdout.write(written)
    return 1 if result.rejected else 0


def cmd_weights(args) -> int:
    if args.action == "convert":
        origin, path = api.convert_weights(args.file)
        print(f"converted {origin} -> {path}")
    elif args.action == "verify":
        loaded = api.verify_weights(args.file)
        print(f"ok: {loaded.id} from {loaded.source} ({len(loaded.state_dict)} tensors, shapes checked)")
    else:
        for name, where in api.weights_sources():
            print(f"{name:10} {where}")
    return 0


def cmd_data(args) -> int:
    return cmd_data_audit(args) if args.data_command == "audit" else cmd_data_check(args)


def cmd_data_audit(args) -> int:
    """Exit status 0 whatever was flagged: the findings are the audit's result, not a failure."""
    options = train_options(args)
    out = options.pop("out", "runs/audit")
    summary = api.audit(
        args.data,
        out=out,
        folds=args.folds,
        cv=args.cv,
        write_manifest=args.write_manifest,
        relabel=args.relabel,
        **options,
    )
    counts = summary.by_issue
    print(
        f"audit of {display_path(args.data)}: {summary.flagged} of {summary.images} images flagged "
        f"({counts['label']} label issues, {counts['out-of-distribution']} out of distribution, "
        f"{counts['cross-class-duplicate']} near-duplicates under two classes)"
    )
    print(
        f"  out-of-fold accuracy {summary.accuracy_out_of_fold:.3f} against {summary.majority_share:.3f} "
        f"for always answering {summary.majority_class} (binomial p = {summary.beats_majority_p:.2g})"
        + ("" if summary.label_issues_trusted else ": not beyond noise, so no label issues are flagged")
    )
    print(f"  {display_path(Path(out) / 'audit.html')}, {display_path(Path(out) / 'issues.csv')}")
    if summary.manifest is not None:
        manifest = summary.manifest
        print(
            f"  manifest {display_path(manifest.path)}: {manifest.images} images, {manifest.relabelled} "
            f"relabelled, {manifest.left_out} left out"
        )
    return 0


def cmd_data_check(args) -> int:
    """Exit status 0: every file usable; 1: some rejected (the list says why) or near-duplicates filed under
    two classes (likely label mistakes); 2: a mistake in the command."""
    result = api.check_data(args.folder, args.val_data, args.test_data, args.output)
    kind = "labels (several per image)" if result.splits.task.several else "classes"
    for folder in result.folders:
        print(
            f"{display_path(folder.folder)}: {folder.images} usable images in {len(result.classes)} {kind}, "
            f"{len(folder.rejected)} rejected"
        )
        for name, count in folder.counts.items():
            print(f"  {name:30} {count}")
        print(f"  {folder.summary(display_path(folder.folder))}")
        if folder.label_sets is not None:
            print(f"  {len(folder.label_sets)} label sets (images):")
            print("\n".join(f"    {name:28} {count}" for name, count in folder.label_sets.items()))
            print(f"  {folder.without_labels} of {folder.images} images carry none of the labels")
        for warning in folder.warnings:
            print(f"warning: {warning}")
    for row in result.rejected:
        print(f"rejected {display_path(row.path)}: {row.reason}")
    for a, _, b, _, distance in result.near_duplicates:
        print(f"warning: near-duplicates (perceptual hash distance {distance}): {display_path(a)} ~ {display_path(b)}")
    for a, class_a, b, class_b, distance in result.conflicts:
        print(
            f"label conflict? near-duplicates under two classes (distance {distance}): "
            f"{display_path(a)} ({class_a}) ~ {display_path(b)} ({class_b})"
        )
    return 0 if result.clean else 1


def cmd_cache(args) -> int:
    if args.action == "clear":
        folder, freed = api.clear_cache()
        print(f"removed {freed / 1e6:.1f} MB of cached features from {display_path(folder)}")
        return 0
    folder, rows = api.cache_summary()
    print(
        f"{display_path(folder)}: {sum(r['bytes'] for r in rows) / 1e6:.1f} MB in {len(rows)} folders "
        "(set VGGTUNE_HOME to move it; `vggtune cache clear` empties it)"
    )
    for row in rows:
        print(f"  {row['cut']:7} {row['entries']:>8} views {row['bytes'] / 1e6:>10.1f} MB  {row['folder']}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "cv": cmd_cv,
    "tune": cmd_tune,
    "runs": cmd_runs,
    "evaluate": cmd_evaluate,
    "calibrate": cmd_calibrate,
    "report": cmd_report,
    "explain": cmd_explain,
    "export": cmd_export,
    "serve": cmd_serve,
    "predict": cmd_predict,
    "weights": cmd_weights,
    "data": cmd_data,
    "cache": cmd_cache,
}
