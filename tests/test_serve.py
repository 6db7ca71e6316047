"""`vggtune serve`: the API through FastAPI's test client, hostile uploads, the token, batching,
a real server process on a free loopback port, and the page in headless Chromium."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import vggtune
from vggtune import cli
from vggtune.training import schedule as training
from vggtune.errors import UserError
from vggtune.deploy.service import Batcher, ServeConfig
from vggtune.deploy.webapp import create_app

from badfiles import jpeg_bytes
from conftest import make_dataset, quick_config, shared_data, synthetic_image, tiny_weights_for_module
from hostile import make_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    with tiny_weights_for_module(root / "home"):
        data = make_dataset(root / "data", n_per_class=20, classes=("cat", "dog", "fox"))
        training.fit(quick_config(data, root / "run", epochs=3, finetune_epochs=1, no_report=True))
        yield root / "run"


def client_for(config: ServeConfig, watch=None):
    from fastapi.testclient import TestClient
    client = TestClient(create_app(config, watch=watch))
    client.__enter__()
    for _ in range(200):
        if client.get("/health", headers=_auth(config)).status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError("the model never became ready")


def _auth(config: ServeConfig) -> dict:
    return {"Authorization": f"Bearer {config.token}"} if config.token else {}


@pytest.fixture(scope="module")
def client(run):
    client = client_for(ServeConfig(str(run)))
    yield client
    client.__exit__(None, None, None)


def test_predictions_equal_vggtune_predict_on_the_same_files(client, run, tmp_path):
    files = []
    for i in range(5):
        files.append(tmp_path / f"img{i}.jpg")
        synthetic_image(i % 3, 200 + i).save(files[-1])
    answer = client.post("/predict", files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
    assert answer.status_code == 200
    served = answer.json()["predictions"]
    local, _ = vggtune.load(run).predict([str(f) for f in files])
    assert [p["file"] for p in served] == [f.name for f in files]
    for remote, mine in zip(served, local):
        assert remote["label"] == mine.label
        assert max(abs(remote["probabilities"][c] - p) for c, p in mine.probabilities.items()) < 1e-5
    raw = client.post("/predict", content=files[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.json()["predictions"][0]["label"] == local[0].label and raw.json()["model"].startswith("run@")


def test_health_and_info_describe_the_model(client, run):
    assert client.get("/health").json()["status"] == "ready"
    info = client.get("/info").json()
    assert info["classes"] == ["cat", "dog", "fox"] and info["preprocessing"]["size"] == 32
    assert info["vggtune"] == vggtune.__version__ and info["weights"] == "tiny-test"
    assert "<input id=\"file\" type=\"file\"" in client.get("/").text


def test_explain_answers_with_the_label_and_a_gradcam_png(client):
    import base64
    import io
    from PIL import Image
    answer = client.post("/explain", files=[("files", ("fox.jpg", jpeg_bytes(2, 3), "image/jpeg"))])
    assert answer.status_code == 200 and answer.json()["file"] == "fox.jpg"
    overlay = answer.json()["overlay"]
    assert overlay.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(overlay.split(",", 1)[1]))).size[0] > 0
    bad = client.post("/explain", content=b"GIF89a broken", headers={"content-type": "image/gif"})
    assert bad.status_code == 422 and bad.json()["error"]


def test_hostile_uploads_get_a_4xx_with_a_reason_and_the_service_goes_on(client, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", good_per_class=2, copies=2)
    # Every unusable kind that is bytes (not a broken link, not a good image in the wrong place).
    uploads = [Path(p) for p, word in corpus.unusable.items()
               if Path(p).is_file() and not Path(p).is_symlink() and word != "not inside a class folder"]
    kinds = {path.name.split("-")[0] for path in uploads}
    assert kinds == {"truncated", "random", "zero", "pixel", "bomb", "text"}
    for path in uploads:                   # an upload that is no usable image: 422, as the README says
        answer = client.post("/predict", files=[("files", (path.name, path.read_bytes(), "image/jpeg"))])
        assert answer.status_code == 422, (path.name, answer.status_code)
        assert "\n" not in answer.json()["error"] and answer.json()["error"]
    awkward = [Path(p) for p in corpus.usable if Path(p).is_file()]
    for path in awkward:                                         # CMYK, 16-bit, palette, EXIF...: answered
        assert client.post("/predict", files=[("files", ("x", path.read_bytes(), "image/png"))]).status_code == 200
    too_big = client.post("/predict", content=b"\0" * (50 * 1024 * 1024), headers={"content-type": "image/jpeg"})
    assert too_big.status_code == 413 and "max-upload-mb" in too_big.json()["error"]

    def chunks():                          # streamed: no Content-Length to refuse it by, so the count does
        for _ in range(12):
            yield b"\0" * (1024 * 1024)
    streamed = client.post("/predict", content=chunks(), headers={"content-type": "image/jpeg"})
    assert streamed.status_code == 413 and "upload over" in streamed.json()["error"]
    assert client.post("/predict", content=b"", headers={"content-type": "image/jpeg"}).status_code == 422
    assert client.post("/predict", content=b"hello", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/predict", data={"not": "a file"}).status_code == 415           # a form, no file
    assert client.get("/health").status_code == 200
    good = client.post("/predict", content=jpeg_bytes(1, 5), headers={"content-type": "image/jpeg"})
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] in ("cat", "dog", "fox")


def test_one_unreadable_file_among_several_gets_its_own_answer(client):
    """The good images' predictions are kept, as `vggtune predict` keeps them (the whole request was a 422)."""
    files = [("files", ("a.jpg", jpeg_bytes(0, 1), "image/jpeg")), ("files", ("broken.jpg", b"\xff\xd8 no", "image/jpeg")),
             ("files", ("b.jpg", jpeg_bytes(1, 2), "image/jpeg"))]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 200
    rows = answer.json()["predictions"]
    assert [row["file"] for row in rows] == ["a.jpg", "broken.jpg", "b.jpg"]
    assert rows[0]["label"] and rows[2]["label"] and set(rows[1]) == {"file", "error"}
    assert rows[1]["error"].startswith("broken.jpg: ") and "\n" not in rows[1]["error"]
    alone = client.post("/predict", content=jpeg_bytes(1, 2), headers={"content-type": "image/jpeg"}).json()
    assert alone["predictions"][0]["probabilities"] == rows[2]["probabilities"]
    none_readable = client.post("/predict", files=[files[1], ("files", ("x.png", b"nothing", "image/png"))])
    assert none_readable.status_code == 422 and none_readable.json()["error"] == "no file could be read"
    assert len(none_readable.json()["predictions"]) == 2


def test_a_token_is_required_when_set_and_never_logged(run, caplog):
    config = ServeConfig(str(run), token="s3cret-token")
    client = client_for(config)
    try:
        caplog.set_level("INFO", logger="vggtune.serve")
        # A load balancer's probe carries no token, and the page asks for it: both open.
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        assert "needs its token" in client.get("/").text
        for path in ("/info",):
            assert client.get(path).status_code == 401
        denied = client.post("/predict", content=jpeg_bytes(0, 1), headers={"content-type": "image/jpeg"})
        assert denied.status_code == 401 and set(denied.json()) == {"error"}
        assert "Authorization: Bearer TOKEN" in denied.json()["error"] and "?token=" in denied.json()["error"]
        assert client.post("/explain", content=jpeg_bytes(0, 1), headers={"content-type": "image/jpeg"}).status_code == 401
        assert client.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/info", headers=_auth(config)).status_code == 200
        assert client.get("/info?token=s3cret-token").status_code == 200
    finally:
        client.__exit__(None, None, None)
    assert "GET /info 200" in caplog.text and "s3cret-token" not in caplog.text


def test_other_addresses_need_a_token_or_no_auth(run):
    with pytest.raises(UserError, match="--token"):
        ServeConfig(str(run), host="0.0.0.0")
    assert ServeConfig(str(run), host="0.0.0.0", no_auth=True).no_auth
    assert ServeConfig(str(run), host="0.0.0.0", token="t").token == "t"
    assert ServeConfig(str(run), host="::1").host == "::1"                     # loopback: no token needed


def test_the_answered_images_are_checked_for_a_shift_in_the_log_and_info(tmp_path, caplog):
    """Like predict's check: quiet on images like the training images, one warning line naming calibrate once
    the last images answered come from elsewhere (noise), and /info holds the last check."""
    import io

    from vggtune.results.watch import CHECK_EVERY, Watch

    run = tmp_path / "run"
    with tiny_weights_for_module(tmp_path / "home"):                 # a model that tells its two classes apart
        data = make_dataset(tmp_path / "data", n_per_class=16, classes=("normal", "pneumonia"))
        training.fit(quick_config(data, run, epochs=12, finetune_epochs=1))

    def png(image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    client = client_for(ServeConfig(str(run)), watch=Watch.of_service)      # as vggtune.serve gives it
    try:
        for _ in range(100):
            if client.get("/info").json()["shift"]["ready"]:
                break
            time.sleep(0.1)
        assert client.get("/info").json()["shift"] == {"images_answered": 0, "checked_every": CHECK_EVERY,
                                                       "ready": True, "last_check": None}
        alike = [("files", (f"{i}.png", png(synthetic_image(i % 2, 3000 + i)), "image/png")) for i in range(CHECK_EVERY)]
        assert client.post("/predict", files=alike).status_code == 200
        shift = client.get("/info").json()["shift"]
        assert shift["images_answered"] == CHECK_EVERY and shift["last_check"]["images"] == CHECK_EVERY
        assert shift["last_check"]["warning"] is None and "shift check" not in caplog.text
        noise = [np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8) for i in range(2 * CHECK_EVERY)]
        elsewhere = [("files", (f"n{i}.png", png(Image.fromarray(a)), "image/png")) for i, a in enumerate(noise)]
        for start in range(0, len(elsewhere), CHECK_EVERY):
            assert client.post("/predict", files=elsewhere[start : start + CHECK_EVERY]).status_code == 200
        last = client.get("/info").json()["shift"]["last_check"]
        assert last["images"] == 3 * CHECK_EVERY and "differ from the training images" in last["warning"]
        assert f"shift check of the last {3 * CHECK_EVERY} images answered: these" in caplog.text
        assert "vggtune calibrate" in caplog.text
    finally:
        client.__exit__(None, None, None)


def test_images_that_arrive_together_share_a_batch():
    sizes = []

    def classify(views):
        sizes.append(len(views))
        return torch.ones(len(views), 2) / 2

    async def together(max_batch, wait_s, count):
        batcher = Batcher(classify, max_batch, wait_s)
        worker = asyncio.create_task(batcher.run())
        rows = await asyncio.gather(*(batcher.submit(torch.zeros(3, 4, 4)) for _ in range(count)))
        worker.cancel()
        return rows

    rows = asyncio.run(together(8, 0.05, 20))
    assert len(rows) == 20 and sizes == [8, 8, 4]
    sizes.clear()
    asyncio.run(together(1, 0.0, 5))
    assert sizes == [1] * 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, *flags: str, token: str | None = None, env: dict | None = None):
    """`vggtune serve` in its own process; returns (process, base URL) once /health says ready. A port
    taken between choosing it and the server binding it (another test's) is chosen again."""
    for _ in range(5):
        started = _start_once(run, flags, token, env)
        if started:
            return started
    raise AssertionError("no free port in 5 tries")


def _start_once(run: Path, flags, token, env):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vggtune", "serve", str(run), "--port", str(port), *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    token = token or (flags[flags.index("--token") + 1] if "--token" in flags else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            err = process.stderr.read()
            if "cannot listen" in err:
                return None
            raise AssertionError(err)
        try:
            if httpx.get(url + "/health", headers=headers, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("vggtune serve did not become ready in 120 s")


def stop(process) -> tuple[str, str]:
    process.terminate()
    try:
        return process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def test_a_real_server_process_answers_and_stops(run):
    process, url = start_server(run, "--token", "another-s3cret")
    try:
        assert httpx.get(url + "/health", timeout=5).status_code == 200          # the probe needs no token
        assert httpx.get(url + "/info", timeout=5).status_code == 401
        answer = httpx.post(url + "/predict", content=jpeg_bytes(2, 9), timeout=30,
                            headers={"content-type": "image/jpeg", "Authorization": "Bearer another-s3cret"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in ("cat", "dog", "fox")
        info = httpx.get(url + "/info", timeout=5, headers={"Authorization": "Bearer another-s3cret"}).json()
        assert info["shift"]["images_answered"] == 1                 # the command's service checks for a shift
    finally:
        out, err = stop(process)
    assert "http://127.0.0.1:" in err and "loopback" in err
    assert "another-s3cret" not in out + err and "POST /predict 200" in err


def test_the_token_from_the_environment_and_the_batching_flags_reach_the_service(run):
    process, url = start_server(run, "--max-batch", "3", "--wait-ms", "20", "--max-upload-mb", "2",
                                token="from-the-env", env={"VGGTUNE_TOKEN": "from-the-env"})
    try:
        assert httpx.get(url + "/info", timeout=5).status_code == 401
        auth = {"Authorization": "Bearer from-the-env"}
        six = [("files", (f"{i}.jpg", jpeg_bytes(i % 3, i), "image/jpeg")) for i in range(6)]
        assert httpx.post(url + "/predict", files=six, headers=auth, timeout=60).status_code == 200
        info = httpx.get(url + "/info", headers=auth, timeout=5).json()
        # Six images that arrive together go to the model in batches of --max-batch 3: two calls.
        assert info["serving"] == {"max_batch": 3, "wait_ms": 20.0, "max_upload_mb": 2.0, "token_required": True,
                                   "model_calls": 2}
    finally:
        out, err = stop(process)
    assert "from-the-env" not in out + err


def test_serve_mistakes_are_one_line(run, tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path)]) == 2
    assert cli.main(["serve", str(run), "--host", "0.0.0.0"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli.main(["serve", str(run), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "no model.json" in err and "--token" in err and "cannot listen" in err


def test_the_page_in_chromium_classifies_an_uploaded_photo(run, tmp_path):
    from browser import chromium, screenshot
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    photo = next((shared_data("cats-vs-dogs-2k") / "dog").glob("dog.1*.jpg"))
    expected = vggtune.load(run).predict([str(photo)])[0][0].label
    process, url = start_server(run)
    try:
        with chromium(tmp_path / "profile") as driver:
            driver.get(url + "/")
            WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "file").send_keys(str(photo))
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "label").text
                                            or d.find_element(By.ID, "error").text)
            shown = driver.find_element(By.ID, "label").text
            overlay = driver.execute_script("const i = document.getElementById('overlay'); "
                                            "return i.complete ? i.naturalWidth : 0;")
            bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
            screenshot(driver, tmp_path / "page.png")
    finally:
        stop(process)
    assert shown == expected and len(bars) == 3 and overlay > 0


def test_the_page_asks_for_the_token_in_chromium(run, tmp_path):
    """With --token the page opens without it, asks for it, and works once it is given."""
    from browser import chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    process, url = start_server(run, "--token", "page-s3cret")
    try:
        with chromium(tmp_path / "profile") as driver:
            driver.get(url + "/")
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "ask").is_displayed())
            assert not driver.find_element(By.ID, "drop").is_displayed()
            driver.find_element(By.ID, "token").send_keys("page-s3cret")
            driver.find_element(By.CSS_SELECTOR, "#ask button").click()
            WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
            assert "token=page-s3cret" in driver.current_url and driver.find_element(By.ID, "drop").is_displayed()
            driver.get(url + "/?token=wrong")
            WebDriverWait(driver, 30).until(lambda d: "not accepted" in d.find_element(By.ID, "model").text)
    finally:
        stop(process)
