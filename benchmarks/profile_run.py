"""Where the time of one `vggtune train` goes: py-spy samples the whole run (native frames
included), and the samples are summed by what the leaf frame is doing. Writes
results/profile.json and prints a table. Needs py-spy (`pip install py-spy`).
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA, convert_weights, link_subset, save, table

# First match wins: (category, substrings of a frame's text anywhere in the stack, leaf first).
CATEGORIES = [
    ("JPEG decode (Pillow)", ["ImageFile.py", "Image.py:load", "decode"]),
    ("resize/crop/augment (torchvision)", ["torchvision/transforms"]),
    ("cache write (numpy save, fsync)", ["np.save", "format.py", "fsync", "cache.py:flush", "_digest_file"]),
    ("cache read (memmap gather)", ["cache.py:gather"]),
    ("optimizer (Adam)", ["optim/adam", "optimizer.py"]),
    ("training steps: ops recorded for autograd, and backward", ["backward", "autograd"]),
    ("frozen blocks forward (extraction)", ["extract.py", "derive"]),
    ("trainable forward (training)", ["training.py", "session.py:probabilities"]),
    ("image scan (hash + check)", ["data.py:_check", "data.py:scan"]),
    ("weights load", ["weights.py", "formats.py", "safetensors"]),
    ("imports and start-up", ["<module>", "importlib", "_find_and_load"]),
]


def categorise(stack: str) -> str:
    frames = stack.split(";")[::-1]
    for frame in frames:
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="vggtune-profile-"))
    data = link_subset(DATA / "cats-vs-dogs-2k", work / "data", args.per_class)
    env = dict(os.environ, VGGTUNE_HOME=str(work / "home"))
    convert_weights(work / "home")
    raw = work / "profile.txt"
    subprocess.run([py_spy, "record", "--native", "--rate", "50", "--format", "raw", "--output", str(raw), "--",
                    sys.executable, "-m", "vggtune", "train", str(data), "--out", str(work / "run"), "--epochs",
                    str(args.epochs), "--finetune-epochs", str(args.finetune_epochs), "--patience", "0", "--quiet"],
                   env=env, check=True, capture_output=True)
    totals = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        totals[categorise(stack)] += int(count)
    samples = sum(totals.values())
    rows = [{"where": name, "share": round(count / samples, 3), "samples": count} for name, count in totals.most_common()]
    print(f"py-spy, {2 * args.per_class} images, {args.epochs}+{args.finetune_epochs} epochs, all threads:")
    print(table(rows, ["where", "share", "samples"]))
    save("profile", {"images": 2 * args.per_class, "rows": rows})


if __name__ == "__main__":
    main()
