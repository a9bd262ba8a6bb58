"""Label assignment of the anchor-based heads: IoU matching and ATSS (hwnas.heads.losses.atss_match)
on hand-made boxes of every size over the real anchors of retina and face archs, ATSS against
expectations worked out by hand, crowd boxes, the face head's second step, and training steps."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from hwnas.errors import HwnasError
from hwnas.heads.face import face_anchors
from hwnas.heads.losses import (IGNORE, NEG, DetectionLoss, atss_match, box_ioa, init_head_priors, level_rows,
                                 match)
from hwnas.heads.retina import retina_anchors
from hwnas.models import Detector
from hwnas.spec.arch import Arch
from hwnas.spec.presets import resolve_arch

ASSIGNERS = ("iou", "atss")
ARCHS = {
    "small-mobilenet-retinanet": resolve_arch("small-mobilenet-retinanet"),  # 256 px, P3-P5
    "resnet18-fpn-retinanet": resolve_arch("resnet18-fpn-retinanet"),  # 512 px, P3-P7
    "face-s": resolve_arch("face-s"),  # 640 px, P2-P7, STC P2-P4, STR P5-P7
    "face-64": Arch.parse("i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc2_str2_mo2/bn"),  # P6 is 1x1
}


def zero_outputs(arch: Arch, b: int, k: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero raw outputs (Detector.forward order): box deltas 0, so the face head's second step
    matches on unrefined anchors, and class logits 0, so its STC rejects nothing."""
    out = []
    for li, level in enumerate(arch.out_levels):
        h, w = arch.level_hw(level)
        out += [torch.zeros(b, p.cout, h, w) for p in arch.head.predictions(arch, k, li)]
    return tuple(out)


def hand_made_boxes(hw: tuple[int, int]) -> list[list[float]]:
    """Boxes of sides 4 px up to the whole input, aspect ratios (h/w) 1/4 to 4, centred, in the
    top-left and bottom-right corners and at an off-grid position; clipped to the image."""
    H, W = hw
    out = []
    sides = [4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 640]
    for s in [v for v in sides if v < max(H, W)] + [max(H, W)]:
        for aspect in (0.25, 0.5, 1.0, 2.0, 4.0):
            w, h = min(W, s / math.sqrt(aspect)), min(H, s * math.sqrt(aspect))
            for x, y in (((W - w) / 2, (H - h) / 2), (0.0, 0.0), (W - w, H - h), (min(13.3, W - w), min(7.7, H - h))):
                out.append([x, y, x + w, y + h])
    return out


def codes_of(arch: Arch, loss: DetectionLoss, targets: list[dict]):
    """Per target: the codes the head's loss trains on (face: the second step's) and the face
    head's first-step codes (None for retina), from the heads' own ``match_codes`` / ``assign``."""
    if arch.head.kind == "retina":
        return arch.head.match_codes(loss, targets), None
    final, first = [], []
    for s in range(0, len(targets), 8):  # face-s outputs are large: a few images at a time
        chunk = targets[s:s + 8]
        a = arch.head.assign(loss, zero_outputs(arch, len(chunk)), chunk)
        final += a.step2
        first += a.step1
    return final, first


def target(boxes, crowd=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long),
            "crowd": torch.zeros(len(boxes), dtype=torch.bool) if crowd is None else torch.tensor(crowd)}


# ----------------------------------------------------------------------------- every size gets positives
@pytest.mark.parametrize("assigner", ASSIGNERS)
@pytest.mark.parametrize("name", list(ARCHS))
def test_every_hand_made_box_gets_a_positive_large_ones_included(name, assigner):
    arch = ARCHS[name]
    boxes = hand_made_boxes(arch.input_hw)
    targets = [target([b]) for b in boxes]  # one box per image: no other box can take its anchors
    loss = DetectionLoss.for_arch(arch, 1, assigner=assigner)
    final, first = codes_of(arch, loss, targets)
    rows = level_rows(arch)
    level = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
    strides = torch.tensor([2.0 ** lv for lv in arch.out_levels])
    for b, m, m1 in zip(boxes, final, first or [None] * len(boxes)):
        side = math.sqrt((b[2] - b[0]) * (b[3] - b[1]))
        assert (m == 0).any(), f"{name} {assigner}: box {b} (side {side:.0f}) has no positive"
        assert ((m >= 0) | (m == NEG) | (m == IGNORE)).all() and int(m.max()) == 0
        if m1 is not None:
            assert (m1 == 0).any(), f"{name} {assigner}: box {b} has no first-step positive"
        top = strides[level[m == 0]].max().item()  # the coarsest level it is learnt on
        if side >= 128:  # large boxes are learnt on coarse levels, not only by small anchors
            assert top >= 32, f"{name} {assigner}: box {b} (side {side:.0f}) positive only up to stride {top}"
        if side <= 8:  # and tiny ones not on coarse levels
            assert top <= 8, f"{name} {assigner}: box {b} (side {side:.0f}) positive at stride {top}"


@pytest.mark.parametrize("assigner", ASSIGNERS)
def test_face_second_step_gives_small_faces_no_positive_on_the_str_levels(assigner):
    """Before, the second step matched the STR rows on their own, so every face's best STR
    anchor became a low-quality positive: a 10 px face was a P5 positive at IoU 0.03."""
    arch = ARCHS["face-s"]
    loss = DetectionLoss.for_arch(arch, 1, assigner=assigner)
    faces = [[300.0, 300.0, 310.0, 312.0], [100.0, 50.0, 124.0, 80.0], [400.0, 200.0, 416.0, 220.0]]
    a = arch.head.assign(loss, zero_outputs(arch, 1), [target(faces)])
    rows = level_rows(arch)
    str_start = sum(rows[:len(rows) - arch.head.str_levels])
    m = a.step2[0]
    assert not (m[str_start:] >= 0).any(), m[str_start:][m[str_start:] >= 0]
    for j in range(len(faces)):
        assert (m == j).any()
    # a 100 px face is still learnt on the STR levels
    big = arch.head.assign(loss, zero_outputs(arch, 1), [target([[200.0, 200.0, 290.0, 312.0]])]).step2[0]
    assert (big[str_start:] == 0).any()


# ----------------------------------------------------------------------------- ATSS by hand
@pytest.mark.parametrize("q1_bottom, positives", [(12.0, [4, 5]), (13.0, [4])])
def test_atss_candidates_per_level_threshold_mean_plus_std(q1_bottom, positives):
    """gt (0,0)-(10,10), centre (5, 5); k = 3 per level.

    level 0: s0 (3,3)-(7,7) centre distance 0, IoU 16/100 = 0.16; s1 (7,3)-(11,7) d 4, IoU 12/104;
             s2 (-1,3)-(3,7) d 4, IoU 12/104; s3 (3,8)-(7,12) d 5 -> not among the 3 nearest.
    level 1: q0 = the gt, d 0, IoU 1; q1 (0,0)-(10,b) d (b-10)/2; q2 (10,10)-(20,20) d 14.1,
             IoU 0; q3 (30,30)-(40,40) d 35.4 -> not a candidate.

    b = 12: q1 IoU 100/120 = 0.83333. Candidates' IoUs 0.16, 0.11538, 0.11538, 1, 0.83333, 0:
    mean 0.37068, sample std 0.42947, threshold 0.80016 -> q0 and q1 (centres inside). (The 3
    nearest over both levels together, s0, q0, q1, would give threshold 1.133: q0 only, and
    that through the low-quality rule.)
    b = 13: q1 IoU 100/130 = 0.76923. Mean 0.36, sample std 0.41626, threshold 0.77626 -> q0
    only. (The population std, 0.37999, would give 0.73999 and take q1 as well.)
    """
    anchors = torch.tensor([[3, 3, 7, 7], [7, 3, 11, 7], [-1, 3, 3, 7], [3, 8, 7, 12],
                            [0, 0, 10, 10], [0, 0, 10, q1_bottom], [10, 10, 20, 20], [30, 30, 40, 40]],
                           dtype=torch.float32)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    m = atss_match(anchors, gt, num_per_level=[4, 4], topk=3)
    assert m.tolist() == [0 if i in positives else NEG for i in range(8)]


def test_atss_candidates_are_the_nearest_anchors_not_the_best_overlapping():
    """gt (0,0)-(10,10); one level, k = 6. Rows: four 1x1 anchors at the centre (IoU 0.01,
    distance 0), the gt itself (IoU 1, d 0), a 1x1 at (5.5, 5) (IoU 0.01, d 0.5), then f0
    (1,0)-(11,10) (IoU 90/110 = 0.81818, d 1): the 7th nearest, so not a candidate.
    Candidates' IoUs 0.01 x 5 and 1: mean 0.175, sample std 0.40417, threshold 0.57917 -> the
    gt's twin only. (Taking the 6 best-overlapping instead would admit f0: threshold 0.77754.)"""
    tiny = [[4.5, 4.5, 5.5, 5.5]] * 4
    anchors = torch.tensor([*tiny, [0.0, 0.0, 10.0, 10.0], [5.0, 4.5, 6.0, 5.5], [1.0, 0.0, 11.0, 10.0]])
    m = atss_match(anchors, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), num_per_level=[7], topk=6)
    assert m.tolist() == [NEG] * 4 + [0, NEG, NEG]


def test_atss_positive_centres_lie_inside_the_box():
    """gt (0,0)-(8,4), one level of 8 anchors, k = 9: all are candidates.

    c0 (0,0)-(4,4): IoU 16/32 = 0.5, centre (2, 2) inside; c1 (1,0)-(17,4): IoU 28/68 = 0.41176,
    centre (9, 2) outside; six anchors far right, IoU 0. Mean 0.11397, sample std 0.21235,
    threshold 0.32632: c0 and c1 pass it, but c1's centre is outside the box -> c0 only.
    """
    far = [[20.0 + 10 * i, 0.0, 24.0 + 10 * i, 4.0] for i in range(6)]
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 0.0, 17.0, 4.0], *far])
    m = atss_match(anchors, torch.tensor([[0.0, 0.0, 8.0, 4.0]]), num_per_level=[8], topk=9)
    assert m.tolist() == [0] + [NEG] * 7


def test_atss_shared_anchor_goes_to_the_higher_iou_and_tiny_boxes_get_their_best_candidate():
    """k = 1: each box's one candidate is its nearest anchor, threshold = its IoU. Boxes A
    (0,0)-(10,10) (IoU 1 with z0) and B (1,1)-(9,9) (IoU 0.64 with z0) share z0: it goes to A,
    in whichever order the boxes come. A 2 px box between anchor centres (no centre inside it)
    gets its best candidate anyway (the low-quality rule), unless that is switched off."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 0.0, 50.0, 10.0]])
    a, b = [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0]
    assert atss_match(anchors, torch.tensor([a, b]), num_per_level=[2], topk=1).tolist() == [0, NEG]
    assert atss_match(anchors, torch.tensor([b, a]), num_per_level=[2], topk=1).tolist() == [1, NEG]
    grid = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]])  # centres (4, 4), (12, 4)
    tiny = torch.tensor([[6.0, 3.0, 8.0, 5.0]])  # centre (7, 4): nearest z0, IoU 4/64
    assert atss_match(grid, tiny, num_per_level=[2], topk=1).tolist() == [0, NEG]
    assert atss_match(grid, tiny, num_per_level=[2], topk=1, allow_low_quality=False).tolist() == [NEG, NEG]
    with pytest.raises(HwnasError, match="add up"):
        atss_match(grid, tiny, num_per_level=[1], topk=1)


# ----------------------------------------------------------------------------- crowd
@pytest.mark.parametrize("assigner", ASSIGNERS)
@pytest.mark.parametrize("name", ["small-mobilenet-retinanet", "face-s"])
def test_crowd_boxes_get_no_positive_and_their_anchors_are_ignored(name, assigner):
    arch = ARCHS[name]
    boxes = [[20.0, 20.0, 60.0, 70.0], [100.0, 100.0, 220.0, 200.0], [150.0, 10.0, 180.0, 40.0]]
    t = target(boxes, crowd=[False, True, True])
    loss = DetectionLoss.for_arch(arch, 1, assigner=assigner)
    (m,), _ = codes_of(arch, loss, [t])
    assert (m == 0).any()
    assert not ((m == 1) | (m == 2)).any()
    anchors = retina_anchors(arch) if arch.head.kind == "retina" else face_anchors(arch)
    inside = box_ioa(anchors, t["boxes"][1:]).max(1).values >= 0.5
    assert inside.sum() > 10 and (m[inside & (m < 0)] == IGNORE).all()
    away = ~inside & (box_iou(anchors, t["boxes"][:1])[:, 0] < 0.4)  # IoU matching ignores 0.4-0.5
    assert (m[away & (m < 0)] == NEG).all()
    # only crowd boxes: nothing positive at all
    (m,), _ = codes_of(arch, loss, [target(boxes[1:], crowd=[True, True])])
    assert not (m >= 0).any() and (m == IGNORE).any()


# ----------------------------------------------------------------------------- the option
def test_assigner_option_default_and_validation():
    arch = ARCHS["small-mobilenet-retinanet"]
    t = target([[20.0, 20.0, 60.0, 70.0], [5.0, 100.0, 12.0, 109.0]])
    default = DetectionLoss.for_arch(arch, 1)
    assert default.assigner == "iou"
    expect = match(retina_anchors(arch), t["boxes"], t["crowd"], high=0.5, low=0.4, allow_low_quality=True)
    assert torch.equal(arch.head.match_codes(default, [t])[0], expect)  # the default is IoU matching, unchanged
    atss = arch.head.match_codes(DetectionLoss.for_arch(arch, 1, assigner="atss"), [t])[0]
    assert not torch.equal(atss, expect) and (atss == 0).any() and (atss == 1).any()
    with pytest.raises(HwnasError, match="valid assigners are iou, atss") as e:
        DetectionLoss.for_arch(arch, 1, assigner="simota")
    assert "\n" not in str(e.value)
    with pytest.raises(HwnasError, match="fcos head assigns with iou only"):
        DetectionLoss.for_arch(resolve_arch("small-resnet-fcos"), 1, assigner="atss")
    with pytest.raises(HwnasError, match="atss_topk"):
        DetectionLoss.for_arch(arch, 1, assigner="atss", atss_topk=0)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("text", ["i64/basic_c8_1-2-2-2/fpn_p3-5_c16/retina_d1_c16/bn",
                                  "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc2_str2_mo2/bn"])
def test_a_few_steps_with_atss_lower_the_loss(text):
    arch = Arch.parse(text)
    torch.manual_seed(0)
    model = Detector.from_arch(arch, 1)
    init_head_priors(model)
    img = torch.rand(2, 3, 64, 64) * 0.2  # two images: batch norm needs more than one value at 1x1 levels
    img[0, :, 10:22, 8:18] = 0.9
    img[0, :, 24:60, 26:58] = 0.8
    img[1, :, 4:40, 4:34] = 0.85
    targets = [target([[8.0, 10.0, 18.0, 22.0], [26.0, 24.0, 58.0, 60.0]]), target([[4.0, 4.0, 34.0, 40.0]])]
    loss = DetectionLoss.for_arch(arch, 1, assigner="atss", box_loss="diou")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    hist, box = [], []
    for _ in range(25):
        parts = loss(model(img), targets)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        hist.append(parts["loss"].item())
        box.append(parts["loss_box"].item())
    assert all(math.isfinite(v) for v in hist)
    assert sum(hist[-3:]) / 3 < 0.5 * hist[0], hist
    assert box[0] > 0.1 and sum(box[-3:]) / 3 < 0.8 * box[0], box  # there are positives, and they fit


# ----------------------------------------------------------------------------- per-level loss curves
@pytest.mark.parametrize("name", ["small-mobilenet-retinanet", "face-64", "fcos-512"])
def test_loss_by_level_adds_up_and_large_boxes_train_the_upper_levels(name):
    """``record_levels``: every component's levels add up to it, and a large box's positives sit on
    higher pyramid levels than a small box's (what per-level curves are read for)."""
    arch = ARCHS.get(name) or Arch.parse("i512/basic_c16_1-2-2-2/fpn_p3-5_c32/fcos_d1_c32/bn")  # FCOS ranges are absolute px
    H, W = arch.input_hw
    loss = DetectionLoss.for_arch(arch, 1)
    loss.record_levels = True
    torch.manual_seed(0)
    outputs = tuple(torch.randn_like(o) * 0.1 for o in zero_outputs(arch, 1))
    mean_level = {}
    for size, side in (("small", 0.12), ("large", 0.8)):
        w, h = W * side, H * side
        out = loss(outputs, [target([[(W - w) / 2, (H - h) / 2, (W + w) / 2, (H + h) / 2]])])
        for c in arch.head.loss_components():
            assert sum(loss.levels[f"{c}/p{lv}"] for lv in arch.out_levels).item() == pytest.approx(out[c].item(),
                                                                                               rel=1e-5, abs=1e-7)
        pos = torch.tensor([loss.levels[f"positives/p{lv}"].item() for lv in arch.out_levels])
        assert pos.sum() > 0
        mean_level[size] = float((pos * torch.tensor(arch.out_levels, dtype=torch.float)).sum() / pos.sum())
    assert mean_level["large"] >= mean_level["small"] + 1, mean_level
    loss.record_levels = False
    loss(outputs, [target([[0, 0, W / 2, H / 2]])])
    assert loss.levels == {}  # off: nothing recorded
