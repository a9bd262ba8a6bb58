"""Search evaluators: ``EVALUATORS`` maps a name to a factory that builds one from the search's
settings. Adding one is a module here and a line below (see docs/search.md, "Evaluators")."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hwnas.errors import HwnasError
from hwnas.search.evaluators.anchored import AnchoredEvaluator
from hwnas.search.evaluators.base import Budget, Evaluation, Evaluator, EvaluatorFactory, Note, failure_reason
from hwnas.search.evaluators.halving import HalvingEvaluator
from hwnas.search.evaluators.predicted import PredictedEvaluator
from hwnas.search.evaluators.scaled import coverage_evaluator, growth_evaluator
from hwnas.search.evaluators.supernet import SupernetEvaluator
from hwnas.search.evaluators.train import TrainEvaluator

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig

EVALUATORS: dict[str, EvaluatorFactory] = {
    "train": TrainEvaluator,
    "halving": HalvingEvaluator,
    "supernet": SupernetEvaluator,
    "bn": lambda cfg: SupernetEvaluator(cfg, bn_nas=True),
    "train+bn": AnchoredEvaluator,
    "train+depth": lambda cfg: AnchoredEvaluator(cfg, "depth"),
    "train+coverage": coverage_evaluator,
    "train+growth": growth_evaluator,
    "train+predict": PredictedEvaluator,
}
# The evaluators that train a supernet per neighbourhood (their settings belong to a study's identity).
SUPERNET_EVALUATORS = ("supernet", "bn", "train+bn")


# The evaluators that train every candidate standalone at the search's epochs (``train+coverage``
# and ``train+growth`` rank by a proxy derived from that training, and keep its mAP).
STANDALONE_EVALUATORS = ("train", "train+coverage", "train+growth")


def scores_proxies(name: str) -> bool:
    """Whether the evaluator may leave candidates without a standalone mAP on the final front, which
    the search then trains standalone (every one but those of ``STANDALONE_EVALUATORS``; halving's
    below its top rung)."""
    return name not in STANDALONE_EVALUATORS


def check_evaluator(name: str) -> None:
    if name not in EVALUATORS:
        raise HwnasError(f"--evaluator {name!r}: valid evaluators are {', '.join(EVALUATORS)}")


def make_evaluator(cfg: "SearchConfig") -> Evaluator:
    """The evaluator ``cfg.evaluator`` names, built for this search."""
    check_evaluator(cfg.evaluator)
    return EVALUATORS[cfg.evaluator](cfg)


__all__ = ["EVALUATORS", "STANDALONE_EVALUATORS", "SUPERNET_EVALUATORS", "Budget", "Evaluation", "Evaluator", "EvaluatorFactory", "Note", "check_evaluator",
           "failure_reason", "make_evaluator", "scores_proxies"]
