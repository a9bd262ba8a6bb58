"""The deployable graph (decode + NMS inside) of every head type, against eager PyTorch + postprocess:
onnxruntime runs of the onnx and host forms, the ops form (Cluster-NMS) and its TensorRT-RTX
build, the EfficientNMS graph, dynamic batch, fp16, the /post/ node names, and parity on a
briefly trained model scored with pycocotools. Everything is real; only the weights are tiny."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest
import torch

from hwnas.spec.arch import Arch
from hwnas.data.transforms import normalize
from hwnas.errors import HwnasError
from hwnas.export import nms as N
from hwnas.export.deploy import (
    DeployConfig, DeployModel, OnnxDetector, TorchDetector, export_deploy_onnx, unpack_detections,
)
from hwnas.heads import HEAD_KINDS
from hwnas.heads.postprocess import decode_outputs, postprocess, select_detections
from hwnas.models import Detector

from conftest import needs_rtx

K = 3
HEADS = tuple(HEAD_KINDS)
ARCHS = {k: Arch.parse(s) for k, s in {
    "retina": "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn",
    "fcos": "i64/basic_c8_1-2-2/fpn_p3-4_c16/fcos_d1_c16/bn",
    "rcnn": "i64/basic_c8_1-2-2/fpn_p3-4_c16/rcnn_d1_c32_n64/bn",
    "face": "i64/basic_c8_1-2-2/fpn_p3-4_c16/face_d1_c16_stc1_str1_mo2/bn",
}.items()}
assert set(ARCHS) == set(HEADS)  # one arch of every registered head kind
PREFIXES = ("/pre/", "/net/", "/post/")


def make_detector(head: str) -> Detector:
    """Seeded, untrained, with overlapping boxes so NMS has work to do: FCOS's untrained boxes
    (one stride each way) barely overlap their neighbours, so its box bias is raised."""
    torch.manual_seed(0)
    det = Detector.from_arch(ARCHS[head], K).eval()
    if head == "fcos":
        with torch.no_grad():
            det.module_for("head.box")[0].bias.fill_(1.0)
    return det


@pytest.fixture(scope="module")
def detectors() -> dict[str, Detector]:
    return {h: make_detector(h) for h in HEADS}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, 64, 64)


@pytest.fixture(scope="module")
def graphs(detectors) -> dict[tuple[str, str], bytes]:
    """Static batch 2 (so 3 images also test the runner's chunking), every head x form."""
    return {(h, f): export_deploy_onnx(detectors[h], nms=f, batch=2) for h in HEADS
            for f in ("onnx", "host", "ops", "efficient")}


def _order(d: dict) -> torch.Tensor:
    """A canonical order: by score (to 1e-4: the two runtimes differ in the last bits), then class, box."""
    keys = [d["boxes"][:, 1].round(decimals=1), d["boxes"][:, 0].round(decimals=1), d["labels"].double(),
            -d["scores"].double().round(decimals=4)]
    idx = torch.arange(len(d["scores"]))
    for key in keys:  # stable sorts, least significant key first
        idx = idx[torch.sort(key[idx], stable=True).indices]
    return idx


def assert_same_detections(ref: list[dict], got: list[dict], atol: float = 1e-3) -> None:
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert len(r["boxes"]) > 0, "the test needs non-trivial detections"
        assert len(g["boxes"]) == len(r["boxes"])
        ro, go = _order(r), _order(g)
        assert torch.equal(g["labels"][go], r["labels"][ro])
        torch.testing.assert_close(g["scores"][go], r["scores"][ro], atol=1e-5, rtol=0)
        torch.testing.assert_close(g["boxes"][go], r["boxes"][ro], atol=atol, rtol=0)
        assert (g["scores"][:-1] >= g["scores"][1:]).all()  # runners return best first


# ----------------------------------------------------------------------------- select_detections
@pytest.mark.parametrize("head", HEADS)
def test_postprocess_is_decode_then_select(head, detectors, images):
    det = detectors[head]
    with torch.no_grad():
        out = det(normalize(images))
    boxes, scores = decode_outputs(out, det.arch, K)
    assert boxes.dim() == (4 if head == "rcnn" else 3)
    a = postprocess(out, det.arch, K, score_thresh=0.1, max_dets=20)
    b = select_detections(boxes, scores, K, score_thresh=0.1, max_dets=20)
    for x, y in zip(a, b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(x[key], y[key])
    with pytest.raises(HwnasError, match="scores must be"):
        select_detections(boxes, scores[..., :2], K)
    with pytest.raises(HwnasError, match="boxes must be"):
        select_detections(boxes[:, :5], scores, K)


# ----------------------------------------------------------------------------- graph == eager
@pytest.mark.parametrize("form", ["onnx", "host"])
@pytest.mark.parametrize("head", HEADS)
def test_graph_matches_eager_postprocess(head, form, detectors, graphs, images):
    ref = TorchDetector(detectors[head]).detect(images)
    runner = OnnxDetector(graphs[(head, form)])
    assert runner.static_batch == 2  # 3 images: one full chunk and one padded
    assert_same_detections(ref, runner.detect(images))
    if form == "host":  # the host's NMS takes other thresholds than the graph was exported with
        ref = TorchDetector(detectors[head], score_thresh=0.2, max_dets=10).detect(images)
        assert_same_detections(ref, OnnxDetector(graphs[(head, form)], score_thresh=0.2, max_dets=10).detect(images))


@pytest.mark.parametrize("head", HEADS)
def test_eager_deploy_model_matches_postprocess(head, detectors, images):
    """The NMS Functions' eager forwards compute what their ONNX nodes do (EfficientNMS included)."""
    ref = TorchDetector(detectors[head]).detect(images)
    for form in ("onnx", "efficient"):
        with torch.no_grad():
            out = DeployModel(detectors[head], DeployConfig(nms=form))(images)
        assert_same_detections(ref, unpack_detections(*out), atol=1e-4)


def test_unsimplified_graph_agrees_with_the_simplified_one(detectors, graphs, images):
    """onnxslim rewrites the graph; the rcnn graph with fewer candidates than max_dets (padding)
    is where a wrong fold once showed up. Shared weights stay shared (one initializer each)."""
    plain = export_deploy_onnx(detectors["rcnn"], nms="onnx", batch=2, simplify_graph=False)
    assert_same_detections(OnnxDetector(plain).detect(images), OnnxDetector(graphs[("rcnn", "onnx")]).detect(images),
                           atol=1e-5)
    for head in HEADS:  # the head convs run at both pyramid levels of these archs
        inits = onnx.load_from_string(graphs[(head, "onnx")]).graph.initializer
        blobs = [(i.data_type, tuple(i.dims), onnx.numpy_helper.to_array(i).tobytes()) for i in inits]
        assert len(set(blobs)) == len(blobs)


# ----------------------------------------------------------------------------- onnx form: one NMS pass
class _OneClassNMS(torch.nn.Module):
    """The onnx form's suppression as DeployPost builds it: classes moved apart, one NMS class."""

    def __init__(self, max_dets: int):
        super().__init__()
        self.max_dets = max_dets

    def forward(self, boxes, scores, labels):
        apart = N.separate_classes(boxes, labels, 101.0)
        selected = N.OnnxNMS.apply(apart, scores.unsqueeze(1), self.max_dets, 0.5, 0.05)
        return N.keep_from_selected(selected, scores)


def test_one_nms_pass_over_separated_classes_is_per_class_nms():
    """Boxes of 3 classes crowded into one 100 px image, most pairs overlapping across classes: the single
    NonMaxSuppression over separated classes (in onnxruntime) keeps exactly per-class greedy NMS's boxes,
    and with a cap of max_dets boxes, per-class NMS's best max_dets (all the deployed graph outputs)."""
    from hwnas.backends.onnx_export import to_onnx
    from hwnas.backends.ort import cpu_session

    g = torch.Generator().manual_seed(0)
    m = 200
    xy = torch.rand(2, m, 2, generator=g) * 60
    boxes = torch.cat((xy, xy + 10 + torch.rand(2, m, 2, generator=g) * 30), -1).clamp(max=100)
    scores = torch.rand(2, m, generator=g)
    labels = torch.randint(0, 3, (2, m), generator=g)
    feed = {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()}
    ref = N.greedy_keep(boxes, scores, labels, scores > 0.05, 0.5)
    for cap in (m, 100):
        graph = to_onnx(_OneClassNMS(cap), (boxes, scores, labels), input_names=["boxes", "scores", "labels"])
        keep = torch.from_numpy(cpu_session(graph, 1).run(None, feed)[0]).bool()
        best = torch.zeros_like(ref)
        for b in range(len(ref)):
            idx = ref[b].nonzero().squeeze(1)
            best[b, idx[scores[b, idx].argsort(descending=True)[:cap]]] = True
        assert torch.equal(keep, best), cap
    assert (ref.sum(1) > 100).all()  # the cap of 100 cuts something
    # the crowding is real: class-blind NMS would suppress boxes per-class NMS keeps
    blind = N.greedy_keep(boxes, scores, torch.zeros_like(labels), scores > 0.05, 0.5)
    assert (ref & ~blind).sum() >= 10


# ----------------------------------------------------------------------------- ops form (Cluster-NMS)
def _candidates(det: Detector, images: torch.Tensor, topk: int):
    with torch.no_grad():
        boxes, scores = decode_outputs(det(normalize(images)), det.arch, K)
    m = min(topk, scores.shape[1] * K)
    return N.candidates(boxes, scores, K, m, 0.05)


@pytest.mark.parametrize("head", HEADS)
def test_ops_form_is_greedy_nms_when_chains_are_short(head, detectors, graphs, images):
    det = detectors[head]
    runner = OnnxDetector(graphs[(head, "ops")])
    c = runner.config
    assert c.pre_nms_topk == 300 and c.ops_iters % 2 == 1
    cb, cs, cl, valid = _candidates(det, images, c.pre_nms_topk)
    chains = [N.suppression_chain(cb[i:i + 1], cl[i:i + 1], valid[i:i + 1], c.nms_thresh) for i in range(len(cb))]
    assert max(chains) <= c.ops_iters, f"suppression chains {chains}: the graph is not exact here"
    assert max(chains) >= 1 or head == "rcnn"  # NMS really suppresses something
    # Exact: the same detections as postprocess over the same 300 candidates.
    assert_same_detections(TorchDetector(det, pre_nms_topk=c.pre_nms_topk).detect(images), runner.detect(images))


@pytest.mark.parametrize("head", ["retina", "fcos"])
def test_ops_form_cut_short_keeps_a_subset_of_greedy_nms(head, detectors, images):
    """With too few iterations (1 = YOLACT's Fast NMS) the ops form drops boxes, never adds one."""
    det = detectors[head]
    cb, cs, cl, valid = _candidates(det, images, 300)
    greedy = N.greedy_keep(cb, cs, cl, valid, 0.5)
    for iters in (1, 3):
        keep = N.cluster_nms_keep(cb, cl, valid, 0.5, cb.shape[1], iters).bool()
        assert not (keep & ~greedy).any()
        assert (greedy & ~keep).any()  # these detectors have chains longer than 3
    iters = DeployConfig(nms="ops").ops_iters
    assert torch.equal(N.cluster_nms_keep(cb, cl, valid, 0.5, cb.shape[1], iters).bool(), greedy)


@pytest.mark.trt
@needs_rtx
@pytest.mark.parametrize("head", HEADS)
def test_ops_form_builds_with_tensorrt_rtx(head, detectors, graphs):
    """No GPU here to load the plan: TensorRT's parser shows the network it builds, and the plan must name
    that network's tensors and hold its weights (tests/engine_checks.py)."""
    from engine_checks import check_plan, network_io

    from hwnas.backends.tensorrt import build_engine

    graph = graphs[(head, "ops")]
    ops = {n.op_type for n in onnx.load_from_string(graph).graph.node}
    assert not ops & {"NonMaxSuppression", "NonZero", "RoiAlign", "Loop", "If"}
    fixed = ["num_dets", "boxes", "scores", "classes"]
    assert network_io(graph) == ([("images", (2, 3, 64, 64), "FLOAT")], fixed)
    check_plan(build_engine(graph, flavour="tensorrt-rtx", sm="80"), graph)
    if head == "rcnn":  # half net, fp32 post: images still come in as fp32
        fp16 = export_deploy_onnx(detectors[head], nms="ops", precision="fp16")
        assert network_io(fp16) == ([("images", (1, 3, 64, 64), "FLOAT")], fixed)
        check_plan(build_engine(fp16, flavour="tensorrt-rtx", sm="80"), fp16)


# ----------------------------------------------------------------------------- the other forms
@pytest.mark.parametrize("head", ["retina", "rcnn"])
def test_efficient_form_is_a_checked_tensorrt_plugin_graph(head, graphs):
    model = onnx.load_from_string(graphs[(head, "efficient")])
    onnx.checker.check_model(model)
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert node.domain == "TRT" and node.name.startswith("/post/") and list(node.output) == [
        "num_dets", "boxes", "scores", "classes"]
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert dims == {"num_dets": [2, 1], "boxes": [2, 100, 4], "scores": [2, 100], "classes": [2, 100]}
    with pytest.raises(HwnasError, match="onnxruntime cannot load"):
        OnnxDetector(graphs[(head, "efficient")])  # full TensorRT only


@pytest.mark.parametrize("head", HEADS)
def test_outputs_and_post_prefix(head, graphs):
    for form in ("onnx", "host", "ops", "efficient"):
        model = onnx.load_from_string(graphs[(head, form)])
        assert [i.name for i in model.graph.input] == ["images"]
        outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        if form == "host":
            assert list(outs) == ["boxes", "scores"]
        else:
            i32, f32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
            assert outs == {"num_dets": i32, "boxes": f32, "scores": f32, "classes": i32}
        names = [n.name for n in model.graph.node]
        assert all(n.startswith(PREFIXES) for n in names), [n for n in names if not n.startswith(PREFIXES)]
        post = [n for n in model.graph.node if n.name.startswith("/post/")]
        assert post and not any(n.name.startswith("/post/") for n in model.graph.node if n.op_type == "Conv")
        # Ops of decode and NMS (these small nets use none of them; the RoI stage's own top-k and
        # proposal decoding belong to the net).
        decode_ops = {"TopK", "NonMaxSuppression", "EfficientNMS_TRT", "Sigmoid", "Softmax", "Exp", "Div", "Mod"}
        assert all(n.name.startswith("/post/") for n in model.graph.node
                   if n.op_type in decode_ops and not n.name.startswith(("/net/head_roi/", "/pre/")))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["hwnas.format"] == '"hwnas-deploy/1"' and f'"nms": "{form}"' in meta["hwnas.config"]


# ----------------------------------------------------------------------------- batch and precision
@pytest.mark.parametrize("head", HEADS)
def test_dynamic_batch_runs_at_1_and_3(head, detectors, images):
    data = export_deploy_onnx(detectors[head], nms="onnx", dynamic_batch=(1, 2, 4))
    model = onnx.load_from_string(data)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    runner = OnnxDetector(data)
    assert runner.static_batch is None
    if head == "rcnn":
        assert runner.meta["roi_impl"] == "gather"  # torchvision's RoIAlign export is batch-specific
    ref = TorchDetector(detectors[head])
    for n in (1, 3):
        assert_same_detections(ref.detect(images[:n]), runner.detect(images[:n]))


def test_fp16_net_fp32_post_runs_in_onnxruntime(detectors, images):
    det = detectors["retina"]
    data = export_deploy_onnx(det, nms="onnx", precision="fp16")
    model = onnx.load_from_string(data)
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert {i.data_type for i in model.graph.initializer if i.name in conv_w} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(n.name.startswith(PREFIXES) for n in model.graph.node)  # the boundary casts too
    got = OnnxDetector(data).detect(images)  # onnxruntime's CPU provider runs it (casting convs to fp32)
    ref = TorchDetector(det).detect(images)
    for r, g in zip(ref, got):
        assert len(g["boxes"]) == len(r["boxes"])
        assert (g["scores"][:50] - r["scores"][:50]).abs().max() < 1e-2  # half-precision network


def test_bad_arguments(detectors, graphs, images):
    det = detectors["rcnn"]
    bad = (({"nms": "trt"}, "unknown NMS form"), ({"precision": "int8"}, "unknown precision"),
           ({"dynamic_batch": (2, 1, 4)}, "dynamic_batch"), ({"batch": 0}, "batch"), ({"max_dets": 0}, "max_dets"),
           ({"ops_iters": 4}, "odd"), ({"roi_impl": "torchvision", "dynamic_batch": (1, 1, 2)}, "gather"))
    for kw, match in bad:
        with pytest.raises(HwnasError, match=match):
            export_deploy_onnx(det, **kw)
    with pytest.raises(HwnasError, match="fixed in a graph"):
        OnnxDetector(graphs[("rcnn", "onnx")], score_thresh=0.3)
    with pytest.raises(HwnasError, match=r"images must be \[B, 3, 64, 64\]"):
        OnnxDetector(graphs[("rcnn", "onnx")]).detect(images[:, :, :32])
    with pytest.raises(HwnasError, match="not a deployed hwnas graph"):
        from hwnas.backends.onnx_export import to_onnx

        OnnxDetector(to_onnx(torch.nn.Conv2d(3, 3, 1), (torch.rand(1, 3, 8, 8),), input_names=["images"]))


def test_importing_hwnas_export_stays_light():
    code = ("import sys, hwnas.export; bad = [m for m in ('onnx', 'onnxruntime', 'onnxslim', 'tensorrt_rtx', "
            "'hwnas.export.deploy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- parity on a trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from hwnas.data.synth import synth
    from hwnas.train.loop import TrainConfig, train

    d = tmp_path_factory.mktemp("parity")
    synth("shapes", 128, 16, 64, seed=0, out=d / "data")
    res = train(ARCHS["retina"], d / "data", d / "run",
                TrainConfig(epochs=1, batch_size=8, lr=0.01, warmup_iters=2))
    return d / "data", res.checkpoint


def test_parity_fp32_onnx_on_a_trained_model(trained):
    from hwnas.data.coco import CocoDetection
    from hwnas.data.transforms import EvalTransform
    from hwnas.export.parity import parity

    data, ckpt = trained
    ref = TorchDetector.from_checkpoint(ckpt)
    ds = CocoDetection.from_dir(data, "val", EvalTransform(ref.arch.input_hw))
    cand = OnnxDetector(export_deploy_onnx(ref.model, nms="onnx", batch=4))
    # One epoch: nothing scores 0.3 yet, so agreement is taken over the boxes scoring 0.1 or more.
    r = parity(ref, cand, ds, batch_size=8, agree_score=0.1)
    assert r["map_ref"] > 0 and r["n_detections_ref"] > 0 and r["n_ref_boxes"] > 10
    assert abs(r["delta_map"]) <= 0.001 and r["delta_map_points"] == pytest.approx(100 * r["delta_map"])
    assert r["agreement"] >= 0.99
    # The ops form on a trained model: suppression chains stay short, detections the same.
    ops = OnnxDetector(export_deploy_onnx(ref.model, nms="ops"))
    r_ops = parity(TorchDetector(ref.model, pre_nms_topk=300), ops, ds, agree_score=0.1)
    assert abs(r_ops["delta_map"]) <= 0.001 and r_ops["agreement"] >= 0.99
