"""The deployable graph of a detector: pixels in, detections out, decode and NMS in the graph.

:class:`DeployModel` wraps a trained :class:`~hwnas.models.Detector` as three submodules whose
names the ONNX node names carry: ``pre`` (``(images - MEAN) / STD``), ``net`` (the detector) and
``post`` (decode + NMS; every node of it is named ``/post/...``, which is how precision
conversion finds and keeps it in fp32). Input ``images`` float32 [B, 3, H, W], RGB in [0, 1]
(pixels / 255, letterboxed to the arch's input size as :class:`hwnas.data.transforms.EvalTransform`
does). Outputs, for every NMS form but ``host``:

    num_dets [B, 1] int32, boxes [B, max_dets, 4] float32 (x1, y1, x2, y2, input pixels),
    scores [B, max_dets] float32 (descending), classes [B, max_dets] int32; rows past num_dets are 0.

NMS forms (:data:`NMS_FORMS`; see :mod:`hwnas.export.nms` for exactness):

* ``onnx``: ONNX NonMaxSuppression. onnxruntime and full TensorRT run it. Same detections as
  :func:`hwnas.heads.postprocess`.
* ``ops``: Cluster-NMS in MatMul/compare arithmetic on the top ``pre_nms_topk`` (default 300)
  candidates, static shapes; the two-stage head's RoIAlign in the gather form. Builds with
  TensorRT-RTX. Exact whenever suppression chains are shorter than ``ops_iters`` (default 31);
  past that it keeps a subset of the exact result (it can miss a box, never add a duplicate).
* ``efficient``: TensorRT's EfficientNMS_TRT plugin node; full TensorRT only (onnxruntime cannot
  run the graph).
* ``host``: decode in the graph, outputs ``boxes`` ([B, P, 4], or [B, N, K, 4] for the two-stage
  head) and ``scores`` [B, P, K]; NMS on the host with :func:`hwnas.heads.postprocess.select_detections`
  (:class:`OnnxDetector` does it).

Runners with one ``detect(images [B, 3, H, W] in [0, 1]) -> [dict(boxes, scores, labels)]``:
:class:`OnnxDetector` (an exported graph in onnxruntime) and :class:`TorchDetector` (a checkpoint
in eager PyTorch).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.data.transforms import normalize
from hwnas.errors import HwnasError
from hwnas.export import nms as N
from hwnas.export.choices import NMS_FORMS
from hwnas.heads.postprocess import clip_boxes, decode_outputs, postprocess, select_detections
from hwnas.spec.arch import Arch

__all__ = [
    "DEPLOY_FORMAT", "NMS_FORMS", "DeployConfig", "DeployModel", "OnnxDetector", "TorchDetector",
    "export_deploy_onnx", "read_metadata", "unpack_detections",
]

PRECISIONS = ("fp32", "fp16")  # of the graph itself; int8 comes from hwnas.export.precision
DEPLOY_FORMAT = "hwnas-deploy/1"
INPUT_NAME = "images"
FIXED_OUTPUTS = ("num_dets", "boxes", "scores", "classes")
HOST_OUTPUTS = ("boxes", "scores")
# The ops form's M x M IoU matrix and its unrolled iterations grow with the candidate count: 300
# keeps it small at large batch; the other forms sort and suppress candidates as postprocess does.
DEFAULT_PRE_NMS_TOPK = {"onnx": 1000, "ops": 300, "efficient": 1000, "host": 1000}
# Cluster-NMS iterations of the ops form (odd: see hwnas.export.nms). Exact when every suppression
# chain is no longer. Deepest chains measured over 300 candidates: <= 7 on untrained detectors, 10
# (retina), 13 (fcos), 7 (rcnn) on 1-epoch ones, whose flat scores make long chains. Iterations are
# cheap next to the M x M IoU matrix (onnxruntime, 1 thread, M=300: 15 -> 31 adds 0.1 ms to ~4 ms).
DEFAULT_OPS_ITERS = 31


@dataclass(frozen=True)
class DeployConfig:
    """What the ``post`` part of a deployed graph does; stored in the ONNX metadata."""

    nms: str = "onnx"
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    max_dets: int = 100
    pre_nms_topk: int | None = None  # None: DEFAULT_PRE_NMS_TOPK[nms]
    ops_iters: int = DEFAULT_OPS_ITERS

    def __post_init__(self) -> None:
        if self.nms not in NMS_FORMS:
            raise HwnasError(f"unknown NMS form {self.nms!r}; valid forms: {', '.join(NMS_FORMS)}")
        if self.pre_nms_topk is None:
            object.__setattr__(self, "pre_nms_topk", DEFAULT_PRE_NMS_TOPK[self.nms])
        if not 0 <= self.score_thresh < 1 or not 0 < self.nms_thresh <= 1 or self.max_dets < 1 \
                or self.pre_nms_topk < 1 or self.ops_iters < 1:
            raise HwnasError(f"deploy: need 0 <= score_thresh < 1, 0 < nms_thresh <= 1, max_dets >= 1, "
                             f"pre_nms_topk >= 1, ops_iters >= 1; got {self.score_thresh}, {self.nms_thresh}, "
                             f"{self.max_dets}, {self.pre_nms_topk}, {self.ops_iters}")
        if self.ops_iters % 2 == 0:
            # Even Cluster-NMS iterates can keep boxes greedy NMS suppresses (hwnas.export.nms).
            raise HwnasError(f"ops_iters must be odd (odd iterates never keep a suppressed box), got {self.ops_iters}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DeployConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def output_names(self) -> tuple[str, ...]:
        return HOST_OUTPUTS if self.nms == "host" else FIXED_OUTPUTS


# ----------------------------------------------------------------------------- the graph
class Normalize(nn.Module):
    """:func:`hwnas.data.transforms.normalize` (the training statistics) as the graph's ``pre``
    part, so users feed pixels / 255."""

    def forward(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Normalised in fp32, then cast to the network's ``dtype`` (the cast is named /pre/...)."""
        x = normalize(images)
        return x if x.dtype == dtype else x.to(dtype)


def decoded_positions(arch: Arch) -> int:
    """P, the rows of the decoded boxes/scores: anchors or points, or the two-stage head's proposals."""
    return arch.head.decoded_positions(arch)


def num_candidates(arch: Arch, num_classes: int, topk: int) -> int:
    """Static candidate count M = min(topk, P * K)."""
    return min(topk, decoded_positions(arch) * num_classes)


def output_shapes(arch: Arch, num_classes: int, config: DeployConfig, batch: int | str) -> dict[str, list]:
    """Each output's shape; ``batch`` an int or the dynamic axis' name."""
    if config.nms == "host":
        p, k = decoded_positions(arch), num_classes
        boxes = [batch, p, k, 4] if arch.head.TWO_STAGE else [batch, p, 4]  # the RoI head's boxes are per class
        return {"boxes": boxes, "scores": [batch, p, k]}
    d = config.max_dets
    return {"num_dets": [batch, 1], "boxes": [batch, d, 4], "scores": [batch, d], "classes": [batch, d]}


def declare_outputs(proto, shapes: dict[str, list]) -> None:
    """Write the output shapes into the graph: ONNX shape inference loses them behind the NMS op,
    the plugin and the two-stage head's RoIAlign, and engine builders and users read them."""
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for v in shapes[out.name]:
            dim = dims.add()
            if isinstance(v, str):
                dim.dim_param = v
            else:
                dim.dim_value = v


class DeployPost(nn.Module):
    """Decode (:func:`hwnas.heads.postprocess.decode_outputs`) then the NMS form of ``config``,
    on the raw detector outputs in fp32."""

    def __init__(self, arch: Arch, num_classes: int, config: DeployConfig) -> None:
        super().__init__()
        self.arch, self.num_classes, self.config = arch, num_classes, config
        self.m = num_candidates(arch, num_classes, config.pre_nms_topk)

    def forward(self, *raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c, k = self.config, self.num_classes
        # A half network's outputs: fp32 from here on (half pixel coordinates are off by whole
        # pixels at 512 px; see hwnas.heads.postprocess).
        raw = tuple(o if o.dtype == torch.float32 else o.float() for o in raw)
        if c.nms == "host":
            return decode_outputs(raw, self.arch, k)
        if self.arch.head.TWO_STAGE:  # class-specific boxes of a few hundred proposals: decode them all
            boxes, scores = decode_outputs(raw, self.arch, k)
        else:  # decode only the candidates' boxes (clipped as decode_outputs clips them)
            scores, boxes_of = self.arch.head.decode_lazy(raw, self.arch, k)
            boxes = lambda rows: clip_boxes(boxes_of(rows), self.arch.input_hw)  # noqa: E731
        # NonMaxSuppression sorts by score itself; the other forms need the candidates in score order
        cb, cs, cl, valid = N.candidates(boxes, scores, k, self.m, c.score_thresh, ordered=c.nms != "onnx")
        if c.nms == "efficient":
            return N.EfficientNMS.apply(cb, N.class_scores(cs, cl, valid, k), c.max_dets, c.nms_thresh,
                                        c.score_thresh)
        if c.nms == "onnx":
            # One NMS class for all, the classes moved apart (N.separate_classes): it saves the
            # [B, M, K] one-hot scores and K passes of the op (docs/benchmarks.md, int8 on small
            # detectors). At most max_dets are kept, in score order across classes: the final top
            # max_dets needs no more.
            apart = N.separate_classes(cb, cl, float(max(self.arch.input_hw) + 1))
            selected = N.OnnxNMS.apply(apart, (cs * valid).unsqueeze(1), c.max_dets, c.nms_thresh, c.score_thresh)
            keep = N.keep_from_selected(selected, cs)
        else:
            keep = N.cluster_nms_keep(cb, cl, valid, c.nms_thresh, self.m, c.ops_iters)
        return N.pack(keep, cb, cs, cl, self.m, c.max_dets)


class DeployModel(nn.Module):
    """``images`` [B, 3, H, W] RGB in [0, 1] -> detections (see the module docstring).

    ``net`` may be in half precision (``export_deploy_onnx(precision="fp16")``): ``pre`` casts the
    normalised input to its dtype and ``post`` its outputs back to fp32, so every node of the graph
    is named /pre/, /net/ or /post/ and ``pre``/``post`` compute in fp32.
    """

    def __init__(self, detector: nn.Module, config: DeployConfig = DeployConfig()) -> None:
        super().__init__()
        self.pre = Normalize()
        self.net = detector
        self.post = DeployPost(detector.arch, detector.num_classes, config)

    @property
    def config(self) -> DeployConfig:
        return self.post.config

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.post(*self.net(self.pre(images, next(self.net.parameters()).dtype)))


# ----------------------------------------------------------------------------- export
def _check_batch(batch: int, dynamic_batch: tuple[int, int, int] | None) -> int:
    """The batch to trace with; the (min, opt, max) profile must be ordered and >= 1."""
    if dynamic_batch is None:
        if not isinstance(batch, int) or batch < 1:
            raise HwnasError(f"batch must be an integer >= 1, got {batch!r}")
        return batch
    if len(dynamic_batch) != 3 or not 1 <= dynamic_batch[0] <= dynamic_batch[1] <= dynamic_batch[2]:
        raise HwnasError(f"dynamic_batch must be (min, opt, max) with 1 <= min <= opt <= max, got {dynamic_batch!r}")
    # Trace at 2 or more: at batch 1 a traced reshape cannot tell the batch axis from a unit axis.
    return max(2, dynamic_batch[0])


def resolve_roi_impl(arch: Arch, nms: str, roi_impl: str | None, dynamic: bool) -> str | None:
    """The RoIAlign form to export (the head kind decides: :func:`hwnas.heads.rcnn.choose_roi_impl`);
    None for a head without RoIAlign."""
    return arch.head.roi_impl(nms=nms, dynamic=dynamic, requested=roi_impl)


def prepare_detector(detector: nn.Module, precision: str, roi_impl: str | None) -> nn.Module:
    """A copy of ``detector`` in eval mode, in ``precision``, with the requested RoIAlign form."""
    from hwnas.models.blocks import set_roi_impl

    net = copy.deepcopy(detector).eval().to("cpu", torch.float32)
    if roi_impl is not None:
        set_roi_impl(net, roi_impl)
    if precision == "fp16":
        # Tracing runs the model: CPU half convs in NCHW take a slow reference path; channels_last
        # is fast and traces to the same graph (see hwnas.backends.tensorrt.export_for_precision).
        net = net.half().to(memory_format=torch.channels_last)
    return net


def tie_initializers(model) -> int:
    """Merge byte-identical initializers (same dtype, shape and values) into one; returns how many
    were dropped. onnxslim's constant folding turns each Identity the exporter puts on a shared
    weight (the head convs shared across pyramid levels) into its own copy: 1.9x the file size
    of a 512 px RetinaNet (160 MB for 84 MB of weights) without this."""
    from onnx import numpy_helper

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), arr.tobytes())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if rename:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
    return len(rename)


def simplify(model_bytes: bytes) -> tuple[bytes, str]:
    """(simplified bytes, tool used): onnxslim when installed (then :func:`tie_initializers`), else
    the exporter's own constant folding only.

    onnxslim 0.1.98 folded wrongly the Shape arithmetic torch.onnx emits for F.pad amounts taken
    from traced sizes; the post graph avoids such arithmetic (static Python sizes), and the tests
    compare simplified and unsimplified graphs. The ``/post/`` node-name prefix survives onnxslim.
    """
    import onnx

    try:
        import onnxslim
    except ImportError:
        return model_bytes, "torch.onnx constant folding"
    slim = onnxslim.slim(onnx.load_from_string(model_bytes))
    tie_initializers(slim)
    return slim.SerializeToString(), f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()


def export_deploy_onnx(detector: nn.Module, *, nms: str = "onnx", batch: int = 1,
                       dynamic_batch: tuple[int, int, int] | None = None, opset: int = 17,
                       score_thresh: float = 0.05, nms_thresh: float = 0.5, max_dets: int = 100,
                       pre_nms_topk: int | None = None, ops_iters: int = DEFAULT_OPS_ITERS,
                       precision: str = "fp32", roi_impl: str | None = None,
                       simplify_graph: bool = True, class_names: list[str] | None = None) -> bytes:
    """Serialized, checked (and simplified) ONNX of :class:`DeployModel` around ``detector``.

    batch: static batch; dynamic_batch (min, opt, max): the batch axis is named ``batch`` instead
    (the triple is stored in the metadata for engine profiles). precision fp16: ``net`` in half,
    ``pre``/``post`` in fp32. roi_impl: RoIAlign form of a two-stage head (default: the head's
    choice for the NMS form and batch, :func:`hwnas.heads.rcnn.choose_roi_impl`).
    ``detector`` itself is not modified. The ONNX metadata holds arch, classes, DeployConfig and the
    deployment contract (:mod:`hwnas.export.contract`; with ``class_names``, the names too).
    """
    import onnx

    from hwnas.backends.onnx_export import to_onnx
    from hwnas.export.contract import contract

    config = DeployConfig(nms=nms, score_thresh=score_thresh, nms_thresh=nms_thresh, max_dets=max_dets,
                          pre_nms_topk=pre_nms_topk, ops_iters=ops_iters)
    if precision not in PRECISIONS:
        raise HwnasError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)} "
                         f"(int8 comes from hwnas.export.precision on an fp32 graph)")
    arch: Arch = detector.arch
    roi_impl = resolve_roi_impl(arch, nms, roi_impl, dynamic_batch is not None)
    trace_batch = _check_batch(batch, dynamic_batch)
    model = DeployModel(prepare_detector(detector, precision, roi_impl), config).eval()
    images = torch.rand(trace_batch, 3, *arch.input_hw)
    names = config.output_names
    axes = None if dynamic_batch is None else {n: {0: "batch"} for n in (INPUT_NAME, *names)}
    data = to_onnx(model, (images,), opset=opset, input_names=[INPUT_NAME], output_names=list(names),
                   dynamic_axes=axes)
    tool = "none"
    if simplify_graph:
        data, tool = simplify(data)
    proto = onnx.load_from_string(data)
    meta = {"format": DEPLOY_FORMAT, "arch": str(arch), "num_classes": detector.num_classes,
            "config": config.to_dict(), "precision": precision, "roi_impl": roi_impl,
            "batch": "dynamic" if dynamic_batch else trace_batch,
            "dynamic_batch": list(dynamic_batch) if dynamic_batch else None,
            "input": f"{INPUT_NAME} float32 [B, 3, {arch.input_hw[0]}, {arch.input_hw[1]}] RGB in [0, 1]",
            "simplified_with": tool,
            **contract(arch.input_hw, config.score_thresh, config.nms_thresh, config.max_dets, names, class_names,
                       nms_in_graph=config.nms != "host")}
    declare_outputs(proto, output_shapes(arch, detector.num_classes, config,
                                          "batch" if dynamic_batch else trace_batch))
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=f"hwnas.{key}", value=json.dumps(value))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def read_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """The ``hwnas.*`` entries of an ONNX custom metadata map, decoded (empty when not ours)."""
    return {k[len("hwnas."):]: json.loads(v) for k, v in meta.items() if k.startswith("hwnas.")}


# ----------------------------------------------------------------------------- runners
def unpack_detections(num_dets: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                      classes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Fixed-size outputs -> per-image ``dict(boxes [M, 4], scores [M], labels [M] int64)``."""
    out = []
    for n, b, s, c in zip(num_dets.reshape(-1).tolist(), boxes, scores, classes):
        out.append({"boxes": b[:n].float(), "scores": s[:n].float(), "labels": c[:n].long()})
    return out


def ort_session(model: bytes | str | Path, threads: int, export_cmd: str):
    """(onnxruntime CPU session, its hwnas metadata) of a graph; a file onnxruntime cannot load
    is one error naming the command that makes it again."""
    from hwnas.backends.ort import cpu_session, import_onnxruntime

    if threads < 1:
        raise HwnasError(f"threads must be >= 1, got {threads}")
    import_onnxruntime()  # a missing install is its own error, not a graph that cannot load
    try:
        session = cpu_session(model, threads)
    except Exception as e:  # onnxruntime raises its own exception types
        raise HwnasError(f"onnxruntime cannot load the graph: {' '.join(str(e).split())[:300]}; "
                         f"export it again with {export_cmd}") from None
    return session, read_metadata(session.get_modelmeta().custom_metadata_map)


class OnnxDetector:
    """A deployed graph (``export_deploy_onnx``) in onnxruntime on the CPU.

    The host form's NMS runs here with :func:`~hwnas.heads.postprocess.select_detections` and the
    thresholds the graph was exported with (override with ``score_thresh`` etc.). A graph with a
    static batch is fed in chunks of that batch (the last chunk zero-padded).
    """

    def __init__(self, model: bytes | str | Path, *, threads: int = 1, score_thresh: float | None = None,
                 nms_thresh: float | None = None, max_dets: int | None = None,
                 pre_nms_topk: int | None = None) -> None:
        self.session, self.meta = ort_session(model, threads, "hwnas export")
        if self.meta.get("format") != DEPLOY_FORMAT:
            raise HwnasError(f"not a deployed hwnas graph (metadata format {self.meta.get('format')!r}, "
                             f"expected {DEPLOY_FORMAT!r}); export it with `hwnas export` "
                             "(hwnas.export.deploy.export_deploy_onnx)")
        given = {k: v for k, v in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh),
                                   ("max_dets", max_dets), ("pre_nms_topk", pre_nms_topk)) if v is not None}
        if given and self.meta["config"]["nms"] != "host":
            raise HwnasError(f"{', '.join(given)}: fixed in a graph with NMS inside (form "
                             f"{self.meta['config']['nms']!r}); export again with other values")
        self.config = DeployConfig.from_dict({**self.meta["config"], **given})
        self.num_classes = int(self.meta["num_classes"])
        self.arch = Arch.parse(self.meta["arch"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        b = self.session.get_inputs()[0].shape[0]
        self.static_batch = b if isinstance(b, int) else None

    def _run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = self.session.run(self.output_names, {INPUT_NAME: images.numpy()})
        return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)}

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """images [B, 3, H, W] float in [0, 1] at the graph's input size -> detections per image."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *self.arch.input_hw):
            raise HwnasError(f"images must be [B, 3, {self.arch.input_hw[0]}, {self.arch.input_hw[1]}] "
                             f"(letterboxed to the arch's input size), got {list(images.shape)}")
        if len(images) == 0:
            return []
        images = images.detach().cpu().float().contiguous()
        outs = run_in_chunks(self._run, images, self.static_batch or len(images))
        return to_detections(outs, self.config, self.num_classes)


def run_in_chunks(run, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    """``run`` (a graph or engine bound to batch ``step``: images -> {output name: tensor}) over any
    number of images, in chunks of ``step``, the last one zero-padded and its padding dropped."""
    if len(images) == step:  # one full chunk: no copies (this is every call of bench and most of infer)
        return run(images)
    parts = []
    for i in range(0, len(images), step):
        chunk = images[i:i + step]
        n = len(chunk)
        if n < step:
            chunk = torch.cat((chunk, chunk.new_zeros(step - n, *chunk.shape[1:])))
        parts.append({k: v[:n] for k, v in run(chunk).items()})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def to_detections(outs: dict[str, torch.Tensor], config: DeployConfig, num_classes: int) -> list[dict[str, torch.Tensor]]:
    """A deployed graph's outputs -> detections per image (the host form's NMS runs here)."""
    if config.nms == "host":
        return select_detections(outs["boxes"], outs["scores"], num_classes, score_thresh=config.score_thresh,
                                 nms_thresh=config.nms_thresh, max_dets=config.max_dets,
                                 pre_nms_topk=config.pre_nms_topk)
    return unpack_detections(*(outs[n] for n in FIXED_OUTPUTS))


class TorchDetector:
    """A detector in eager PyTorch with :func:`hwnas.heads.postprocess.postprocess` (the reference)."""

    def __init__(self, model: nn.Module, *, device: str = "cpu", score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, max_dets: int = 100, pre_nms_topk: int = 1000) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.arch: Arch = model.arch
        self.num_classes: int = model.num_classes
        self.select = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "max_dets": max_dets,
                       "pre_nms_topk": pre_nms_topk}

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kw: Any) -> "TorchDetector":
        from hwnas.train.checkpoint import load_model

        model = load_model(Path(path)).model
        return cls(model, **kw)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """images [B, 3, H, W] float in [0, 1] at the arch's input size -> detections per image."""
        outputs = self.model(normalize(images.to(self.device)))
        dets = postprocess(outputs, self.arch, self.num_classes, **self.select)
        return [{k: v.cpu() for k, v in d.items()} for d in dets]
