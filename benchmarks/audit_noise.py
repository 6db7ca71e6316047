"""`vggtune data audit` against planted label noise: the labels of a share of a dataset's images
(default 2 % of cats-vs-dogs-2k, chosen by a fixed seed) are flipped in a CSV manifest (the images
are not copied), the audit runs on it with the default recipe, and the flipped images are compared
with those it flags as label issues: precision and recall, and precision at the rank where recall
first reaches 0.9 (the ranking is cleanlab's self-confidence). With --share 0 it audits the data as
it is and lists what it flags, to be looked at by eye.

    python benchmarks/audit_noise.py                                   # 2 % of cats-vs-dogs-2k flipped
    python benchmarks/audit_noise.py --share 0 --name clean            # the data as it is
    python benchmarks/audit_noise.py --data ../shared/data/oxford-pets-370 --share 0 --name pets

Writes results/audit-<name>.json and prints a table."""
import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

from common import DATA, ROOT, save, table

sys.path.insert(0, str(ROOT / "src"))
import vggtune  # noqa: E402
from vggtune.data.discovery import discover  # noqa: E402


def flipped_manifest(data: Path, share: float, seed: int, path: Path) -> set[str]:
    """A manifest of every image of `data`, a `share` of them (by `seed`) under another class; their paths."""
    found = discover(data)
    files = sorted(found.files)
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(files)), round(share * len(files))))
    flipped = set()
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for i, (file, label) in enumerate(files):
            if i in chosen:
                label = rng.choice([c for c in found.classes if c != label])
                flipped.add(file)
            writer.writerow([file, label])
    return flipped


def scores(flagged_ranked: list[str], flipped: set[str], cv_folder: Path) -> dict:
    """Precision and recall of the flagged set; and along the whole self-confidence ranking (every image,
    flagged or not), the first rank where recall reaches 0.9 and the precision there."""
    found = sum(path in flipped for path in flagged_ranked)
    result = {"flipped": len(flipped), "flagged": len(flagged_ranked), "flipped_flagged": found,
              "precision": round(found / len(flagged_ranked), 4) if flagged_ranked else None,
              "recall": round(found / len(flipped), 4)}
    with open(cv_folder / "cv_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ranked = sorted(rows, key=lambda row: float(row[row["label"]]))          # self-confidence, lowest first
    running = 0
    for rank, row in enumerate(ranked, 1):
        running += row["path"] in flipped
        if running >= 0.9 * len(flipped):
            result.update({"ranking_rank_at_recall_0.9": rank, "ranking_precision_at_recall_0.9": round(running / rank, 4),
                           "ranking_self_confidence_there": round(float(row[row["label"]]), 4)})
            break
    result["missed"] = sorted({row["path"]: round(float(row[row["label"]]), 4) for row in rows
                               if row["path"] in flipped and row["path"] not in flagged_ranked}.items())
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DATA / "cats-vs-dogs-2k"))
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--work", default="/tmp/vggtune-audit-bench", help="manifests, cross-validation and audits")
    parser.add_argument("--name", default="flipped-2pct")
    parser.add_argument("--cv", help="an earlier cross-validation folder of the same manifest to reuse (default WORK/NAME/cv)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / f"{args.name}.csv"
    flipped = flipped_manifest(Path(args.data), args.share, args.seed, manifest)
    started = time.perf_counter()
    summary = vggtune.audit(str(manifest), out=str(work / args.name), folds=args.folds, cv=args.cv, quiet=True)
    seconds = time.perf_counter() - started
    with open(work / args.name / "issues.csv", newline="") as handle:
        issues = list(csv.DictReader(handle))
    label_ranked = [row["path"] for row in issues if "label" in row["issues"].split("+")]
    result = {"data": args.data, "share": args.share, "seed": args.seed, "folds": args.folds, "seconds": round(seconds),
              "images": summary.images, "by_issue": summary.by_issue,
              "accuracy_out_of_fold": summary.accuracy_out_of_fold,
              "label_issues": scores(label_ranked, flipped, Path(summary.cv)) if flipped else None,
              "flagged": [{key: row[key] for key in ("rank", "path", "given_label", "suggested_label",
                                                    "given_label_probability", "issues", "note")} | {
                           "planted": row["path"] in flipped} for row in issues]}
    print(table([{"issue": kind, "images": count} for kind, count in summary.by_issue.items()], ["issue", "images"]))
    if flipped:
        print(json.dumps(result["label_issues"], indent=1))
    for row in result["flagged"]:
        print(f"{row['rank']:>4} {'PLANTED ' if row['planted'] else '        '}{Path(row['path']).name:24} given "
              f"{row['given_label']:10} suggested {row['suggested_label']:10} {float(row['given_label_probability']):.3f} "
              f"{row['issues']} {row['note']}")
    save(f"audit-{args.name}", result)


if __name__ == "__main__":
    main()
