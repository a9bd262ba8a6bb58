"""``hwnas search --evaluator halving`` end to end: asynchronous successive halving over epochs,
promotions that continue training from checkpoints, and a kill -9 in the middle of it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import search_world, sigkill_when
from hwnas.cli.app import main
from hwnas.search.halving import promoted, rung_epochs
from hwnas.search.runner import slug

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ort_cpu) -> dict:
    return search_world(tmp_path_factory, ort_cpu, "halving-search", 24)


def _args(setup, out, *extra) -> list[str]:
    return ["search", "--data", str(setup["data"]), "--table", str(setup["table"]), "--space", "tiny",
            "--out", str(out), "--epochs-per-trial", "4", "--eta", "2", "--batch-size", "8", "--threads", "1",
            "--no-measure", "--evaluator", "halving", *map(str, extra)]


def _check_halving(out: Path) -> dict:
    """What successive halving must have done, read from the finished search's files."""
    s = json.loads((out / "search.json").read_text())
    rungs = rung_epochs(4, 2)
    assert rungs == (1, 2, 4)
    done = [t for t in s["trials"] if t["state"] == "complete" and t["stage"] != "baseline"]
    for stage in ("structural", "modular"):
        mine = [t for t in done if t["stage"] == stage]
        for i, e in enumerate(rungs[:-1]):
            at = [t for t in mine if t["rungs"].get(str(e)) is not None]
            went_on = {t["arch"] for t in at if str(rungs[i + 1]) in t["rungs"]}
            if len(at) < 2:  # fewer than eta candidates at a rung: none goes on
                assert not went_on
                continue
            # the stage ends with no promotion due: the best half of each rung's field (by
            # non-dominated rank on mAP at that rung and latency) went on; earlier promotions, made
            # when they were the best of a smaller field, stay
            best = {at[j]["arch"] for j in promoted([(t["rungs"][str(e)], t["predicted_latency_ms"]) for t in at], 2)}
            assert best <= went_on
    for t in done:
        top = max(int(e) for e, v in t["rungs"].items() if v is not None)
        ck = torch.load(Path(out / "trials" / slug(t["arch"]) / "last.pt"), map_location="cpu", weights_only=False)
        if t["map"] is not None and t["proxy_map"] is None:  # reached the top rung: an mAP, not a proxy
            assert top == 4
        # the checkpoint trained exactly to the highest rung reached (or on to 4 epochs on the front)
        assert ck["epoch"] + 1 in (top, 4)
    assert any(len(t["rungs"]) > 1 for t in done)  # something was promoted
    return s


@pytest.mark.slow
def test_halving_search_promotes_the_best_of_each_rung_and_continues_their_training(setup) -> None:
    out = setup["dir"] / "run"
    assert main(_args(setup, out, "--trials", 8, "--population", 2)) == 0
    s = _check_halving(out)
    promos = [json.loads(x) for x in (out / "bookkeeping.jsonl").read_text().splitlines()]
    assert any("promotion" in p for p in promos)
    front = json.loads((out / "pareto.json").read_text())
    assert front and all(r["map"] is not None for r in front)  # proxies on the front were trained on to 4 epochs
    assert s["counts"]["scored"] == 8


@pytest.mark.slow
def test_kill_9_during_a_promotion_then_rerun_finishes_it(setup, tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hwnas.cli.app", *_args(setup, out, "--trials", 8, "--population", 2)]
    book = out / "bookkeeping.jsonl"

    def in_flight() -> set[str]:
        """Promotions claimed in the search's database whose result is not recorded yet."""
        import sqlite3

        if not (out / "search.db").exists():
            return set()
        try:
            with sqlite3.connect(out / "search.db") as c:
                claimed = {a for (a,) in c.execute("select arch from hwnas_claims where arch like 'promote:%'")}
        except sqlite3.OperationalError:  # the claims table is not created yet
            return set()
        lines = book.read_text().splitlines() if book.exists() else []
        done = {f"promote:{p['promotion']}:{p['arch']}" for p in map(json.loads, lines) if "promotion" in p}
        return claimed - done

    def promoting() -> bool:
        return bool(in_flight())

    rc = sigkill_when(cmd, tmp_path / "log", promoting, 600, cwd=REPO, poll_s=0.05)
    assert rc == -signal.SIGKILL
    killed = in_flight()
    assert killed  # killed in the middle of a promotion
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_halving(out)
    promos = [json.loads(x) for x in book.read_text().splitlines() if "promotion" in json.loads(x)]
    assert len({(p["arch"], p["promotion"]) for p in promos}) == len(promos)  # no promotion done twice
    assert killed <= {f"promote:{p['promotion']}:{p['arch']}" for p in promos}  # the interrupted one was finished
