"""Training for a wall-clock budget (``hwnas train --budget-min``) and the recipe version a run records,
on real training of a tiny detector on generated data.

The budgets are seconds long, and the checks on time are loose on purpose (a loaded machine slows
every iteration alike): what is checked is that the run stops on its clock, not on an epoch count,
that the schedule it ran is finished (the last rate is the cosine's floor, 1 % of the base rate),
that what it leaves is a valid checkpoint, and that a resume neither retrains a spent budget nor
mixes recipe versions.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cli_checks import assert_one_error
from hwnas.errors import HwnasError
from hwnas.spec.arch import Arch
from hwnas.train.checkpoint import load_checkpoint, load_model
from hwnas.train.loop import RECIPE_VERSION, TrainConfig, train

ARCH = Arch.parse("i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn")
LR = 2e-3


@pytest.fixture(scope="module")
def data(tiny_shapes: Path) -> Path:
    return tiny_shapes



def budget(seconds: float, **kw) -> TrainConfig:
    # 16 images in batches of 8: 2 iterations an epoch, so a budget of seconds runs many epochs
    return TrainConfig(**{"epochs": 10_000, "batch_size": 8, "lr": LR, "budget_s": seconds, **kw})


def test_budget_stops_on_time_with_a_finished_schedule_and_a_valid_checkpoint(data, tmp_path):
    res = train(ARCH, data, tmp_path / "run", budget(4.0))
    m = res.metrics
    hist = m["history"]
    # stopped by the clock: not by the epoch cap, and near the budget (the final evaluation is after it)
    assert len(hist) < 10_000 and m["iterations"] == sum(h["iterations"] for h in hist) > 4
    assert 4.0 * 0.8 <= m["budget_spent_s"] <= 4.0 * 1.5 + 1.0, m["budget_spent_s"]
    assert m["budget_s"] == 4.0 and m["epochs"] == len(hist)
    assert m["epochs_done"] == pytest.approx(m["iterations"] / 2)
    # the schedule ran to its end: the last rate is the floor of the cosine, and it fell on the way
    assert hist[-1]["lr"] == pytest.approx(LR * 0.01, rel=0.05)
    assert max(h["lr"] for h in hist) > 10 * hist[-1]["lr"]
    # a valid checkpoint of the last epoch: loads, its digest checks, it holds the final history
    ck = load_checkpoint(res.checkpoint)
    assert ck.epoch == hist[-1]["epoch"] and ck.metrics["history"][-1]["iterations"] == hist[-1]["iterations"]
    assert load_model(res.checkpoint).arch == ARCH
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe_version"] == RECIPE_VERSION


def test_a_spent_budget_is_not_trained_again_and_a_larger_one_continues(data, tmp_path):
    run = tmp_path / "run"
    first = train(ARCH, data, run, budget(2.0)).metrics
    again = train(ARCH, data, run, budget(2.0)).metrics  # rerun: nothing left to train
    assert again["iterations"] == first["iterations"] and len(again["history"]) == len(first["history"])
    more = train(ARCH, data, run, budget(5.0)).metrics  # a larger budget: the plan stretches, training goes on
    assert more["iterations"] > first["iterations"] and more["history"][:len(first["history"]) - 1] == \
        first["history"][:-1]
    assert more["history"][-1]["lr"] == pytest.approx(LR * 0.01, rel=0.05)


def test_fixed_epochs_are_unchanged_by_the_budget_machinery(data, tmp_path):
    m = train(ARCH, data, tmp_path / "run", TrainConfig(epochs=2, batch_size=8, lr=LR)).metrics
    assert [h["iterations"] for h in m["history"]] == [2, 2] and m["epochs"] == 2 and m["budget_s"] == 0
    assert m["history"][-1]["lr"] == pytest.approx(LR * 0.01)  # 4 steps of 4: the cosine's floor


def test_resume_refuses_another_recipe_version_and_reads_old_runs_as_version_1(data, tmp_path):
    run = tmp_path / "run"
    train(ARCH, data, run, TrainConfig(epochs=1, batch_size=8, lr=LR))
    with pytest.raises(HwnasError, match=f"recipe version {RECIPE_VERSION}.*version {RECIPE_VERSION + 1}"):
        train(ARCH, data, run, TrainConfig(epochs=2, batch_size=8, lr=LR, recipe_version=RECIPE_VERSION + 1))
    # a run written before the version was recorded resumes as version 1
    ck = load_checkpoint(run / "last.pt")
    replace(ck, config={k: v for k, v in ck.config.items() if k != "recipe_version"}).save(run / "last.pt")
    resumed = train(ARCH, data, run, replace(TrainConfig(epochs=2, batch_size=8, lr=LR), recipe_version=1)).metrics
    assert resumed["epochs"] == 2


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "ten"])
def test_cli_refuses_a_budget_that_is_not_minutes(data, tmp_path, capfd, value):
    argv = ["train", "--arch", str(ARCH), "--data", str(data), "--budget-min", value, "--out", str(tmp_path / "r")]
    assert_one_error(capfd, argv, "--budget-min", data, tmp_path / "r")
