"""The run directory: everything needed to use or continue a run, in safetensors and JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError
from .fsutil import atomic_write_json, atomic_write_text, display_path, remove_stale_temporaries

MODEL_FORMAT = "vggtune-model/1"


def check_new_or_resumable(out: Path, resume: bool) -> None:
    """A new run needs an unused folder; --resume needs a folder a run started in."""
    started = (out / "config.yaml").is_file()
    if resume and not started:
        raise UserError(f"--resume: {display_path(out)} is not a vggtune run (no config.yaml); "
                        "allowed: the --out folder of an earlier run")
    if not resume and out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {display_path(out)} already holds files; allowed: a new or empty folder, "
                        "or --resume to continue the run in it")


def make_dirs(out: Path) -> None:
    try:
        (out / "state").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {display_path(out)}: {exc.strerror}; allowed: a writable folder") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out: {display_path(out)} is not writable; allowed: a writable folder")
    for folder in (out, out / "state"):          # checkpoints cut short by a kill -9
        remove_stale_temporaries(folder)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors written to a temporary name, fsynced, renamed: complete or absent."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {display_path(path)}: {exc.strerror}; allowed: a writable folder with free space") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            metadata = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise UserError(f"{display_path(path)}: not a readable safetensors file ({exc})") from None
    return tensors, metadata


def save_model(out: Path, model, description: dict) -> None:
    save_tensors(out / "model.safetensors", model.state_dict())
    atomic_write_json(out / "model.json", dict(description, format=MODEL_FORMAT))


def read_model_description(run: Path) -> dict:
    path = Path(run) / "model.json"
    if not path.is_file():
        raise UserError(f"run: {display_path(run)} holds no model.json; allowed: a finished run directory")
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{display_path(path)}: not valid JSON ({exc})") from None
    if not isinstance(description, dict) or description.get("format") != MODEL_FORMAT:
        raise UserError(f"{display_path(path)}: format {description.get('format') if isinstance(description, dict) else None!r}; "
                        f"allowed: {MODEL_FORMAT}")
    return description


def write_metrics_log(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def write_splits(out: Path, classes: list[str], splits: dict) -> None:
    atomic_write_json(out / "splits.json", {"classes": classes, **{
        # The path as Python holds it: JSON escapes undecodable bytes, so it opens again.
        name: [{"path": i.path, "label": i.label, "sha256": i.sha256} for i in items]
        for name, items in splits.items()}})
