"""bf16 and int8 frozen blocks against fp32: the same run in each precision, test accuracy side
by side (a faster precision must not cost accuracy). 1,000 PetImages to train on, 1,000 others
to test on; head and a short fine-tune. Prints a table, writes results/precision.json."""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import DATA, save, table, train_and_held_out
from recipe import run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"], choices=["fp32", "bf16", "int8"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vggtune-precision-"))
    train, test = train_and_held_out(DATA / "petimages-180-10k", work, args.per_class, args.test_per_class)
    rows = []
    for precision in args.precisions:
        home = work / f"home-{precision}"
        out = work / f"run-{precision}"
        command = [sys.executable, "-m", "vggtune", "train", str(train), "--out", str(out), "--test-data", str(test),
                   "--precision", precision, "--views", "1", "--finetune-epochs", str(args.finetune_epochs), "--quiet"]
        result = run(command, dict(os.environ, VGGTUNE_HOME=str(home)))
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"precision": precision, "test_accuracy": metrics["test"]["accuracy"],
                     "test_log_loss": round(metrics["test"]["log_loss"], 4), "wall_s": result["wall_s"], **metrics["timing"]})
        print(rows[-1], flush=True)
    for row in rows:
        row["points_from_first"] = round(100 * (row["test_accuracy"] - rows[0]["test_accuracy"]), 2)
    print(f"\n{2 * args.per_class} training images, {2 * args.test_per_class} test images:")
    print(table(rows, ["precision", "test_accuracy", "points_from_first", "test_log_loss", "wall_s", "features_s",
                       "head_s", "finetune_s"]))
    save("precision", {"train_images": 2 * args.per_class, "test_images": 2 * args.test_per_class, "rows": rows})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
