"""Files: writes that never leave a half-written file under its final name, safetensors, hashing,
paths as text."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import UserError

STALE_SECONDS = 600


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary handle on a temporary name beside `path`; on success fsynced, renamed over `path`
    and the folder fsynced, so the file is complete or absent. Errors propagate as they are."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())    # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        with atomic_file(path) as handle:
            handle.write(data)
    except OSError as exc:
        raise UserError(f"cannot write {display_path(path)}: {exc.strerror}; "
                        "allowed: a writable folder with free space") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors, complete or absent."""
    try:
        with atomic_file(path) as handle:
            handle.write(save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()}))
    except OSError as exc:
        raise UserError(f"cannot write {display_path(path)}: {exc.strerror}; "
                        "allowed: a writable folder with free space") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            metadata = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise UserError(f"{display_path(path)}: not a readable safetensors file ({exc})") from None
    return tensors, metadata


def file_digest(path: Path, algorithm: str = "sha256", **options) -> str:
    """Hex digest of a file read in blocks (`options` go to hashlib.new, e.g. digest_size)."""
    digest = hashlib.new(algorithm, **options)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path, pattern: str = ".*.tmp") -> None:
    """Half-written files left by a killed writer; a live one exists only while its write lasts."""
    now = time.time()
    for leftover in Path(folder).glob(pattern):
        try:
            if now - leftover.stat().st_mtime > STALE_SECONDS:
                leftover.unlink()
        except OSError:
            pass


def _fsync_folder(folder: Path) -> None:
    """Makes the rename itself durable; some file systems cannot open a folder, which is no error."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def display_path(path) -> str:
    """A path as text that always encodes, even when the file name is not UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
