"""``halving``: successive halving over training epochs, asynchronously (ASHA, Li et al. 2020).

Every candidate is trained for the first rung's epochs (``rung_epochs(--epochs-per-trial,
--eta)``, e.g. 1 of (1, 3, 9)); before proposing a new one, a worker promotes a candidate that
stands in the best ``1/eta`` of its rung by non-dominated rank on (mAP at that rung, table
latency) (``hwnas.search.halving.promoted``), continuing its training from its checkpoint to the
next rung's epochs (``Search._promote``). A score below the top rung is a proxy; at the top rung
it is the mAP ``train`` would give.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.search.evaluators.base import Budget, Evaluation, Note
from hwnas.search.evaluators.train import TrainEvaluator
from hwnas.search.halving import rung_epochs

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig
    from hwnas.spec.arch import Arch


class HalvingEvaluator:
    def __init__(self, cfg: "SearchConfig") -> None:
        self.rungs = rung_epochs(cfg.epochs, cfg.eta)
        self.train = TrainEvaluator(cfg)

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        """The first rung: ``budget.epochs`` is the top rung's."""
        return self.to_rung(arch, self.rungs[0], budget, folder, note)

    def to_rung(self, arch: "Arch", epochs: int, budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        """Train (on) to ``epochs``: a candidate's folder keeps its checkpoint, so a promotion continues it."""
        ev = self.train(arch, replace(budget, epochs=epochs), folder, note)
        return replace(ev, is_proxy=epochs < budget.epochs)
