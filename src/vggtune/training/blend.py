"""WiSE-FT (Wortsman et al., CVPR 2022): the fine-tuned parameters blended with those the fine-tuning
started from (the pretrained block and the head-only stage's head), `start + share * (tuned - start)`.
A share of 1 keeps the fine-tuning whole, 0 undoes it. One rate cannot serve every domain (BENCHMARKS.md
section 28): on photos like ImageNet's a fine-tuning moves too far, on X-rays not far enough, and the
blend lets each run's validation split say how far to go, for the cost of a few validation passes.

VGG has no batch norm whose statistics a blend would break, so the parameters blend as they are."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vggtune.progress import say
from vggtune.training.config import CHOSEN_ON_VALIDATION
from vggtune.training.validation import validate

if TYPE_CHECKING:  # annotations only
    from vggtune.training.session import Run

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the shares --blend val tries, each scored on the validation split


@dataclass(frozen=True)
class Blend:
    """The share of the fine-tuning kept, and the validation loss at each share tried (none where given)."""

    share: float
    losses: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict:
        return {"share": self.share, "validation_losses": [list(pair) for pair in self.losses]}

    def words(self) -> str:
        tried = ", ".join(f"{share:g} {loss:.4f}" for share, loss in self.losses)
        return f"blend: {self.share:g} of the fine-tuning kept" + (
            f" (validation loss at each share: {tried})" if tried else ""
        )


def starting_point(model) -> dict[str, torch.Tensor]:
    """A copy of the parameters the stage about to run will train, as they are before it."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def blend(run: Run, cut: str, start: dict[str, torch.Tensor]) -> Blend:
    """The model's trained parameters moved to the share `run.config.blend` names, or with `val` to the share
    of SHARES with the lowest validation loss (the larger share among equals; the fine-tuning whole without
    validation images)."""
    tuned = {name: p.detach().clone() for name, p in run.model.named_parameters() if name in start}
    wanted = run.config.blend
    if wanted != CHOSEN_ON_VALIDATION:
        _move(run.model, start, tuned, float(wanted))
        return Blend(float(wanted))
    losses = []
    for share in SHARES:
        _move(run.model, start, tuned, share)
        scored = validate(run, cut)
        if scored is None:
            _move(run.model, start, tuned, 1.0)
            say("blend: no validation images to choose it on; the fine-tuning kept whole")
            return Blend(1.0)
        losses.append((share, float(scored.loss)))
    ranked = [(share, loss if math.isfinite(loss) else math.inf) for share, loss in losses]
    best = min(loss for _, loss in ranked)
    share = max(share for share, loss in ranked if loss <= best)
    _move(run.model, start, tuned, share)
    chosen = Blend(share, tuple(losses))
    say(chosen.words())
    return chosen


def _move(model, start: dict, tuned: dict, share: float) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in start:
                parameter.copy_(torch.lerp(start[name].to(parameter.dtype), tuned[name], share))
