"""The face head (hwnas.heads.face): anchors, max-out, STC and STR on hand-made anchors and
outputs, the arch grammar of its tricks, and its deployable graph in onnxruntime and TensorRT-RTX."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torchvision.ops import box_iou

from hwnas.spec.arch import Arch
from hwnas.spec.space import get_space
from hwnas.data.transforms import normalize
from hwnas.errors import HwnasError
from hwnas.export.deploy import OnnxDetector, TorchDetector, export_deploy_onnx
from hwnas.heads.losses import DetectionLoss, init_head_priors
from hwnas.heads.postprocess import postprocess
from hwnas.heads.anchors import num_positions
from hwnas.heads.boxes import decode_deltas, encode_boxes, iou_loss
from hwnas.heads.losses import IGNORE, NEG, match
from hwnas.heads.face import STC_REJECT, decode, face_anchors, outputs_per_level, split_outputs
from hwnas.models import Detector
from hwnas.spec.presets import PRESETS, resolve_arch

from conftest import needs_rtx

# 64 px, P2-P6: level sizes 16, 8, 4, 2, 1; STC on P2-P3, STR on P5-P6, 2 max-out logits on P2.
ARCH = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc2_str2_mo2/bn")
PLAIN = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc0_str0_mo0/bn")
ROWS = {2: 16 * 16 * 2, 3: 8 * 8 * 2, 4: 4 * 4 * 2, 5: 2 * 2 * 2, 6: 1 * 1 * 2}  # anchors per level


def raw_outputs(arch: Arch, k: int = 1, fill: float = 0.0) -> list[torch.Tensor]:
    """Zero (or ``fill``) raw outputs of the right shapes, in Detector.forward order."""
    out = []
    m = arch.head.maxout
    for li, (level, names) in enumerate(zip(arch.out_levels, outputs_per_level(arch))):
        h, w = arch.level_hw(level)
        ch = {"cls": 2 * (k + (m if li == 0 else 0)), "box": 8, "cls1": 2 * k, "box1": 8}
        out += [torch.full((1, ch[n], h, w), fill) for n in names]
    return out


def names_of(arch: Arch) -> list[str]:
    return [f"p{lv}_{n}" for lv, names in zip(arch.out_levels, outputs_per_level(arch)) for n in names]


# ----------------------------------------------------------------------------- grammar and model
def test_grammar_round_trips_and_checks_the_tricks():
    assert str(ARCH) == "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc2_str2_mo2/bn"
    assert Arch.parse(str(ARCH)) == ARCH
    for name in ("face-s", "face-m"):
        a = resolve_arch(name)
        assert a.head.kind == "face" and a.out_levels == (2, 3, 4, 5, 6, 7) and str(a) == PRESETS[name]
    bad = {
        "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16/bn": "names its tricks",
        "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc3_str3_mo0/bn": "may not overlap",
        "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/face_d1_c16_stc0_str0_mo9/bn": "max-out",
        "i64/basic_c8_1-2-2-2/none/face_d1_c16_stc0_str0_mo0/bn": "needs a neck",
        "i64/basic_c8_1-2-2-2/fpn_p2-6_c16/retina_d1_c16_stc1_str0_mo0/bn": "only the face head",
    }
    for text, words in bad.items():
        with pytest.raises(HwnasError, match=words):
            Arch.parse(text)


def test_detector_outputs_follow_the_walk():
    det = Detector.from_arch(ARCH, 1).eval()
    out = det(torch.zeros(1, 3, 64, 64))
    assert det.output_names == names_of(ARCH)
    assert [n for n in det.output_names if n.endswith(("cls1", "box1"))] == ["p2_cls1", "p3_cls1", "p5_box1", "p6_box1"]
    shapes = dict(zip(det.output_names, (tuple(o.shape) for o in out)))
    assert shapes["p2_cls"] == (1, 2 * (1 + 2), 16, 16)  # max-out: 2 anchors x (1 face + 2 background)
    assert shapes["p3_cls"] == (1, 2, 8, 8) and shapes["p6_box1"] == (1, 8, 1, 1)
    # every unit of the walk is a module of the detector and nothing else is
    roles = {p.role for p in ARCH.placed_units(1)}
    assert {"head.p2.cls_maxout", "head.p2.cls1", "head.p6.box1"} <= roles
    assert "head.p3.cls_maxout" not in roles and "head.p4.cls1" not in roles and "head.p4.box1" not in roles
    # one module per role shared across levels (the towers' BatchNorm-ed units: one per level, sharing
    # their conv), and every module is used by the forward
    units = {p.role: p.unit for p in ARCH.placed_units(1)}
    per_level = {r for r, u in units.items() if u.norm == "bn" and r.startswith("head.p")}
    shared = {re.sub(r"^head\.p\d+\.", "head.", r) for r in roles - per_level}
    assert per_level and set(det.blocks.keys()) == {r.replace(".", "_") for r in shared | per_level}
    sum(o.float().sum() for o in det.train()(torch.rand(2, 3, 64, 64))).backward()
    assert all(p.grad is not None for p in det.parameters())


def test_face_space_samples_valid_face_archs():
    sp = get_space("face")
    archs = [sp.sample(s) for s in range(20)]
    assert all(a.head.kind == "face" and a.levels[0] == 2 for a in archs)
    for a in archs:
        n = len(a.out_levels)
        assert (a.head.stc_levels, a.head.str_levels, a.head.maxout) == (3, min(3, n - 3), 3)
        assert sp.mutate(a, 1).head.kind == "face"
    # the profiling set covers every unit of the samples (the one-walk claim for the new head)
    keys = {u.key() for u in sp.all_units(1)}
    assert all(u.key() in keys for a in archs for u in a.units(1))


# ----------------------------------------------------------------------------- anchors
def test_anchors_two_scales_ratio_1_25_in_layout_order():
    a = face_anchors(ARCH)
    assert a.shape == (num_positions(ARCH), 4) == (sum(ROWS.values()), 4)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    torch.testing.assert_close(h / w, torch.full_like(h, 1.25))
    # first location of P2: centre (2, 2) (64 px / 16 cells), sides 8 and 8*sqrt(2) (sqrt of the area)
    torch.testing.assert_close(a[0], torch.tensor([2 - 4 / math.sqrt(1.25), 2 - 4 * math.sqrt(1.25),
                                                   2 + 4 / math.sqrt(1.25), 2 + 4 * math.sqrt(1.25)]))
    torch.testing.assert_close((w * h).sqrt()[:2], torch.tensor([8.0, 8 * math.sqrt(2)]))
    torch.testing.assert_close((w * h).sqrt()[-2:], torch.tensor([128.0, 128 * math.sqrt(2)]))  # P6: 2 x 64
    # second location of P2 is one cell (4 px) to the right
    torch.testing.assert_close(a[2] - a[0], torch.tensor([4.0, 0.0, 4.0, 0.0]))


# ----------------------------------------------------------------------------- max-out
def test_max_out_effective_logit_is_face_minus_strongest_background():
    out = raw_outputs(ARCH, k=1)
    # P2 location 0: anchor 0 has face 3, backgrounds (1, 5) -> 3 - 5 = -2; anchor 1 face 0, bg (-4, -1) -> 1
    out[0][0, :, 0, 0] = torch.tensor([3.0, 1.0, 5.0, 0.0, -4.0, -1.0])
    f = split_outputs(tuple(out), ARCH, 1)
    assert f.cls.shape == (1, sum(ROWS.values()), 1)
    assert f.cls[0, 0, 0].item() == -2.0 and f.cls[0, 1, 0].item() == 1.0
    assert f.cls[0, 2, 0].item() == 0.0  # zero logits everywhere else: 0 - max(0, 0)
    _, scores = decode(tuple(out), ARCH, 1)
    torch.testing.assert_close(scores[0, :2, 0], torch.tensor([1 / (1 + math.e ** 2), 1 / (1 + math.e ** -1)]))
    # two-way softmax of the face logit against the strongest background logit
    torch.testing.assert_close(scores[0, 0, 0], torch.softmax(torch.tensor([3.0, 5.0]), 0)[0])


# ----------------------------------------------------------------------------- STC
def _face_target(box) -> list[dict]:
    return [{"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([0])}]


def _codes(arch: Arch, gt, high=0.5, low=0.4) -> torch.Tensor:
    return match(face_anchors(arch), torch.tensor([gt]), high=high, low=low, allow_low_quality=True)


def test_stc_rejects_confident_negatives_from_the_second_step_and_at_inference():
    gt = [20.0, 20.0, 29.0, 31.0]  # a 9x11 face: its best anchors sit on P2
    codes = _codes(ARCH, gt)
    for cls1 in (-10.0, 10.0):  # first step: every STC anchor rejected (score 4.5e-5), or none
        out = [o.requires_grad_() for o in raw_outputs(ARCH)]
        with torch.no_grad():
            out[names_of(ARCH).index("p2_cls1")].fill_(cls1)
            out[names_of(ARCH).index("p3_cls1")].fill_(cls1)
        parts = DetectionLoss.for_arch(ARCH, 1)(tuple(out), _face_target(gt))
        assert set(parts) == {"loss", "loss_cls", "loss_box", "loss_cls1", "loss_box1"}
        g2, g3, g4 = torch.autograd.grad(parts["loss_cls"], [out[names_of(ARCH).index(f"p{lv}_cls")] for lv in (2, 3, 4)])
        # face-logit gradient per anchor in layout order (P2: channel a*(1+2); others: channel a)
        face = torch.cat([g2[0, [0, 3]].permute(1, 2, 0).reshape(-1), g3[0].permute(1, 2, 0).reshape(-1)])
        stc = codes[: ROWS[2] + ROWS[3]]
        assert (face[stc >= 0].abs() > 0).all()  # positives always learn, rejected or not
        assert (face[stc == IGNORE] == 0).all()
        if cls1 < 0:
            assert (face[stc == NEG] == 0).all()  # confidently rejected negatives leave the second step
        else:
            assert (face[stc == NEG].abs() > 0).all()
        assert (g4.abs() > 0).all()  # P4 has no STC: all its (negative) anchors learn
    assert STC_REJECT == 0.01
    # inference: rejected anchors score 0 on the STC levels only; the rest sigmoid(0) = 0.5
    out = raw_outputs(ARCH)
    out[names_of(ARCH).index("p2_cls1")].fill_(-10.0)
    _, scores = decode(tuple(out), ARCH, 1)
    assert (scores[0, : ROWS[2], 0] == 0).all() and (scores[0, ROWS[2]:, 0] == 0.5).all()


def test_stc_first_step_loss_is_focal_over_its_levels():
    """With zero logits every STC anchor has p = 0.5, so the sigmoid focal loss (alpha 0.25,
    gamma 2) of a positive is 0.25 * 0.5^2 * ln 2, of a negative 0.75 * 0.5^2 * ln 2, summed
    over the STC levels' anchors that are not ignored and divided by their positives."""
    gt = [20.0, 20.0, 29.0, 31.0]
    stc = _codes(ARCH, gt)[: ROWS[2] + ROWS[3]]
    pos, neg = int((stc >= 0).sum()), int((stc == NEG).sum())
    assert pos >= 1 and neg > 0 and int((stc == IGNORE).sum()) > 0
    expect = (0.25 * pos + 0.75 * neg) * 0.25 * math.log(2) / pos
    got = DetectionLoss.for_arch(ARCH, 1)(tuple(raw_outputs(ARCH)), _face_target(gt))["loss_cls1"].item()
    assert got == pytest.approx(expect, rel=1e-5)


# ----------------------------------------------------------------------------- STR
def test_str_second_step_matches_and_decodes_from_refined_anchors():
    """The first step of STR moves P5's first anchor onto a 50x66 face it overlaps at IoU < 0.6;
    the second step matches the refined anchor at its stricter 0.6 and regresses from it, so with
    zero second-step deltas the box decodes to the face exactly and that positive costs nothing.
    The expected loss is computed here from the anchors: mean IoU loss over the positives, the
    refined one at 0, the others from their own (unrefined) anchors."""
    gt = torch.tensor([[0.0, -2.0, 50.0, 64.0]])
    anchors = face_anchors(ARCH)
    row = ROWS[2] + ROWS[3] + ROWS[4]  # anchor 0 of P5's first location
    raw_iou = box_iou(anchors[row:row + 1], gt).item()
    assert 0.3 < raw_iou < 0.6  # not a second-step positive without the refinement
    out = raw_outputs(ARCH)
    out[names_of(ARCH).index("p5_box1")][0, :4, 0, 0] = encode_boxes(gt[0], anchors[row])  # location (0, 0), anchor 0
    boxes, _ = decode(tuple(out), ARCH, 1)
    torch.testing.assert_close(boxes[0, row], gt[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes[0, row + 1], anchors[row + 1], atol=1e-4, rtol=0)  # not refined
    # second-step codes by hand: STR rows (P5, P6) against the refined anchors at 0.6 / 0.5, the
    # other rows keep the first step's 0.5 / 0.4 on the raw anchors
    refined = anchors.clone()
    refined[row] = gt[0]
    m1 = match(anchors, gt, high=0.5, low=0.4, allow_low_quality=True)
    m2 = m1.clone()
    m2[row:] = match(refined[row:], gt, high=0.6, low=0.5, allow_low_quality=True)
    pos = (m2 >= 0).nonzero().squeeze(1)
    assert row in pos.tolist()
    expect = iou_loss(refined[pos], gt.expand(len(pos), 4), "iou").mean().item()
    parts = DetectionLoss.for_arch(ARCH, 1, box_loss="iou")(tuple(out), _face_target(gt[0].tolist()))
    assert parts["loss_box"].item() == pytest.approx(expect, abs=1e-5)
    # the first step's own loss: its STR-row positives regress from the raw anchors
    pos1 = (m1[row:] >= 0).nonzero().squeeze(1) + row
    deltas = torch.zeros(len(pos1), 4)
    deltas[pos1 == row] = encode_boxes(gt[0], anchors[row])
    expect1 = (iou_loss(decode_deltas(deltas, anchors[pos1]), gt.expand(len(pos1), 4), "iou").mean().item()
               if len(pos1) else 0.0)
    assert parts["loss_box1"].item() == pytest.approx(expect1, abs=1e-5)
    # with STR off the same face is regressed from the raw anchors only
    plain = DetectionLoss.for_arch(PLAIN, 1, box_loss="iou")(tuple(raw_outputs(PLAIN)), _face_target(gt[0].tolist()))
    assert set(plain) == {"loss", "loss_cls", "loss_box"}
    pos0 = (m1 >= 0).nonzero().squeeze(1)
    assert plain["loss_box"].item() == pytest.approx(
        iou_loss(anchors[pos0], gt.expand(len(pos0), 4), "iou").mean().item(), abs=1e-5)


def test_step_thresholds_are_configurable_and_checked():
    gt = [2.0, -5.5, 62.0, 69.5]
    out = raw_outputs(ARCH)
    strict = DetectionLoss.for_arch(ARCH, 1, step1_iou=(0.95, 0.9))(tuple(out), _face_target(gt))
    loose = DetectionLoss.for_arch(ARCH, 1, step1_iou=(0.3, 0.2))(tuple(out), _face_target(gt))
    assert strict["loss_cls"].item() != loose["loss_cls"].item()
    for bad in ((0.4, 0.5), (0.0, 0.0), (1.2, 0.5)):
        with pytest.raises(HwnasError, match="step2_iou"):
            DetectionLoss.for_arch(ARCH, 1, step2_iou=bad)


def test_loss_rejects_wrong_outputs():
    loss = DetectionLoss.for_arch(ARCH, 1)
    out = raw_outputs(ARCH)
    with pytest.raises(HwnasError, match="expected 14 outputs"):
        loss(tuple(out[:-1]), _face_target([1.0, 1.0, 9.0, 9.0]))
    with pytest.raises(HwnasError, match="channels"):
        DetectionLoss.for_arch(ARCH, 2)(tuple(out), _face_target([1.0, 1.0, 9.0, 9.0]))


# ----------------------------------------------------------------------------- training signal
def test_a_few_steps_on_one_image_fit_its_faces():
    """Real backprop through every trick: the detector learns one image with two faces."""
    torch.manual_seed(0)
    det = Detector.from_arch(ARCH, 1)
    init_head_priors(det)
    bias = det.module_for("head.p2.cls_maxout")[0].bias.view(2, 3)
    assert (bias[:, 0] < -4).all() and (bias[:, 1:] == 0).all()  # face prior, background logits at 0
    img = torch.rand(2, 3, 64, 64) * 0.2  # two copies: batch norm needs more than one value at P6 (1x1)
    img[..., 10:22, 8:18] = 0.9
    img[..., 30:60, 30:54] = 0.8
    tgt = [{"boxes": torch.tensor([[8.0, 10.0, 18.0, 22.0], [30.0, 30.0, 54.0, 60.0]]), "labels": torch.tensor([0, 0])}] * 2
    loss = DetectionLoss.for_arch(ARCH, 1, box_loss="diou")
    opt = torch.optim.Adam(det.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        parts = loss(det(normalize(img)), tgt)
        first = first if first is not None else parts["loss"].item()
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    assert parts["loss"].item() < 0.3 * first
    det.eval()
    with torch.no_grad():
        d = postprocess(det(normalize(img)), ARCH, 1, score_thresh=0.3)[0]
    iou = box_iou(d["boxes"], tgt[0]["boxes"])
    assert (iou.max(0).values > 0.5).all()


# ----------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def face_detector() -> Detector:
    torch.manual_seed(0)
    det = Detector.from_arch(ARCH, 1).eval()
    with torch.no_grad():  # untrained scores are all ~0.5; spread them so NMS has work
        det.module_for("head.p2.cls1")[0].bias.fill_(-1.0)
    return det


@pytest.mark.parametrize("form", ["onnx", "ops"])
def test_deployable_graph_matches_eager(face_detector, form):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)
    ref = TorchDetector(face_detector).detect(images)
    got = OnnxDetector(export_deploy_onnx(face_detector, nms=form, batch=2)).detect(images)
    for r, g in zip(ref, got):
        assert len(r["boxes"]) > 0 and len(g["boxes"]) == len(r["boxes"])
        torch.testing.assert_close(g["scores"], r["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(g["boxes"], r["boxes"], atol=1e-3, rtol=0)


@needs_rtx
def test_face_preset_builds_ahead_of_time_with_tensorrt_rtx():
    from hwnas.backends.tensorrt import build_engine

    from engine_checks import check_plan, network_io

    arch = resolve_arch("face-s")
    det = Detector.from_arch(arch, 1).eval()
    graph = export_deploy_onnx(det, nms="ops", batch=1)
    assert network_io(graph) == ([("images", (1, 3, *arch.input_hw), "FLOAT")],
                                 ["num_dets", "boxes", "scores", "classes"])
    check_plan(build_engine(graph, flavour="tensorrt-rtx", sm="89"), graph)


# ----------------------------------------------------------------------------- multi-scale graph
MS_SCALES = "1,1f,2:-24"  # 64 px, mirrored 64 px, 128 px keeping faces up to 24 px


def _torch_multiscale(det: Detector, images: list[torch.Tensor]) -> list[dict]:
    from hwnas.evaluate.multiscale import multi_scale_detect, parse_scales

    def run(batch, hw):
        net = det.at_size(hw)
        with torch.no_grad():
            return postprocess(net(normalize(batch)), net.arch, 1, score_thresh=0.02, max_dets=750)  # the graph's

    return multi_scale_detect(images, run, ARCH.input_hw, parse_scales(MS_SCALES))


def test_multiscale_graph_matches_eager_multiscale_testing(face_detector):
    from hwnas.export.multiscale import MultiScaleOnnxDetector, export_multiscale_onnx
    from hwnas.evaluate.multiscale import parse_scales

    import onnx

    graph = export_multiscale_onnx(face_detector, parse_scales(MS_SCALES), batch=2)
    proto = onnx.load_from_string(graph)
    assert [i.name for i in proto.graph.input] == ["images_s0", "images_s1", "images_s2"]
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert dims == [[2, 3, 64, 64], [2, 3, 64, 64], [2, 3, 128, 128]]
    # the passes share their weights: no initializer is stored twice
    blobs = [(i.data_type, tuple(i.dims), onnx.numpy_helper.to_array(i).tobytes()) for i in proto.graph.initializer]
    assert len(set(blobs)) == len(blobs)
    torch.manual_seed(2)
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64), torch.rand(3, 64, 64)]  # any sizes; 3 = 2 + padded 1
    ref = _torch_multiscale(face_detector, images)
    got = MultiScaleOnnxDetector(graph).detect_original(images)
    for r, g in zip(ref, got):
        assert len(r["boxes"]) > 0 and len(g["boxes"]) == len(r["boxes"])
        torch.testing.assert_close(g["scores"], r["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(g["boxes"], r["boxes"], atol=1e-3, rtol=0)


def test_at_size_keeps_the_weights(face_detector):
    big = face_detector.at_size((128, 96))
    assert big.arch.input_hw == (128, 96) and face_detector.at_size((64, 64)) is face_detector
    for (k, a), (k2, b) in zip(face_detector.state_dict().items(), big.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert len(big(torch.rand(1, 3, 128, 96))) == len(face_detector.output_names)


@needs_rtx
def test_multiscale_graph_builds_ahead_of_time_with_tensorrt_rtx(face_detector):
    from hwnas.backends.tensorrt import build_engine
    from hwnas.export.multiscale import export_multiscale_onnx
    from hwnas.evaluate.multiscale import parse_scales

    from engine_checks import check_plan, network_io

    graph = export_multiscale_onnx(face_detector, parse_scales(MS_SCALES), nms="ops")
    # one input a scale (64, mirrored 64, 128 px) and each pass's detections (NMS stays inside each pass)
    fixed = ["num_dets", "boxes", "scores", "classes"]
    assert network_io(graph) == ([("images_s0", (1, 3, 64, 64), "FLOAT"), ("images_s1", (1, 3, 64, 64), "FLOAT"),
                                  ("images_s2", (1, 3, 128, 128), "FLOAT")], [f"{n}_s{i}" for i in range(3) for n in fixed])
    check_plan(build_engine(graph, flavour="tensorrt-rtx", sm="89"), graph)
