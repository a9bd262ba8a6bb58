"""Evaluators that train each candidate from scratch as ``train`` does and rank it by its val mAP
times a factor read off the architecture or the data: a correction for what a short training
cannot see yet. The score is a proxy (``is_proxy``: the product ranks, it is not an mAP); the
candidate's own mAP is a real standalone training's at the search's epochs (``standalone_map``), so
pareto.json carries it as ``map`` and the search has nothing to train again at the end.

``train+coverage``: times the detector's *label coverage* (:mod:`hwnas.search.coverage`). A short
training reads how much a detector has learnt so far, not how much it can learn. A structure whose
levels leave boxes without a single positive (at 128 px: no P3, so half the boxes under 16 px are
never learnt) can score well at 3 epochs and then plateau. Over the truth set's 36 detectors
(docs/benchmarks.md section 9) this ranks the 12-epoch mAP (mean of two seeds) with Kendall tau
0.75 (Spearman 0.90), where the 3-epoch mAP alone reaches 0.65 (0.82); the share is read in
milliseconds, with no training.

``train+growth``: times the detector's forward FLOPs to the power ``GROWTH_EXPONENT``. Bigger
detectors learn more slowly at first and keep learning longer: on the truth set the growth of mAP
from 3 to 12 epochs rises with FLOPs (log-log slope 0.20, correlation 0.42 over the 36), so a
3-epoch score read as it is ranks a structure's deeper and wider variants below its smaller ones
and a search following it stops at the cheap end of the latency range. FLOPs, not the table's
latency, because how fast a detector learns depends on its size, not on the device it will run on.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwnas.search.evaluators.base import Budget, Evaluation, Note
from hwnas.search.evaluators.train import TrainEvaluator

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig
    from hwnas.spec.arch import Arch

# The log-log slope of (12-epoch mAP / 3-epoch mAP) on forward FLOPs over the truth set's 36
# detectors (benchmarks/coverage_fronts.py fits it). It extrapolates a 3-epoch score to 12 epochs on the
# generated shapes at 128 px; other lengths and data are not measured.
GROWTH_EXPONENT = 0.20


@lru_cache(maxsize=4096)
def forward_gflops(arch: "Arch", num_classes: int) -> float:
    """GFLOPs of one forward pass at the arch's input size (torch's FlopCounterMode: convolutions and
    matrix products, which is where a detector's compute is)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hwnas.models.detector import Detector

    model = Detector.from_arch(arch, num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *arch.input_hw))
    return counter.get_total_flops() / 1e9


class ScaledEvaluator:
    """``train``'s evaluation, its score multiplied by ``factor(arch, folder)`` (the folder holds the
    training's metrics.json)."""

    def __init__(self, cfg: "SearchConfig", factor: Callable[["ScaledEvaluator", "Arch", Path], float]) -> None:
        self.train = TrainEvaluator(cfg)
        self.data = cfg.data
        self.factor = factor

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        ev = self.train(arch, budget, folder, note)
        if ev.score is None:
            return replace(ev, is_proxy=True)
        t0 = time.perf_counter()
        factor = self.factor(self, arch, folder)
        return replace(ev, score=ev.score * factor, cost_s=ev.cost_s + time.perf_counter() - t0, is_proxy=True,
                       standalone_map=ev.score)


def coverage_factor(ev: ScaledEvaluator, arch: "Arch", folder: Path) -> float:
    from hwnas.search.coverage import label_coverage

    return label_coverage(arch, ev.data, ev.train.train_cfg)


def growth_factor(ev: ScaledEvaluator, arch: "Arch", folder: Path) -> float:
    classes = len(json.loads((folder / "metrics.json").read_text())["class_names"])
    return forward_gflops(arch, classes) ** GROWTH_EXPONENT


def coverage_evaluator(cfg: "SearchConfig") -> ScaledEvaluator:
    return ScaledEvaluator(cfg, coverage_factor)


def growth_evaluator(cfg: "SearchConfig") -> ScaledEvaluator:
    return ScaledEvaluator(cfg, growth_factor)
