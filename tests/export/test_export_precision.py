"""Precision conversion of deployable graphs: fp16 mixed precision, int8 Q/DQ per target, sensitivity.

The test graphs have the deployable layout (``/pre/``, ``/net/``, ``/post/`` node-name prefixes,
from the submodule names) with decode as the ``/post/`` part; everything runs for real in
onnxruntime on the CPU, and the TensorRT-RTX builds are real ahead-of-time builds for sm_80.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn

from hwnas.data.transforms import normalize
from hwnas.errors import HwnasError
from hwnas.export.precision import sensitivity, to_fp16, to_int8
from hwnas.heads.postprocess import decode_outputs
from hwnas.models import Detector
from hwnas.spec.arch import Arch
from hwnas.backends.onnx_export import to_onnx

from conftest import needs_rtx

RES = 128
# ResNet-style (residual Adds, FPN Resize) and MobileNet-style (depthwise, ReLU6 = Clip, GroupNorm).
RESNET = f"i{RES}/basic_c16_11-21-21-21/fpn_p3-5_c32/retina_d1_c32/bn"
MOBILENET = f"i{RES}/mbconv_c16_1-21-21-21/fpn_p3-5_c32/fcos_d1_c32/gn"
QDQ = ("QuantizeLinear", "DequantizeLinear")


class _Pre(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images)


class _Post(nn.Module):
    def __init__(self, net: Detector) -> None:
        super().__init__()
        self.arch, self.k = net.arch, net.num_classes

    def forward(self, *raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_outputs(raw, self.arch, self.k)


class _Deployable(nn.Module):
    """images [1, 3, H, W] in [0, 1] -> decoded boxes, scores, and the first raw head output.

    The raw output leaves ``/net/`` straight as a graph output: fp16 conversion must hand it out
    in fp32 under its own name, and it is the tensor the precision tolerances are judged on
    (decoded boxes are dominated by the anchors, sigmoid scores by the prior).
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.pre = _Pre()
        self.net = Detector.from_arch(Arch.parse(arch), 3)
        self.post = _Post(self.net)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.net(self.pre(images))
        boxes, scores = self.post(*raw)
        return boxes, scores, raw[0]


def _export(arch: str) -> bytes:
    torch.manual_seed(0)
    return to_onnx(_Deployable(arch), (torch.rand(1, 3, RES, RES),), input_names=["images"],
                   output_names=["boxes", "scores", "raw"])


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random pictures in [0, 1] (upsampled noise: neighbouring pixels correlate, as in photos)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, RES // 8, RES // 8, generator=g)
    hi = torch.nn.functional.interpolate(low, size=(RES, RES), mode="bilinear", align_corners=False)
    return [hi[i:i + 1].numpy().astype(np.float32) for i in range(n)]


def _session(model: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _run(model: bytes, image: np.ndarray) -> list[np.ndarray]:
    return _session(model).run(None, {"images": image})


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)})
    return types


def _rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(ref.astype(np.float64) - got) / np.linalg.norm(ref.astype(np.float64)))


@pytest.fixture(scope="module")
def resnet() -> bytes:
    return _export(RESNET)


@pytest.fixture(scope="module")
def calib() -> list[np.ndarray]:
    return _images(8)


@pytest.fixture(scope="module")
def int8(resnet, calib) -> dict[str, bytes]:
    return {t: to_int8(resnet, calib, target=t) for t in ("cpu", "tensorrt")}


# ------------------------------------------------------------------ fp16
def _crossing(model: onnx.ModelProto) -> set[str]:
    """Float tensors made in /pre/ or /net/ that /post/ nodes or the graph outputs read."""
    producer = {o: n.name for n in model.graph.node for o in n.output}
    read = {x for n in model.graph.node if n.name.startswith("/post/") for x in n.input}
    read |= {o.name for o in model.graph.output}
    types = _types(model)
    return {x for x in read
            if producer.get(x, "/post/").startswith(("/pre/", "/net/")) and types.get(x) == TensorProto.FLOAT}


@pytest.mark.parametrize("arch", [RESNET, MOBILENET])
def test_fp16_types_io_net_post(arch) -> None:
    fp32 = onnx.load_from_string(_export(arch))
    model = onnx.load_from_string(to_fp16(fp32.SerializeToString()))  # to_fp16 runs the full onnx check
    types = _types(model)
    for io in (*model.graph.input, *model.graph.output):
        assert io.type.tensor_type.elem_type == TensorProto.FLOAT, io.name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    assert all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)  # weights stored in fp16
    post = [n for n in model.graph.node if n.name.startswith("/post/")]
    assert post
    for n in post:
        for name in (*n.input, *n.output):
            assert types.get(name) != TensorProto.FLOAT16, f"{n.name} touches fp16 tensor {name}"
    # One Cast per boundary tensor, not one per consumer: the input, plus each network tensor
    # that the fp32 tail or the graph outputs read (the raw output shares its Cast with /post/).
    added = sum(n.op_type == "Cast" for n in model.graph.node) - sum(n.op_type == "Cast" for n in fp32.graph.node)
    assert added == 1 + len(_crossing(fp32))


@pytest.mark.parametrize("arch", [RESNET, MOBILENET])
def test_fp16_outputs_close_to_fp32(arch) -> None:
    fp32 = _export(arch)
    image = _images(1, seed=1)[0]
    ref, got = _run(fp32, image), _run(to_fp16(fp32), image)
    assert all(g.dtype == np.float32 for g in got)
    # Every fp16 rounding is a relative error <= 2**-11 (4.9e-4); onnxruntime's CPU computes the
    # convs in fp32 between such roundings (it has no fp16 conv on x86), so ~20 layers of them stay
    # well under 1% relative (measured 2.5e-4 ResNet, 2.7e-3 MobileNet + GroupNorm). A tensor in
    # the wrong type, an overflow or a bad cast shows as O(1).
    assert _rel_l2(ref[2], got[2]) < 1e-2
    # Decoded boxes (input pixels) and sigmoid scores in [0, 1]: the same relative error on
    # O(1) logits and deltas (measured <= 0.12 px and 7e-4).
    assert np.abs(ref[0] - got[0]).max() < 0.5
    assert np.abs(ref[1] - got[1]).max() < 5e-3


def test_fp16_refuses_garbage() -> None:
    with pytest.raises(HwnasError, match="ONNX"):
        to_fp16(b"")


# ------------------------------------------------------------------ int8
def _qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in QDQ]


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_int8_qdq_outside_post(int8, target) -> None:
    model = onnx.load_from_string(int8[target])
    qdq = _qdq_nodes(model)
    assert any(n.op_type == "QuantizeLinear" for n in qdq) and any(n.op_type == "DequantizeLinear" for n in qdq)
    assert not [n.name for n in qdq if n.name.startswith("/post/")]
    producer = {o: n for n in model.graph.node for o in n.output}
    # No Q/DQ between two /post/ nodes: nothing a /post/ node computed gets quantized.
    for n in qdq:
        src = producer.get(n.input[0])
        assert src is None or not src.name.startswith("/post/"), f"{n.name} quantizes {src.name}'s output"
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # int8 weights everywhere


def test_int8_tensorrt_symmetric_signed(int8) -> None:
    model = onnx.load_from_string(int8["tensorrt"])
    inits = {t.name: t for t in model.graph.initializer}
    for n in _qdq_nodes(model):
        assert len(n.input) == 3, f"{n.name} has no explicit zero point"
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8, f"{n.name}: zero point type {zp.data_type}"
        assert not onnx.numpy_helper.to_array(zp).any(), f"{n.name}: non-zero zero point"
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # TensorRT has no int32 (bias) DQ
            assert inits[n.input[0]].data_type == TensorProto.INT8


def test_int8_cpu_runs_close_and_fuses(int8, resnet, tmp_path) -> None:
    import onnxruntime as ort

    model = onnx.load_from_string(int8["cpu"])
    inits = {t.name: t for t in model.graph.initializer}
    act_zps = {inits[n.input[2]].data_type for n in model.graph.node
               if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    assert act_zps == {TensorProto.UINT8}  # u8 activations x s8 weights: the fast CPU path
    image = _images(1, seed=1)[0]
    ref, got = _run(resnet, image), _run(int8["cpu"], image)
    corr = float(np.corrcoef(ref[2].ravel(), got[2].ravel())[0, 1])
    assert corr > 0.99, corr
    # onnxruntime turns the Q/DQ pattern into integer kernels; if it did not, int8 would be slower.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(int8["cpu"], so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert "QLinearConv" in ops


@pytest.mark.parametrize("bad,match", [
    ([np.full((1, 3, RES, RES), 255.0, np.float32)], r"\[0, 1\]"),
    ([np.zeros((1, 3, RES // 2, RES // 2), np.float32)], "shape"),
    ([np.zeros((1, 3, RES, RES), np.float64)], "float32"),
    ([], "no calibration images"),
])
def test_int8_checks_images(resnet, bad, match) -> None:
    with pytest.raises(HwnasError, match=match):
        to_int8(resnet, bad, target="cpu")


def test_int8_checks_choices(resnet, calib) -> None:
    with pytest.raises(HwnasError, match="cpu, tensorrt"):
        to_int8(resnet, calib, target="gpu")
    with pytest.raises(HwnasError, match="percentile"):
        to_int8(resnet, calib, target="cpu", method="mse")
    with pytest.raises(HwnasError, match="fp32 graph"):
        to_int8(to_fp16(resnet), calib, target="cpu")


# ------------------------------------------------------------------ the real deployable graph
def test_deployable_graph_with_onnx_nms(calib) -> None:
    """The exported deployable graph (ONNX NonMaxSuppression, integer outputs) converts both ways."""
    from hwnas.export.deploy import export_deploy_onnx

    torch.manual_seed(0)
    fp32 = export_deploy_onnx(Detector.from_arch(Arch.parse(RESNET), 3), nms="onnx")
    half, quant = to_fp16(fp32), to_int8(fp32, calib[:4], target="cpu")
    image = _images(1, seed=1)[0]
    ref = _run(fp32, image)
    for model in (half, quant):
        # num_dets/classes int32, boxes/scores fp32, as the fp32 graph hands them out
        assert [g.dtype for g in _run(model, image)] == [r.dtype for r in ref]
    half_model = onnx.load_from_string(half)
    types = _types(half_model)
    assert not [n.name for n in half_model.graph.node if n.name.startswith("/post/")
                and any(types.get(x) == TensorProto.FLOAT16 for x in (*n.input, *n.output))]
    assert not [n.name for n in onnx.load_from_string(quant).graph.node
                if n.name.startswith("/post/") and n.op_type in QDQ]
    # onnxruntime's fused int8 kernels keep the /net/ names: the profile counts them in the network
    from hwnas.export.profile import profile_graph

    prof = profile_graph(quant, image, runs=5, warmup=2)
    assert "QLinearConv" in prof["ops_ms"]["net"] and "QLinearConv" not in prof["ops_ms"].get("layout", {})
    assert prof["parts_ms"]["net"] > prof["parts_ms"].get("layout", 0)


# ------------------------------------------------------------------ sensitivity
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_sensitivity_sorted_finite(int8, resnet, target) -> None:
    rows = sensitivity(resnet, int8[target], _images(2, seed=2), top=5, threads=1)
    assert 1 <= len(rows) <= 5
    assert all(set(r) == {"name", "sqnr_db"} and math.isfinite(r["sqnr_db"]) for r in rows)
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert not [r for r in rows if r["name"].startswith("/post/")]  # only quantized tensors
    assert rows[0]["sqnr_db"] > 10  # an untrained net still keeps int8 noise well below the signal


# ------------------------------------------------------------------ TensorRT-RTX ahead of time
@pytest.mark.trt
@needs_rtx
def test_rtx_builds_fp16(resnet) -> None:
    """No GPU here to load the plan: the parsed network and what the plan stores (tests/engine_checks.py)."""
    from engine_checks import check_plan, network_io

    from hwnas.backends.tensorrt import build_engine

    half = to_fp16(resnet)
    # fp32 in and out as before the conversion; the weights are half
    assert network_io(half) == ([("images", (1, 3, RES, RES), "FLOAT")], ["boxes", "scores", "raw"])
    plan = build_engine(half, flavour="tensorrt-rtx", sm="80")
    check_plan(plan, half)
    assert len(build_engine(resnet, flavour="tensorrt-rtx", sm="80")) > len(plan)  # the fp32 plan is larger


@pytest.mark.trt
@needs_rtx
def test_rtx_builds_int8_tensorrt_target(int8) -> None:
    from engine_checks import check_plan, network_io

    from hwnas.backends.tensorrt import build_engine

    assert network_io(int8["tensorrt"]) == ([("images", (1, 3, RES, RES), "FLOAT")], ["boxes", "scores", "raw"])
    check_plan(build_engine(int8["tensorrt"], flavour="tensorrt-rtx", sm="80"), int8["tensorrt"])
