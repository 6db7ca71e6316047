"""The bootstrap intervals' time, draw by draw (`classification_metrics` on each stratified resample, as
results/analysis.py did up to bfed178) beside every draw at once (results/resampling.py), on synthetic
probabilities of test sets of the sizes users evaluate; the same intervals asserted.

    python benchmarks/intervals.py [--sizes 60 2000 10000] [--classes 2 37]

Prints seconds per `analysis.intervals` call (1,000 draws) and writes benchmarks/results/intervals.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table  # noqa: E402

from vggtune.results import analysis  # noqa: E402
from vggtune.results.resampling import stratified_picks  # noqa: E402
from vggtune.training.metrics import classification_metrics  # noqa: E402


def draw_by_draw(labels, probabilities, classes, draws=analysis.BOOTSTRAP_DRAWS) -> dict[str, list[float]]:
    """The bootstrap as it was: every figure of `classification_metrics`, one resample at a time."""
    samples: dict[str, list[float]] = {}
    for picks in stratified_picks(labels, draws, np.random.default_rng(0)):
        for rows in picks:
            drawn = classification_metrics(labels[rows], probabilities[rows], classes)
            for key in ("balanced_accuracy", "f1_macro", "log_loss", "f1", "roc_auc"):
                if getattr(drawn, key, None) is not None:
                    samples.setdefault(key, []).append(getattr(drawn, key))
    return samples


def synthetic(n: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 2 * np.eye(n_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probabilities, [f"class{i}" for i in range(n_classes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 2000, 10000])
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 37])
    args = parser.parse_args()
    rows = []
    for n_classes in args.classes:
        for n in args.sizes:
            labels, probabilities, classes = synthetic(n, n_classes)
            started = time.perf_counter()
            before = draw_by_draw(labels, probabilities, classes)
            seconds_before = time.perf_counter() - started
            started = time.perf_counter()
            now = analysis.intervals(labels, probabilities, classes)
            seconds_now = time.perf_counter() - started
            same = all(
                now.of(key) == (round(float(min(np.percentile(v, 2.5), getattr(estimate, key))), 4),
                                round(float(max(np.percentile(v, 97.5), getattr(estimate, key))), 4))
                for estimate in [classification_metrics(labels, probabilities, classes)]
                for key, v in before.items()
            )
            rows.append({"classes": n_classes, "images": n, "draw_by_draw_s": round(seconds_before, 3),
                         "at_once_s": round(seconds_now, 3), "same_intervals": same})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    save("intervals", {"draws": analysis.BOOTSTRAP_DRAWS, "rows": rows})


if __name__ == "__main__":
    main()
