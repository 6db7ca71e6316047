"""The panel's results (results/panel-*.json, written by panel.py) as one Markdown table: per setting
and dataset, balanced accuracy with its 95 % interval, per-class recall for two classes, log loss,
seconds, and the paired differences from the first setting of the file (the defaults the panel
started from, or the new ones): balanced accuracy and log loss with bootstrap 95 % intervals,
McNemar's p. A difference whose interval holds 0 is "level".

    cd benchmarks && ../.venv/bin/python panel_table.py results/panel-a.json results/panel-b.json ...
"""
from __future__ import annotations

import json
import sys


def verdict(paired: dict | None) -> str:
    if not paired or paired["only_here"] + paired["only_there"] == 0:
        return "same images right"
    low, high = paired["balanced_accuracy_diff_95"]
    word = "level" if low <= 0 <= high else ("better" if low > 0 else "worse")
    return (f"{paired['balanced_accuracy_diff'] * 100:+.1f} ({low * 100:+.1f} to {high * 100:+.1f}), "
            f"{paired['only_here']}/{paired['only_there']}, p {paired['mcnemar']['p']:.2g}: {word}")


def loss_change(paired: dict | None) -> str:
    if not paired or "log_loss_diff" not in paired:
        return ""
    low, high = paired["log_loss_diff_95"]
    if paired["log_loss_diff"] == 0 and low == high == 0:        # a threshold re-scores the same probabilities
        return "same probabilities"
    return f"{paired['log_loss_diff']:+.4f} ({low:+.4f} to {high:+.4f})"


def rows(results: dict) -> list[str]:
    lines = []
    for setting, by_dataset in results["settings"].items():
        for name, row in by_dataset.items():
            low, high = row["balanced_accuracy_95"] or (float("nan"),) * 2
            recall = ", ".join(f"{label} {value:.3f}" for label, value in row.get("recall", {}).items()
                               ) if len(row.get("recall", {})) == 2 else ""
            lines.append(f"| {setting} | {name} | {row['n']} | {row['accuracy']:.4f} | "
                         f"{row['balanced_accuracy']:.4f} ({low:.3f}-{high:.3f}) | {row['f1_macro']:.4f} | "
                         f"{row['log_loss']:.4f} | {recall} | {verdict(row.get('against_first'))} | "
                         f"{loss_change(row.get('against_first'))} | "
                         f"{row['seconds']:.0f} |")
    return lines


def main(paths: list[str]) -> None:
    print("| setting | dataset | images | accuracy | balanced accuracy (95 %) | macro F1 | log loss | recall per "
          "class | against the first setting: balanced acc. diff, pts (95 %), right only here/only there, McNemar | "
          "log loss diff (95 %) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for path in paths:
        results = json.load(open(path))
        for line in rows(results):
            key = line.split("|")[1:3]
            if tuple(key) not in seen:              # the defaults' rows repeat in every file
                seen.add(tuple(key))
                print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
