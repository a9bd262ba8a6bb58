"""Losses, targets and post-processing for the detector heads (kept apart from ``Detector.forward``).

* :mod:`~hwnas.heads.anchors`: anchors / FCOS points and the one output layout they follow.
* :mod:`~hwnas.heads.boxes`: box codecs and IoU-family losses.
* :mod:`~hwnas.heads.losses`: matching, sampling and :class:`DetectionLoss`.
* :mod:`~hwnas.heads.postprocess`: :func:`decode_outputs`, :func:`select_detections` and :func:`postprocess`.
"""
from hwnas.heads.anchors import default_fcos_ranges, fcos_points, flatten_levels, retina_anchors, rpn_anchors_for
from hwnas.heads.boxes import BOX_LOSSES, iou_loss
from hwnas.heads.losses import IGNORE, NEG, DetectionLoss, assign_points, init_head_priors, match
from hwnas.heads.postprocess import decode_outputs, postprocess, select_detections

__all__ = [
    "BOX_LOSSES", "IGNORE", "NEG", "DetectionLoss", "assign_points", "decode_outputs", "default_fcos_ranges",
    "fcos_points", "flatten_levels", "init_head_priors", "iou_loss", "match", "postprocess", "retina_anchors",
    "rpn_anchors_for", "select_detections",
]
