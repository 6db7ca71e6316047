"""`vggtune serve`: one loaded model behind HTTP (FastAPI on uvicorn), with a web page.

Requests that arrive together are classified together: each decoded image waits at most
`wait_ms` for others, up to `max_batch`, then the batch runs once (`Batcher`). Uploads are
bounded (size, pixels, image types only); a bad upload is a 4xx with a one-line JSON reason,
never a 500, and never stops the service; in a request of several files each unreadable one gets its
own reason beside the others' predictions. Off the loopback interface a token is required
(`Authorization: Bearer TOKEN`, or `?token=`), unless `--no-auth` says otherwise; `/health` (for a
load balancer's probe) and the page (which asks for the token) answer without it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vggtune import runfiles
from vggtune.deploy.predict import Predictor
from vggtune.errors import UserError
from vggtune.features.extract import decode_clean
from vggtune.fsutil import display_path, file_digest
from vggtune.version import __version__

TOKEN_VARIABLE = "VGGTUNE_TOKEN"
RAW_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class ServeConfig:
    run: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 10.0
    max_batch: int = 16
    wait_ms: float = 5.0  # how long an image waits for others to share its batch
    token: str | None = None
    no_auth: bool = False
    engine: str = "auto"  # what runs the frozen blocks of each batch (features/engine.py)

    def __post_init__(self):
        if self.max_upload_mb <= 0 or self.max_batch < 1 or self.wait_ms < 0:
            raise UserError(
                f"serve: --max-upload-mb {self.max_upload_mb}, --max-batch {self.max_batch}, "
                f"--wait-ms {self.wait_ms}; allowed: > 0, >= 1, >= 0"
            )
        if not loopback(self.host) and not self.token and not self.no_auth:
            raise UserError(
                f"serve: --host {self.host} is reachable from other machines and no token is set; "
                f"allowed: --token TOKEN (or {TOKEN_VARIABLE}), --no-auth to serve without one, "
                "or --host 127.0.0.1"
            )


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Batcher:
    """Collects images from concurrent requests into batches for one model call."""

    def __init__(self, classify, max_batch: int, wait_s: float):
        self.classify, self.max_batch, self.wait_s = classify, max_batch, wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0  # how many model calls, for /info and the load test

    async def submit(self, view: torch.Tensor) -> torch.Tensor:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((view, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            try:
                probabilities = await asyncio.to_thread(self.classify, torch.stack([view for view, _ in batch]))
                for (_, future), row in zip(batch, probabilities):
                    if not future.done():
                        future.set_result(row)
            except Exception as exc:  # noqa: BLE001 - every waiting request hears of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            self.batches += 1


class Model:
    """The predictor, its identity and what a client needs to know about it."""

    def __init__(self, run: str, engine: str = "auto", watch=None):
        self.predictor = Predictor(run, engine=engine)
        self.run = Path(run)
        # the shift check (results/watch.py's Watch, given by the API), told what the service answers
        self.watch = watch(run, self.predictor) if watch else None
        digest = file_digest(self.run / runfiles.WEIGHTS)[:12]
        self.id = f"{self.run.resolve().name}@{digest}"

    def info(self) -> dict:
        spec = self.predictor.spec
        return {
            "model": self.id,
            "classes": list(spec.classes),
            "weights": spec.weights,
            "preprocessing": spec.preprocessing.to_dict(),
            "precision": self.predictor.runtime.precision,
            "engine": self.predictor.engine.describe(),
            "vggtune": __version__,
            **spec.task.metadata(spec.classes, spec.scoring),
            "shift": self.watch.info() if self.watch else None,
        }

    def classify(self, views: torch.Tensor) -> torch.Tensor:
        """A batch's probabilities; its images and the classes given go to the shift check."""
        probabilities, embedded = self.predictor.scored(views)
        spec, classes = self.predictor.spec, self.predictor.classes
        given = [spec.task.answer(classes, decided)[0] for decided in spec.decide(probabilities.numpy())]
        if self.watch:
            self.watch.add(embedded.numpy(), given)
        return probabilities

    def decode(self, name: str, data: bytes) -> tuple[torch.Tensor | None, str | None]:
        """(the clean view, None), or (None, "name: why it cannot be read")."""
        view, reason = decode_clean(data, self.predictor.preprocessing)
        return (None, f"{name}: {reason}") if reason else (view, None)

    def answer(self, name: str, row: torch.Tensor) -> dict:
        """One image's answer: its label and every class's probability; a multi-label model's `labels` (those
        past their thresholds) with `label` them joined by ";", as `vggtune predict` answers."""
        classes, spec = self.predictor.classes, self.predictor.spec
        probabilities = {c: round(float(p), 6) for c, p in zip(classes, row)}
        label, labels = spec.task.answer(classes, spec.decide(row[None].numpy())[0])
        return {
            "file": name,
            "label": label,
            **({"labels": labels} if labels is not None else {}),
            "probabilities": probabilities,
            "model": self.id,
        }

    def explain(self, name: str, data: bytes) -> dict:
        """The answer for one upload with its Grad-CAM overlay (a PNG data URL): one decode, one network pass."""
        import base64
        import io

        explanations, rejected = self.predictor.explain([data])
        if rejected:
            raise BadUpload(422, f"{name}: {rejected[0][1]}")
        explanation = explanations[0]
        buffer = io.BytesIO()
        explanation.overlay().save(buffer, format="PNG")
        row = torch.tensor([explanation.probabilities[c] for c in self.predictor.classes])
        return {
            **self.answer(name, row),
            "overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        }


class BadUpload(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def token_from(config_token: str | None) -> str | None:
    return config_token or os.environ.get(TOKEN_VARIABLE) or None


def authorised(expected: str | None, header: str | None, query: str | None) -> bool:
    if not expected:
        return True
    given = (header or "").removeprefix("Bearer ").strip() or (query or "")
    return hmac.compare_digest(given.encode(), expected.encode())


def describe(config: ServeConfig) -> str:
    where = "this machine only (loopback)" if loopback(config.host) else "other machines too"
    auth = "a token is required" if token_from(config.token) else "no token"
    return f"serving {display_path(config.run)} on http://{config.host}:{config.port}/ ({where}; {auth})"


def check_port(host: str, port: int) -> None:
    """A port that is taken or not ours to bind is a one-line mistake, before the model loads."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"serve: cannot listen on {host}:{port} ({exc.strerror}); "
                "allowed: a free port (--port) on an address of this machine (--host)"
            ) from None
