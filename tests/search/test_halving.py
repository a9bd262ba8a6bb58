"""Successive halving over epochs for two objectives (hwnas.search.halving)."""
from __future__ import annotations

import pytest

from hwnas.errors import HwnasError
from hwnas.search.halving import halving_rank_key, promoted, rung_epochs, successive_halving


@pytest.mark.parametrize("epochs, eta, rungs", [(1, 3, (1,)), (3, 3, (1, 3)), (9, 3, (1, 3, 9)), (12, 3, (1, 2, 4, 12)),
                                                (8, 2, (1, 2, 4, 8)), (10, 4, (1, 3, 10))])
def test_rungs_end_at_the_full_budget(epochs, eta, rungs) -> None:
    assert rung_epochs(epochs, eta) == rungs


def test_bad_rungs_are_refused() -> None:
    for epochs, eta in ((0, 3), (9, 1)):
        with pytest.raises(HwnasError, match="need epochs >= 1, eta >= 2"):
            rung_epochs(epochs, eta)


def test_promotion_keeps_the_front_not_just_the_most_accurate() -> None:
    # (mAP, latency): the fastest is the least accurate, yet non-dominated, so it goes on; the
    # dominated ones do not, however accurate
    points = [(0.10, 1.0), (0.30, 5.0), (0.29, 6.0), (0.28, 7.0), (0.50, 20.0), (0.20, 30.0)]
    assert sorted(promoted(points, 2)) == [0, 1, 4]
    assert len(promoted(points, 3)) == 2 and promoted([], 3) == []
    assert promoted([(0.1, 1.0)], 3) == [0]  # at least one goes on


def test_rung_by_rung_continues_only_the_promoted_and_not_the_failed() -> None:
    latency = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0, "g": 7.0, "h": 8.0, "i": 9.0}
    # accuracy grows with latency and with epochs; "h" fails at its first rung
    true = {k: 0.05 * (ord(k) - ord("a") + 1) for k in latency}
    calls = []

    def score(c: str, epochs: int) -> float | None:
        calls.append((c, epochs))
        return None if c == "h" else true[c] * epochs / 9

    reached = successive_halving(list(latency), latency.get, score, (1, 3, 9), eta=3)
    assert all(reached[c].keys() >= {1} for c in latency) and reached["h"] == {1: None}
    at3 = [c for c in latency if 3 in reached[c]]
    at9 = [c for c in latency if 9 in reached[c]]
    # 8 scored at the first rung (one failed): 8 // 3 = 2 go on, then at least one
    assert len(at3) == 2 and len(at9) == 1 and set(at9) <= set(at3)
    # every candidate is on the front here (faster and less accurate), so crowding keeps the ends
    assert {"a", "i"} <= set(at3)
    assert len(calls) == 9 + 2 + 1  # nothing trained twice at one rung
    # the ranking: candidates that went further first, then by their score there; failures last
    order = sorted(latency, key=lambda c: halving_rank_key(reached[c]), reverse=True)
    assert order[0] == at9[0] and {order[1]} == set(at3) - set(at9) and order[-1] == "h"
