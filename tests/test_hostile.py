"""A folder of good images mixed with hundreds of hostile files: nothing crashes, nothing is lost."""
import csv
import io
import json
import os

import pytest
from PIL import Image

import vggtune
from vggtune import cli
from vggtune.data.items import KINDS
from vggtune.training.rundir import RunDir
from vggtune.data import dataset as data
from vggtune.data import images

from conftest import train_reported
from hostile import make_corpus


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "data")


@pytest.fixture
def files_move_after_scan(corpus, monkeypatch):
    """After the scan, some files vanish and others can no longer be read (root ignores chmod)."""
    real_scan = data.scan

    def scan_then_move(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        for path in corpus.vanish_after_scan:
            if os.path.exists(path):
                os.unlink(path)
        return result

    real_open = Image.open

    def guarded_open(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)) and os.fspath(fp) in corpus.deny_after_scan:
            raise PermissionError(13, "Permission denied", os.fspath(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(data, "scan", scan_then_move)
    monkeypatch.setattr(images.Image, "open", guarded_open)


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus.unusable) >= 200
    assert len(corpus.kinds) >= 20


def test_data_check_reports_every_unusable_file_once_and_uses_the_rest(corpus, capsys, tmp_path):
    assert cli.main(["data", "check", str(corpus.root), "--output", str(tmp_path / "rejected.csv")]) == 1     # problems found
    header, *rows = list(csv.reader(io.StringIO((tmp_path / "rejected.csv").read_text())))
    assert header == ["path", "reason", "kind", "folder"]
    reported = [path for path, _, _, _ in rows]
    assert len(reported) == len(set(reported))
    assert sorted(reported) == sorted(corpus.unusable)
    for path, reason, kind, _ in rows:
        assert corpus.unusable[path] in reason, (path, reason)
        assert kind in KINDS, (path, kind)
    usable = len(corpus.usable) + len(corpus.vanish_after_scan) + len(corpus.deny_after_scan)
    assert f"{usable} usable images in 2 classes" in capsys.readouterr().out


def test_train_evaluate_predict_survive_the_corpus(corpus, tiny_weights, files_move_after_scan, tmp_path, capsys):
    out = tmp_path / "run"
    train_reported(corpus.root, out, val_split=0.1, test_split=0.2)
    rows = RunDir(out).rejected()
    reported = {path: reason for path, reason in rows}
    for row in rows:                       # a machine-readable kind beside each reason
        assert row.kind == ("layout" if corpus.unusable.get(row.path) == "not inside a class folder" else "unreadable")
    assert len(rows) == len(reported)                               # each once
    moved = corpus.vanish_after_scan + corpus.deny_after_scan
    assert set(reported) == set(corpus.unusable) | set(moved)
    assert all("vanished" in reported[p] for p in corpus.vanish_after_scan)
    assert all("permission denied" in reported[p] for p in corpus.deny_after_scan)
    splits = json.loads((out / "splits.json").read_text())
    used = [row["path"] for name in ("train", "val", "test") for row in splits[name]]
    assert sorted(used) == sorted(corpus.usable)                    # every usable file, converted
    assert any("undecodable" in p for p in used)
    page = (out / "report.html").read_text()                        # written, bad files and odd names listed
    assert page.endswith("</html>\n") and "Left out of the training data (" in page

    result = vggtune.evaluate(str(out), data=str(corpus.root))
    assert result.metrics.n == len(corpus.usable)
    assert "Unreadable in " in (out / "evaluation.html").read_text()
    assert {r["path"] for r in result.to_dict()["rejected"]} >= {p for p in corpus.unusable if "horse" not in p} - set()

    assert cli.main(["predict", str(out), str(corpus.root / "cat"), str(corpus.root / "dog"), "--format", "json"]) == 1   # the rest written, then 1
    captured = capsys.readouterr()
    predicted = json.loads(captured.out)
    assert len(predicted) == len(corpus.usable)
    assert captured.err.count("skipped") >= len(corpus.unusable) - 1    # all but the root-level file
