"""A disk too small for the feature cache, on a real small filesystem the test mounts (tmpfs, as root;
CI runs as root): said in one line before any view is computed, and, where it fills anyway while the
cache is written (another process writing), one line and a run that resumes with what it kept."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from vggtune import cli
from vggtune.features import cache

from conftest import make_dataset, missing


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of `request.param` kilobytes, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"cannot mount a tmpfs here ({done.stderr.strip()}): the test needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


FLAGS = ["--size", "32", "--epochs", "2", "--finetune-epochs", "1", "--hidden", "8", "--batch-size", "8", "--quiet"]


@pytest.mark.parametrize("small_disk", [16], indirect=True)
def test_too_little_room_is_one_line_before_any_view_is_computed(small_disk, tmp_path, tiny_weights, monkeypatch,
                                                                  capsys):
    data = make_dataset(tmp_path / "data", n_per_class=40)
    monkeypatch.setenv("VGGTUNE_HOME", str(small_disk / "home"))
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), *FLAGS]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    free = shutil.disk_usage(small_disk).free
    assert "views to compute need about" in error and f"{free / 1000:,.1f} KB free" in error, (error, free)
    assert "--feature-storage uint8" in error and "--no-cache" in error and "VGGTUNE_HOME" in error
    assert not list((small_disk / "home").rglob("shard-*"))           # nothing was extracted
    # the ways it names work: --no-cache stores nothing and trains
    assert cli.main(["train", str(data), "--out", str(tmp_path / "live"), "--no-cache", *FLAGS]) == 0


@pytest.mark.parametrize("small_disk", [1024], indirect=True)
def test_a_disk_that_fills_while_the_cache_is_written_is_one_line_and_the_run_resumes(
        small_disk, tmp_path, tiny_weights, monkeypatch, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=40)
    monkeypatch.setenv("VGGTUNE_HOME", str(small_disk / "home"))
    real_flush, flushed = cache.ShardWriter.flush, []

    def flush_then_another_process_fills_the_disk(self):
        real_flush(self)
        if self.entries == [] and not flushed:
            flushed.append(True)              # a real writer, to the last byte: dd stops at ENOSPC
            subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=4k"], capture_output=True)

    monkeypatch.setattr(cache.ShardWriter, "flush", flush_then_another_process_fills_the_disk)
    out = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(out), *FLAGS]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "No space left on device" in error and "--resume" in error, error
    kept = list((small_disk / "home").rglob("shard-*.json"))
    assert kept                                                         # the views before the disk filled
    (small_disk / "filler").unlink()
    monkeypatch.setattr(cache.ShardWriter, "flush", real_flush)
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert (out / "model.json").is_file()
    assert set(kept) <= set((small_disk / "home").rglob("shard-*.json"))
