"""Multi-scale testing as one deployable graph: one fixed-size image input per test pass.

Engines want static shapes, and a detector's units carry the sizes they run at, so the
engine-friendly form of multi-scale testing (:mod:`hwnas.evaluate.multiscale`) is a graph with one input
per :class:`~hwnas.evaluate.multiscale.TestScale`: ``images_s0 [B, 3, H0, W0]``, ``images_s1`` ..., each
letterboxed to ``scaled_hw(input size, scale)`` (flipped by the host for flipping passes), each
run through the same weights at its own size, decoded and NMS'd in the graph (the outputs of
:class:`~hwnas.export.deploy.DeployModel`, suffixed ``_s0``, ``_s1`` ...). The host maps each
pass's boxes back to the image and merges the passes by box voting, exactly as
:func:`hwnas.evaluate.multiscale.multi_scale_detect` does for a PyTorch model. The weights appear once in
the file: the exporter ties the byte-identical initializers of the passes together.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.export.deploy import (
    FIXED_OUTPUTS, DeployConfig, DeployPost, Normalize, declare_outputs, prepare_detector, ort_session, output_shapes,
    simplify, unpack_detections,
)

__all__ = ["MULTISCALE_FORMAT", "MultiScaleDeploy", "MultiScaleOnnxDetector", "export_multiscale_onnx",
           "is_multiscale_onnx"]

MULTISCALE_FORMAT = "hwnas-deploy-multiscale/1"


def is_multiscale_onnx(path: Path) -> bool:
    """Whether ``path`` is a multi-scale graph (``hwnas export --test-scales``), from its metadata
    alone (the weights are not read)."""
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return False
    import onnx

    from hwnas.export.deploy import read_metadata

    try:
        meta = onnx.load(str(path), load_external_data=False).metadata_props
    except Exception:  # not ONNX at all: open_model says so in its own words
        return False
    return read_metadata({p.key: p.value for p in meta}).get("format") == MULTISCALE_FORMAT


class MultiScaleDeploy(nn.Module):
    """One ``pre``/``net``/``post`` chain per input size, all with ``detector``'s weights."""

    def __init__(self, detector: nn.Module, sizes: Sequence[tuple[int, int]], config: DeployConfig) -> None:
        super().__init__()
        self.pre = Normalize()
        self.nets = nn.ModuleList([detector.at_size(hw) for hw in sizes])
        self.posts = nn.ModuleList([DeployPost(n.arch, n.num_classes, config) for n in self.nets])

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for x, net, post in zip(images, self.nets, self.posts):
            out += post(*net(self.pre(x)))
        return tuple(out)


def export_multiscale_onnx(detector: nn.Module, scales: Sequence, *, nms: str = "onnx", batch: int = 1,
                           score_thresh: float = 0.02, nms_thresh: float = 0.5, max_dets: int = 750,
                           opset: int = 17) -> bytes:
    """Serialized, checked ONNX with one input per test scale (fp32, static batch). ``nms``:
    ``onnx`` for onnxruntime and full TensorRT, ``ops`` for TensorRT-RTX (see DeployConfig)."""
    import onnx

    from hwnas.evaluate.multiscale import describe, scaled_hw
    from hwnas.backends.onnx_export import to_onnx

    arch = detector.arch
    if arch.head.TWO_STAGE:
        raise HwnasError(f"multi-scale export needs a one-stage head: the {arch.head.kind} head's RoI stage is built "
                         f"for one size")
    if nms == "host":
        raise HwnasError("the multi-scale graph keeps NMS inside each pass: use --nms onnx or ops")
    if not isinstance(batch, int) or batch < 1:
        raise HwnasError(f"batch must be an integer >= 1, got {batch!r}")
    scales = tuple(scales)
    if not scales:
        raise HwnasError("no test scales given")
    config = DeployConfig(nms=nms, score_thresh=score_thresh, nms_thresh=nms_thresh, max_dets=max_dets)
    sizes = [scaled_hw(arch.input_hw, s.scale) for s in scales]
    # None: keep the modules as built (multi-scale graphs refuse two-stage heads, so no RoIAlign form applies)
    model = MultiScaleDeploy(prepare_detector(detector, "fp32", None), sizes, config).eval()
    inputs = tuple(torch.rand(batch, 3, *hw) for hw in sizes)
    in_names = [f"images_s{i}" for i in range(len(sizes))]
    out_names = [f"{n}_s{i}" for i in range(len(sizes)) for n in FIXED_OUTPUTS]
    data, tool = simplify(to_onnx(model, inputs, opset=opset, input_names=in_names, output_names=out_names))
    proto = onnx.load_from_string(data)
    shapes = output_shapes(arch, detector.num_classes, config, batch)
    declare_outputs(proto, {f"{n}_s{i}": shapes[n] for i in range(len(sizes)) for n in FIXED_OUTPUTS})
    meta = {"format": MULTISCALE_FORMAT, "arch": str(arch), "num_classes": detector.num_classes,
            "config": config.to_dict(), "test_scales": describe(scales), "input_sizes": [list(hw) for hw in sizes],
            "batch": batch, "simplified_with": tool,
            "input": "images_s<i> float32 [B, 3, H_i, W_i] RGB in [0, 1], letterboxed (mirrored for flipping passes)"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=f"hwnas.{key}", value=json.dumps(value))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class MultiScaleOnnxDetector:
    """A multi-scale graph in onnxruntime: ``detect_original(images)`` takes original images
    ([3, h, w] in [0, 1], any sizes) and returns their merged detections in original pixels."""

    def __init__(self, model: bytes | str | Path, *, threads: int = 1, vote_iou: float = 0.5,
                 max_dets: int = 750) -> None:
        from hwnas.spec.arch import Arch
        from hwnas.evaluate.multiscale import parse_scales

        self.session, self.meta = ort_session(model, threads, "hwnas export --test-scales")
        if self.meta.get("format") != MULTISCALE_FORMAT:
            raise HwnasError(f"not a multi-scale hwnas graph (format {self.meta.get('format')!r}); export one with "
                             f"`hwnas export --test-scales ...`")
        self.arch = Arch.parse(self.meta["arch"])
        self.num_classes = int(self.meta["num_classes"])
        self.kind = "onnx-multiscale"
        self.class_names = [str(i) for i in range(self.num_classes)]  # the graph carries no names
        self.scales = parse_scales(self.meta["test_scales"])
        self.batch = int(self.meta["batch"])
        self.vote_iou, self.max_dets = vote_iou, max_dets
        self.output_names = [o.name for o in self.session.get_outputs()]

    def detect_original(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from hwnas.evaluate.multiscale import letterbox_passes, merge_passes

        results: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(images), self.batch):
            chunk = list(images[start:start + self.batch])
            passes = letterbox_passes(chunk, self.arch.input_hw, self.scales)
            feed = {}
            for i, (batch, _, _) in enumerate(passes):
                pad = batch.new_zeros(self.batch - len(batch), *batch.shape[1:])  # a short last chunk
                feed[f"images_s{i}"] = torch.cat((batch, pad)).numpy()
            outs = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
            dets = [unpack_detections(*(torch.from_numpy(outs[f"{n}_s{i}"])[: len(chunk)] for n in FIXED_OUTPUTS))
                    for i in range(len(passes))]
            results += merge_passes(chunk, self.scales, passes, dets, self.vote_iou, self.max_dets)
        return results
