"""The frozen-feature cache: outputs of the frozen blocks, computed once and stored.

One folder per key (weights id, preprocessing, cut point, architecture, int8 calibration,
the engine where it is not PyTorch, storage), one entry per (image content, view). Storage is float16, or
uint8 for very large datasets: each view's values mapped onto 0..255 between its own minimum and maximum (the two
numbers kept in the shard's manifest), half the bytes. The whole key is built here and
nowhere else: `FeatureKey` for the folder, `entry_name` for the entry. Inside, shards:
`shard-<id>.npy` (rows of features) and `shard-<id>.json` (entry names, shape, checksum).
A shard exists once its manifest is renamed into place, after its data is fsynced, so a
crash never leaves a half-written shard that looks complete; each writer names its own
shards, so runs sharing a cache never write the same file. A shard whose checksum no
longer matches is deleted and its entries are computed again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vggtune.errors import UserError
from vggtune.features.settings import RESAMPLING, STORAGES, AugmentConfig
from vggtune.fsutil import atomic_file, atomic_write_json, display_path, file_digest, remove_stale_temporaries
from vggtune.model.arch import Arch
from vggtune.model.policy import CLEAN, MIRROR, TEN_CROP

if TYPE_CHECKING:
    from vggtune.features.engine import Engine

STORAGE_TORCH_DTYPE = torch.float16
STORAGE_DTYPE = torch.empty(0, dtype=STORAGE_TORCH_DTYPE).numpy().dtype  # the same type, as numpy names it
SHARD_ROWS = 256


def _digest_file(path: Path) -> str:
    return file_digest(path, "blake2b", digest_size=16)


def _short_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """What decides a stored tensor besides the image and its view: a change in any is another folder."""

    weights: str  # the weights' id
    preprocessing: dict  # Preprocessing.to_dict()
    arch: Arch  # the backbone's layout: its blocks' widths, batch norms
    int8: dict | None = None  # the int8 calibration of the frozen blocks, if any
    engine: Engine | None = None  # what computed the features, beyond PyTorch

    def at(self, cut: str) -> dict:
        layout: dict[str, Any] = {name: list(widths) for name, widths in self.arch.blocks}
        if self.arch.batch_norm:  # added only here, so that the keys of plain VGGs stay as they were
            layout["batch_norm"] = True
        key = {
            "weights": self.weights,
            "preprocessing": self.preprocessing,
            "cut": cut,
            "arch": _short_digest(layout)[:12],
            "resampling": RESAMPLING,
        }
        if self.int8 is not None:
            key["int8"] = _short_digest(self.int8)[:16]
        if self.engine is not None and self.engine.name != "torch":
            # Another runtime's kernels round differently (bf16 by more than float16 storage does), so its
            # features are another entry; PyTorch's keep the keys they had, and existing caches serve.
            key["engine"] = self.engine.describe()
        return key


def entry_name(sha256: str, view: int, aug: AugmentConfig) -> str:
    """The clean view and its mirror image do not depend on the augmentation settings, so they are shared."""
    if view == CLEAN:
        return f"{sha256}/clean"
    if view == MIRROR:
        return f"{sha256}/clean-mirror"
    if view in TEN_CROP:
        return f"{sha256}/ten-crop{view}"
    return f"{sha256}/{aug.digest()}-{view}"


class FeatureCache:
    """The cache folder of one key and cut, under `root`."""

    def __init__(self, root: Path, key: dict, storage: str = STORAGES[0]):
        self.storage = storage
        self.key = dict(key, storage=storage, format=1)
        self.dir = Path(root) / f"{key['cut']}-{_short_digest(self.key)[:16]}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"feature cache: cannot create {display_path(self.dir)} ({exc.strerror}); "
                "allowed: VGGTUNE_HOME in a writable place"
            ) from None
        if not (self.dir / "key.json").exists():
            atomic_write_json(self.dir / "key.json", self.key)
        remove_stale_temporaries(self.dir, ".shard-*.tmp")
        self._index: dict[str, tuple[str, int]] | None = None
        self._scales: dict[str, np.ndarray] = {}  # uint8 shards: each row's (minimum, step)
        self._verified: set[str] = set()
        self.damaged: list[str] = []

    @classmethod
    def existing(cls, folder: Path) -> FeatureCache:
        """The cache in a folder as it is on disk, by the key it recorded."""
        key = json.loads((Path(folder) / "key.json").read_text())
        cache = cls(Path(folder).parent, key, key.get("storage", STORAGES[0]))
        if cache.dir != Path(folder):
            raise ValueError(f"{folder}: its key.json names {cache.dir.name}")
        return cache

    def index(self) -> dict[str, tuple[str, int]]:
        """entry name -> (shard, row), over every complete, undamaged shard."""
        if self._index is None:
            self._index = {}
            for manifest_path in sorted(self.dir.glob("shard-*.json")):
                shard = manifest_path.stem
                try:
                    manifest = json.loads(manifest_path.read_text())
                    if shard not in self._verified:
                        if _digest_file(self.dir / f"{shard}.npy") != manifest["checksum"]:
                            raise ValueError("checksum mismatch")
                        self._verified.add(shard)
                except (OSError, ValueError, KeyError):
                    self._discard(shard)
                    continue
                if "scales" in manifest:
                    self._scales[shard] = np.asarray(manifest["scales"], dtype=np.float32)
                for row, entry in enumerate(manifest["entries"]):
                    self._index.setdefault(entry, (shard, row))
        return self._index

    def _discard(self, shard: str) -> None:
        self.damaged.append(shard)
        for suffix in (".json", ".npy"):
            try:
                (self.dir / f"{shard}{suffix}").unlink()
            except OSError:
                pass

    def refresh(self) -> None:
        """Forget the index, so that shards other processes wrote since are read."""
        self._index = None

    def missing(self, entries: list[str]) -> list[str]:
        index = self.index()
        return [entry for entry in entries if entry not in index]

    def require(self, entries: list[str], why: str) -> None:
        """A one-line error when some entries are absent (`why` says whose they were)."""
        absent = self.missing(entries)
        if absent:
            raise UserError(
                f"feature cache {display_path(self.dir)}: {len(absent)} views {why}; "
                "allowed: VGGTUNE_HOME on a filesystem every process shares"
            )

    def writer(self) -> ShardWriter:
        self.refresh()  # new shards will appear
        return ShardWriter(self.dir, storage=self.storage)

    def open(self, entries: list[str]) -> FeatureSet:
        index = self.index()
        absent = [e for e in entries if e not in index]
        if absent:
            raise KeyError(f"{len(absent)} entries not in cache {self.dir}, e.g. {absent[0]}")
        locations = [index[e] for e in entries]
        shards = {s for s, _ in locations}
        arrays = {shard: np.load(self.dir / f"{shard}.npy", mmap_mode="r") for shard in shards}
        return FeatureSet(arrays, locations, {shard: self._scales[shard] for shard in shards if shard in self._scales})

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("shard-*.npy"))


class ShardWriter:
    """Collects rows and writes them out a shard at a time; `close` writes the last one. As a context
    manager it closes however the block ends: an interrupted extraction keeps every row it computed."""

    def __init__(self, folder: Path, rows_per_shard: int | None = None, storage: str = STORAGES[0]):
        self.folder, self.storage = folder, storage
        self.rows_per_shard = rows_per_shard or SHARD_ROWS
        self.entries: list[str] = []
        self.batches: list[np.ndarray] = []
        self.scales: list[list[float]] = []

    def add(self, entries: list[str], features: torch.Tensor) -> None:
        if self.storage == "uint8":
            rows, scales = quantize_rows(features)
            self.scales.extend(scales)
        else:
            # One pass to float16 in row-major order: np.save of a channels-last (strided) array
            # goes element by element and cost 40x more than the write itself. A copy always, so
            # a caller reusing its output buffer cannot change rows waiting to be written.
            rows = (
                features.detach()
                .to("cpu", STORAGE_TORCH_DTYPE, copy=True, memory_format=torch.contiguous_format)
                .numpy()
            )
        self.entries.extend(entries)
        self.batches.append(rows)
        if len(self.entries) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        shard = f"shard-{uuid.uuid4().hex[:16]}"
        data_path = self.folder / f"{shard}.npy"
        try:
            with atomic_file(data_path) as handle:
                np.save(handle, np.concatenate(self.batches))
            atomic_write_json(
                self.folder / f"{shard}.json",
                {
                    "entries": self.entries,
                    "checksum": _digest_file(data_path),
                    **({"scales": self.scales} if self.storage == "uint8" else {}),
                },
            )
        except (OSError, UserError) as exc:
            data_path.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise UserError(
                f"feature cache {display_path(self.folder)}: cannot write a shard ({reason}); every "
                "view written before is kept; allowed: free some space (or VGGTUNE_HOME on a writable "
                "disk with room), then the same command again, or `vggtune train --resume --out RUN`"
            ) from None
        self.entries, self.batches, self.scales = [], [], []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close()


ROOM_MARGIN = 1.05  # shard manifests and the file system's own blocks, over the features' bytes
ENTRY_BYTES = 120  # an entry's name (and, in uint8, its two scales) in its shard's manifest


def view_bytes(arch, cut: str, size: int, storage: str) -> int:
    """Bytes one view takes in the cache at `cut`: its features and its line in the shard's manifest."""
    side = size // arch.reduction(cut)
    return arch.channels(cut) * side * side * (1 if storage == "uint8" else 2) + ENTRY_BYTES


def require_room(views: int, needed: int, free: int, home: Path, storage: str) -> None:
    """One line, before any view is computed, where `needed` bytes of `views` new views will not fit in the
    `free` bytes of the disk that holds the cache."""
    if needed * ROOM_MARGIN <= free:
        return
    ways = ["--feature-storage uint8 (half the bytes)"] if storage != "uint8" else []
    ways += ["VGGTUNE_HOME on a disk with room", "--no-cache (features computed every epoch, none stored)"]
    raise UserError(
        f"feature cache: {views:,} views to compute need about {_size(needed * ROOM_MARGIN)}, and "
        f"{display_path(home)} has {_size(free)} free; allowed: {', or '.join(ways)}"
    )


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:,.0f} bytes"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:,.1f} {unit}"
    return f"{n / 1000:,.1f} GB"


def quantize_rows(features: torch.Tensor) -> tuple[np.ndarray, list[list[float]]]:
    """Each row (view) as uint8 between its own minimum and maximum, in row-major order, and its
    (minimum, step): a value is restored as minimum + q * step, within step / 2."""
    flat = features.detach().to("cpu", torch.float32).flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    step = ((high - low) / 255).clamp_min(torch.finfo(torch.float32).tiny)
    rows = torch.round((flat - low[:, None]) / step[:, None]).clamp_(0, 255).to(torch.uint8)
    return rows.reshape(features.shape).numpy(), [[float(a), float(b)] for a, b in zip(low, step)]


class FeatureSet:
    """Rows of one or more memory-mapped shards, gathered into float16 batches by position."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        locations: list[tuple[str, int]],
        scales: dict[str, np.ndarray] | None = None,
    ):
        self.arrays = arrays
        self.locations = locations
        self.scales = scales or {}
        self.row_shape = next(iter(arrays.values())).shape[1:] if arrays else ()

    def __len__(self) -> int:
        return len(self.locations)

    def gather(self, positions) -> torch.Tensor:
        out = np.empty((len(positions), *self.row_shape), dtype=STORAGE_DTYPE)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for slot, position in enumerate(positions):
            shard, row = self.locations[position]
            by_shard.setdefault(shard, []).append((slot, row))
        for shard, pairs in by_shard.items():
            slots, rows = zip(*sorted(pairs, key=lambda pair: pair[1]))
            values = self.arrays[shard][list(rows)]
            if shard in self.scales:
                low, step = (self.scales[shard][list(rows), i].reshape(-1, *[1] * (values.ndim - 1)) for i in (0, 1))
                values = low + values.astype(np.float32) * step
            out[list(slots)] = values
        return torch.from_numpy(out)


def summary(root: Path) -> list[dict]:
    """Per key folder under `root`: its cut, how many views it stores, its bytes."""
    rows = []
    for folder in sorted(Path(root).glob("*/key.json")):
        folder = folder.parent
        entries = sum(len(json.loads(m.read_text()).get("entries", [])) for m in folder.glob("shard-*.json"))
        rows.append(
            {"folder": str(folder), "cut": folder.name.split("-")[0], "entries": entries, "bytes": _bytes_in(folder)}
        )
    return rows


def clear(root: Path) -> int:
    """Deletes every cache folder under `root`; returns the bytes freed."""
    freed = 0
    for folder in [p.parent for p in Path(root).glob("*/key.json")]:
        freed += _bytes_in(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def _bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
