"""The accuracy assessor (hwnas.search.assessor) and ``train+predict``: the fit recovers an order it
was not shown, a search trains its warm-up and predicts the rest from those trainings, the front
is trained standalone, a candidate keeps its decision across a restart and a kill -9, and two
workers in one folder share one warm-up."""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import kendalltau

from conftest import search_world, sigkill_when
from hwnas.cli.app import main
from hwnas.search.assessor import Assessor
from hwnas.search.evaluators import make_evaluator
from hwnas.search.evaluators.predicted import WARMUP
from hwnas.search.runner import SearchConfig
from hwnas.spec.arch import Arch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory, ort_cpu) -> dict:
    return search_world(tmp_path_factory, ort_cpu, "predict-search", 24)


def _search(world, out: Path, n: int, *extra: str, epochs: int = 1) -> list[str]:
    """``hwnas search`` arguments of a tiny train+predict search of ``n`` trials."""
    return ["search", "--data", str(world["data"]), "--table", str(world["table"]), "--space", "tiny",
            "--out", str(out), "--epochs-per-trial", str(epochs), "--batch-size", "8", "--threads", "1",
            "--no-measure", "--trials", str(n), "--population", "2", "--evaluator", "train+predict", *extra]


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
    assert main(_search(world, out, n)) == 0
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


def _assessor_files(out: Path) -> dict[str, set[str]]:
    """The archs claimed for training, claimed for prediction, and trained, as the assessor's folders hold them."""
    root = out / "assessor"
    return {kind: {json.loads(p.read_text())["arch"] for p in (root / sub).glob("*.json")}
            for kind, sub in (("train", "claims/train"), ("predict", "claims/predict"), ("trained", "trained"))}


def _check_decisions(out: Path, n: int, extra_trains: int) -> dict[str, set[str]]:
    """Every scored candidate was decided once and kept its decision; every claimed training finished."""
    s = json.loads((out / "search.json").read_text())
    scored = {t["arch"]: t for t in s["trials"] if t["state"] == "complete" and t["stage"] != "baseline"}
    f = _assessor_files(out)
    assert len(scored) == n and set(scored) == f["train"] | f["predict"] and not f["train"] & f["predict"]
    assert f["trained"] == f["train"]
    assert WARMUP <= len(f["train"]) <= WARMUP + extra_trains
    for arch, t in scored.items():  # a trained candidate's score is its mAP, a predicted one's a proxy
        assert (t["proxy_map"] is None) == (arch in f["train"]), arch
    return f


@pytest.mark.slow
def test_kill_9_during_a_warm_up_training_then_rerun_trains_it_once(world, tmp_path) -> None:
    out = tmp_path / "run"
    n = WARMUP + 3
    cmd = [sys.executable, "-m", "hwnas.cli.app", *_search(world, out, n, epochs=2)]

    def training_in_flight() -> set[str]:
        try:
            f = _assessor_files(out)
        except (OSError, ValueError):  # a claim file caught between its creation and its rename
            return set()
        return f["train"] - f["trained"] if len(f["trained"]) >= WARMUP // 2 else set()

    rc = sigkill_when(cmd, tmp_path / "log", lambda: bool(training_in_flight()), 600, cwd=REPO, poll_s=0.05)
    assert rc == -signal.SIGKILL
    killed = training_in_flight()
    assert len(killed) == 1
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    f = _check_decisions(out, n, 0)  # one worker: exactly the warm-up trained, the killed one among them
    assert killed <= f["trained"]
    with sqlite3.connect(out / "search.db") as c:
        archs = [a for (a,) in c.execute("select arch from hwnas_claims where arch not like 'init:%'")]
    assert len(archs) == len(set(archs)) == n  # nothing scored twice, nothing lost


@pytest.mark.slow
def test_two_workers_in_one_folder_share_the_assessor(world, postgres_db, tmp_path) -> None:
    """Two workers of one PostgreSQL study writing to the same --out (one machine) draw on one count
    of trainings and one set of trained candidates: together they train the warm-up once (one more
    at most, claimed while the other's last warm-up training was running), not once each."""
    out = tmp_path / "run"
    n = WARMUP + 6
    cmd = [sys.executable, "-m", "hwnas.cli.app", *_search(world, out, n, "--storage", postgres_db, "--study", "shared")]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    _check_decisions(out, n, 1)
