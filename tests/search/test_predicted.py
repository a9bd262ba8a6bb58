"""The accuracy assessor (hwnas.search.assessor) and ``train+predict``: the fit recovers an order it
was not shown, a search trains its warm-up and predicts the rest from those trainings, the front
is trained standalone, and a candidate keeps its decision across a restart."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scipy.stats import kendalltau

from conftest import search_world
from hwnas.cli.app import main
from hwnas.search.assessor import Assessor
from hwnas.search.evaluators import make_evaluator
from hwnas.search.evaluators.predicted import WARMUP
from hwnas.search.runner import SearchConfig
from hwnas.spec.arch import Arch


@pytest.fixture(scope="module")
def world(tmp_path_factory, ort_cpu) -> dict:
    return search_world(tmp_path_factory, ort_cpu, "predict-search", 24)


def test_the_assessor_ranks_unseen_candidates_by_the_trend_of_the_trained_ones() -> None:
    """mAP that grows with the second feature and falls with the third, times noise of 10 %: fitted on
    12 rows, the assessor orders 30 others as their noiseless mAP does, and a feature no row varies
    in (the first) neither breaks the fit nor moves a prediction."""
    rng = random.Random(0)

    def draw() -> tuple[list[float], float]:
        f = [1.0, rng.uniform(0, 2), rng.uniform(0, 1)]
        return f, 0.05 * 2.0 ** (f[1] - 0.5 * f[2])

    rows = [draw() for _ in range(12)]
    noisy = [(f, m * rng.uniform(0.9, 1.1)) for f, m in rows]
    unseen = [draw() for _ in range(30)]
    a = Assessor(noisy)
    predicted = [a.predict(f) for f, _ in unseen]
    assert kendalltau(predicted, [m for _, m in unseen]).statistic > 0.8
    assert a.predict([7.0, 1.0, 0.5]) == pytest.approx(a.predict([1.0, 1.0, 0.5]))
    with pytest.raises(ValueError):
        Assessor(noisy[:1])


@pytest.mark.slow
def test_a_search_trains_the_warm_up_and_predicts_the_rest_from_it(world) -> None:
    out = world["dir"] / "train+predict"
    n = WARMUP + 4
    assert main(["search", "--data", str(world["data"]), "--table", str(world["table"]), "--space", "tiny",
                 "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1",
                 "--no-measure", "--trials", str(n), "--population", "2", "--evaluator", "train+predict"]) == 0
    s = json.loads((out / "search.json").read_text())
    scored = [t for t in s["trials"] if t["state"] == "complete" and t["stage"] != "baseline"]
    assert len(scored) == n and all(t["evaluator"] == "train+predict" for t in scored)
    trained = [t for t in scored if t["proxy_map"] is None]
    predicted = [t for t in scored if t["proxy_map"] is not None]
    assert len(trained) == WARMUP and len(predicted) == n - WARMUP
    for t in trained:  # a real training's mAP, kept for the fit
        metrics = json.loads((Path(t["checkpoint"]).parent / "metrics.json").read_text())
        assert t["map"] == pytest.approx(metrics["map"])
    kept = {json.loads(p.read_text())["arch"]: json.loads(p.read_text())["map"] for p in (out / "assessor" / "trained").glob("*.json")}
    assert kept == pytest.approx({t["arch"]: t["map"] for t in trained})
    # every prediction is the assessor fitted on those trainings (one worker: all finished before the first prediction)
    ev = make_evaluator(SearchConfig(world["data"], world["table"], out, space="tiny", evaluator="train+predict",
                                     epochs=1, batch_size=8))
    fit = Assessor([(ev.features(Arch.parse(a)), m) for a, m in kept.items()])
    for t in predicted:
        assert t["proxy_map"] == pytest.approx(fit.predict(ev.features(Arch.parse(t["arch"]))), rel=1e-9)
    assert len({round(t["proxy_map"], 12) for t in predicted}) > 1  # the fit tells candidates apart
    front = json.loads((out / "pareto.json").read_text())
    assert front and all(r["map"] is not None for r in front)  # predicted members trained standalone at the end


def test_a_candidate_keeps_its_decision_across_a_restart(world, tmp_path) -> None:
    """The decision to train or predict is written before any work: a restarted worker reads it back
    even when the counts have since changed, so a killed training resumes as a training."""
    cfg = SearchConfig(world["data"], world["table"], tmp_path, space="tiny", evaluator="train+predict", epochs=1,
                       batch_size=8)
    first = make_evaluator(cfg)
    a = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/retina_d1_c16/bn")
    assert first.claim(a)  # nothing trained yet: the warm-up trains it
    for i in range(WARMUP):  # then the warm-up finishes without it (other candidates, other workers)
        b = f"i64/basic_c{8 * (i + 2)}_1-2-2-2/fpn_p3-5_c16/retina_d1_c16/bn"
        (tmp_path / "assessor" / "trained").mkdir(parents=True, exist_ok=True)
        (tmp_path / "assessor" / "trained" / f"{i}.json").write_text(json.dumps({"arch": b, "map": 0.1}))
    restarted = make_evaluator(cfg)
    assert restarted.claim(a)
    c = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/fcos_d1_c16/bn")
    assert not restarted.claim(c)  # a new candidate past the warm-up is predicted
