"""`make demo` as a new user runs it: a fresh clone in a folder without ../shared, a home folder of its own,
CI unset, cold (no virtualenv, no weights converted, no feature cache). Prints the wall time of the whole
command (set-up included), the training call's own seconds, the virtualenv's size and the demo's test
figures, and writes benchmarks/results/fresh_demo.json.

    python benchmarks/fresh_demo.py
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, cpu_model, folder_mb, save


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vggtune-fresh-") as folder:
        clone = Path(folder) / "vggtune"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        assert not (clone.parent / "shared").exists()
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "VGGTUNE_HOME", "VIRTUAL_ENV", "PYTHONPATH")}
        env["HOME"] = str(Path(folder) / "home")
        Path(env["HOME"]).mkdir()
        started = time.perf_counter()
        done = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"make demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
        metrics = json.loads((clone / "runs" / "demo" / "metrics.json").read_text())
        setup_line = next((line for line in done.stdout.splitlines() if line.startswith("setup:")), "")
        result = {
            "make_demo_wall_s": round(wall, 1),
            "train_call_s": metrics["timing"]["this_call_s"],
            "venv_mb": round(folder_mb(clone / ".venv")),
            "torch_install": setup_line,
            "processor": cpu_model(),
            "engine": metrics["environment"]["engine"],
            "test": {key: metrics["test"][key] for key in ("n", "accuracy", "balanced_accuracy", "log_loss", "roc_auc")},
        }
    for key, value in result.items():
        print(f"{key:18} {value}")
    save("fresh_demo", result)


if __name__ == "__main__":
    main()
