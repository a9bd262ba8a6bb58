"""What a run leaves besides last.pt (per-epoch log lines, RUN/results.csv, RUN/best.pt) and what
a checkpoint must prove before it is used (its epoch, finite weights, its digest, the numbers a
resume reads), all on real training on tiny generated data and through the real CLI."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from cli_checks import assert_one_error
from hwnas.spec.arch import Arch
from hwnas.cli.app import main
from hwnas.errors import HwnasError
from hwnas.models import Detector
from hwnas.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_model, save_checkpoint
from hwnas.train.loop import TrainConfig, train

RETINA = "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn"
SHAPES = ["circle", "rectangle", "triangle"]
LR = 2e-3
# 16 training images in batches of 8: 2 steps an epoch; warm-up min(100, total // 5) is 0 for
# runs of up to 2 epochs, so the rate after step s of T is LR * (0.01 + 0.99 * (1 + cos(pi s / T)) / 2).
LR_AFTER = {(2, 4): LR * (0.01 + 0.99 * 0.5), (4, 4): LR * 0.01, (2, 2): LR * 0.01}
HEADER = ["epoch", "loss", "loss_cls", "loss_box", "lr", "images_per_s", "seconds", "val_map", "val_map50"]
LINE = re.compile(r"epoch (\d+)/(\d+) loss (\S+) cls (\S+) box (\S+) lr (\S+) (\S+) img/s(?: val mAP (\S+))?")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 8, "lr": LR, **kw})


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------- 1. per-epoch lines
def test_one_log_line_per_epoch_with_its_numbers(data, tmp_path):
    lines: list[str] = []
    res = train(Arch.parse(RETINA), data, tmp_path / "run", cfg(epochs=2), log=lines.append)
    assert len(lines) == 2, lines
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for k, line in enumerate(lines):
        got = LINE.fullmatch(line)
        assert got, line
        epoch, total, loss, cls, box, lr, ips, val = got.groups()
        assert (int(epoch), int(total)) == (k + 1, 2)
        # the total is the sum of the components, so their means add up (to the printed rounding)
        assert abs(float(loss) - float(cls) - float(box)) <= 0.0015, line
        assert float(lr) == pytest.approx(LR_AFTER[(2 * (k + 1), 4)], rel=1e-2)  # printed to 3 digits
        assert float(ips) > 0
        rec = res.history[k]
        assert rec["lr"] == pytest.approx(LR_AFTER[(2 * (k + 1), 4)], rel=1e-9)
        assert rec["loss"] == pytest.approx(rec["loss_cls"] + rec["loss_box"], rel=1e-5)
        assert f"{rec['loss_cls']:.3f}" == cls and f"{rec['loss_box']:.3f}" == box
        # without --eval-every only the last epoch is scored: by the final evaluation
        assert val is None if k == 0 else float(val) == pytest.approx(m["map"], abs=5e-5)


def test_train_cli_prints_the_epoch_lines(data, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "run"
    assert main(["train", "--arch", RETINA, "--data", str(data), "--epochs", "2", "--batch-size", "8",
                 "--eval-every", "1", "--out", str(out)]) == 0
    _, stderr = capfd.readouterr()
    got = [ln for ln in stderr.splitlines() if LINE.fullmatch(ln)]
    assert [LINE.fullmatch(ln).group(1) for ln in got] == ["1", "2"] and all("val mAP" in ln for ln in got), stderr
    assert len(rows(out / "results.csv")) == 3 and (out / "best.pt").is_file()


def test_train_cli_warmup_iters_reaches_the_schedule(data, tmp_path):
    """5 epochs of 2 steps: by default the warm-up is min(100, 10 // 5) = 2 steps, so the first
    epoch ends at the peak rate; with --warmup-iters 0 the cosine starts at once and the first
    epoch ends below it. The run records the option."""
    lrs = {}
    for name, extra in (("default", []), ("none", ["--warmup-iters", "0"])):
        out = tmp_path / name
        assert main(["train", "--arch", RETINA, "--data", str(data), "--epochs", "5", "--batch-size", "8",
                     *extra, "--out", str(out)]) == 0
        lrs[name] = [float(r[HEADER.index("lr")]) for r in rows(out / "results.csv")[1:]]
        assert load_checkpoint(out / "last.pt").config["warmup_iters"] == (0 if extra else 100)
    assert lrs["default"][0] == pytest.approx(LR, rel=1e-6)
    assert lrs["none"][0] == pytest.approx(LR * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 2 / 10))), rel=1e-6)
    assert lrs["none"][-1] == pytest.approx(lrs["default"][-1]) == pytest.approx(LR * 0.01)


# ----------------------------------------------------------------------------- 2. results.csv
def test_results_csv_one_row_per_epoch_and_continued_on_resume(data, tmp_path):
    arch, out = Arch.parse(RETINA), tmp_path / "run"
    first = train(arch, data, out, cfg(epochs=1))
    one = rows(out / "results.csv")
    assert one[0] == HEADER and len(one) == 2
    row = dict(zip(HEADER, one[1]))
    assert row["epoch"] == "1" and float(row["lr"]) == pytest.approx(LR_AFTER[(2, 2)], rel=1e-9)
    assert float(row["loss"]) == first.history[0]["loss"] and float(row["seconds"]) > 0
    assert float(row["val_map"]) == first.metrics["map"] and float(row["val_map50"]) == first.metrics["map50"]

    train(arch, data, out, cfg(epochs=2))  # resumes: only epoch 2 runs
    two = rows(out / "results.csv")
    assert two[0] == HEADER and len(two) == 3 and two[1] == one[1]  # the first row is kept as it was
    row = dict(zip(HEADER, two[2]))
    assert row["epoch"] == "2" and float(row["lr"]) == pytest.approx(LR_AFTER[(4, 4)], rel=1e-9)
    m = json.loads((out / "metrics.json").read_text())
    assert float(row["val_map"]) == m["map"]


def test_results_csv_leaves_epochs_without_evaluation_empty(data, tmp_path):
    train(Arch.parse(RETINA), data, tmp_path, cfg(epochs=3, eval_every=2))
    got = [dict(zip(HEADER, r)) for r in rows(tmp_path / "results.csv")[1:]]
    assert [r["epoch"] for r in got] == ["1", "2", "3"]
    assert [r["val_map"] == "" for r in got] == [True, False, False]  # 2 by --eval-every, 3 the final
    assert [r["val_map50"] == "" for r in got] == [True, False, False]


# ----------------------------------------------------------------------------- 3. best.pt
def _score(weights: Path, data: Path) -> float:
    from hwnas.data.coco import CocoDetection
    from hwnas.data.transforms import EvalTransform
    from hwnas.evaluate.coco import evaluate

    model, arch, _ = load_model(weights)
    return evaluate(model, arch, CocoDetection.from_dir(data, "val", EvalTransform(arch.input_hw)))["map"]


def test_eval_every_keeps_the_best_checkpoint(data, tmp_path):
    # lr 1e-2 in batches of 4: the val mAP moves between epochs (it is 0 throughout at lr 2e-3)
    res = train(Arch.parse(RETINA), data, tmp_path, cfg(epochs=4, batch_size=4, lr=1e-2, eval_every=1))
    maps = [h["val"]["map"] for h in res.history]  # every epoch scored, the last by the final evaluation
    best = maps.index(max(maps))
    ck = load_checkpoint(tmp_path / "best.pt")
    assert ck.epoch == best
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["best"]["epoch"] == best and m["best"]["val_map"] == maps[best]
    assert _score(tmp_path / "best.pt", data) == maps[best]  # it holds the weights that scored it
    last = load_checkpoint(tmp_path / "last.pt").state_dict
    assert all(torch.equal(ck.state_dict[k], last[k]) for k in last) == (best == len(maps) - 1)


def test_best_so_far_survives_a_resume(data, tmp_path):
    arch = Arch.parse(RETINA)
    train(arch, data, tmp_path, cfg(epochs=1, eval_every=1))
    before = (tmp_path / "best.pt").read_bytes()
    # a first epoch that scored a perfect 1.0: no later epoch of this tiny run beats it, so a best
    # reset by the resume would replace best.pt with epoch 2
    ck = load_checkpoint(tmp_path / "last.pt").to_dict()
    assert ck["metrics"]["history"][0]["val"]["map"] < 1.0
    ck["metrics"]["history"][0]["val"]["map"] = 1.0
    torch.save(ck, tmp_path / "last.pt")
    res = train(arch, data, tmp_path, cfg(epochs=2, eval_every=1))
    assert res.history[1]["val"]["map"] < 1.0
    assert (tmp_path / "best.pt").read_bytes() == before
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["best"]["epoch"] == 0 and m["best"]["val_map"] == 1.0


def test_without_eval_every_there_is_no_best_pt(data, tmp_path):
    train(Arch.parse(RETINA), data, tmp_path, cfg(epochs=1))
    assert not (tmp_path / "best.pt").exists() and "best" not in json.loads((tmp_path / "metrics.json").read_text())


# ----------------------------------------------------------------------------- 4. checkpoint refusals
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """An untrained retina detector saved as training would (with its config: 2 epochs)."""
    arch = Arch.parse(RETINA)
    torch.manual_seed(0)
    model = Detector.from_arch(arch, len(SHAPES))
    path = tmp_path_factory.mktemp("good") / "last.pt"
    save_checkpoint(path, model=model, arch=arch, class_names=SHAPES, epoch=1, config=cfg(epochs=2))
    return path


def _edited(good: Path, folder: Path, name: str, edit) -> Path:
    """``good`` loaded, changed by ``edit(ck)`` and saved as a user's editor would: a plain torch.save."""
    ck = load_checkpoint(good).to_dict()
    edit(ck)
    folder.mkdir(exist_ok=True)
    torch.save(ck, folder / name)
    return folder / name


def _nan(ck, names):
    for k in names:
        ck["state_dict"][k] = torch.full_like(ck["state_dict"][k], math.nan)


def _float_names(ck) -> list[str]:
    return [k for k, v in ck["state_dict"].items() if v.is_floating_point()]


def _refused(capfd, data, path: Path, expect: str, tmp_path: Path) -> None:
    out = tmp_path / "eval" / "metrics.json"
    assert_one_error(capfd, ["eval", "--weights", str(path), "--data", str(data), "--out", str(out)], expect,
                     path.parent, out.parent)


@pytest.mark.parametrize("epoch", [-5, 2, 7])
def test_epoch_outside_the_run_is_refused(epoch, good, data, tmp_path, capfd):
    def edit(ck):
        ck["epoch"] = epoch

    path = _edited(good, tmp_path / "ck", "last.pt", edit)
    _refused(capfd, data, path, f"records epoch {epoch}, outside 0..1; retrain", tmp_path)


def test_nan_weights_are_refused(good, data, tmp_path, capfd):
    ck = load_checkpoint(good).to_dict()
    names = _float_names(ck)
    path = _edited(good, tmp_path / "ck", "all-nan.pt", lambda c: _nan(c, names))
    _refused(capfd, data, path, f"{len(names)} of its {len(names)} floating-point tensors are not finite "
                                f"(first: {names[0]})", tmp_path)


def test_a_diverged_run_is_refused_with_the_fix(data, tmp_path, capfd):
    """Non-finite weights written by save_checkpoint itself (a valid digest): two tensors, not the first."""
    arch = Arch.parse(RETINA)
    model = Detector.from_arch(arch, len(SHAPES))
    names = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    with torch.no_grad():
        model.state_dict()[names[3]].fill_(math.inf)
        model.state_dict()[names[5]].view(-1)[0] = math.nan
    (tmp_path / "ck").mkdir()
    path = tmp_path / "ck" / "diverged.pt"
    save_checkpoint(path, model=model, arch=arch, class_names=SHAPES, epoch=0)
    _refused(capfd, data, path, f"2 of its {len(names)} floating-point tensors are not finite (first: {names[3]}); "
                                f"retrain (if training diverged, lower --lr)", tmp_path)


@pytest.mark.parametrize("edit", ["i64 -> i128", "class names", "epoch 1 -> 0", "one weight"])
def test_an_edited_checkpoint_is_refused(edit, good, data, tmp_path, capfd):
    def change(ck):
        if edit == "i64 -> i128":  # every tensor keeps its shape: it would load as the other arch
            ck["arch"] = ck["arch"].replace("i64/", "i128/")
        elif edit == "class names":
            ck["class_names"] = ["circle", "triangle", "rectangle"]
        elif edit == "epoch 1 -> 0":
            ck["epoch"] = 0
        else:
            ck["state_dict"][_float_names(ck)[0]].view(-1)[0] += 1.0

    path = _edited(good, tmp_path / "ck", "edited.pt", change)
    _refused(capfd, data, path, f"checkpoint {path} was modified after it was written (its digest does not match); "
                                f"retrain or restore the file", tmp_path)


def test_format_1_loads_and_format_2_needs_its_digest(good, data, tmp_path, capfd):
    assert CHECKPOINT_FORMAT == "hwnas-checkpoint/2"

    def old(ck):  # what earlier versions wrote: format 1, no digest
        ck["format"] = "hwnas-checkpoint/1"
        del ck["digest"]

    v1 = _edited(good, tmp_path / "ck", "v1.pt", old)
    scores = []
    for path in (good, v1):
        out = tmp_path / path.stem / "metrics.json"
        assert main(["eval", "--weights", str(path), "--data", str(data), "--out", str(out)]) == 0
        capfd.readouterr()
        scores.append(json.loads(out.read_text())["map"])
    assert scores[0] == scores[1]
    no_digest = _edited(good, tmp_path / "ck", "no-digest.pt", lambda ck: ck.pop("digest"))
    _refused(capfd, data, no_digest, "incomplete (missing or malformed digest)", tmp_path)


def test_a_checkpoint_reads_as_a_frozen_record_and_saves_back(good, tmp_path):
    import dataclasses

    from hwnas.train.checkpoint import Checkpoint

    ck = load_checkpoint(good)
    assert isinstance(ck, Checkpoint) and ck.arch == Arch.parse(RETINA) and ck.class_names == tuple(SHAPES)
    assert ck.epoch == 1 and ck.config["epochs"] == 2 and ck.format == CHECKPOINT_FORMAT
    with pytest.raises(dataclasses.FrozenInstanceError):
        ck.epoch = 0
    ck.save(tmp_path / "again.pt")  # a fresh digest over the same contents: it loads as the same checkpoint
    again = load_checkpoint(tmp_path / "again.pt")
    assert (again.arch, again.class_names, again.epoch) == (ck.arch, ck.class_names, ck.epoch)
    assert again.state_dict.keys() == ck.state_dict.keys()
    assert all(torch.equal(again.state_dict[k], v) for k, v in ck.state_dict.items())
    assert torch.load(tmp_path / "again.pt", weights_only=True)["digest"] == torch.load(good, weights_only=True)["digest"]


def test_the_digest_covers_every_byte_of_a_50_mb_state_dict():
    from hwnas.spec.presets import resolve_arch
    from hwnas.train.checkpoint import state_digest

    arch = resolve_arch("resnet18-fpn-retinanet")
    sd = Detector.from_arch(arch, 80).state_dict()
    assert sum(v.numel() * v.element_size() for v in sd.values()) > 40e6
    a = state_digest(str(arch), ["x"], 0, sd)  # about 0.05 s here: cheap enough to check on every load
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = sd[k].clone()
    sd[k].view(-1)[-1] += 1
    assert state_digest(str(arch), ["x"], 0, sd) != a and len(a) == 64


# ----------------------------------------------------------------------------- 5. resumes read checked numbers
def _resume_edit(name: str, ck: dict) -> None:
    if name == "history not a list":
        ck["metrics"]["history"] = "oops"
    elif name == "history loss nan":
        ck["metrics"]["history"][0]["loss"] = math.nan
    elif name == "history too short":
        ck["metrics"]["history"] = []
    elif name == "scheduler step -3":
        ck["scheduler"]["last_epoch"] = -3
    elif name == "optimizer lr nan":
        ck["optimizer"]["param_groups"][0]["lr"] = math.nan
    elif name == "optimizer state inf":
        state = next(iter(ck["optimizer"]["state"].values()))
        state["exp_avg"].view(-1)[0] = math.inf
    elif name == "rng not a tensor":
        ck["rng"]["torch"] = [1, 2, 3]
    elif name == "config epochs text":
        ck["config"]["epochs"] = "two"


RESUME = {"history not a list": "training history", "history loss nan": "training history",
          "history too short": "training history", "scheduler step -3": "scheduler",
          "optimizer lr nan": "optimizer", "optimizer state inf": "optimizer", "rng not a tensor": "random state",
          "config epochs text": "config"}


@pytest.fixture(scope="module")
def data(tiny_shapes: Path) -> Path:
    return tiny_shapes



@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("one-epoch")
    train(Arch.parse(RETINA), data, out, cfg(epochs=1))
    return out / "last.pt"


@pytest.mark.parametrize("name", list(RESUME))
def test_a_resume_checks_what_it_reads(name, one_epoch, data, tmp_path, capfd):
    run = tmp_path / "run"
    _edited(one_epoch, run, "last.pt", lambda ck: _resume_edit(name, ck))
    argv = ["train", "--arch", RETINA, "--data", str(data), "--epochs", "2", "--batch-size", "8", "--out", str(run)]
    assert_one_error(capfd, argv, RESUME[name], run, run / "metrics.json")


@pytest.mark.parametrize("extra, expect", [
    (["--seed", "1"], "(seed: 0 in the run, 1 now)"),
    (["--lr", "4e-3", "--scale-jitter", "0.8,1.25"], "(lr: 0.002 in the run, 0.004 now; scale_jitter: 0.5,1.5 in "
                                                     "the run, 0.8,1.25 now)"),
])
def test_a_resume_with_other_settings_is_refused(extra, expect, one_epoch, data, tmp_path, capfd):
    """Another seed or recipe into a finished run's folder would report that run under the new
    settings (a benchmark's seed-1 run into its seed-0 folder reprinted the seed-0 figures)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(one_epoch.read_bytes())
    argv = ["train", "--arch", RETINA, "--data", str(data), "--epochs", "2", "--batch-size", "8", *extra,
            "--out", str(run)]
    assert_one_error(capfd, argv, expect, run, run / "metrics.json")


# ----------------------------------------------------------------------------- 6. TrainConfig messages
@pytest.mark.parametrize("field, value, expect", [
    ("max_train_images", -5, "--max-train-images -5"),
    ("eval_every", -1, "--eval-every -1"),
    ("epochs", 0, "--epochs 0"),
    ("epochs", 10**7, "--epochs 10000000"),
    ("batch_size", 100000, "--batch-size 100000"),
    ("seed", -1, "--seed -1"),
    ("seed", 99999999999, "--seed 99999999999"),
    ("grad_clip", 0.0, "grad_clip 0.0"),
    ("grad_clip", math.nan, "grad_clip nan"),
    ("warmup_iters", -1, "--warmup-iters -1"),
    ("weight_decay", -0.1, "weight_decay -0.1"),
])
def test_each_training_option_has_its_own_message(field, value, expect):
    with pytest.raises(HwnasError) as e:
        cfg(**{field: value})
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    others = {"--max-train-images", "--eval-every", "grad_clip", "--warmup-iters", "--seed"} - {expect.split()[0]}
    assert not any(o in msg for o in others), msg


@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_train_cli_seed_out_of_range(seed, data, tmp_path, capfd):
    out = tmp_path / "run"
    assert_one_error(capfd, ["train", "--arch", RETINA, "--data", str(data), "--seed", seed, "--out", str(out)],
                     f"--seed {seed}: must be in 0..2147483647", tmp_path, out)
