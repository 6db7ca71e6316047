"""Files: writes that never leave a half-written file under its final name, safetensors, hashing,
paths as text."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
import time
from pathlib import Path

from vggtune.errors import UserError

STALE_SECONDS = 600


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary name beside `path` for a writer that takes a file name. On success the file gets
    the usual permissions, is fsynced and renamed over `path`, and the folder is fsynced: the file
    is complete or absent. Errors propagate as they are."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path):
    """`atomic_path` with a binary handle open on the temporary name."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        yield handle


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        with atomic_file(path) as handle:
            handle.write(data)
    except OSError as exc:
        raise UserError(
            f"cannot write {display_path(path)}: {exc.strerror}; allowed: a writable folder with free space"
        ) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: Path, header, rows) -> None:
    """A CSV file written whole (the one CSV writer): a file name that is not UTF-8 is written as its bytes,
    so that it reads back as the same path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8", "surrogateescape"))


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def save_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """safetensors, complete or absent."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file  # here, not above: `vggtune --help` should not wait for torch

    try:
        with atomic_path(path) as tmp:  # by name: serialising to bytes first costs a copy per write
            save_file(
                {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={k: json.dumps(v) for k, v in (metadata or {}).items()},
            )
    except (OSError, SafetensorError) as exc:  # safetensors reports a failed write (a full disk) as its own error
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).split(" at path")[0]
        raise UserError(
            f"cannot write {display_path(path)}: {reason}; allowed: a writable folder with free space"
        ) from None


def load_tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

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
