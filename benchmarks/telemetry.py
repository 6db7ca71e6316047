"""What a user's train, predict and export send or start, counted as a user runs them (CI unset).

    python benchmarks/telemetry.py [--data ../shared/data/cats-vs-dogs-2k] [--per-class 10]

Each command runs as the installed `vggtune` program with a home folder of its own and Python's audit
hooks (tests/telemetry_hook/sitecustomize.py) writing down every fork, process start, URL request and name
look-up; this counts the requests to OpenVINO's telemetry (Google Analytics) and the forks. Prints the
counts per command and writes benchmarks/results/telemetry.json. Run it on two commits to compare.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA, ROOT, link_subset, machine, provenance, save

HOOK = ROOT / "tests" / "telemetry_hook"
VGGTUNE = Path(sys.executable).with_name("vggtune")


def counted(command: list[str], env: dict[str, str], log: Path) -> dict:
    log.unlink(missing_ok=True)
    done = subprocess.run([str(VGGTUNE), *command], env=env, capture_output=True, text=True)
    events = log.read_text().splitlines() if log.exists() else []
    return {
        "exit": done.returncode,
        "telemetry_requests": sum("google-analytics" in e and "urllib.Request" in e for e in events),
        "forks": sum(" os.fork " in e for e in events),
        "processes_started": sum(" subprocess.Popen " in e for e in events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "cats-vs-dogs-2k")
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = link_subset(args.data, work / "data", args.per_class)
        log = work / "audit.log"
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "VGGTUNE_ENGINE")}
        (work / "home").mkdir()
        env.update(HOME=str(work / "home"), VGGTUNE_HOME=str(work / "vggtune-home"), VGGTUNE_OFFLINE="1",
                   VGGTUNE_TEST_AUDIT_LOG=str(log), PYTHONPATH=str(HOOK))
        run = str(work / "run")
        commands = {
            "train": ["train", str(data), "--out", run, "--size", "64", "--epochs", "1", "--finetune-epochs", "1",
                      "--no-report"],
            "predict": ["predict", run, str(data), "--format", "json"],
            "export openvino": ["export", run, "--format", "openvino", "--out", str(work / "m.xml")],
        }
        rows = {name: counted(command, env, log) for name, command in commands.items()}
        consent_folder = (work / "home" / "intel").exists()
    for name, row in rows.items():
        print(f"{name:16} {row}")
    print(f"~/intel written: {consent_folder}")
    path = save("telemetry", {**provenance(), "machine": machine(), "commands": rows, "intel_folder": consent_folder})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
