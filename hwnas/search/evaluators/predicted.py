"""``train+predict``: a few candidates trained, the others' mAP predicted from them.

The assessor idea (DC-NAS's accuracy predictor, without its graph network): the first ``WARMUP``
candidates are trained (``train``, the budget's epochs; their mAP is real, not a proxy); after that
one candidate in ``TRAIN_EVERY`` is trained and the rest are scored by
:class:`hwnas.search.assessor.Assessor` fitted to every trained candidate so far. A prediction costs
a forward pass for the FLOPs and the label coverage (under a second at 128 px here), so past the
warm-up the search scores about ``TRAIN_EVERY`` times the candidates per CPU-hour of ``train``.
What that buys in ranking is measured, not assumed: benchmarks/predictor_fidelity.py. A predicted
score is a proxy (``is_proxy``); the search trains its final front standalone, as for ``supernet``.

Which candidate is trained follows the order they are scored in: a candidate is trained while fewer
than ``WARMUP`` trainings have finished, or when trained ones would otherwise fall below one in
``TRAIN_EVERY`` of all claimed. The decision is written under a lock before any work, as
``RUN/assessor/claims/train/<slug>.json`` or ``claims/predict/<slug>.json``, so parallel workers
share one count and a candidate resumed after kill -9 keeps its decision; a trained candidate's mAP
goes to ``RUN/assessor/trained/<slug>.json``.
"""
from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.fileio import slug, write_json
from hwnas.search.evaluators.base import Budget, Evaluation, Note, failure_reason
from hwnas.search.evaluators.train import TrainEvaluator

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig
    from hwnas.spec.arch import Arch

WARMUP = 8  # trained candidates before the first prediction (the fit's rank fidelity at 8: docs/benchmarks.md)
TRAIN_EVERY = 20  # past the warm-up, one candidate in this many is trained: the 20x


class PredictedEvaluator:
    def __init__(self, cfg: "SearchConfig") -> None:
        self.cfg = cfg
        self.train = TrainEvaluator(cfg)
        self.root = Path(cfg.out) / "assessor"
        self._features: dict["Arch", list[float]] = {}

    @cached_property
    def table(self):
        from hwnas.latency.table import LatencyTable

        return LatencyTable.load(self.cfg.table)

    @cached_property
    def space(self):
        from hwnas.spec.space import get_space

        return get_space(self.cfg.space)

    def features(self, arch: "Arch") -> list[float]:
        """The assessor's features of ``arch``, kept for the life of the process (every prediction
        refits on the trained candidates' features)."""
        from hwnas.search.assessor import features
        from hwnas.search.coverage import label_coverage, training_targets
        from hwnas.search.evaluators.scaled import forward_gflops

        if arch not in self._features:
            _, classes = training_targets(arch, self.cfg.data, self.train.train_cfg)
            self._features[arch] = features(self.space, arch, forward_gflops(arch, classes),
                                            self.table.predict(arch).latency_ms,
                                            label_coverage(arch, self.cfg.data, self.train.train_cfg))
        return self._features[arch]

    def trained(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "trained").glob("*.json"))]

    def claim(self, arch: "Arch") -> bool:
        """Whether this candidate is trained (else predicted), decided once under the lock. The
        decision is the folder its claim file lies in, so counting them reads no file."""
        from hwnas.search.supernet import locked

        name, claims = f"{slug(str(arch))}.json", self.root / "claims"
        with locked(self.root):
            for kind in ("train", "predict"):
                if (claims / kind / name).exists():
                    return kind == "train"
            trains = len(list((claims / "train").glob("*.json")))
            total = trains + len(list((claims / "predict").glob("*.json")))
            train = len(list((self.root / "trained").glob("*.json"))) < WARMUP or trains * TRAIN_EVERY <= total
            write_json(claims / ("train" if train else "predict") / name, {"arch": str(arch)})
            return train

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        from hwnas.search.assessor import Assessor
        from hwnas.spec.arch import Arch

        done = folder / "predicted_score.json"
        if done.exists():  # scored before a kill: the score stands
            return Evaluation.from_dict(json.loads(done.read_text()))
        if self.claim(arch):
            ev = self.train(arch, budget, folder, note)
            if ev.score is not None:
                write_json(self.root / "trained" / f"{slug(str(arch))}.json", {"arch": str(arch), "map": ev.score})
            return ev
        t0 = time.perf_counter()
        try:
            rows = [(self.features(Arch.parse(r["arch"])), r["map"]) for r in self.trained()]
            score = Assessor(rows).predict(self.features(arch))
        except BaseException as e:
            reason = failure_reason(e)
            if reason is None:
                raise
            return Evaluation.failed(reason, time.perf_counter() - t0, is_proxy=True)
        ev = Evaluation(score, time.perf_counter() - t0, is_proxy=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(done, {**ev.to_dict(), "fitted_on": len(rows)})
        return ev
