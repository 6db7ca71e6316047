"""`vggtune serve`'s shift check: the images it has answered, against the training images, as `predict`
checks a batch (results/shift.py). It keeps the last SHIFT_SAMPLE answered images' embeddings (taken from
the pass that classified them) and the class each was given, and checks them every CHECK_EVERY images:
the service's log gets one warning line when they differ, and /info the last check. The API gives it to
the service (deploy/ comes before results/)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from vggtune.results import shift
from vggtune.training.rundir import RunDir

if TYPE_CHECKING:  # annotations only
    from vggtune.deploy.predict import Predictor

CHECK_EVERY = 50  # answered images between two checks: each check tests the last SHIFT_SAMPLE of them


class Watch:
    """The answered images' window and the last check; `reference` is None until it is loaded (a run whose
    training images are not on this machine, or a multi-label model's, is never checked)."""

    def __init__(self, run: str, predictor: Predictor, warn):
        self.folder, self.predictor, self.warn = RunDir(run), predictor, warn
        self.reference: np.ndarray | None = None
        self.classes: list[str] = []
        # the training split's images a class: the mix the answers are held to
        self.counts: np.ndarray = np.zeros(0, dtype=np.int64)
        self.window: deque = deque(maxlen=shift.SHIFT_SAMPLE)
        self.seen = 0
        self.last: shift.Shift | None = None
        self.lock = threading.Lock()

    @classmethod
    def of_service(cls, run: str, predictor: Predictor) -> Watch:
        """The check `vggtune serve` runs: its warnings go to the service's log."""
        return cls(run, predictor, logging.getLogger("vggtune.serve").warning)

    def load_reference(self) -> None:
        """The training images' embeddings (kept in the run folder, or computed once: seconds). A run folder
        without its splits, or whose training images cannot be read here, leaves the check off, and says so."""
        if self.predictor.spec.task.several:
            return
        try:
            splits = self.folder.saved_splits()
            self.classes = list(splits.classes)
            self.counts = np.asarray(splits.counts("train"))
            self.reference = shift.training_embeddings(self.folder, self.predictor)
        except Exception as exc:  # noqa: BLE001 - the service answers without the check
            self.warn(f"shift check off: {type(exc).__name__}: {exc}")
            return
        if self.reference is None:
            self.warn("shift check off: the training images are not readable here")

    def add(self, embeddings: np.ndarray, labels: list[str]) -> None:
        """Answered images; every CHECK_EVERY of them the window is checked (in the caller's thread)."""
        with self.lock:
            self.window.extend(zip(embeddings, labels))
            before, self.seen = self.seen, self.seen + len(labels)
            due = self.reference is not None and self.seen // CHECK_EVERY > before // CHECK_EVERY
            rows = list(self.window) if due and len(self.window) >= shift.MIN_BATCH else None
        if rows is None or self.reference is None:
            return
        embeddings, given = np.stack([e for e, _ in rows]), [c for _, c in rows]
        found = shift.compare(self.reference, embeddings, given, self.classes, self.counts)
        self.last = found
        if found.warning:
            self.warn(f"shift check of the last {len(rows)} images answered: {found.warning}")

    def info(self) -> dict:
        """What /info says: images answered, and the last check (None before the first)."""
        return {
            "images_answered": self.seen,
            "checked_every": CHECK_EVERY,
            "ready": self.reference is not None,
            "last_check": self.last.to_dict() if self.last else None,
        }
