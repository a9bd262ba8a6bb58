"""Label coverage (hwnas.search.coverage), the ``train+coverage`` and ``train+growth`` evaluators: the heads' match codes
are the codes their losses train on, a box between a level's points is covered only by a finer
level, coverage read off generated shapes, and a real search ranked by mAP x coverage."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import search_world
from hwnas.cli.app import main
from hwnas.heads.losses import DetectionLoss
from hwnas.search.coverage import label_coverage, screen_necks
from hwnas.search.evaluators.scaled import GROWTH_EXPONENT, forward_gflops
from hwnas.spec.arch import Arch
from hwnas.spec.space import get_space
from hwnas.train.recipes import recipe_config

FCOS = "i64/basic_c8_1-2-2-2/fpn_p{levels}_c16/fcos_d1_c16/bn"
RETINA = "i64/basic_c8_1-2-2-2/fpn_p3-5_c16/retina_d1_c16/bn"
FACE = "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc2_str2_mo2/bn"


def target(boxes: list[list[float]]) -> dict:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.zeros(len(b), dtype=torch.long), "crowd": torch.zeros(len(b), dtype=torch.bool)}


def zero_outputs(arch: Arch, b: int) -> tuple[torch.Tensor, ...]:
    out = []
    for li, level in enumerate(arch.out_levels):
        h, w = arch.level_hw(level)
        out += [torch.zeros(b, p.cout, h, w) for p in arch.head.predictions(arch, 1, li)]
    return tuple(out)


def test_a_small_box_between_the_points_of_p4_is_covered_only_with_p3() -> None:
    # an 8 px box at (10, 10): P3's points (stride 8, at 4, 12, 20 ...) put (12, 12) inside it, near
    # its centre and within P3's range; P4's (stride 16, at 8, 24 ...) put none inside it
    small, large = [10.0, 10.0, 18.0, 18.0], [30.0, 28.0, 62.0, 60.0]
    hits = {}
    for levels in ("3-5", "4-6"):
        arch = Arch.parse(FCOS.format(levels=levels))
        codes = arch.head.match_codes(DetectionLoss.for_arch(arch, 1), [target([small, large])])[0]
        hits[levels] = torch.bincount(codes[codes >= 0], minlength=2).tolist()
    assert hits["3-5"][0] >= 1 and hits["4-6"][0] == 0, hits
    assert hits["3-5"][1] >= 1 and hits["4-6"][1] >= 1, hits  # the large box is learnt either way


@pytest.mark.parametrize("arch", [FCOS.format(levels="3-5"), RETINA, FACE])
def test_match_codes_are_the_codes_the_loss_trains_on(arch) -> None:
    """What coverage counts is what training learns from: the codes the loss hands to its first
    classifier (the face head's first step), recorded from a real loss call."""
    arch = Arch.parse(arch)

    class Recording(DetectionLoss):
        def focal(self, cls, targets, codes, name="loss_cls"):
            seen.append((name, [c.clone() for c in codes]))
            return super().focal(cls, targets, codes, name)

    seen: list = []
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(3):
        xy = torch.rand(5, 2, generator=g) * 48
        wh = 2 + torch.rand(5, 2, generator=g) * 30
        targets.append(target(torch.cat([xy, (xy + wh).clamp(max=64)], 1).tolist()))
    loss = Recording.for_arch(arch, 1)
    loss(zero_outputs(arch, 3), targets)
    mine = arch.head.match_codes(loss, targets)
    assert len(mine) == 3 and any((m >= 0).any() for m in mine)
    if arch.head.kind == "face":  # the first step's codes; its classifier (cls1) learns on the STC rows of them
        first = dict(seen)["loss_cls1"]
        assert all(torch.equal(a[:len(b)], b) for a, b in zip(mine, first)) and len(first[0]) < len(mine[0])
    else:
        assert all(torch.equal(a, b) for a, b in zip(mine, dict(seen)["loss_cls"]))


def test_label_coverage_of_generated_shapes(tiny_shapes) -> None:
    cfg = recipe_config(None, epochs=1, batch_size=8, seed=0)
    fine = label_coverage(Arch.parse(FCOS.format(levels="3-5")), tiny_shapes, cfg)
    t0 = time.perf_counter()
    coarse = label_coverage(Arch.parse(FCOS.format(levels="4-6")), tiny_shapes, cfg)
    again_s = time.perf_counter() - t0
    rcnn = label_coverage(Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/rcnn_d1_c64_n32/bn"), tiny_shapes, cfg)
    assert 0 < coarse < fine <= 1 and 0 < rcnn <= 1, (fine, coarse, rcnn)
    assert again_s < 1.0  # the boxes of a resolution are transformed once
    assert label_coverage(Arch.parse(FCOS.format(levels="3-5")), tiny_shapes, cfg) == fine


@pytest.fixture(scope="module")
def world(tmp_path_factory, ort_cpu) -> dict:
    return search_world(tmp_path_factory, ort_cpu, "coverage-search", 24)


def coverage_of(arch: Arch, data: Path) -> float:
    return label_coverage(arch, data, recipe_config(None, epochs=1, batch_size=8, seed=0))


def growth_of(arch: Arch, data: Path) -> float:
    return forward_gflops(arch, 3) ** GROWTH_EXPONENT  # the shapes' 3 classes


@pytest.mark.slow
@pytest.mark.parametrize("evaluator,factor", [("train+coverage", coverage_of), ("train+growth", growth_of)])
def test_a_search_ranked_by_map_times_a_factor_keeps_each_candidates_own_map(world, evaluator, factor) -> None:
    out = world["dir"] / evaluator
    assert main(["search", "--data", str(world["data"]), "--table", str(world["table"]), "--space", "tiny",
                 "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1",
                 "--no-measure", "--trials", "4", "--population", "2", "--evaluator", evaluator]) == 0
    s = json.loads((out / "search.json").read_text())
    scored = [t for t in s["trials"] if t["state"] == "complete" and t["stage"] != "baseline"]
    assert len(scored) == 4 and all(t["evaluator"] == evaluator for t in scored)
    for t in scored:  # the proxy is the candidate's own standalone mAP times its factor
        metrics = json.loads((Path(t["checkpoint"]).parent / "metrics.json").read_text())
        assert t["map"] == pytest.approx(metrics["map"]) and t["standalone_s"] is None
        assert t["proxy_map"] == pytest.approx(t["map"] * factor(Arch.parse(t["arch"]), world["data"]))
    front = json.loads((out / "pareto.json").read_text())
    assert front and all(r["map"] is not None and r["proxy_map"] is not None for r in front)
    assert not any(t.get("standalone_s") for t in s["trials"])  # nothing trained again at the end


def test_the_screen_keeps_the_levels_that_see_the_data_s_boxes(tiny_shapes) -> None:
    """At 64 px the shapes' small boxes need P3: the choices without it (and no neck) are dropped.
    The same shapes at 384 px are large enough for P4-P6 and a single level: nothing is dropped."""
    cfg = recipe_config(None, epochs=1, batch_size=8, seed=0)
    kept, shares = screen_necks(get_space("tiny").with_resolutions((64,)), tiny_shapes, cfg)
    assert kept == ["fpn_p3-5", "pafpn_p3-5"], shares
    assert set(shares) == {"none", "fpn_p3-5", "fpn_p4-6", "pafpn_p3-5", "pafpn_p4-6"}
    assert shares["fpn_p4-6"] < shares["fpn_p3-5"] - 0.2 and shares["none"] < shares["fpn_p4-6"], shares
    kept, shares = screen_necks(get_space("tiny").with_resolutions((384,)), tiny_shapes, cfg)
    assert kept == list(shares) and min(shares.values()) > 0.9, shares


@pytest.mark.slow
def test_a_screened_search_tries_only_the_kept_levels(world, capsys) -> None:
    out = world["dir"] / "screened"
    assert main(["search", "--data", str(world["data"]), "--table", str(world["table"]), "--space", "tiny",
                 "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1",
                 "--no-measure", "--trials", "6", "--population", "2", "--stage", "structural",
                 "--max-train-images", "8", "--screen", "coverage"]) == 0
    said = capsys.readouterr().err
    assert "--screen coverage kept necks fpn_p3-5" in said and "dropped none" in said, said
    s = json.loads((out / "search.json").read_text())
    archs = [t["arch"] for t in s["trials"] if t["state"] == "complete"]
    assert len(archs) == 6 and all("_p3-5_" in a for a in archs), archs
    assert s["config"]["screen"] == "coverage"
    # the study remembers the screen: a rerun without it would mix two searches
    assert main(["search", "--data", str(world["data"]), "--table", str(world["table"]), "--space", "tiny",
                 "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1",
                 "--no-measure", "--trials", "6", "--population", "2", "--stage", "structural",
                 "--max-train-images", "8", "--screen", "none"]) != 0
    assert "screen" in capsys.readouterr().err


def test_forward_gflops_counts_the_detector_s_convolutions() -> None:
    """The growth factor's FLOPs: a detector at twice the input side does four times the work
    (every layer is a convolution over the image grid), and a wider backbone does more."""
    small = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/fcos_d1_c16/bn")
    large = Arch.parse("i128/basic_c8_1-2-2-2/fpn_p3-5_c16/fcos_d1_c16/bn")
    wide = Arch.parse("i64/basic_c16_1-2-2-2/fpn_p3-5_c16/fcos_d1_c16/bn")
    g = forward_gflops(small, 3)
    assert forward_gflops(large, 3) == pytest.approx(4 * g, rel=0.02)
    assert forward_gflops(wide, 3) > 1.5 * g > 0
