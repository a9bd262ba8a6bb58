"""Successive halving over training epochs, for two objectives.

Successive halving (Jamieson and Talwalkar 2016; the inner loop of Hyperband, Li et al. 2017)
gives every candidate a small budget, then the best ``1/eta`` of them ``eta`` times more, rung by
rung. Optuna's pruners implement it for one objective and refuse multi-objective studies. Here
only mAP is uncertain (latency is the table's, exact), so a rung ranks its candidates by
non-dominated rank on (mAP at this rung, latency), crowding distance breaking ties within a front:
NSGA-II's survivor rule (:func:`hwnas.search.pareto.select_survivors`). Fast candidates go on by
speed, slow ones only by accuracy, and the front keeps its spread.

A promoted candidate continues from its checkpoint in its own folder (the training resumes and
re-plans its schedule for the larger number of epochs); it is never retrained from scratch.
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, Sequence, TypeVar

from hwnas.errors import HwnasError
from hwnas.search.pareto import select_survivors

T = TypeVar("T", bound=Hashable)


def rung_epochs(max_epochs: int, eta: int = 3) -> tuple[int, ...]:
    """The epochs of each rung, ascending, ending at ``max_epochs``: ``ceil(max / eta**k)``, e.g.
    (1, 3, 9) for 9 epochs and eta 3, (1, 2, 4, 12) for 12."""
    if max_epochs < 1 or eta < 2:
        raise HwnasError(f"successive halving over {max_epochs} epoch(s) with eta {eta}: need epochs >= 1, eta >= 2")
    rungs, k = [], 0
    while True:
        e = math.ceil(max_epochs / eta**k)
        if not rungs or e < rungs[-1]:
            rungs.append(e)
        if e == 1:
            return tuple(reversed(rungs))
        k += 1


def promoted(points: Sequence[tuple[float, float]], eta: int) -> list[int]:
    """Indices of the ``(mAP, latency_ms)`` points that go on to the next rung: ``len // eta`` of them
    (at least one), by non-dominated rank, then crowding."""
    return select_survivors(points, max(1, len(points) // eta)) if points else []


def successive_halving(candidates: Sequence[T], latency_ms: Callable[[T], float],
                       score: Callable[[T, int], float | None], rungs: Sequence[int],
                       eta: int = 3) -> dict[T, dict[int, float | None]]:
    """Run the rungs: ``score(candidate, epochs)`` trains (or continues training) a candidate to
    ``epochs`` and returns its mAP (None: it failed, and goes no further). Returns, per candidate,
    its score at every rung it reached."""
    reached: dict[T, dict[int, float | None]] = {c: {} for c in candidates}
    alive = list(candidates)
    for i, epochs in enumerate(rungs):
        for c in alive:
            reached[c][epochs] = score(c, epochs)
        if i + 1 == len(rungs):
            break
        scored = [c for c in alive if reached[c][epochs] is not None]
        alive = [scored[j] for j in promoted([(reached[c][epochs], latency_ms(c)) for c in scored], eta)]
    return reached


def halving_rank_key(rungs: dict[int, float | None]) -> tuple[int, float]:
    """How successive halving ranks a candidate: the highest rung it reached, then its mAP there
    (a failure last). Candidates stopped early are ranked below every one that went further."""
    top = max(rungs, default=0)
    s = rungs.get(top)
    return (top, -math.inf if s is None else s)
