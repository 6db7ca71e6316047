"""The HTTP routes of `vggtune serve` (FastAPI): the page, /predict, /explain, /health, /info, and
`serve`, which runs them. Imported only when a service starts (FastAPI reads the handlers' annotations, so they are real
module-level names)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from vggtune.deploy.service import (
    RAW_TYPES,
    BadUpload,
    Batcher,
    Model,
    ServeConfig,
    authorised,
    check_port,
    describe,
    token_from,
)
from vggtune.model.spec import ModelSpec
from vggtune.version import __version__

log = logging.getLogger("vggtune.serve")
MAX_FILES = 64
# Open with a token too: a load balancer's probe carries none, and the page (static, no data) asks for the token.
OPEN_PATHS = ("/health", "/")
DENIED = "missing or wrong token; allowed: the header Authorization: Bearer TOKEN, or ?token=TOKEN in the address"


def create_app(config: ServeConfig, load=Model, watch=None):
    """The service: the model loads in the background, /health says when it is ready. `watch(run, predictor)`
    makes the shift check its answers are told to (the API gives results/watch.py's; none without)."""
    state: dict = {"model": None, "batcher": None, "error": None}
    token = token_from(config.token)
    limit = int(config.max_upload_mb * 1024 * 1024)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def start():
            try:
                state["model"] = await asyncio.to_thread(load, config.run, config.engine, watch)
            except Exception as exc:  # noqa: BLE001 - /health reports it
                state["error"] = f"{type(exc).__name__}: {exc}"
                log.error("the model did not load: %s", state["error"])
                return
            state["batcher"] = Batcher(state["model"].classify, config.max_batch, config.wait_ms / 1000)
            if state["model"].watch:  # the training images' embeddings (seconds, once) while requests are answered
                state["watching"] = asyncio.create_task(asyncio.to_thread(state["model"].watch.load_reference))
            await state["batcher"].run()

        task = asyncio.create_task(start())
        yield
        task.cancel()

    app = FastAPI(title="vggtune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    _guard(app, token)

    def ready_model() -> Model:
        if state["model"] is None or state["batcher"] is None:
            raise BadUpload(503, "the model is still loading" if not state["error"] else state["error"])
        return state["model"]

    page_html = resources.files("vggtune.deploy").joinpath("page.html").read_text()  # read once, served often

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    @app.get("/health")
    async def health():
        if state["model"] is None or state["batcher"] is None:
            return JSONResponse(
                {"status": "failed" if state["error"] else "loading", "error": state["error"]}, status_code=503
            )
        return {"status": "ready", "model": state["model"].id}

    @app.get("/info")
    async def info():
        serving = {
            "max_batch": config.max_batch,
            "wait_ms": config.wait_ms,
            "max_upload_mb": config.max_upload_mb,
            "token_required": token is not None,
            "model_calls": state["batcher"].batches if state["batcher"] else 0,
        }
        return {**ready_model().info(), "serving": serving}

    @app.post("/predict")
    async def predict(request: Request):
        """One answer a file, in order: its prediction, or {"file", "error"} for one that cannot be read (as
        `vggtune predict` goes on past it). 422 only when no file could be read."""
        model = ready_model()
        uploads = await read_uploads(request, limit)
        decoded = await asyncio.gather(*(asyncio.to_thread(model.decode, name, data) for name, data in uploads))
        readable = [view for view, _ in decoded if view is not None]
        rows = iter(await asyncio.gather(*(state["batcher"].submit(view) for view in readable)))
        answers = [
            model.answer(name, next(rows)) if view is not None else {"file": name, "error": reason}
            for (name, _), (view, reason) in zip(uploads, decoded)
        ]
        if not readable:
            return JSONResponse(
                {
                    "error": answers[0]["error"] if len(answers) == 1 else "no file could be read",
                    "model": model.id,
                    "predictions": answers,
                },
                status_code=422,
            )
        return {"model": model.id, "predictions": answers}

    @app.post("/explain")
    async def explain(request: Request):
        model = ready_model()
        uploads = await read_uploads(request, limit)
        name, data = uploads[0]
        return await asyncio.to_thread(model.explain, name, data)

    return app


def _guard(app: FastAPI, token: str | None) -> None:
    """The token check and one log line per request (its path only), and every failure as one line of JSON."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        if request.url.path not in OPEN_PATHS and not authorised(
            token, request.headers.get("authorization"), request.query_params.get("token")
        ):
            response = JSONResponse({"error": DENIED}, status_code=401)
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # noqa: BLE001 - one line, and the service goes on
                log.exception("request failed")
                response = JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)
        # The path only: a query string may hold the token.
        log.info(
            "%s %s %d %.0f ms",
            request.method,
            request.url.path,
            response.status_code,
            1000 * (time.perf_counter() - started),
        )
        return response

    @app.exception_handler(BadUpload)
    async def bad_upload(request, exc: BadUpload):
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return JSONResponse(
            {"error": "malformed request; allowed: POST image files (multipart) or image bytes"}, status_code=422
        )


def _replay(body: bytes):
    """An ASGI `receive` that gives `body` again: the form parser reads the upload already read (and limited) above."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def read_uploads(request, limit: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: multipart files, or the body itself for image/* and
    application/octet-stream. At most `limit` bytes are read, whatever the headers say."""
    kind = request.headers.get("content-type", "")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise BadUpload(413, f"upload of {int(length)} bytes; allowed: at most {limit} bytes (--max-upload-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadUpload(413, f"upload over {limit} bytes; allowed: at most {limit} bytes (--max-upload-mb)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if kind.startswith("multipart/form-data"):
        try:
            form = await Request(request.scope, _replay(body)).form(max_files=MAX_FILES)
        except Exception as exc:  # noqa: BLE001 - python-multipart's errors vary
            raise BadUpload(400, f"malformed multipart body ({exc})") from None
        uploads = [
            (item.filename or key, await item.read()) for key, item in form.multi_items() if not isinstance(item, str)
        ]
        if not uploads:
            raise BadUpload(422, "no file in the form; allowed: one or more image files")
        return uploads
    if not kind.startswith(RAW_TYPES):
        raise BadUpload(
            415, f"content type {kind or 'none'!r}; allowed: multipart/form-data, image/*, application/octet-stream"
        )
    if not body:
        raise BadUpload(422, "empty body; allowed: the bytes of an image")
    return [(request.headers.get("x-filename", "upload"), body)]


def serve(config: ServeConfig, watch=None) -> None:
    """Runs the service until interrupted; logs one line per request (never the token)."""
    import uvicorn

    ModelSpec.load(Path(config.run))  # not a run: one line, before anything listens
    check_port(config.host, config.port)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    service_log = logging.getLogger("vggtune.serve")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    service_log.propagate = False
    service_log.info(describe(config))
    uvicorn.run(
        create_app(config, watch=watch), host=config.host, port=config.port, access_log=False, log_level="warning"
    )
