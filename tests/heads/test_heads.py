"""Losses, targets and post-processing of every head type, on real detectors (no mocks)."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from hwnas.spec.arch import Arch
from hwnas.errors import HwnasError
from hwnas.heads import HEAD_KINDS
from hwnas.heads.anchors import flatten_levels
from hwnas.heads.face import face_anchors, split_outputs
from hwnas.heads.boxes import BOX_LOSSES, iou_loss
from hwnas.heads.fcos import default_fcos_ranges, fcos_points
from hwnas.heads.losses import IGNORE, NEG, DetectionLoss, assign_points, init_head_priors, match
from hwnas.heads.postprocess import decode_outputs, postprocess
from hwnas.heads.rcnn import rpn_anchors_for
from hwnas.heads.retina import RETINA_ANCHORS, retina_anchors
from hwnas.models import Detector

K = 3
ARCHS = {k: Arch.parse(s) for k, s in {
    "retina": "i128/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn",
    "fcos": "i128/basic_c16_1-2-2-2/fpn_p3-5_c32/fcos_d1_c32/bn",
    "rcnn": "i128/basic_c16_1-2-2-2/fpn_p3-5_c32/rcnn_d1_c128_n64/bn",
    "face": "i128/basic_c16_1-2-2-2/fpn_p3-5_c32/face_d1_c32_stc1_str1_mo2/bn",
}.items()}
assert set(ARCHS) == set(HEAD_KINDS)  # one arch of every registered head kind


def make_batch(n: int, hw: tuple[int, int], boxes_per_image: int = 2, seed: int = 0):
    """Noise images with filled rectangles; class c paints channel c. Boxes and labels known."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, *hw, generator=g) * 0.3
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for j in range(boxes_per_image):
            w, h = torch.randint(24, 64, (2,), generator=g).tolist()
            x = int(torch.randint(0, hw[1] - w, (1,), generator=g))
            y = int(torch.randint(0, hw[0] - h, (1,), generator=g))
            c = (i + j) % K
            images[i, :, y:y + h, x:x + w] = 0.0
            images[i, c, y:y + h, x:x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.long),
                        "crowd": torch.zeros(len(boxes), dtype=torch.bool), "image_id": i})
    return images, targets


def build(head: str, seed: int = 0) -> tuple[Detector, DetectionLoss]:
    torch.manual_seed(seed)
    model = Detector.from_arch(ARCHS[head], K)
    init_head_priors(model)
    return model, DetectionLoss.for_arch(ARCHS[head], K)


def train_steps(model, crit, images, targets, steps: int, lr: float = 1e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    hist = []
    for _ in range(steps):
        out = model(images, extra_boxes=crit.extra_boxes(targets))
        loss = crit(out, targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(loss.item())
    return hist


# ----------------------------------------------------------------------------- anchors and layout
@pytest.mark.parametrize("text", [*map(str, ARCHS.values()), "i128x96/basic_c16_1-2-2-2/none/retina_d1_c32/bn",
                                  "i96/basic_c16_1-2-2-2/fpn_p3-7_c32/fcos_d1_c32/gn"])
def test_positions_match_detector_outputs(text):
    arch = Arch.parse(text)
    model = Detector.from_arch(arch, K).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *arch.input_hw))
    if arch.head.kind == "retina":
        rows = flatten_levels(out[0::2], K).shape[1]
        assert rows == flatten_levels(out[1::2], 4).shape[1] == len(retina_anchors(arch))
    elif arch.head.kind == "fcos":
        pts, strides = fcos_points(arch)
        assert flatten_levels(out[0::3], K).shape[1] == len(pts) == len(strides)
        assert flatten_levels(out[2::3], 1).shape[1] == len(pts)
    elif arch.head.kind == "face":
        f = split_outputs(out, arch, K)
        assert f.cls.shape[1] == f.box.shape[1] == len(face_anchors(arch))
    else:
        n = len(arch.out_levels)
        anchors = rpn_anchors_for(arch)
        assert flatten_levels(out[0:2 * n:2], 1).shape[1] == len(anchors)
        # One place for RPN anchors: the loss uses the very tensor the exported RoI stage decodes with.
        assert torch.equal(anchors, model.module_for("head.roi").anchors)


def test_retina_layout_channel_a_times_k_plus_k():
    """Channel a*K + k at (y, x) of a level is row (level offset + (y*w + x)*A + a), column k."""
    arch = ARCHS["retina"]
    shapes = [arch.level_hw(lv) for lv in arch.out_levels]
    outs = [torch.zeros(1, RETINA_ANCHORS * K, h, w) for h, w in shapes]
    li, (y, x), a, k = 1, (3, 5), 7, 2
    outs[li][0, a * K + k, y, x] = 1.0
    flat = flatten_levels(outs, K)[0]
    row, col = flat.nonzero()[0].tolist()
    offset = sum(h * w for h, w in shapes[:li]) * RETINA_ANCHORS
    assert (row, col) == (offset + (y * shapes[li][1] + x) * RETINA_ANCHORS + a, k)
    anchor = retina_anchors(arch)[row]
    stride = 2 ** arch.out_levels[li]
    centre = ((anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2)
    assert centre == pytest.approx(((x + 0.5) * stride, (y + 0.5) * stride))
    ratio, scale = divmod(a, 3)  # a = ratio_index * 3 + scale_index
    w_, h_ = float(anchor[2] - anchor[0]), float(anchor[3] - anchor[1])
    assert h_ / w_ == pytest.approx((0.5, 1.0, 2.0)[ratio])
    assert math.sqrt(w_ * h_) == pytest.approx(4 * stride * 2 ** (scale / 3), rel=1e-5)


def test_fcos_default_ranges_follow_strides():
    arch = Arch.parse("i512/basic_c16_1-2-2-2/fpn_p3-7_c32/fcos_d1_c32/bn")
    assert default_fcos_ranges(arch) == ((0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))
    assert default_fcos_ranges(ARCHS["fcos"]) == ((0, 64), (64, 128), (128, math.inf))


# ----------------------------------------------------------------------------- matching
def test_match_hand_made_positives_negatives_ignored_and_crowd():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [200.0, 0.0, 300.0, 100.0]])
    crowd = torch.tensor([False, False, True])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],      # 0: identical to gt 0 -> positive 0
        [0.0, 0.0, 10.0, 22.0],      # 1: IoU 0.45 with gt 0 -> between thresholds, ignored
        [50.0, 50.0, 60.0, 60.0],    # 2: touches nothing -> negative
        [100.0, 100.0, 130.0, 130.0],  # 3: IoU 0.11, but gt 1's best anchor -> low-quality positive 1
        [210.0, 10.0, 250.0, 50.0],  # 4: inside the crowd box -> ignored, never positive
        [280.0, 80.0, 320.0, 120.0],  # 5: 1/16 inside the crowd box -> negative
    ])
    m = match(anchors, gt, crowd, high=0.5, low=0.4, allow_low_quality=True)
    assert m.tolist() == [0, IGNORE, NEG, 1, IGNORE, NEG]
    strict = match(anchors, gt, crowd, high=0.5, low=0.4, allow_low_quality=False)
    assert strict[3] == NEG
    empty = match(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool), high=0.5, low=0.4,
                  allow_low_quality=True)
    assert (empty == NEG).all()


def test_fcos_assignment_ranges_smallest_box_and_crowd():
    points = torch.tensor([[20.0, 20.0], [20.0, 20.0], [5.0, 5.0], [150.0, 150.0], [90.0, 20.0]])
    strides = torch.tensor([8.0, 16.0, 8.0, 8.0, 8.0])
    ranges = torch.tensor([[0.0, 64.0], [64.0, math.inf], [0.0, 64.0], [0.0, 64.0], [0.0, 64.0]])
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 100.0, 100.0], [140.0, 140.0, 200.0, 200.0],
                       [80.0, 0.0, 120.0, 40.0]])
    crowd = torch.tensor([False, False, True, False])
    m = assign_points(points, strides, ranges, gt, crowd, radius=None)
    # 0: inside boxes 0 and 1, only box 0 in range -> 0; 1: the big box in the coarse level's range;
    # 2: only inside box 1, out of the fine level's range -> negative; 3: in the crowd -> ignored;
    # 4: inside box 3 -> 3.
    assert m.tolist() == [0, 1, NEG, IGNORE, 3]
    # Centre sampling keeps only points near the centre: (90, 20) is 10 px from box 3's centre.
    near = assign_points(points, strides, ranges, gt, crowd, radius=1.0)
    assert near[4] == NEG and near[0] == 0


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_iou_family_losses(kind):
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    same = iou_loss(gt, gt, kind)
    near = iou_loss(torch.tensor([[12.0, 12.0, 52.0, 42.0]]), gt, kind)
    far = iou_loss(torch.tensor([[30.0, 25.0, 70.0, 55.0]]), gt, kind)
    apart = iou_loss(torch.tensor([[100.0, 100.0, 140.0, 130.0]]), gt, kind)
    assert same.item() == pytest.approx(0.0, abs=1e-5)
    assert 0 < near.item() < far.item() <= apart.item()


# ----------------------------------------------------------------------------- optimisation
@pytest.mark.parametrize("head", list(HEAD_KINDS))
def test_adam_steps_lower_the_loss(head):
    model, crit = build(head)
    images, targets = make_batch(2, model.arch.input_hw)
    hist = train_steps(model, crit, images, targets, steps=40)
    assert all(math.isfinite(v) for v in hist)
    assert sum(hist[-3:]) / 3 < 0.7 * hist[0], hist


def test_retina_overfits_one_image():
    model, crit = build("retina", seed=1)
    images, targets = make_batch(1, model.arch.input_hw, boxes_per_image=1, seed=3)
    train_steps(model, crit, images, targets, steps=60, lr=2e-3)
    model.eval()
    with torch.no_grad():
        dets = postprocess(model(images), model.arch, K)[0]
    assert len(dets["boxes"]) >= 1
    assert dets["labels"][0] == targets[0]["labels"][0]
    assert box_iou(dets["boxes"][:1], targets[0]["boxes"]).item() > 0.5


@pytest.mark.parametrize("head", list(HEAD_KINDS))
def test_empty_targets_give_finite_loss(head):
    model, crit = build(head)
    images, targets = make_batch(2, model.arch.input_hw)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "crowd": torch.zeros(0, dtype=torch.bool), "image_id": 9}
    for batch in ([empty, dict(empty)], [targets[0], empty]):
        out = model(images, extra_boxes=crit.extra_boxes(batch))
        losses = crit(out, batch)
        assert set(losses) == {"loss", *crit.components}
        assert all(torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
    assert crit.extra_boxes([empty, empty]) is None


@pytest.mark.parametrize("head", list(HEAD_KINDS))
@pytest.mark.parametrize("box_loss", BOX_LOSSES)
def test_every_box_loss_runs(head, box_loss):
    model, _ = build(head)
    kw = {"roi_box_loss": box_loss} if head == "rcnn" else {}
    crit = DetectionLoss.for_arch(ARCHS[head], K, box_loss=box_loss, **kw)
    images, targets = make_batch(1, model.arch.input_hw)
    targets[0]["crowd"][1] = True
    losses = crit(model(images, extra_boxes=crit.extra_boxes(targets)), targets)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0


def test_rcnn_extra_boxes_reach_the_roi_head_only_when_given():
    model, crit = build("rcnn")
    images, targets = make_batch(2, model.arch.input_hw, boxes_per_image=2)
    targets[1] = {**targets[1], "boxes": targets[1]["boxes"][:1], "labels": targets[1]["labels"][:1],
                  "crowd": targets[1]["crowd"][:1]}
    extra = crit.extra_boxes(targets)
    assert extra.shape == (2, 2, 4)
    assert torch.equal(extra[1, 1], torch.tensor([0.0, 0.0, 128.0, 128.0]))  # padding: the whole image
    model.eval()
    with torch.no_grad():
        plain = model(images)
        more = model(images, extra_boxes=extra)
    n = model.arch.head.proposals
    assert plain[-3].shape[1] == n and more[-3].shape[1] == n + 2
    assert torch.equal(more[-3][:, n:], extra)
    assert torch.allclose(more[-2][:, :n], plain[-2], atol=1e-5)  # the proposals' rows are unchanged


def test_contracts_are_checked_early():
    with pytest.raises(HwnasError, match="valid box losses"):
        DetectionLoss.for_arch(ARCHS["retina"], K, box_loss="l2")
    with pytest.raises(HwnasError, match="components"):
        DetectionLoss.for_arch(ARCHS["retina"], K, weights={"loss_ctr": 1.0})
    model, crit = build("retina")
    images, targets = make_batch(2, model.arch.input_hw)
    out = model(images)
    with pytest.raises(HwnasError, match="num_classes"):
        DetectionLoss.for_arch(ARCHS["retina"], K + 1)(out, targets)
    with pytest.raises(HwnasError, match="one per image"):
        crit(out, targets[:1])
    bad = [{**targets[0], "labels": torch.tensor([0, K])}, targets[1]]
    with pytest.raises(HwnasError, match="labels must be in"):
        crit(out, bad)


# ----------------------------------------------------------------------------- post-processing
@pytest.mark.parametrize("head", list(HEAD_KINDS))
def test_postprocess_contract(head):
    torch.manual_seed(0)
    model = Detector.from_arch(ARCHS[head], K).eval()  # untrained: many overlapping candidates
    images, _ = make_batch(2, model.arch.input_hw)
    with torch.no_grad():
        out = model(images)
    h, w = model.arch.input_hw
    dets = postprocess(out, model.arch, K, score_thresh=0.0, max_dets=20)
    assert len(dets) == 2
    for d in dets:
        m = len(d["boxes"])
        assert 0 < m <= 20
        assert d["boxes"].shape == (m, 4) and d["scores"].shape == (m,) and d["labels"].shape == (m,)
        assert d["labels"].dtype == torch.int64 and d["labels"].min() >= 0 and d["labels"].max() < K
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        b = d["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    boxes, scores = decode_outputs(out, model.arch, K)
    assert scores.shape[-1] == K and ((scores >= 0) & (scores <= 1)).all()
    assert boxes.shape[-1] == 4 and boxes.shape[:2] == scores.shape[:2]
    assert postprocess(out, model.arch, K, score_thresh=0.999)[0]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("head", [h for h in HEAD_KINDS if not HEAD_KINDS[h].TWO_STAGE])
def test_decode_lazy_gives_the_decoded_rows_bit_for_bit(head):
    """What the deployed graph decodes (only the chosen rows) is exactly what decode gives those rows."""
    torch.manual_seed(0)
    model = Detector.from_arch(ARCHS[head], K).eval()
    images, _ = make_batch(2, model.arch.input_hw)
    with torch.no_grad():
        out = model(images)
    boxes, scores = model.arch.head.decode(out, model.arch, K)
    lazy_scores, boxes_of = model.arch.head.decode_lazy(out, model.arch, K)
    assert torch.equal(lazy_scores, scores)
    rows = torch.stack([torch.randperm(boxes.shape[1], generator=torch.Generator().manual_seed(i))[:50] for i in range(2)])
    picked = boxes_of(rows)
    assert picked.shape == (2, 50, 4)
    assert torch.equal(picked, torch.stack([boxes[i, rows[i]] for i in range(2)]))
