"""Box codecs and the IoU-family box losses (boxes are x1, y1, x2, y2 in input pixels)."""
from __future__ import annotations

import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from hwnas.errors import HwnasError

__all__ = [
    "BOX_CLIP", "BOX_LOSSES", "ROI_BOX_WEIGHTS", "check_box_loss", "decode_boxes", "decode_deltas", "decode_fcos",
    "encode_boxes", "encode_fcos", "iou_loss",
]

BOX_LOSSES = ("iou", "giou", "diou", "ciou", "smooth_l1")
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Faster R-CNN's RoI head delta weights
BOX_CLIP = 4.135  # log(1000 / 16): the clip decode_boxes applies to dw, dh
_EPS = 1e-6


def check_box_loss(kind: str, what: str = "box_loss") -> str:
    if kind not in BOX_LOSSES:
        raise HwnasError(f"{what} {kind!r}: valid box losses are {', '.join(BOX_LOSSES)}")
    return kind


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, clip: float = BOX_CLIP) -> torch.Tensor:
    """Standard (dx, dy, dw, dh) decoding relative to anchors; ``clip`` = log(1000/16). The exported
    RoI stage (:class:`hwnas.models.blocks.RoIStage`) decodes its proposals with it."""
    # (x, y) and (w, h) as pairs: the same arithmetic per element as column by column, in a quarter
    # of the graph nodes (an exported decode/NMS tail is dominated by per-node cost, not by FLOPs).
    wh_a = anchors[..., 2:] - anchors[..., :2]
    xy = anchors[..., :2] + 0.5 * wh_a + deltas[..., :2] * wh_a
    wh = wh_a * deltas[..., 2:].clamp(max=clip).exp()
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor,
                 weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """(dx, dy, dw, dh) of ``boxes`` relative to ``anchors`` (both [..., 4]); inverse of :func:`decode_deltas`."""
    wa = (anchors[..., 2] - anchors[..., 0]).clamp(min=_EPS)
    ha = (anchors[..., 3] - anchors[..., 1]).clamp(min=_EPS)
    xa, ya = anchors[..., 0] + 0.5 * wa, anchors[..., 1] + 0.5 * ha
    wb = (boxes[..., 2] - boxes[..., 0]).clamp(min=_EPS)
    hb = (boxes[..., 3] - boxes[..., 1]).clamp(min=_EPS)
    xb, yb = boxes[..., 0] + 0.5 * wb, boxes[..., 1] + 0.5 * hb
    wx, wy, ww, wh = weights
    return torch.stack((wx * (xb - xa) / wa, wy * (yb - ya) / ha, ww * (wb / wa).log(), wh * (hb / ha).log()), -1)


def decode_deltas(deltas: torch.Tensor, anchors: torch.Tensor,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """:func:`decode_boxes` (the decoder the exported RoI stage uses) with delta weights."""
    if weights != (1.0, 1.0, 1.0, 1.0):
        deltas = deltas / deltas.new_tensor(weights)
    return decode_boxes(deltas, anchors)


def encode_fcos(boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """FCOS regression target: log of the (l, t, r, b) distances in strides. points [P, 2], strides [P]."""
    x, y = points[..., 0], points[..., 1]
    ltrb = torch.stack((x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), -1)
    return (ltrb.clamp(min=_EPS) / strides[..., None]).log()


def decode_fcos(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Boxes from FCOS outputs: ``raw`` [..., P, 4] log-distances in strides, points [P, 2], strides [P]."""
    ltrb = raw.clamp(max=BOX_CLIP).exp() * strides[..., None]
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), -1)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "giou") -> torch.Tensor:
    """Per-box loss [N] for ``kind`` in iou | giou | diou | ciou: 0 for identical boxes, up to 1
    (iou), 2 (giou) or about 2 (diou, ciou) for disjoint ones."""
    if kind == "giou":
        return generalized_box_iou_loss(pred, target, reduction="none")
    if kind == "diou":
        return distance_box_iou_loss(pred, target, reduction="none")
    if kind == "ciou":
        return complete_box_iou_loss(pred, target, reduction="none")
    if kind != "iou":
        raise HwnasError(f"IoU-family loss {kind!r}: valid ones are iou, giou, diou, ciou")
    lt = torch.max(pred[..., :2], target[..., :2])
    rb = torch.min(pred[..., 2:], target[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda b: (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)  # noqa: E731
    return 1 - inter / (area(pred) + area(target) - inter + 1e-7)

