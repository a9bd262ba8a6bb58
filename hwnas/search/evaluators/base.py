"""What an evaluator is: given an ``Arch``, a ``Budget`` and a folder, it returns an ``Evaluation``.

The search asks for two objectives per candidate: latency, which the table predicts exactly and
for free, and accuracy, which costs compute. An evaluator owns the second. Training each
candidate from scratch (``train``) is the honest, expensive one; cheaper ones (successive halving
over epochs, a weight-sharing supernet, BN-NAS indicators) return a *proxy* for the same mAP and
say so (``is_proxy``), so that a reader never mistakes a proxy for a trained detector's mAP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from hwnas.errors import HwnasError

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig
    from hwnas.spec.arch import Arch

Note = Callable[[str], None]  # a short line about what the evaluation is doing now, for the progress line


@dataclass(frozen=True)
class Budget:
    """How much one evaluation of one candidate may spend.

    ``epochs`` counts passes over at most ``max_train_images`` training images (0: all). An evaluator
    that trains spends exactly that; successive halving calls it again on the same folder with more
    epochs (the training resumes from its checkpoint); one that scores inherited weights spends
    seconds whatever the budget, and says what it spent in ``Evaluation.cost_s``.
    """

    epochs: int
    max_train_images: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.max_train_images < 0:
            raise HwnasError(f"budget of {self.epochs} epoch(s) on {self.max_train_images} image(s): need epochs >= 1 "
                             f"and images >= 0 (0: all)")


@dataclass(frozen=True)
class Evaluation:
    """One candidate's accuracy: ``score`` (COCO mAP 0.5:0.95 on val, or a proxy for it when
    ``is_proxy``), what it cost, the weights it left, or why it failed (then ``score`` is None).
    ``standalone_map``: a proxy derived from a standalone training at the search's epochs
    (``train+coverage``) carries that training's mAP, so the search need not train it again."""

    score: float | None
    cost_s: float
    is_proxy: bool
    checkpoint: Path | None = None
    failure: str | None = None
    map50: float | None = None  # mAP at IoU 0.5, where the evaluator measured one
    standalone_map: float | None = None

    def __post_init__(self) -> None:
        if (self.score is None) == (self.failure is None):
            raise HwnasError(f"an evaluation has a score or a failure reason, not both or neither "
                             f"(score {self.score}, failure {self.failure!r})")
        if self.score is not None and not math.isfinite(self.score):
            raise HwnasError(f"evaluation score {self.score}: must be finite (a diverged run is a failure)")
        if not self.cost_s >= 0:
            raise HwnasError(f"evaluation cost {self.cost_s} s: must be >= 0")
        if self.standalone_map is not None and not self.is_proxy:
            raise HwnasError("a standalone mAP beside the score belongs to a proxy evaluation only")

    @classmethod
    def failed(cls, reason: str, cost_s: float, is_proxy: bool = False) -> "Evaluation":
        return cls(None, cost_s, is_proxy, failure=reason)

    def to_dict(self) -> dict:
        return {"score": self.score, "cost_s": self.cost_s, "is_proxy": self.is_proxy,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint), "failure": self.failure,
                "map50": self.map50, "standalone_map": self.standalone_map}

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        ck = d.get("checkpoint")
        return cls(d["score"], float(d["cost_s"]), bool(d["is_proxy"]), None if ck is None else Path(ck),
                   d.get("failure"), d.get("map50"), d.get("standalone_map"))


class Evaluator(Protocol):
    """Scores one candidate. ``folder`` is the candidate's own (``RUN/trials/<id>/``): whatever the
    evaluator keeps there (checkpoints, logs) lets a rerun after kill -9 resume instead of restart.
    Expected failures (divergence, out of memory, broken data) come back as ``Evaluation.failed``;
    an exception is a bug or an interruption, and leaves the trial to be resumed."""

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation: ...


# Registry entries build an evaluator from the search's settings (data, batch size, device, seed ...).
EvaluatorFactory = Callable[["SearchConfig"], Evaluator]


def failure_reason(e: BaseException) -> str | None:
    """The one-line reason a candidate failed for an expected cause, or None for anything else
    (a bug, Ctrl-C), which the caller re-raises."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {str(e).splitlines()[0][:200]}"
    if isinstance(e, MemoryError):
        return "out of memory (host)"
    if isinstance(e, HwnasError):  # diverged, a broken image, ...
        return str(e)
    if isinstance(e, RuntimeError):
        msg = str(e).splitlines()[0][:300] if str(e) else e.__class__.__name__
        return ("out of memory: " if "out of memory" in msg.lower() else "runtime error: ") + msg
    return None
