"""An accuracy assessor: a candidate's mAP predicted from its architecture and the candidates
trained so far, before (or instead of) training it.

A ridge regression of ln mAP on what separates detectors before any training: the module types
(block family, neck, head kind; one-hot), ln forward GFLOPs, ln table latency and the label coverage
(:mod:`hwnas.search.coverage`). Features are standardised so that one penalty suits them all; ln
mAP because the trained scores spread over two orders of magnitude and a few good detectors would
otherwise set the fit alone. Measured on the truth set (benchmarks/predictor_fidelity.py,
docs/benchmarks.md section 9): fitted on the 3-epoch mAP of 16 trained detectors drawn from the
searches' fronts, it ranks the truth set's 36 detectors, none of which it saw, against their
12-epoch mAP with Kendall tau 0.57 on average, where training each of them for 3 epochs reaches
0.65; a prediction costs well under a second, a 3-epoch training about 85 s here.

``ridge_weights`` is the one least-squares fit of the search: ``proposals.AccuracyModel`` (the
modular stage's estimate of a move's effect) uses it too.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

    from hwnas.spec.arch import Arch
    from hwnas.spec.space import SearchSpace

L2 = 10.0  # the penalty on standardised features (chosen among 1 and 10 on the truth set; 10 was steadier at 8-24 fits)
MIN_MAP = 1e-3  # a detector that found nothing yet counts as this, so that ln stays finite


def ridge_weights(x: "np.ndarray", y: "np.ndarray", l2: float) -> "np.ndarray":
    """Weights of the ridge regression of ``y`` on ``x`` (both centred by the caller: the intercept is
    not shrunk)."""
    import numpy as np

    return np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y)


def module_onehot(space: "SearchSpace", arch: "Arch") -> list[float]:
    """One indicator per block family, neck and head choice of ``space``."""
    module = {"block": arch.block, "neck": arch.neck, "head": arch.head.kind}
    options = (("block", space.blocks), ("neck", space.necks), ("head", space.heads))
    return [float(module[name] == opt) for name, opts in options for opt in opts]


def features(space: "SearchSpace", arch: "Arch", gflops: float, latency_ms: float, coverage: float) -> list[float]:
    return module_onehot(space, arch) + [math.log(gflops), math.log(latency_ms), coverage]


class Assessor:
    """Fitted to ``(features, mAP)`` of trained candidates; ``predict`` gives an mAP for new features."""

    def __init__(self, rows: Sequence[tuple[Sequence[float], float]], l2: float = L2) -> None:
        import numpy as np

        if len(rows) < 2:
            raise ValueError(f"an assessor needs at least 2 trained candidates, got {len(rows)}")
        x = np.array([f for f, _ in rows], dtype=float)
        y = np.log(np.maximum([m for _, m in rows], MIN_MAP))
        self.mean, self.scale = x.mean(0), x.std(0)
        self.scale[self.scale == 0] = 1.0  # a module no trained candidate differs in says nothing
        self.y0 = float(y.mean())
        self.w = ridge_weights((x - self.mean) / self.scale, y - self.y0, l2)

    def predict(self, feats: Sequence[float]) -> float:
        import numpy as np

        z = (np.asarray(feats, dtype=float) - self.mean) / self.scale
        return math.exp(self.y0 + float(z @ self.w))
