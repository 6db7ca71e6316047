"""`make demo`'s run on two engines, side by side: wall time, the stages, the metrics, and a paired
comparison of the same images (McNemar's exact test, and the log loss difference with a paired
bootstrap interval); then `vggtune predict` on held-out photos with each run's engine.

Each run is its own `vggtune train` process with a cold feature cache (the weights converted
beforehand), one after the other, nothing else running. Writes results/engine-demo.json.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA, convert_weights, link_subset, save, table


def run_train(engine: str, data: str, out: Path, home: Path, extra: list[str]) -> dict:
    env = {"VGGTUNE_HOME": str(home), "VGGTUNE_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vggtune", "train", data, "--out", str(out), "--engine", engine,
                    "--quiet", "--no-report", *extra], check=True, env=env)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    return {"engine": engine, "runs_as": metrics["environment"]["engine"], "wall_s": round(wall, 1),
            **{k: v for k, v in metrics["timing"].items() if k.endswith("_s")},
            "test_accuracy": metrics["test"]["accuracy"], "test_log_loss": metrics["test"]["log_loss"]}


def run_predict(engine: str, run: Path, folder: Path, home: Path) -> dict:
    env = {"VGGTUNE_HOME": str(home), "VGGTUNE_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vggtune", "predict", str(run), str(folder), "--engine", engine,
                           "--format", "json"], check=True, env=env, capture_output=True, text=True)
    rows = json.loads(done.stdout)
    return {"engine": engine, "images": len(rows), "wall_s": round(time.perf_counter() - started, 1),
            "labels": {row["path"]: row["label"] for row in rows}}


def paired(a: Path, b: Path) -> dict:
    """The two runs' validation and test predictions, image by image (the same split: the same seed)."""
    from vggtune.results.analysis import mcnemar
    import csv

    def rows(run):
        with open(run / "predictions.csv", newline="") as handle:
            return {(r["split"], r["path"]): r for r in csv.DictReader(handle)}
    first, second = rows(a), rows(b)
    keys = sorted(first)
    assert keys == sorted(second)
    classes = [c for c in next(iter(first.values())) if c not in ("split", "path", "label", "predicted")]

    def scored(table_):
        correct = np.array([table_[k]["predicted"] == table_[k]["label"] for k in keys])
        loss = np.array([-np.log(max(float(table_[k][table_[k]["label"]]), 1e-7)) for k in keys])
        return correct, loss
    correct_a, loss_a = scored(first)
    correct_b, loss_b = scored(second)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(keys), (2000, len(keys)))
    differences = (loss_b[draws] - loss_a[draws]).mean(1)
    return {"images": len(keys), "classes": classes, "correct": [int(correct_a.sum()), int(correct_b.sum())],
            "mcnemar": mcnemar(correct_a, correct_b),
            "log_loss": [round(float(loss_a.mean()), 4), round(float(loss_b.mean()), 4)],
            "log_loss_difference_95": [round(float(np.percentile(differences, q)), 4) for q in (2.5, 97.5)]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--engines", default="torch,auto")
    parser.add_argument("--predict-per-class", type=int, default=500,
                        help="held-out PetImages photos of each class for `vggtune predict`")
    parser.add_argument("--train-flags", default="", help="more `vggtune train` flags, one string")
    args = parser.parse_args()
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        held = link_subset(DATA / "petimages-180-10k", work / "held", args.predict_per_class)
        rows, predictions = [], []
        for engine in engines:
            home = convert_weights(work / f"home-{engine}")
            rows.append(run_train(engine, args.data, work / f"run-{engine}", home, args.train_flags.split()))
            print(rows[-1], flush=True)
        for engine in engines:
            predictions.append(run_predict(engine, work / f"run-{engine}", held, work / f"home-{engine}"))
            print({k: v for k, v in predictions[-1].items() if k != "labels"}, flush=True)
        comparison = paired(work / f"run-{engines[0]}", work / f"run-{engines[1]}")
    agreement = np.mean([predictions[0]["labels"][p] == predictions[1]["labels"].get(p) for p in predictions[0]["labels"]])
    for row, predicted in zip(rows, predictions):
        row["predict_s"] = predicted["wall_s"]
    print(f"\n{args.data}; cold cache each; predict: {predictions[0]['images']} PetImages photos")
    print(table(rows, ["engine", "runs_as", "wall_s", "features_s", "head_s", "finetune_s", "predict_s",
                       "test_accuracy", "test_log_loss"]))
    print(f"paired, validation and test ({comparison['images']} images): correct {comparison['correct']}, "
          f"McNemar {comparison['mcnemar']}, log loss {comparison['log_loss']} "
          f"(difference, 95 %: {comparison['log_loss_difference_95']}); predict labels agree on {agreement:.4f}")
    save("engine-demo", {"rows": rows, "paired": comparison, "predict_label_agreement": round(float(agreement), 4),
                         "predict_images": predictions[0]["images"]})


if __name__ == "__main__":
    main()
