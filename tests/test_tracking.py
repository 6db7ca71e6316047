"""Runs you can compare: TensorBoard event files in every run, `vggtune runs`, and `--mlflow` against a real
MLflow server (SQLite backend, started here on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import quick_config
from vggtune.cli import main


def event_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} read back from the run's TensorBoard event files by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_every_run_writes_tensorboard_scalars_per_stage_and_final_metrics(tmp_path, dataset, tiny_weights):
    import vggtune.api
    results = vggtune.api.train_with(quick_config(dataset, tmp_path / "run"))
    scalars = event_scalars(tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for stage in ("head", "finetune"):
        rows = [row for row in history if row["stage"] == stage]
        assert [step for step, _ in scalars[f"{stage}/train_loss"]] == [row["epoch"] for row in rows]
        assert [value for _, value in scalars[f"{stage}/val_loss"]] == pytest.approx([row["val_loss"] for row in rows])
    assert scalars["head/learning_rate"][0][1] == pytest.approx(1e-2)
    assert scalars["finetune/learning_rate"][0][1] == pytest.approx(1e-3)
    assert scalars["final/test_accuracy"][0][1] == pytest.approx(results.test.accuracy)
    hparams = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert hparams and b"_hparams_/session_start_info" in b"".join(path.read_bytes() for path in hparams)


def test_resume_does_not_write_the_epochs_before_it_again(tmp_path, dataset, tiny_weights, monkeypatch):
    import vggtune.api
    from vggtune.training import schedule
    config = quick_config(dataset, tmp_path / "run", epochs=4, finetune_epochs=0, keep_state=True)
    real = schedule.train_epoch
    calls = {"n": 0}

    def stop_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule, "train_epoch", stop_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        vggtune.api.train_with(config)
    monkeypatch.setattr(schedule, "train_epoch", real)
    vggtune.api.train_with(config, resume=True)
    assert [step for step, _ in event_scalars(tmp_path / "run")["head/train_loss"]] == [1, 2, 3, 4]


def test_runs_table_sorts_and_prints_json(tmp_path, dataset, tiny_weights, capsys):
    import vggtune.api
    vggtune.api.train_with(quick_config(dataset, tmp_path / "runs" / "a", epochs=1, finetune_epochs=0))
    vggtune.api.train_with(quick_config(dataset, tmp_path / "runs" / "b", epochs=3, finetune_epochs=1))
    (tmp_path / "runs" / "unfinished").mkdir()
    rows = vggtune.api.runs(str(tmp_path / "runs"), sort="epochs")
    assert [row.run for row in rows] == ["a", "b"] and [row.epochs for row in rows] == [1, 4]
    assert all(row.split == "test" and row.images > 0 and row.accuracy_95.low <= row.accuracy for row in rows)
    assert main(["runs", str(tmp_path / "runs"), "--format", "json", "--sort", "accuracy"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["accuracy"] for row in printed] == sorted((row.accuracy for row in rows), reverse=True)
    assert sorted(printed, key=lambda row: row["run"]) == [row.to_dict() for row in rows]
    assert main(["runs", str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "data", "head"] and len(table) == 3
    assert main(["runs", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` with a SQLite backend on 127.0.0.1; its URI."""
    pytest.importorskip("mlflow", reason="the optional extra vggtune[mlflow]")
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable))
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_mlflow_gets_params_epochs_metrics_report_and_model(tmp_path, dataset, tiny_weights, mlflow_server):
    import vggtune.api
    from mlflow.tracking import MlflowClient
    config = quick_config(dataset, tmp_path / "run", no_report=False, mlflow=mlflow_server)
    results = vggtune.api.train_with(config)
    client = MlflowClient(tracking_uri=mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("vggtune").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["head"] == "flatten"
    assert run.data.params["epochs"] == "3" and run.data.params["augment.flip"] == "True"
    assert run.data.metrics["test_accuracy"] == pytest.approx(results.test.accuracy)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "head.val_loss")]
    assert steps == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "README.md", "metrics.json", "model"} <= artifacts
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert model == {"model/model.json", "model/model.safetensors", "model/config.yaml"}


def test_a_server_that_is_down_is_one_line_and_the_run_is_kept(tmp_path, dataset, tiny_weights, capsys):
    pytest.importorskip("mlflow", reason="the optional extra vggtune[mlflow]")
    status = main(["train", str(dataset), "--out", str(tmp_path / "run"), "--size", "32", "--epochs", "1",
                   "--finetune-epochs", "0", "--head", "flatten", "--hidden", "16", "--no-report",
                   "--mlflow", f"http://127.0.0.1:{free_port()}"])
    captured = capsys.readouterr()
    said = [line for line in (captured.out + captured.err).splitlines() if line.startswith("mlflow:")]
    assert status == 0 and (tmp_path / "run" / "model.safetensors").is_file()
    assert len(said) == 1 and "did not take the run" in said[0] and "saved in" in said[0]


def test_mlflow_flag_without_the_package_is_one_line_before_training(tmp_path, dataset, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)          # as if not installed
    assert main(["train", str(dataset), "--out", str(tmp_path / "run"), "--mlflow", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vggtune[mlflow]" in err
    assert not (tmp_path / "run").exists()
