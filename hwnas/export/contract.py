"""The deployment contract of an exported detector: how to prepare its input and read its output.

One dict, written into the ONNX metadata (``hwnas.preprocess``, ``hwnas.postprocess``,
``hwnas.class_names``) and the export manifest, so a client written from it alone (docs/export.md
has one: onnxruntime, numpy and PIL) gets the detections ``hwnas infer`` gets. The values restate
what :mod:`hwnas.data.transforms` does (the letterbox) and what :class:`hwnas.export.deploy.DeployConfig`
fixed in the graph; ``tests/export/test_contract.py`` holds the client to ``hwnas infer``.
"""
from __future__ import annotations

from typing import Sequence

CONTRACT_VERSION = 1


def contract(input_hw: tuple[int, int], score_thresh: float, iou_thresh: float, max_dets: int,
             output_names: Sequence[str], class_names: Sequence[str] | None = None, nms_in_graph: bool = True) -> dict:
    """``{"preprocess": ..., "postprocess": ..., "class_names": [...]}`` of a deploy graph."""
    from hwnas.data.transforms import MEAN, STD

    h, w = input_hw
    out = {
        "preprocess": {
            "version": CONTRACT_VERSION,
            "input_name": "images", "layout": "NCHW", "channels": "RGB", "dtype": "float32",
            "input_size": [h, w],  # [height, width]
            "input_range": [0.0, 1.0],  # pixel / 255
            # keep the aspect: scale = min(input_h / image_h, input_w / image_w); resized to
            # [round(image_h * scale), round(image_w * scale)] (each at least 1, at most the input side)
            "resize": {"keep_ratio": True, "method": "bilinear", "antialias": True, "size_rounding": "round"},
            "pad": {"position": "bottom_right", "value": 0.0},
            # applied inside the graph: the caller feeds [0, 1] pixels and must not normalise
            "normalize": {"inside_graph": True, "mean": list(MEAN), "std": list(STD)},
        },
        "postprocess": {
            "version": CONTRACT_VERSION,
            "outputs": list(output_names),
            # False (--nms host): boxes [B, P, 4] and per-class scores [B, P, K]; the caller runs
            # NMS per class with score_thresh, iou_thresh and max_dets
            "nms_in_graph": nms_in_graph,
            "valid_rows": "num_dets" if nms_in_graph else None,  # rows past num_dets[i] are padding
            "box_format": "xyxy",
            "box_frame": "input",  # pixels of the letterboxed input
            # original = box / scale (the preprocess scale), then clipped to [0, image_w] x [0, image_h]
            "to_original": {"divide_by": "scale", "clip": True},
            "score_thresh": score_thresh, "iou_thresh": iou_thresh, "max_dets": max_dets,
            "class_index": "classes" if nms_in_graph else None,  # indexes class_names
        },
    }
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out
