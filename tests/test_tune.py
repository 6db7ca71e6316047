"""`vggtune tune`: trials on the validation split, a study in SQLite that an interrupted search resumes,
a table of trials, the best setting trained into a normal run folder. The tiny network first; then a
real search on the real weights, nothing pinned, as CI runs it."""
from __future__ import annotations

import csv
import json

import pytest

import vggtune
from vggtune import cli
from vggtune.training.rundir import RunDir

from conftest import make_dataset, missing, require_real_weights, shared_data

TINY = ["--size", "32", "--epochs", "2", "--batch-size", "8", "--hidden", "8", "--val-split", "0.25",
        "--test-split", "0.2", "--quiet"]


def trials_of(out):
    with open(out / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_search_scores_trials_on_validation_and_trains_the_best_into_a_run_folder(tiny_weights, tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=16)
    out = tmp_path / "tune"
    assert cli.main(["tune", str(data), "--trials", "3", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    rows = trials_of(out)
    assert [row["trial"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["class_weights"] == "auto" and rows[0]["head"] == "gap"      # trial 1: the defaults
    assert all(row["state"] in ("complete", "pruned") for row in rows)
    summary = json.loads((out / "tune.json").read_text())
    best = summary["best"]
    assert best["score"] == min(float(r["val_balanced_log_loss"]) for r in rows if r["state"] == "complete")
    run = RunDir(out / "best")
    assert run.metrics().test.n > 0 and (out / "best" / "model.json").is_file()
    assert all(getattr(run.config(), name) == value for name, value in best["settings"].items())
    assert "trial" in printed and f"best: trial {best['number']}" in printed and "test metrics" in printed
    assert not (out / "trial").exists()                 # each trial's folder goes once it is scored


def test_a_stopped_search_continues_from_its_study_and_refuses_other_options(tiny_weights, tmp_path, capsys):
    import optuna
    data = make_dataset(tmp_path / "data", n_per_class=12)
    out = tmp_path / "tune"
    result = vggtune.tune(str(data), out=str(out), trials=2, size=32, epochs=2, batch_size=8, hidden=8,
                          val_split=0.25, test_split=0.2, quiet=True)
    assert [row.number for row in result.trials] == [1, 2] and result.default_trial is result.trials[0]
    assert result.best.state == "complete" and result.test is not None and result.test.n > 0
    assert json.loads((out / "tune.json").read_text()) == result.to_dict()
    study = optuna.load_study(study_name="vggtune", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()                     # a trial an interrupted call left running
    assert cli.main(["tune", str(data), "--trials", "4", "--out", str(out), *TINY]) == 0
    states = [row["state"] for row in trials_of(out)]
    assert len(states) == 4 and states[2] == "failed"   # the interrupted one is counted, one more ran
    capsys.readouterr()
    assert cli.main(["tune", str(data), "--trials", "5", "--out", str(out), *TINY[:-1], "--seed", "7"]) == 2
    assert "holds a search with other options (seed)" in capsys.readouterr().err


def test_tune_names_what_it_allows(tiny_weights, tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_per_class=8)
    assert cli.main(["tune", str(data), "--trials", "0", "--out", str(tmp_path / "t")]) == 2
    assert "--trials: received 0; allowed: a whole number >= 1" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert cli.main(["tune", str(data), "--trials", "1", "--out", str(tmp_path / "full")]) == 2
    assert "is not empty and holds no search" in capsys.readouterr().err


@pytest.mark.integration
def test_a_tiny_search_on_real_photos_with_the_defaults_users_get(tmp_path, capsys):
    """Three trials on 40 photos a class of cats-vs-dogs-2k, the real weights, the engine `auto`."""
    require_real_weights()
    source = shared_data("cats-vs-dogs-2k")
    data = tmp_path / "data"
    for label in ("cat", "dog"):
        (data / label).mkdir(parents=True)
        for path in sorted((source / label).iterdir())[:40]:
            (data / label / path.name).symlink_to(path)
    if len(list((data / "cat").iterdir())) < 40:
        missing("cats-vs-dogs-2k holds fewer than 40 cats")
    out = tmp_path / "tune"
    assert cli.main(["tune", str(data), "--trials", "3", "--out", str(out), "--val-split", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert len(trials_of(out)) == 3
    assert (out / "best" / "report.html").is_file() and (out / "best" / "README.md").is_file()
    assert RunDir(out / "best").metrics().test.accuracy >= 0.75
    assert "best: trial" in printed
