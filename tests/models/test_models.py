"""Units and the detector: every unit kind builds and runs, the detector is made of exactly the
table's units, forward shapes follow the docs, and the whole detector exports to ONNX."""
from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwnas.spec.arch import BLOCK_TYPES, NECKS, NORMS, Arch
from hwnas.spec.space import SearchSpace
from hwnas.models import Detector
from hwnas.backends.onnx_export import to_onnx
from hwnas.heads import HEAD_KINDS
from hwnas.heads.face import FACE_ANCHORS
from hwnas.heads.rcnn import RPN_ANCHORS
from hwnas.heads.retina import RETINA_ANCHORS
from hwnas.models.blocks import BUILDERS, build, example_inputs
from hwnas.spec.units import UNIT_KINDS, Unit

K = 3  # classes: small, so predictor shapes are easy to tell apart


def _unit_per_kind() -> list[Unit]:
    roi = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/rcnn_d1_c32_n8/bn").placed_units(K)[-1].unit
    return [
        Unit("conv", 3, 8, (32, 32), 3, 2, "bn", "relu"),
        Unit("conv", 8, 8, (16, 16), 1, 1, "gn", "relu6"),
        Unit("conv", 8, 12, (16, 16), 3, 1),
        Unit("basic", 8, 8, (16, 16), norm="bn"),
        Unit("basic", 8, 16, (16, 16), stride=2, norm="gn"),
        Unit("bottleneck", 8, 32, (16, 16), norm="bn"),
        Unit("bottleneck", 32, 64, (16, 16), stride=2, norm="gn"),
        Unit("mbconv", 8, 8, (16, 16), norm="bn"),
        Unit("mbconv", 8, 16, (16, 16), stride=2, norm="bn"),
        Unit("shuffle", 16, 16, (16, 16), norm="bn"),
        Unit("shuffle", 16, 32, (16, 16), stride=2, norm="gn"),
        Unit("fpn_node", 32, 16, (8, 8), top=True),
        Unit("fpn_node", 16, 16, (16, 16)),
        Unit("pan_node", 16, 16, (16, 16)),
        roi,
    ]


UNITS = _unit_per_kind()


def test_every_kind_has_a_case() -> None:
    assert {u.kind for u in UNITS} == set(BUILDERS) == set(UNIT_KINDS)


@pytest.mark.parametrize("unit", UNITS, ids=[u.key() for u in UNITS])
def test_unit_builds_and_runs(unit: Unit) -> None:
    m = build(unit).eval()
    xs = example_inputs(unit)
    with torch.no_grad():
        out = m(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(o).all() for o in outs)
    if unit.kind in ("conv", *BLOCK_TYPES):
        assert out.shape == (1, unit.cout, *unit.out_hw)
    elif unit.kind == "fpn_node":
        assert outs[0].shape == outs[1].shape == (1, unit.cout, *unit.hw)
    elif unit.kind == "pan_node":
        # bottom-up: the finer level (hw) goes down to the coarser one
        assert out.shape == (1, unit.cout, *((unit.hw[0] + 1) // 2, (unit.hw[1] + 1) // 2))
    else:
        boxes, cls, box = out
        assert boxes.shape == (1, unit.proposals, 4)
        assert cls.shape == (1, unit.proposals, unit.classes + 1) and box.shape == (1, unit.proposals, 4 * unit.classes)
    # batched example inputs have the same shapes but batch 2
    xs2 = example_inputs(unit, batch=2)
    assert [x.shape[1:] for x in xs2] == [x.shape[1:] for x in xs] and all(x.shape[0] == 2 for x in xs2)


def test_example_inputs_are_reproducible() -> None:
    u = UNITS[3]
    assert torch.equal(example_inputs(u)[0], example_inputs(u)[0])


def test_group_norm_on_a_one_by_one_map() -> None:
    # the top level of a small input is 1x1; GN there must still run (>= 2 channels a group)
    m = build(Unit("conv", 32, 32, (1, 1), 3, 1, "gn", "relu")).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 32, 1, 1)).shape == (1, 32, 1, 1)


# ------------------------------------------------------------------------------ detectors
# every registered head kind, the face head included (its tricks fitted to each level range)
SPACE = SearchSpace(resolutions=(64, 96), blocks=BLOCK_TYPES, widths=(8, 16), max_blocks=(2, 2, 2, 2),
                    level_ranges=((3, 5), (3, 6), (4, 6)), neck_widths=(16, 24), heads=tuple(HEAD_KINDS),
                    head_depths=(0, 1, 2), head_widths=(16, 24), rcnn_depths=(1, 2), rcnn_widths=(32,),
                    proposals=(8, 16), face_tricks=(2, 1, 2), norms=NORMS, name="models")


def _covering_sample() -> list[Arch]:
    """Sampled archs until every (block, neck, head, norm) combination has one (capped)."""
    want = {(b, n, h, no) for b in BLOCK_TYPES for n in NECKS for h in HEAD_KINDS for no in NORMS
            if not (HEAD_KINDS[h].NEEDS_NECK and n == "none")}
    got: dict[tuple, Arch] = {}
    for seed in range(20000):
        a = SPACE.sample(seed)
        got.setdefault((a.block, a.neck, a.head.kind, a.norm), a)
        if len(got) == len(want):
            break
    assert set(got) == want
    return list(got.values())


ARCHS = _covering_sample()


def _expected_shapes(a: Arch, b: int, k: int) -> list[tuple[int, ...]]:
    shapes = []
    if a.head.kind == "rcnn":
        total = 0
        for lv in a.out_levels:
            h, w = a.level_hw(lv)
            shapes += [(b, RPN_ANCHORS, h, w), (b, 4 * RPN_ANCHORS, h, w)]
            total += h * w * RPN_ANCHORS
        n = min(a.head.proposals, total)
        return shapes + [(b, n, 4), (b, n, k + 1), (b, n, 4 * k)]
    n_lv = len(a.out_levels)
    for li, lv in enumerate(a.out_levels):
        h, w = a.level_hw(lv)
        if a.head.kind == "retina":
            shapes += [(b, RETINA_ANCHORS * k, h, w), (b, RETINA_ANCHORS * 4, h, w)]
        elif a.head.kind == "fcos":
            shapes += [(b, k, h, w), (b, 4, h, w), (b, 1, h, w)]
        else:  # face: max-out on the lowest level, first steps of STC on the lowest, STR on the highest
            assert a.head.kind == "face", f"expected outputs of the {a.head.kind} head: add them here"
            f, m = a.head, a.head.maxout if li == 0 else 0
            shapes += [(b, FACE_ANCHORS * (k + m), h, w), (b, FACE_ANCHORS * 4, h, w)]
            shapes += [(b, FACE_ANCHORS * k, h, w)] * (li < f.stc_levels) + [(b, FACE_ANCHORS * 4, h, w)] * (
                li >= n_lv - f.str_levels)
    return shapes


def _param_shapes(m: torch.nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in m.named_parameters()} | {
        n: tuple(t.shape) for n, t in m.named_buffers()}


@pytest.mark.parametrize("arch", ARCHS, ids=[str(a) for a in ARCHS])
def test_detector_is_built_from_its_units(arch: Arch) -> None:
    det = Detector.from_arch(arch, K).eval()
    placed = arch.placed_units(K)
    used = set()
    for p in placed:
        m = det.module_for(p.role)
        ref = build(p.unit)
        assert type(m) is type(ref), p.role
        assert _param_shapes(m) == _param_shapes(ref), p.role
        used.add(id(m))
    # nothing in the detector that the table does not know about
    assert used == {id(m) for m in det.blocks.values()}
    distinct = {id(p): p for m in det.blocks.values() for p in m.parameters()}  # a shared conv once
    assert sum(p.numel() for p in det.parameters()) == sum(p.numel() for p in distinct.values())

    torch.manual_seed(0)
    x = torch.randn(2, 3, *arch.input_hw)
    with torch.no_grad():
        out = det(x)
    assert isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out)
    assert len(out) == len(det.output_names)
    assert [tuple(t.shape) for t in out] == _expected_shapes(arch, 2, K), det.output_names
    assert all(torch.isfinite(t).all() for t in out)


def test_output_names() -> None:
    a = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-4_c16/fcos_d1_c16/bn")
    assert Detector.from_arch(a, K).output_names == ["p3_cls", "p3_box", "p3_ctr", "p4_cls", "p4_box", "p4_ctr"]
    r = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-4_c16/rcnn_d1_c32_n8/bn")
    assert Detector.from_arch(r, K).output_names == ["p3_obj", "p3_box", "p4_obj", "p4_box",
                                                    "proposals", "roi_cls", "roi_box"]


def test_head_shared_across_levels() -> None:
    a = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/retina_d2_c16/gn")
    det = Detector.from_arch(a, K)
    assert det.module_for("head.p3.cls.1") is det.module_for("head.p5.cls.1")
    assert det.module_for("head.p3.box") is not det.module_for("head.p3.cls")


def test_head_batchnorm_per_level_and_old_weights_load() -> None:
    a = Arch.parse("i64/basic_c8_1-2-2-2/fpn_p3-5_c16/retina_d2_c16/bn")
    det = Detector.from_arch(a, K)
    p3, p5 = det.module_for("head.p3.cls.1"), det.module_for("head.p5.cls.1")
    assert p3[0] is p5[0] and p3[1] is not p5[1]  # one conv, a BatchNorm per level
    assert det.module_for("head.p3.cls") is det.module_for("head.p5.cls")  # prediction convs: no norm, shared
    # the statistics each level's BatchNorm gathers are that level's
    det.train()
    with torch.no_grad():
        det(torch.randn(4, 3, 64, 64))
    assert not torch.allclose(p3[1].running_var, p5[1].running_var)
    # weights saved with one BatchNorm for all levels (before they were per level) load, and
    # compute what they computed: every level's norm gets the shared one's statistics
    old = {}
    for k, v in det.state_dict().items():
        old[re.sub(r"^blocks\.head_p\d+_", "blocks.head_", k)] = v  # the last level's wins, as shared
    assert "blocks.head_cls_1.1.running_var" in old and "blocks.head_p3_cls_1.1.running_var" not in old
    again = Detector.from_arch(a, K)
    again.load_state_dict(old)
    for level in (3, 4, 5):
        assert torch.equal(again.module_for(f"head.p{level}.cls.1")[1].running_var, old["blocks.head_cls_1.1.running_var"])


def test_rcnn_proposals_are_inside_the_image() -> None:
    a = Arch.parse("i96/basic_c8_1-2-2-2/pafpn_p3-6_c16/rcnn_d2_c32_n16/gn")
    torch.manual_seed(1)
    det = Detector.from_arch(a, K).eval()
    with torch.no_grad():
        boxes = det(torch.randn(1, 3, 96, 96))[-3]
    assert boxes.shape == (1, 16, 4)
    assert (boxes >= 0).all() and (boxes <= 96).all()
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


# ------------------------------------------------------------------------------ ONNX
ONNX_ARCHS = [
    "i96/basic_c16_11-21-21-21/fpn_p3-6_c24/retina_d2_c24/bn",
    "i64/mbconv_c8_1-21-2-2/pafpn_p3-5_c16/fcos_d1_c16/gn",
    "i96/shuffle_c16_1-2-12-2/none/retina_d1_c16/bn",
    "i96/bottleneck_c8_1-2-21-2/fpn_p3-6_c16/rcnn_d2_c32_n16/bn",
    "i64/basic_c8_1-2-2-2/pafpn_p3-5_c16/rcnn_d1_c32_n8/gn",
]


@pytest.mark.parametrize("text", ONNX_ARCHS)
def test_detector_onnx_matches_torch(text: str) -> None:
    arch = Arch.parse(text)
    torch.manual_seed(0)
    det = Detector.from_arch(arch, K).eval()
    # non-trivial BN statistics, so folding is really exercised
    with torch.no_grad():
        for m in det.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, *arch.input_hw)
    with torch.no_grad():
        ref = [t.numpy() for t in det(x)]
    data = to_onnx(det, (x,), output_names=det.output_names)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == det.output_names
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(got) == len(ref)
    for name, g, r in zip(det.output_names, got, ref):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(g, r, atol=1e-3, rtol=1e-3, err_msg=name)
    if arch.head.kind == "rcnn":
        assert det.output_names[-3:] == ["proposals", "roi_cls", "roi_box"]  # compared above
