"""``train+bn``, ``train+depth``: each structure's first candidate trained, the rest of it ranked against it.

``train+bn`` ranks the rest by BN-NAS. Why training and an indicator together
(benchmarks/results/rank_fidelity_hood.md): within one structure (resolution, block family, neck
and levels, head kind, norm) the BN-NAS indicator ranks 12 detectors against
their 12-epoch mAP (two seeds) with Kendall tau 0.76, where 3 epochs of training rank them
backwards (-0.27); the order comes from the number of BatchNorms the path sums over (counted on an
untrained supernet, tau 0.80), not from the trained scales (docs/search.md);
between structures the 3-epoch mAP is what separates them (tau 0.63 over the 36 of the global set), and a
BN indicator, read from a different supernet for each structure, has no common scale.

So the first candidate the search sends to a structure (usually the structural stage's) is that
structure's *anchor*: it is trained (``train``, the budget's epochs) and its mAP is a real one.
Every later candidate of the structure is scored on the structure's BN supernet (span
``structure``, ``RUN/bn-supernets/<key>/``) and put on the mAP scale by the ratio of its indicator
to the anchor's: ``anchor_map * indicator / anchor_indicator``. The ratio is the simplest map that
keeps BN-NAS's order inside the structure and the anchor's level between structures; on the
neighbourhood above it predicts a detector's mAP from any one anchor with a mean absolute error of
0.013, against 0.032 for taking the anchor's mAP for every detector. The estimate is a proxy
(``is_proxy``): the search trains its final front standalone, as for ``supernet`` and ``bn``.

``train+depth``: the same anchoring with the indicator BN-NAS reads from an *untrained* supernet,
the number of normalisation layers in the detector (:func:`hwnas.search.supernet.norm_layers`; every
scale factor is 1 there). On the neighbourhood above that count ranks the 12 detectors with tau
0.80, above the trained indicator's 0.76, and it costs no supernet. Measured in a search
(docs/benchmarks.md section 9) the time saved did not go to more structures: the modular stage
scored the few anchored structures' moves until none was new.

Anchors are kept in ``RUN/anchors/<key>/anchor.json``; the first worker to reach a structure trains its
anchor under that structure's lock, and a second worker waits for it. An anchor whose training
fails is not kept: the structure's next candidate becomes the anchor instead.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.fileio import write_json
from hwnas.search.evaluators.base import Budget, Evaluation, Note, failure_reason
from hwnas.search.evaluators.supernet import SupernetEvaluator
from hwnas.search.evaluators.train import TrainEvaluator

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig
    from hwnas.spec.arch import Arch


INDICATORS = ("bn", "depth")


class AnchoredEvaluator:
    """``indicator``: ``bn`` (BN-NAS on the structure's BN-only supernet) or ``depth`` (its
    normalisation layers, no supernet)."""

    def __init__(self, cfg: "SearchConfig", indicator: str = "bn") -> None:
        if indicator not in INDICATORS:
            raise ValueError(f"indicator {indicator!r}: one of {', '.join(INDICATORS)}")
        self.cfg, self.kind = cfg, indicator
        self.train = TrainEvaluator(cfg)
        # Anchoring is per structure, so the BN supernets span one structure whatever --supernet-span says.
        self.bn = SupernetEvaluator(replace(cfg, supernet_span="structure"), bn_nas=True)
        self.anchor_indicator: dict[str, float] = {}  # structure key -> its anchor's indicator, for this worker

    def anchor_folder(self, key: str) -> Path:
        """``anchor.json`` and the lock that makes one worker train it."""
        return Path(self.cfg.out) / "anchors" / key

    def indicator(self, arch: "Arch", note: Note | None) -> float:
        from hwnas.search.supernet import bn_indicator, norm_layers

        return float(norm_layers(arch)) if self.kind == "depth" else bn_indicator(self.bn.supernet(arch, note), arch)

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        from hwnas.search.supernet import Neighbourhood, locked
        from hwnas.spec.arch import Arch

        done = folder / "anchored_score.json"
        if done.exists():  # scored before a kill: the score stands
            return Evaluation.from_dict(json.loads(done.read_text()))
        key = Neighbourhood.of(self.bn.space, arch, "structure").key
        path = self.anchor_folder(key) / "anchor.json"
        with locked(path.parent):
            if not path.exists():  # this candidate anchors its structure: a trained mAP
                ev = self.train(arch, budget, folder, note)
                if ev.score is not None:  # the score first: a kill between the two leaves no anchor, not a lost score
                    write_json(done, ev.to_dict())
                    write_json(path, {"arch": str(arch), "map": ev.score})
                return ev
        anchor = json.loads(path.read_text())
        t0 = time.perf_counter()
        try:
            if key not in self.anchor_indicator:
                self.anchor_indicator[key] = self.indicator(Arch.parse(anchor["arch"]), note)
            ratio = self.indicator(arch, note) / self.anchor_indicator[key]
        except BaseException as e:
            reason = failure_reason(e)
            if reason is None:
                raise
            return Evaluation.failed(reason, time.perf_counter() - t0, is_proxy=True)
        ev = Evaluation(anchor["map"] * ratio, time.perf_counter() - t0, is_proxy=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(done, ev.to_dict())
        return ev
