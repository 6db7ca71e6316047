"""Which defaults hold up under cross-validation? Chosen on cats-vs-dogs-2k, never on a test set.

Each training setting runs `vggtune cv` on all of cats-vs-dogs-2k (5 folds, seed 1337, so every
setting sees the same folds and every one of the 2,002 images is scored once, by a model that never
saw it). Settings that change only how a trained model scores its images (test-time augmentation,
temperature scaling) are computed on the same fold models, from the feature cache: the same
weights, only the scoring differs. The temperature is fitted on each fold's validation split.

Each row is compared with the first ("default": the defaults of 2026-11-29, which are the classic
recipe, scored plainly) and with "default + tta" (the scoring that became the default) on the same
images: McNemar's exact test for the accuracy, a paired bootstrap interval (1,000 draws over the
images) for the difference in log loss. Writes results/<--name>.json; the fold runs stay in
--work, so a second call only scores.

A setting may join others with " + " ("gap + swa": both changes at once). --ensemble averages the
"+ tta" probabilities of the settings it names, image by image: an ensemble of models trained on
the same cached features, whose cost is the sum of their training times.

    cd benchmarks && ../.venv/bin/python cv_study.py --settings default gap "gap + swa" --ensemble default gap
"""
import argparse
import time
from pathlib import Path

import numpy as np

import vggtune
from vggtune.model import weights
from vggtune.results.analysis import mcnemar
from vggtune.training.config import RECIPES
from vggtune.data.items import Item
from vggtune.features.pipeline import FeaturePipeline
from vggtune.training.metrics import classification_metrics
from vggtune.model.policy import CLEAN, TEN_CROP, TTA_VIEWS, ScoringPolicy
from vggtune.training.rundir import RunDir
from vggtune.training.scoring import Scorer

from common import DATA, machine, save, table

OLD = RECIPES["classic"]     # the defaults of 2026-11-29, named in full so that the rows do not move with the defaults
TRAINED = {
    "default": OLD,
    "gap": {**OLD, "head": "gap", "lr": 1e-3},
    "int8": {**OLD, "precision": "int8"},
    "block4 too": {**OLD, "finetune_blocks": 2},                          # at block5's rate
    "block4 at 0.1x": {**OLD, "finetune_blocks": 2, "block_lr_ratio": 10.0},
    "views 4": {**OLD, "views": 4},
    "views 8": {**OLD, "views": 8},
    "label smoothing 0.1": {**OLD, "label_smoothing": 0.1},
    "mixup 0.4": {**OLD, "mixup": 0.4},
    "swa": {**OLD, "swa": True},
    "crop 1": {**OLD, "crop": 1.0},                                        # the whole shorter side
}
# Scorings of the same fold models: which views are averaged, and whether a temperature is fitted.
SCORED = {"": ((CLEAN,), False), "+ tta": (TTA_VIEWS, False), "+ tta + calibrate": (TTA_VIEWS, True),
          "+ ten-crop": (TEN_CROP, False), "+ ten-crop + calibrate": (TEN_CROP, True)}
CLIP = 0.005                 # "+ tta + clip": probabilities kept within [CLIP, 1 - CLIP], a Kaggle log-loss trick
BASELINE = "default"
NEW_DEFAULT = "+ tta"        # the scoring that became the default; later rows are compared with it too
SHOWN = ["setting", "accuracy", "errors", "log_loss", "train_s", "views_s", "score_s", "vs+_tta_wins", "vs+_tta_losses",
         "vs+_tta_mcnemar_p", "vs+_tta_log_loss_diff", "vs+_tta_log_loss_diff_95"]


def run_items(run: Path) -> dict[str, list[Item]]:
    """The validation and test images of a run, as its splits.json lists them."""
    splits = RunDir(run).splits()
    return {name: [Item(row.path, row.label, row.sha256) for row in getattr(splits, name)] for name in ("val", "test")}


def run_logits(run: Path, items: dict[str, list[Item]], views: tuple[int, ...] = TEN_CROP) -> tuple[dict, Scorer]:
    """{split: (paths, labels, logits (view, image, output))} of `items`, clean and mirrored, through the
    run's model from the feature cache (the mirror views are extracted once), and a Scorer of that model."""
    predictor, config = vggtune.load(str(run)), RunDir(run).config()
    pipeline = FeaturePipeline(predictor.model, predictor.preprocessing, config.augment, predictor.runtime,
                               config.batch_size, predictor.spec.weights, weights.home() / "features", engine=config.run.engine)
    arch = config.architecture
    cut = arch.cut_before(arch.last(config.finetune_blocks))
    sources = pipeline.cached(items, [cut], views=1, eval_views=views)
    scorer = Scorer(predictor.model, predictor.runtime, predictor.classes, config.batch_size, ScoringPolicy(views=views))
    result = {}
    for name, kept in sources.kept.items():
        positions, logits = scorer.view_logits(sources.by_cut[cut][name], len(kept), cut)
        result[name] = ([kept[p].path for p in positions], np.asarray([kept[p].label for p in positions]), logits)
    return result, scorer


def scored(runs: list[Path], views: tuple[int, ...], calibrate: bool, cache: dict, test_items=None,
           extracted: tuple[int, ...] = TEN_CROP) -> tuple[dict, dict]:
    """{(run, path): probabilities} over the runs' test images (`test_items`, else each run's own test
    split), and {(run, path): true label}; with `calibrate` the temperature is fitted on each run's
    validation split."""
    probabilities, labels = {}, {}
    for run in runs:
        if run not in cache:
            items = run_items(run)
            cache[run] = run_logits(run, dict(items, test=test_items) if test_items else items, extracted)
        logits, ten_crop = cache[run]
        policy, first = ScoringPolicy(views=views), slice(0, len(views))     # TEN_CROP begins with TTA_VIEWS, CLEAN first
        scorer = ten_crop.with_policy(policy)
        if calibrate:
            _, val_labels, val_logits = logits["val"]
            scorer = scorer.with_policy(policy.at(scorer.fit_temperature(val_logits[first], val_labels)))
        paths, test_labels, test_logits = logits["test"]
        keys = [(run.name, path) for path in paths]
        probabilities.update(zip(keys, scorer.combine(test_logits[first])))
        labels.update(zip(keys, test_labels))
    return probabilities, labels


def row_of(name: str, probabilities: dict, labels: dict, base: dict, classes: list[str], **extra) -> dict:
    """One table row: pooled metrics, and the paired comparison with `base` on the same images."""
    keys = sorted(labels)
    metrics = classification_metrics([labels[k] for k in keys], [probabilities[k] for k in keys], classes)
    f1 = metrics.f1 if metrics.two_classes else metrics.f1_macro
    return {"setting": name, "accuracy": round(metrics.accuracy, 4),
            "errors": int(round((1 - metrics.accuracy) * metrics.n)), "n": metrics.n,
            "log_loss": round(metrics.log_loss, 4), "f1": round(f1, 4), **extra,
            **compare(probabilities, base, labels)}


def compare(row: dict, base: dict, labels: dict) -> dict:
    """McNemar's exact test and a paired bootstrap interval of the log loss difference, row - base."""
    paths = sorted(labels)
    truth = np.asarray([labels[p] for p in paths])
    p_row, p_base = (np.asarray([probs[p] for p in paths]) for probs in (row, base))
    correct_row, correct_base = p_row.argmax(1) == truth, p_base.argmax(1) == truth
    loss_row = -np.log(np.clip(p_row[np.arange(len(paths)), truth], 1e-7, 1))
    loss_base = -np.log(np.clip(p_base[np.arange(len(paths)), truth], 1e-7, 1))
    rng = np.random.default_rng(0)
    draws = [float((loss_row[pick] - loss_base[pick]).mean()) for pick in rng.integers(len(paths), size=(1000, len(paths)))]
    test = mcnemar(correct_row, correct_base)
    return {"wins": test["only_a"], "losses": test["only_b"], "mcnemar_p": round(test["p"], 4),
            "log_loss_diff": round(float(loss_row.mean() - loss_base.mean()), 5),
            "log_loss_diff_95": [round(float(v), 5) for v in np.percentile(draws, [2.5, 97.5])]}


def options_of(setting: str) -> dict:
    """A setting's training options; "a + b" applies the changes of both to the classic recipe."""
    options = dict(OLD)
    for part in setting.split(" + "):
        if part not in TRAINED:
            raise SystemExit(f"cv_study: setting {part!r}; allowed: {', '.join(TRAINED)}, joined by ' + '")
        options.update({key: value for key, value in TRAINED[part].items() if OLD.get(key, object()) != value})
    return options


def clipped(probabilities: dict) -> dict:
    """Each image's probabilities kept within [CLIP, 1 - CLIP] and renormalised."""
    kept = {key: np.clip(row, CLIP, 1 - CLIP) for key, row in probabilities.items()}
    return {key: row / row.sum() for key, row in kept.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=["default", "gap"], help=f"of {', '.join(TRAINED)}")
    parser.add_argument("--ensemble", nargs="*", default=[], help="settings (of --settings) whose models are averaged")
    parser.add_argument("--work", default="/tmp/vggtune-cv-study", help="fold runs are kept here")
    parser.add_argument("--name", default="cv-study")
    parser.add_argument("--no-ten-crop", action="store_true", help="score the clean view and its mirror only (the ten "
                        "crops of a block4 fine-tune are 8 more views per image through block4)")
    args = parser.parse_args()
    scorings = {suffix: how for suffix, how in SCORED.items() if not (args.no_ten_crop and how[0] == TEN_CROP)}
    settings = list(dict.fromkeys([BASELINE] + args.settings + args.ensemble))
    configs = {setting: options_of(setting) for setting in settings + args.ensemble}
    rows, cache, base, new_default, with_tta = [], {}, None, None, {}

    def add_row(name: str, probabilities: dict, labels: dict, classes: list[str], **extra) -> None:
        versus = {f"vs{NEW_DEFAULT.replace(' ', '_')}_{key}": value
                  for key, value in compare(probabilities, new_default, labels).items()} if new_default else {}
        rows.append(row_of(name, probabilities, labels, base, classes, **extra, **versus))
        print(table([{key: rows[-1][key] for key in SHOWN if key in rows[-1]}], SHOWN), flush=True)

    for setting in settings:
        cv_dir = Path(args.work) / setting.replace(" ", "-")
        started = time.perf_counter()
        result = vggtune.cv(args.data, out=str(cv_dir), folds=args.folds, quiet=True, **configs[setting])
        train_s = sum(row.seconds or 0.0 for row in result.per_fold)
        folds = [cv_dir / f"fold-{k}" for k in range(1, args.folds + 1)]
        begun = time.perf_counter()
        cache.update({run: run_logits(run, run_items(run), max((views for views, _ in scorings.values()), key=len)) for run in folds})
        views_s = round(time.perf_counter() - begun, 1)      # the first setting at a cut extracts the ten crops
        for suffix, (views, calibrate) in scorings.items():
            begun = time.perf_counter()
            probabilities, labels = scored(folds, views, calibrate, cache)
            base = base or probabilities
            if suffix == NEW_DEFAULT:
                new_default = new_default or probabilities
                with_tta[setting] = probabilities
            add_row(setting + suffix, probabilities, labels, result.classes, train_s=round(train_s, 1),
                    views_s=views_s, score_s=round(time.perf_counter() - begun, 1))
            if suffix == NEW_DEFAULT:
                add_row(f"{setting} + tta + clip {CLIP}", clipped(probabilities), labels, result.classes,
                        train_s=round(train_s, 1))
        print(f"{setting}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.ensemble:
        members = [with_tta[setting] for setting in args.ensemble]
        averaged = {key: np.mean([member[key] for member in members], axis=0) for key in members[0]}
        train_s = sum(row["train_s"] for row in rows if row["setting"] in [s + NEW_DEFAULT for s in args.ensemble])
        add_row("ensemble of " + ", ".join(args.ensemble) + " + tta", averaged, labels, result.classes,
                train_s=round(train_s, 1))
    print(table([{key: row[key] for key in SHOWN if key in row} for row in rows], SHOWN))
    save(args.name, {"machine": machine(), "data": args.data, "folds": args.folds, "configs": configs, "rows": rows})


if __name__ == "__main__":
    main()
