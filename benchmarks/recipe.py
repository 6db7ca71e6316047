"""The full recipe five ways, side by side in one run: vggtune, vggtune in bf16, vggtune
--no-cache, vggtune with its frozen blocks in int8 (`--ways` picks), and the Keras peer
(../shared/peers/keras_seed.py). Same images, the same train/validation split (the peer's own,
worked out here as it does), 10 head + 10 fine-tune epochs, no early stopping; each run in its own process with a cold
feature cache.
Prints a table of wall time, test accuracy (with its 95% interval)/F1 and peak memory,
writes results/recipe.json. Each way's own timers say how much of its wall time went to the
test images (decoding them and one forward pass each); the wall time less that is the
training, ratioed too, since the test set's size otherwise dilutes the training speed-up.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA, ROOT, SHARED, convert_weights, link_files, link_subset, save, table, wilson_interval

KERAS_PYTHON = ROOT / ".venv-keras" / "bin" / "python"
# (first image, count) of each class to test on: 1,100 images, so that one image is 0.09 points.
# None is a training image here (0-149) or in recipe_study.py's folds (0-299, validation 500-649).
TEST_RANGES = ((300, 200), (650, 350))
VAL_SPLIT, SEED = 0.2, 1337
# vggtune's ways: its defaults (`--precision auto`: fp32 or bf16, whichever this CPU runs faster; `--engine
# auto`: the fastest engine measured here), its frozen blocks on PyTorch's own kernels (the default before
# 2026-12-02), bf16 (the default before 2026-11-30 wherever the CPU listed avx512_bf16), the frozen layers
# recomputed every epoch, and the frozen blocks in int8 on each engine.
WAYS = {"vggtune": [], "vggtune --engine torch": ["--engine", "torch"],
        "vggtune --precision bf16": ["--precision", "bf16"], "vggtune --no-cache": ["--no-cache"],
        "vggtune --precision int8": ["--precision", "int8"],
        "vggtune --precision int8 --engine torch": ["--precision", "int8", "--engine", "torch"]}


def run(command: list[str], env: dict) -> dict:
    """Wall time, peak RSS (MB) and the JSON printed last, of one child process."""
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out_file, stderr=err_file, text=True)
        _, status, usage = os.wait4(process.pid, 0)      # this child's own peak RSS
        wall = time.perf_counter() - started
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if status != 0:
        raise SystemExit(f"{command[:4]} failed ({status}):\n{err[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024), "stdout": out}


def peer_split(data: Path, val_split: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, val) files exactly as keras_seed.py splits `data`: class folders and file names in
    sorted order, one permutation by numpy's default_rng(seed), the first share held for validation."""
    files = [folder / name for folder in sorted(p for p in data.iterdir() if p.is_dir())
             for name in sorted(os.listdir(folder))]
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = int(len(files) * val_split)
    return [files[i] for i in order[n_val:]], [files[i] for i in order[:n_val]]


def vggtune_run(name: str, train: Path, val: Path, test: Path, work: Path, extra: list[str], args) -> dict:
    home = work / f"home-{name}"
    shutil.copytree(work / "home-weights", home)                 # converted weights, no features
    out = work / f"run-{name}"
    command = [sys.executable, "-m", "vggtune", "train", str(train), "--out", str(out), "--val-data", str(val),
               "--test-data", str(test), "--epochs", str(args.epochs), "--finetune-epochs", str(args.finetune_epochs),
               "--seed", str(args.seed), "--patience", "0", "--quiet", *extra]
    result = run(command, dict(os.environ, VGGTUNE_HOME=str(home)))
    metrics = json.loads((out / "metrics.json").read_text())
    test_metrics = metrics["test"]
    return {"way": name, "wall_s": result["wall_s"], "accuracy": test_metrics["accuracy"], "f1": test_metrics["f1"],
            "peak_rss_mb": result["peak_rss_mb"], "stages": metrics["timing"],
            "testing_s": round(metrics["timing"].get("features_test_s", 0) + metrics["timing"]["score_test_s"], 1),
            "cache_mb": round(sum(p.stat().st_size for p in home.rglob("shard-*.npy")) / 1e6, 1)}


def keras_run(train: Path, test: Path, args) -> dict:
    from vggtune.model.formats import lpips_checkpoint_path
    command = [str(KERAS_PYTHON), str(SHARED / "peers" / "keras_seed.py"), "--data", str(train), "--test-data", str(test),
               "--weights", str(lpips_checkpoint_path()), "--epochs", str(args.epochs),
               "--finetune-epochs", str(args.finetune_epochs), "--val-split", str(VAL_SPLIT), "--seed", str(args.seed)]
    result = run(command, dict(os.environ))
    peer = json.loads(result["stdout"].strip().splitlines()[-1])
    return {"way": "keras peer", "wall_s": result["wall_s"], "accuracy": peer["accuracy"], "f1": peer["f1"],
            "peak_rss_mb": result["peak_rss_mb"], "testing_s": peer["eval_s"],
            "stages": {k: peer[k] for k in ("head_stage_s", "finetune_stage_s", "eval_s") if k in peer}}


def training_per_class(text: str) -> int:
    per_class = int(text)
    if not 0 < per_class <= TEST_RANGES[0][0]:
        raise argparse.ArgumentTypeError(f"received {per_class}; allowed: 1 to {TEST_RANGES[0][0]} (later images are tested on)")
    return per_class


def recipe_arguments(description: str) -> argparse.ArgumentParser:
    """The options this comparison and recipe_seeds.py share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--per-class", type=training_per_class, default=150, help="training images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    return parser


def prepare(work: Path, per_class: int) -> tuple[Path, Path]:
    """The training and test folders (links into the data) and the converted weights, under `work`."""
    source = DATA / "cats-vs-dogs-2k"
    train, test = link_subset(source, work / "train", per_class), work / "test"
    for first, count in TEST_RANGES:
        link_subset(source, test, count, skip=first)
    convert_weights(work / "home-weights")
    return train, test


def split_folders(train: Path, work: Path, seed: int) -> tuple[Path, Path, list[Path]]:
    """The peer's split of `train` as two folders for vggtune, so both fit the same images and pick by
    the same ones; and the validation files."""
    train_files, val_files = peer_split(train, VAL_SPLIT, seed)
    fit, val = link_files(train_files, work / f"fit-{seed}"), link_files(val_files, work / f"val-{seed}")
    return fit, val, val_files


def main():
    parser = recipe_arguments(__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS),
                        help="the vggtune ways to run (the first is the one the others are ratioed to)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vggtune-recipe-"))
    train, test = prepare(work, args.per_class)
    test_images = len(list(test.rglob("*.jpg")))
    fit, val, val_files = split_folders(train, work, args.seed)
    fit_images = len(list(fit.rglob("*.jpg")))
    rows = [vggtune_run(name, fit, val, test, work, WAYS[name], args) for name in args.ways]
    for row in rows:
        print(row, flush=True)
    if not args.skip_keras:
        rows.append(keras_run(train, test, args))
        print(rows[-1], flush=True)
    for row in rows:
        row["training_s"] = round(row["wall_s"] - row["testing_s"], 1)
        row["x_vggtune_time"] = round(row["wall_s"] / rows[0]["wall_s"], 2)
        row["x_vggtune_training"] = round(row["training_s"] / rows[0]["training_s"], 2)
        row["correct"] = round(row["accuracy"] * test_images)
        row["accuracy_95"] = wilson_interval(row["correct"], test_images)
    print(f"\n{2 * args.per_class} training images ({fit_images} to fit, {len(val_files)} to validate: "
          f"the peer's split), {test_images} test images, "
          f"{args.epochs} head + {args.finetune_epochs} fine-tune epochs")
    print(table(rows, ["way", "wall_s", "x_vggtune_time", "testing_s", "training_s", "x_vggtune_training",
                       "accuracy", "correct", "accuracy_95", "f1", "peak_rss_mb", "cache_mb"]))
    save("recipe", {"train_images": 2 * args.per_class, "fit_images": fit_images, "val_images": len(val_files),
                    "val_files": sorted(f"{f.parent.name}/{f.name}" for f in val_files), "test_images": test_images,
                    "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "rows": rows})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
