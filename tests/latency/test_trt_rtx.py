"""Ahead-of-time TensorRT-RTX builds of whole detectors and of every unit kind (no GPU needed),
and the gather RoIAlign that makes the two-stage head buildable there. Everything is real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from hwnas.spec.arch import Arch
from hwnas.spec.space import SPACES
from hwnas.errors import HwnasError
from hwnas.heads import HEAD_KINDS
from hwnas.models.roi_align import GatherMultiScaleRoIAlign
from hwnas.models.blocks import BUILDERS, RoIStage, build, example_inputs, set_roi_impl

try:
    import tensorrt_rtx  # noqa: F401

    HAS_RTX = True
except ImportError:
    HAS_RTX = False

needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed (pip install tensorrt-rtx-cu13)")

BYTES = {"fp32": 4, "fp16": 2}  # a weight in the plan at each precision


def _first_of_each_head(space: str = "tiny") -> dict[str, Arch]:
    found: dict[str, Arch] = {}
    for seed in range(500):
        a = SPACES[space].sample(seed)
        found.setdefault(a.head.kind, a)
        if set(found) == set(SPACES[space].heads):
            return found
    raise AssertionError(f"space {space} did not yield every head type")


# the general-purpose heads from the tiny space, and a small face head (the face space's are larger)
TINY = {**_first_of_each_head(), "face": Arch.parse("i128/basic_c16_1-2-2-2/fpn_p2-5_c32/face_d1_c32_stc2_str1_mo3/bn")}
assert set(TINY) == set(HEAD_KINDS)


# ------------------------------------------------------------------ gather RoIAlign numerics (no TensorRT)
def _level_hw(image_hw, level):
    h, w = image_hw
    for _ in range(level):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


@pytest.mark.parametrize("image_hw,levels", [((128, 128), (3, 4, 5)), ((256, 256), (2, 3, 4, 5, 6)),
                                             ((320, 320), (3, 4, 5, 6, 7)), ((128, 128), (4,)),
                                             ((96, 160), (3, 4))])
def test_gather_roi_align_matches_torchvision(image_hw, levels) -> None:
    torch.manual_seed(0)
    hws = tuple(_level_hw(image_hw, lv) for lv in levels)
    b, n, c = 2, 64, 8
    feats = [torch.randn(b, c, *hw) for hw in hws]
    h, w = image_hw
    xy = torch.rand(b, n, 2) * torch.tensor([w, h])
    wh = torch.rand(b, n, 2) ** 3 * torch.tensor([w, h]) * 1.2  # many small boxes, some past the border
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    boxes[:, 0] = torch.tensor([0, 0, w, h])  # whole image
    boxes[:, 1] = torch.tensor([w - 1, h - 1, w, h])  # bottom-right corner pixel
    boxes[:, 2] = torch.tensor([0, 0, 0.5, 0.5])  # degenerate, top-left
    boxes[:, 3] = torch.tensor([w, 0, w, h])  # zero width on the right border
    names = [f"p{lv}" for lv in levels]
    ref = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)(
        dict(zip(names, feats)), list(boxes.unbind(0)), [image_hw] * b)
    got = GatherMultiScaleRoIAlign(hws, image_hw)(feats, boxes)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4


def test_roi_stage_forms_agree_and_detector_switches() -> None:
    arch = TINY["rcnn"]
    from hwnas.models.detector import Detector

    torch.manual_seed(0)
    det = Detector.from_arch(arch, 3).eval()
    x = torch.randn(1, 3, *arch.input_hw)
    with torch.no_grad():
        ref = det(x)
        assert set_roi_impl(det, "gather") == 1
        got = det(x)
    for r, g in zip(ref, got):
        assert (r - g).abs().max().item() < 1e-4
    with pytest.raises(HwnasError, match="valid forms"):
        set_roi_impl(det, "plugin")
    unit = next(u for u in arch.units(3) if u.kind == "roi")
    assert isinstance(build(unit), RoIStage) and build(unit).roi_impl == "torchvision"  # default unchanged


def test_gather_form_exports_and_runs_in_onnxruntime() -> None:
    """RTX engines cannot run here; onnxruntime checks the exported gather graph computes the same."""
    import onnxruntime as ort

    from hwnas.backends.tensorrt import export_for_precision

    unit = next(u for u in TINY["rcnn"].units(3) if u.kind == "roi")
    torch.manual_seed(0)
    mod = build(unit).eval()
    xs = example_inputs(unit)
    onnx_bytes = export_for_precision(mod, xs, "fp32", roi_impl="gather")
    assert mod.roi_impl == "torchvision"  # the caller's module is left as it was
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {f"input{i}": x.numpy() for i, x in enumerate(xs)})
    with torch.no_grad():
        ref = mod(*xs)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ TensorRT-RTX ahead-of-time builds
_ENGINES: dict = {}


def _detector_engine(head: str, precision: str) -> tuple[bytes, dict]:
    """Built once per module run: the fp16 test compares its plan with the fp32 one."""
    from hwnas.latency.aot import build_detector_engine

    if (head, precision) not in _ENGINES:
        _ENGINES[head, precision] = build_detector_engine(TINY[head], 3, sm="80", precision=precision)
    return _ENGINES[head, precision]


def _n_outputs(arch: Arch) -> int:
    """Raw outputs of the detector, by the grammar (docs/arch-grammar.md): per level cls + box (retina),
    cls + box + ctr (fcos), RPN obj + box (rcnn) and then proposals, class logits and boxes of the RoI head,
    cls + box (face) and a first-step cls1 on each STC level and box1 on each STR level."""
    n_levels = arch.levels[1] - arch.levels[0] + 1
    if arch.head.kind == "face":
        return 2 * n_levels + arch.head.stc_levels + arch.head.str_levels
    return {"retina": 2 * n_levels, "fcos": 3 * n_levels, "rcnn": 2 * n_levels + 3}[arch.head.kind]


@pytest.mark.trt
@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("head", list(HEAD_KINDS))
def test_whole_detector_builds_aot_sm80(head: str, precision: str) -> None:
    """A plan cannot be deserialized without a GPU; what it stores can be checked (tests/engine_checks.py)."""
    from engine_checks import plan_io_numbers

    from hwnas.models.detector import Detector

    engine, info = _detector_engine(head, precision)
    assert info["form"] == "full" and info["head"] == head and info["precision"] == precision
    assert info["roi_impl"] == ("gather" if head == "rcnn" else None)
    assert info["arch"] == str(TINY[head]) and info["engine_bytes"] == len(engine)
    # the built network: one image input, every raw output of the detector (hwnas.backends.onnx_export names them
    # input0 and output0..N-1 in the detector's output order)
    n = _n_outputs(TINY[head])
    assert len(info["outputs"]) == n
    assert plan_io_numbers(engine, "input") == {0} and plan_io_numbers(engine, "output") == set(range(n))
    # the plan holds the weights at the precision asked for
    params = sum(p.numel() for p in Detector.from_arch(TINY[head], 3).parameters())
    assert len(engine) >= BYTES[precision] * params
    if precision == "fp16":  # the same network with half weights: smaller by at least a byte a weight
        fp32, _ = _detector_engine(head, "fp32")
        assert len(fp32) - len(engine) >= params, (len(fp32), len(engine), params)


# Handwritten archs whose units together hold every kind (and strides 1 and 2, top/inner FPN nodes).
UNIT_ARCHS = (
    "i128/basic_c16_1-21/pafpn_p3-4_c32/rcnn_d1_c64_n16/bn",
    "i128/bottleneck_c8_1-21/fpn_p3-4_c32/retina_d1_c32/gn",
    "i128/mbconv_c16_1-21/none/fcos_d1_c32/bn",
    "i128/shuffle_c16_1-21/none/retina_d1_c32/bn",
)


def _unit_sample():
    seen = {}
    for text in UNIT_ARCHS:
        for u in Arch.parse(text).units(3):
            seen.setdefault((u.kind, u.stride, u.top, u.norm), u)
    return list(seen.values())


UNITS = _unit_sample()


def _n_tensors(out) -> int:
    """Tensors in a module's (possibly nested) output."""
    return 1 if isinstance(out, torch.Tensor) else sum(_n_tensors(o) for o in out)


def test_unit_sample_covers_every_kind() -> None:
    assert {u.kind for u in UNITS} == set(BUILDERS)


@pytest.mark.trt
@needs_rtx
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.key())
def test_unit_builds_aot_sm80(unit) -> None:
    """The profiler's path on a GPU: TensorRTBackend.build(module, example inputs)."""
    from hwnas.backends.tensorrt import TensorRTBackend

    from engine_checks import plan_io_numbers

    precision = "fp16" if unit.kind == "roi" else "fp32"
    backend = TensorRTBackend(flavour="tensorrt-rtx", sm="80", precision=precision)
    assert backend.roi_impl == "gather"
    module, inputs = build(unit), example_inputs(unit)
    engine = backend.build(module, inputs)
    # the plan stores every input and output of the unit (by the names to_onnx gives them) and its weights
    with torch.no_grad():
        n_out = _n_tensors(module(*inputs))
    assert plan_io_numbers(engine, "input") == set(range(len(inputs)))
    assert plan_io_numbers(engine, "output") == set(range(n_out))
    assert len(engine) >= BYTES[precision] * sum(p.numel() for p in module.parameters())


@pytest.mark.trt
@needs_rtx
def test_torchvision_roi_form_does_not_parse_on_rtx() -> None:
    """Why the gather form exists; if a future RTX parses this, hwnas.heads.rcnn.GATHER_BACKENDS can be revisited."""
    from hwnas.backends.tensorrt import build_engine, export_for_precision

    unit = next(u for u in TINY["rcnn"].units(3) if u.kind == "roi")
    onnx_bytes = export_for_precision(build(unit), example_inputs(unit), "fp32", roi_impl="torchvision")
    with pytest.raises(HwnasError, match="NonZero|ROIAlign|RoiAlign"):
        build_engine(onnx_bytes, flavour="tensorrt-rtx", sm="80")
