"""Helpers shared by the benchmark scripts: data subsets as symlinks, JSON results, memory."""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def link_subset(source: Path, target: Path, per_class: int, skip: int = 0) -> Path:
    """target/<class>/ with symlinks to `per_class` images of each class, after the first `skip`."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        link_files(sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name))[skip:skip + per_class], target)
    return target


def link_files(files: list[Path], target: Path) -> Path:
    """target/<class>/<name> links to `files`, each of which lies in its class folder."""
    for file in files:
        link = target / file.parent.name / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(file, link)
    return target


def train_and_held_out(source: Path, work: Path, per_class: int, held_per_class: int,
                       held_name: str = "test") -> tuple[Path, Path]:
    """Two disjoint subsets: the first `per_class` images of each class to train on, the next ones held out."""
    train = link_subset(source, work / "train", per_class)
    held = link_subset(source, work / held_name, held_per_class, skip=per_class)
    return train, held


def wilson_interval(correct: int, total: int, z: float = 1.96) -> list[float]:
    """95% interval of an accuracy measured on `total` images (Wilson's score interval)."""
    share = correct / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    return [round(centre - half, 4), round(centre + half, 4)]


def convert_weights(home: Path) -> Path:
    """A VGGTUNE_HOME holding the converted ImageNet weights and no features, for cold-cache runs."""
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "vggtune", "weights", "verify"], check=True, capture_output=True,
                   env=dict(os.environ, VGGTUNE_HOME=str(home)))
    return home


def images_per_second(step, batch_size: int, seconds: float, device=None, warmup: int = 1) -> float:
    """`step()` handles one batch: warm-up first (kernels chosen, memory touched), then as many
    steps as fit in `seconds`; a GPU's queued work is waited for before each clock reading."""
    import torch

    def wait():
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    wait()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch_size
    wait()
    return done / (time.perf_counter() - started)


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it, and whether it has bf16 and int8 matrix units."""
    from vggtune.model.runtime import cpuinfo_fields
    fields = cpuinfo_fields()
    if not fields:
        return platform.processor() or platform.machine()
    listed = set(fields.get("flags", "").split())
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni") if f in listed]
    return f"{fields.get('model name') or platform.machine()} ({', '.join(flags) or 'no bf16/int8 units'})"


def machine() -> dict:
    import torch
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def provenance() -> dict:
    """What makes a figure reproducible: the code (git commit, and whether it had uncommitted changes),
    the command line that ran, and the machine."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD") or "unknown", "uncommitted_changes": bool(git("status", "--porcelain")),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "machine": machine()}


def write_json(path: Path, payload: dict) -> Path:
    """A results file: the payload and its provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**provenance(), **payload}, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def save(name: str, payload: dict) -> Path:
    return write_json(RESULTS / f"{name}.json", payload)


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def head_options(name: str) -> dict:
    """vggtune.train's options of a multi-label benchmark's head entry: "defaults" gives none (the head and
    loss the task picks), else a head's name, "+asl" for the asymmetric loss, cross-entropy without it."""
    if name == "defaults":
        return {}
    return {"head": name.removesuffix("+asl"), "loss": "asymmetric" if name.endswith("+asl") else "cross-entropy"}


def train_options(entries: list[str]) -> dict:
    """--option KEY=VALUE entries as vggtune.train's keywords, numbers read as numbers."""
    import ast
    options = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        try:
            options[key.replace("-", "_")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key.replace("-", "_")] = value
    return options
