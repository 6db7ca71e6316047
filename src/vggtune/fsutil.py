"""Writes that never leave a half-written file under its final name."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the target."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write in {path.parent}: {exc.strerror}; allowed: a writable folder") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())    # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise UserError(f"cannot write {path}: {exc.strerror}; allowed: a writable folder with free space") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


STALE_SECONDS = 600


def remove_stale_temporaries(folder: Path, pattern: str = ".*.tmp") -> None:
    """Half-written files left by a killed writer; a live one exists only while its write lasts."""
    now = time.time()
    for leftover in Path(folder).glob(pattern):
        try:
            if now - leftover.stat().st_mtime > STALE_SECONDS:
                leftover.unlink()
        except OSError:
            pass


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
