"""`--mlflow URI`: a finished run sent to an MLflow tracking server (the optional extra, `pip install
'vggtune[mlflow]'`): its parameters (the resolved config), every epoch's metrics (step: the epoch
within its stage, one key per stage), the final metrics, and as artifacts the report, the model card
and the model (model.json, model.safetensors, config.yaml: enough to predict, as the run folder is).

It is sent when the run has ended, from the run folder, so a server that is down or refuses costs
one line and nothing else: the run folder is the record. The experiment is $MLFLOW_EXPERIMENT_NAME,
else "vggtune".
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from vggtune import runfiles
from vggtune.errors import UserError
from vggtune.fsutil import display_path
from vggtune.progress import say
from vggtune.training.tracking import flat_config

if TYPE_CHECKING:  # annotations only
    from vggtune.training.rundir import RunDir

EXPERIMENT = "vggtune"
FINAL = ("accuracy", "log_loss", "f1_macro", "roc_auc", "precision_macro", "recall_macro")
MODEL_FILES = (runfiles.MODEL, runfiles.WEIGHTS, runfiles.CONFIG)
DOCUMENTS = (runfiles.REPORT, runfiles.MODEL_CARD, runfiles.METRICS, runfiles.HISTORY)
# A server that is down answers at once with a refused connection; one that hangs must not hold the run.
QUICK_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def require() -> None:
    """Before any training: the mlflow package is there."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(
            "--mlflow: needs the mlflow package, which is not installed; allowed: "
            "pip install 'vggtune[mlflow]', or no --mlflow"
        ) from None


def log_run(folder: RunDir, uri: str) -> str | None:
    """Sends the run in `folder` to the tracking server at `uri`; its MLflow run id, or None (said in one
    line) when the server could not take it."""
    try:
        with _environment(QUICK_FAILURE):
            run_id = _send(folder, uri)
    except Exception as exc:  # noqa: BLE001 - the run is saved; the server is someone else's
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        say(
            f"mlflow: {uri} did not take the run ({type(exc).__name__}: {reason}); "
            f"it is saved in {display_path(folder.path)}"
        )
        return None
    say(f"mlflow: logged to {uri} as run {run_id}")
    return run_id


def _send(folder: RunDir, uri: str) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    run, config = folder.path, folder.config()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
    )
    created = client.create_run(
        experiment_id, run_name=run.resolve().name, tags={"vggtune.run_folder": str(run.resolve())}
    )
    run_id = created.info.run_id
    now = int(time.time() * 1000)
    params = [Param(key, str(value)[:6000]) for key, value in flat_config(config.to_dict()).items()]
    metrics = [
        Metric(f"{row.stage}.{key}", float(value), now, row.epoch)
        for row in folder.history()
        for key, value in row.figures().items()
    ]
    final = folder.finished_metrics()
    for split, scores in (("val", final.val), ("test", final.test)):
        values = scores.to_dict() if scores else {}
        metrics += [
            Metric(f"{split}_{key}", float(values[key]), now, 0) for key in FINAL if values.get(key) is not None
        ]
    for start in range(0, max(len(params), len(metrics)), 100):  # the server's batch limits
        client.log_batch(
            run_id,
            metrics=metrics[start : start + 100],
            params=params[start : start + 100],
            tags=[RunTag("vggtune.head", folder.model_spec().head.kind)] if start == 0 else [],
        )
    for name in DOCUMENTS:
        if (run / name).is_file():
            client.log_artifact(run_id, str(run / name))
    for name in MODEL_FILES:
        if (run / name).is_file():
            client.log_artifact(run_id, str(run / name), artifact_path="model")
    client.set_terminated(run_id)
    return run_id


@contextlib.contextmanager
def _environment(values: dict):
    """The variables set inside (unless the user set them), as they were after."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update({key: value for key, value in values.items() if before[key] is None})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
