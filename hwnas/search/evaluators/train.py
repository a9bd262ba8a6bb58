"""``train``: each candidate trained from scratch for the budget's epochs, scored by its val mAP.

Not a proxy: the score is the mAP of exactly the detector a user would ship after that training.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.search.evaluators.base import Budget, Evaluation, Note, failure_reason

if TYPE_CHECKING:
    from hwnas.spec.arch import Arch
    from hwnas.search.runner import SearchConfig


class TrainEvaluator:
    def __init__(self, cfg: "SearchConfig") -> None:
        self.data, self.device = cfg.data, cfg.device
        self.train_cfg = cfg.train_config()

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        import torch

        from hwnas.train.loop import train

        cfg = replace(self.train_cfg, epochs=budget.epochs, max_train_images=budget.max_train_images)
        t0 = time.perf_counter()
        try:
            res = train(arch, self.data, folder, cfg, progress=(lambda d, t, item: note(item)) if note else None)
        except BaseException as e:
            reason = failure_reason(e)
            if reason is None:
                raise
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()  # the next candidate gets the memory this one held
            return Evaluation.failed(reason, time.perf_counter() - t0)
        m = res.metrics
        return Evaluation(float(m["map"]), time.perf_counter() - t0, is_proxy=False, checkpoint=folder / "last.pt",
                          map50=float(m["map50"]))
