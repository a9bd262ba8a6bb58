"""Training and evaluation on real (tiny, generated) data: COCO mAP against hand computation,
every head trained end to end, checkpoints, resume (in process and after kill -9), determinism,
the ``eval`` score against pycocotools by hand, and bad input through the CLI."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from cli_checks import assert_one_error, fill
from conftest import sigkill_when
from hwnas.spec.arch import Arch
from hwnas.cli.app import main
from hwnas.data.synth import synth
from hwnas.data.transforms import normalize
from hwnas.errors import HwnasError
from hwnas.evaluate.coco import coco_score, summarize
from hwnas.models import Detector
from hwnas.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_model, save_checkpoint
from hwnas.train.loop import TrainConfig, add_weight_standardization, train

REPO = Path(__file__).resolve().parents[2]
SHAPES = ["circle", "rectangle", "triangle"]
ARCHS = {
    "retina": "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn",
    "fcos": "i64/basic_c8_1-2-2/fpn_p3-4_c16/fcos_d1_c16/bn",
    "rcnn": "i64/basic_c8_1-2-2/fpn_p3-4_c16/rcnn_d1_c32_n16/bn",
    "gn": "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/gn",  # weight standardisation
    "gnhead": "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/gnhead",  # BN backbone, GN (standardised) head
}
RETINA = ARCHS["retina"]
METRIC_KEYS = ("map", "map50", "map_small", "map_medium", "map_large")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 8, **kw})


@pytest.fixture(scope="module")
def data(tiny_shapes: Path) -> Path:
    return tiny_shapes



@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """A dataset with other classes (one: face)."""
    d = tmp_path_factory.mktemp("faces")
    synth("faces", 4, 4, 64, seed=0, out=d)
    return d


# ----------------------------------------------------------------------------- 1. mAP by hand
def ap_101(matches: list[bool], n_gt: int) -> float:
    """COCO's AP of one class: detections in descending score, True = true positive; precision
    at each of the 101 recall points 0, 0.01 .. 1 is the best precision at that recall or more."""
    prec, rec, tp = [], [], 0
    for i, m in enumerate(matches, 1):
        tp += m
        prec.append(tp / i)
        rec.append(tp / n_gt)
    return sum(max((p for p, rc in zip(prec, rec) if rc >= r), default=0.0)
               for r in np.linspace(0, 1, 101)) / 101


def _box(x, y, w, h):
    return [float(x), float(y), float(w), float(h)]


# Two 100x100 images; every object 40x40 (COCO "medium": no small or large ground truth).
GT_A1, GT_A2, GT_B1 = _box(10, 10, 40, 40), _box(20, 20, 40, 40), _box(50, 50, 40, 40)


@pytest.fixture(scope="module")
def gt_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    anns = [(1, 1, GT_A1), (1, 2, GT_B1), (2, 1, GT_A2)]  # (image, category, box)
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2)],
        "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for k, (im, c, b) in enumerate(anns)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path


def det(image_id: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


PERFECT = [det(1, 1, GT_A1, 0.9), det(2, 1, GT_A2, 0.8), det(1, 2, GT_B1, 0.7)]


def test_ap_by_hand_matches_the_closed_form():
    # TP, FP, TP over 2 ground truths: precision 1 up to recall 0.5 (51 points), then 2/3 (50 points)
    assert ap_101([True, False, True], 2) == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert ap_101([False, True, True], 2) == pytest.approx(2 / 3, abs=1e-12)
    assert ap_101([True, True], 2) == 1.0 and ap_101([], 2) == 0.0


def _check(scores: dict, expect: dict) -> None:
    for k, v in expect.items():
        assert scores[k] == pytest.approx(v, abs=1e-6), (k, scores[k], v)


def test_coco_score_perfect(gt_json):
    _check(coco_score(gt_json, PERFECT), {"map": 1, "map50": 1, "map75": 1, "map_medium": 1,
                                          "map_small": -1, "map_large": -1})  # -1: no such ground truth


def test_coco_score_one_class_missing(gt_json):
    # class b has ground truth and no detection: AP 0, not "absent" (-1); the mean is 0.5
    _check(coco_score(gt_json, PERFECT[:2]), {"map": 0.5, "map50": 0.5, "map75": 0.5, "map_medium": 0.5,
                                              "map_small": -1, "map_large": -1})


def test_coco_score_false_positive_ranked_above_a_true_positive(gt_json):
    fp = det(1, 1, _box(0, 55, 40, 40), 0.85)  # no overlap with any "a" box; medium-sized too
    results = [PERFECT[0], fp, PERFECT[1], PERFECT[2]]
    before = copy.deepcopy(results)
    ap_a = ap_101([True, False, True], 2)
    expect = (ap_a + 1.0) / 2  # exact boxes: the same at every IoU threshold
    _check(coco_score(gt_json, results), {"map": expect, "map50": expect, "map75": expect, "map_medium": expect,
                                          "map_small": -1, "map_large": -1})
    assert results == before  # pycocotools' loadRes did not write into our list
    # only image 1: class a is TP then FP over one ground truth -> AP 1
    _check(coco_score(gt_json, results, image_ids=[1]), {"map": 1.0, "map50": 1.0})


def test_coco_score_localisation_across_iou_thresholds(gt_json):
    loose = det(1, 2, _box(50, 30, 40, 62.5), 0.7)  # holds GT_B1: IoU 1600 / 2500 = 0.64
    # class b is a hit at IoU .50 .55 .60 and a miss at .65 .. .95: AP 3/10
    _check(coco_score(gt_json, PERFECT[:2] + [loose]), {"map": (1 + 0.3) / 2, "map50": 1.0, "map75": 0.5,
                                                        "map_medium": (1 + 0.3) / 2})


def test_coco_score_without_detections(gt_json):
    # what COCOeval gives for no detections: 0 where there is ground truth, -1 where there is none
    _check(coco_score(gt_json, []), {"map": 0, "map50": 0, "map75": 0, "map_medium": 0,
                                     "map_small": -1, "map_large": -1})


# ----------------------------------------------------------------------------- 2. train every head
def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("head", list(ARCHS))
def test_train_end_to_end(head, data, tmp_path):
    arch = Arch.parse(ARCHS[head])
    out = tmp_path / "run"
    calls = []
    res = train(arch, data, out, cfg(epochs=3, batch_size=4), progress=lambda d, t, item: calls.append((d, t, item)))

    assert calls and calls[-1][:2] == (12, 12) and calls[-1][2].startswith("epoch 3/3 loss ")  # 16 images / 4
    assert res.history[-1]["loss"] < res.history[0]["loss"]  # it learns
    m = json.loads((out / "metrics.json").read_text())
    for k in METRIC_KEYS:
        assert isinstance(m[k], float) and (m[k] == -1.0 or 0.0 <= m[k] <= 1.0), (k, m[k])
    assert m["images_per_s"] > 0 and m["train_images_per_s"] > 0
    assert m["arch"] == str(arch) and m["class_names"] == SHAPES and m["epochs"] == 3
    assert len(m["history"]) == 3 and np.isfinite(m["final_loss"]) and m["final_loss"] == res.history[-1]["loss"]
    if arch.head.kind != "rcnn":  # per-level loss curves: each one-stage component split over the out levels
        for h in m["history"]:
            lv = h["levels"]
            for c in (c for c in res.history[0] if c.startswith("loss_")):
                assert sum(lv[f"{c}/p{level}"] for level in arch.out_levels) == pytest.approx(h[c], rel=1e-4)
            assert sum(lv[f"positives/p{level}"] for level in arch.out_levels) > 0
    dets = json.loads((out / "detections.json").read_text())
    assert isinstance(dets, list) and len(dets) == m["n_detections"]
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score"} and d["category_id"] in (1, 2, 3)
    if dets:  # the scores written are pycocotools' on the detections written
        assert [m[k] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")] == \
            _by_hand(data / "val.json", out / "detections.json")

    ck = load_checkpoint(out / "last.pt")
    assert ck.format == CHECKPOINT_FORMAT and ck.arch == arch and list(ck.class_names) == SHAPES
    assert ck.epoch == 2 and not any("parametrizations" in k for k in ck.state_dict)
    # the trained module, as the loop held it (standardised GN convs included)
    trained = Detector.from_arch(arch, len(SHAPES))
    if arch.head_norm == "gn":
        assert add_weight_standardization(trained) > 0
        raw = {k[: -len(".parametrizations.weight.original")]: v for k, v in ck.train_state_dict.items()
               if k.endswith(".parametrizations.weight.original")}
        assert raw
        # gnhead: the head towers hold the GroupNorms, so only their convs are standardised
        assert all(name.startswith("blocks.head") for name in raw) == (arch.norm == "gnhead")
        for name, w in raw.items():  # folded: the plain weight is the standardised one
            folded = ck.state_dict[f"{name}.weight"]
            assert not torch.allclose(folded, w)
            assert torch.allclose(folded.mean(dim=(1, 2, 3)), torch.zeros(len(w)), atol=1e-5)
    # the training form is stored only where it differs from the plain weights
    assert (ck.train_state_dict is None) == (arch.head_norm != "gn")
    trained.load_state_dict(ck.train_state_dict or ck.state_dict)
    model, a, names = load_model(out / "last.pt")
    assert type(model) is Detector and not model.training and a == arch and names == SHAPES
    assert not any(parametrize.is_parametrized(mod) for mod in model.modules())
    x = normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    for got, want in zip(_outputs(model, x), _outputs(trained, x), strict=True):
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


# ----------------------------------------------------------------------------- 3. resume
def test_more_epochs_resume_the_run(data, tmp_path):
    arch = Arch.parse(RETINA)
    first = train(arch, data, tmp_path, cfg(epochs=1))
    calls = []
    second = train(arch, data, tmp_path, cfg(epochs=2), progress=lambda d, t, item: calls.append((d, t, item)))
    assert [h["epoch"] for h in second.history] == [0, 1]
    assert second.history[0] == first.history[0]  # the first epoch is not redone
    assert calls[-1][:2] == (2, 2) and calls[-1][2].startswith("epoch 2/2")  # only epoch 2 ran
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 2
    with pytest.raises(HwnasError, match="already trained 2 epochs"):
        train(arch, data, tmp_path, cfg(epochs=1))


def test_interrupted_run_resumes_to_the_same_weights(data, tmp_path):
    arch = Arch.parse(RETINA)
    whole = train(arch, data, tmp_path / "whole", cfg(epochs=2))

    def stop_in_epoch_2(done, total, item):
        if done == 3:  # first step of the second epoch, after its optimiser step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(arch, data, tmp_path / "cut", cfg(epochs=2), progress=stop_in_epoch_2)
    assert load_checkpoint(tmp_path / "cut" / "last.pt").epoch == 0
    resumed = train(arch, data, tmp_path / "cut", cfg(epochs=2))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def _hwnas(*args) -> list[str]:
    return [sys.executable, "-m", "hwnas.cli.app", *map(str, args)]


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(data, tmp_path):
    out, epochs = tmp_path / "run", 12
    args = ("train", "--arch", RETINA, "--data", data, "--epochs", epochs, "--batch-size", 4, "--out", out)
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    seen: set[int] = set()

    def overwritten_once() -> bool:  # at least one checkpoint overwritten; whole at any moment
        if (out / "last.pt").exists():
            seen.add(load_checkpoint(out / "last.pt").epoch)
        return bool(seen) and max(seen) >= 1

    rc = sigkill_when(_hwnas(*args), tmp_path / "killed.log", overwritten_once, 60, cwd=REPO, env=env, poll_s=0.01)
    assert rc == -signal.SIGKILL
    at_kill = load_checkpoint(out / "last.pt")
    assert 1 <= at_kill.epoch < epochs - 1 and not (out / "metrics.json").exists()

    r = subprocess.run(_hwnas(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "error:" not in r.stderr
    # the progress line: bar, loss and ETA, counting only the epochs left
    assert "loss" in r.stderr and "eta" in r.stderr and f"epoch {epochs}/{epochs}" in r.stderr
    assert r.stdout.startswith("map=") and "train_images/s=" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == list(range(epochs))
    assert m["history"][: at_kill.epoch + 1] == at_kill.metrics["history"]  # earlier epochs kept
    assert load_checkpoint(out / "last.pt").epoch == epochs - 1


# ----------------------------------------------------------------------------- 4. determinism
def test_same_seed_same_run(data, tmp_path):
    arch = Arch.parse(ARCHS["rcnn"])  # the head with random sampling in its loss
    runs = [train(arch, data, tmp_path / name, cfg(seed=seed)) for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (load_checkpoint(r.checkpoint).state_dict for r in runs)
    assert runs[0].metrics["final_loss"] == runs[1].metrics["final_loss"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].metrics["final_loss"] != runs[2].metrics["final_loss"]  # the seed matters
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------- 5. eval CLI vs pycocotools
@pytest.fixture(scope="module")
def scoring_ckpt(tmp_path_factory) -> Path:
    """An untrained retina detector whose class prior is 0.5: plenty of detections to score."""
    arch = Arch.parse(RETINA)
    torch.manual_seed(0)
    model = Detector.from_arch(arch, len(SHAPES))
    with torch.no_grad():
        model.module_for(f"head.p{arch.out_levels[0]}.cls")[0].bias.fill_(0.0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, model=model, arch=arch, class_names=SHAPES, epoch=0)
    return path


def _by_hand(gt: Path, detections: Path) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO(str(gt))
    ev = COCOeval(coco, coco.loadRes(str(detections)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(s) for s in ev.stats[:6]]


@pytest.mark.parametrize("explicit", [False, True], ids=["default-path", "--detections"])
def test_eval_prints_what_pycocotools_gives(explicit, data, scoring_ckpt, tmp_path, capfd):
    out = tmp_path / "eval" / "metrics.json"
    dets = tmp_path / "elsewhere" / "dets.json" if explicit else tmp_path / "eval" / "metrics.detections.json"
    argv = ["eval", "--weights", str(scoring_ckpt), "--data", str(data), "--out", str(out)]
    assert main(argv + (["--detections", str(dets)] if explicit else [])) == 0
    stdout, stderr = capfd.readouterr()
    assert "Traceback" not in stderr and "error:" not in stderr
    assert dets.is_file() and len(json.loads(dets.read_text())) > 0
    assert not explicit or not (out.parent / "metrics.detections.json").exists()
    stats = _by_hand(data / "val.json", dets)
    capfd.readouterr()  # pycocotools' own prints
    m = json.loads(out.read_text())
    assert [m[k] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")] == stats
    assert m["images_per_s"] > 0 and m["n_detections"] == len(json.loads(dets.read_text()))
    assert m["detections"] == str(dets)
    lines = stdout.splitlines()
    assert lines[0] == summarize(m) and lines[0].startswith(f"map={stats[0]:.4f} map50={stats[1]:.4f} ")
    assert f"map_small={stats[3]:.4f} map_medium={stats[4]:.4f} map_large={stats[5]:.4f} images/s=" in lines[0]


def test_detections_are_in_original_pixels(scoring_ckpt, tmp_path):
    """128 px images through a 64 px detector: boxes are scaled back to the files' pixels."""
    from hwnas.data.coco import CocoDetection
    from hwnas.data.transforms import EvalTransform
    from hwnas.evaluate.coco import evaluate

    synth("shapes", 1, 4, 128, seed=1, out=tmp_path / "big")
    model, arch, names = load_model(scoring_ckpt)
    ds = CocoDetection.from_dir(tmp_path / "big", "val", EvalTransform(arch.input_hw))
    m = evaluate(model, arch, ds, detections=tmp_path / "dets.json")
    dets = json.loads((tmp_path / "dets.json").read_text())
    assert m["n_detections"] == len(dets) > 0
    x2 = [d["bbox"][0] + d["bbox"][2] for d in dets]
    y2 = [d["bbox"][1] + d["bbox"][3] for d in dets]
    assert max(x2) > 64 and max(y2) > 64 and max(x2 + y2) <= 128.01
    assert min(v for d in dets for v in d["bbox"]) >= 0


def test_train_cli_in_process(data, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "run"
    assert main(["train", "--arch", RETINA, "--data", str(data), "--epochs", "1", "--batch-size", "8",
                 "--out", str(out)]) == 0
    stdout, stderr = capfd.readouterr()
    assert stderr.startswith(f"training {RETINA} for 1 epochs") and "Traceback" not in stderr
    assert "loss" in stderr and "eta" in stderr and "2/2" in stderr
    assert stdout.startswith("map=") and f"wrote {out / 'last.pt'}" in stdout
    assert "epoch 1/1 loss " in stderr and " img/s val mAP " in stderr  # the epoch's own line
    assert (out / "results.csv").read_text().count("\n") == 2  # header and the one epoch
    assert load_model(out / "last.pt")[1] == Arch.parse(RETINA)


# ----------------------------------------------------------------------------- 6. bad input
OTHER_ARCH = ARCHS["fcos"]
# name: (argv with {data} {faces} {ck} {d} placeholders, substring expected in the one error line)
BAD = {
    "truncated checkpoint": (["eval", "--weights", "{d}/truncated.pt", "--data", "{data}"], "is corrupt"),
    "random bytes": (["eval", "--weights", "{d}/random.pt", "--data", "{data}"], "is corrupt"),
    "json as checkpoint": (["eval", "--weights", "{d}/ck.json", "--data", "{data}"], "is corrupt"),
    "empty checkpoint": (["eval", "--weights", "{d}/empty.pt", "--data", "{data}"], "is corrupt"),
    "plain torch dict": (["eval", "--weights", "{d}/plain.pt", "--data", "{data}"], "not an hwnas checkpoint"),
    "incomplete checkpoint": (["eval", "--weights", "{d}/incomplete.pt", "--data", "{data}"], "incomplete"),
    "missing checkpoint": (["eval", "--weights", "{d}/nope.pt", "--data", "{data}"], "does not exist"),
    "eval class mismatch": (["eval", "--weights", "{ck}", "--data", "{faces}"], "trained on classes"),
    "eval missing data": (["eval", "--weights", "{ck}", "--data", "{d}/nodata"], "does not exist"),
    "eval unknown split": (["eval", "--weights", "{ck}", "--data", "{data}", "--split", "test"], "unknown split"),
    "eval batch 0": (["eval", "--weights", "{ck}", "--data", "{data}", "--batch-size", "0"], "--batch-size"),
    "eval bad device": (["eval", "--weights", "{ck}", "--data", "{data}", "--device", "nope"], "'nope'"),
    "eval same out and detections": (["eval", "--weights", "{ck}", "--data", "{data}", "--detections",
                                      "{d}/eval.json"], "give two files"),
    "arch and preset": (["train", "--arch", RETINA, "--preset", "small-resnet-fcos", "--data", "{data}"],
                        "exactly one of --arch, --preset or --search"),
    "neither arch nor preset": (["train", "--data", "{data}"], "exactly one of --arch, --preset or --search"),
    "unknown preset": (["train", "--preset", "resnet19", "--data", "{data}"], "unknown preset 'resnet19'"),
    "malformed arch": (["train", "--arch", "i64/basic_c8_1-2-2/retina_d1_c16/bn", "--data", "{data}"], "invalid arch"),
    "img-size": (["train", "--arch", RETINA, "--img-size", "50", "--data", "{data}"], "multiples of 32"),
    "train missing data": (["train", "--arch", RETINA, "--data", "{d}/nodata"], "does not exist"),
    "box loss": (["train", "--arch", RETINA, "--data", "{data}", "--box-loss", "nope"], "--box-loss 'nope'"),
    "epochs 0": (["train", "--arch", RETINA, "--data", "{data}", "--epochs", "0"], "--epochs"),
    "epochs abc": (["train", "--arch", RETINA, "--data", "{data}", "--epochs", "abc"], "'--epochs'"),
    "batch 0": (["train", "--arch", RETINA, "--data", "{data}", "--batch-size", "0"], "--batch-size"),
    "lr 0": (["train", "--arch", RETINA, "--data", "{data}", "--lr", "0"], "--lr"),
    "train bad device": (["train", "--arch", RETINA, "--data", "{data}", "--device", "nope"], "'nope'"),
    "corrupt last.pt": (["train", "--arch", RETINA, "--data", "{data}", "--out", "{d}/run-corrupt"], "is corrupt"),
    "last.pt of another arch": (["train", "--arch", OTHER_ARCH, "--data", "{data}", "--out", "{d}/run-good"],
                                "another arch"),
    "last.pt of other classes": (["train", "--arch", RETINA, "--data", "{faces}", "--out", "{d}/run-good"],
                                 "trained on classes"),
    "last.pt beyond --epochs": (["train", "--arch", RETINA, "--data", "{data}", "--epochs", "1",
                                 "--out", "{d}/run-ahead"], "already trained 3 epochs"),
}
if not torch.cuda.is_available():
    BAD["cuda without gpu"] = (["train", "--arch", RETINA, "--data", "{data}", "--device", "cuda"],
                               "cuda.is_available() is False")


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, scoring_ckpt) -> Path:
    d = tmp_path_factory.mktemp("bad")
    good = scoring_ckpt.read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "ck.json").write_text(json.dumps({"format": CHECKPOINT_FORMAT, "arch": RETINA}))
    (d / "empty.pt").write_bytes(b"")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, d / "plain.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "arch": RETINA}, d / "incomplete.pt")
    for run in ("run-corrupt", "run-good", "run-ahead"):
        (d / run).mkdir()
    (d / "run-corrupt" / "last.pt").write_bytes(good[:1000])
    (d / "run-good" / "last.pt").write_bytes(good)
    model, arch, names = load_model(scoring_ckpt)  # saved anew: an edited epoch would not match the digest
    save_checkpoint(d / "run-ahead" / "last.pt", model=model, arch=arch, class_names=names, epoch=2,
                    config=TrainConfig(epochs=3))
    return d


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name, bad_dir, data, faces, scoring_ckpt, capfd):
    subs = {"{d}": str(bad_dir), "{data}": str(data), "{faces}": str(faces), "{ck}": str(scoring_ckpt)}
    argv, expect = BAD[name]
    argv = fill(argv, subs)
    if argv[0] == "eval":
        argv += ["--out", f"{bad_dir}/eval.json"]
    elif "--out" not in argv:
        argv += ["--out", f"{bad_dir}/run-new"]
    assert_one_error(capfd, argv, expect, bad_dir, bad_dir / "run-new")  # not even the run folder
