"""From raw detector outputs to detections: decode, score threshold, per-class NMS, top-k.

:func:`decode_outputs` is plain tensor arithmetic on the whole batch (no data-dependent shapes),
so an export can put it in the graph; :func:`select_detections` is the per-image filtering and
NMS on decoded boxes (what a deployed graph without NMS leaves to the host); :func:`postprocess`
is the two in a row.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchvision.ops import batched_nms

from hwnas.errors import HwnasError

if TYPE_CHECKING:
    from hwnas.spec.arch import Arch

__all__ = ["clip_boxes", "decode_outputs", "postprocess", "select_detections"]


def clip_boxes(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    h, w = image_hw
    # Whole-tensor ops, not a per-column stack (eight nodes in an exported graph, whose decode/NMS
    # tail costs per node more than per value); a square input is one Clip.
    if h == w:
        return boxes.clamp(0, w)
    return boxes.clamp(min=0).minimum(boxes.new_tensor([w, h, w, h]))


def decode_outputs(outputs: tuple[torch.Tensor, ...], arch: "Arch",
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded, clipped boxes and per-class scores for the whole batch: the head kind's
    ``decode`` (e.g. retina: boxes [B, P, 4], scores sigmoid(cls) [B, P, K]; rcnn: class-specific
    boxes [B, N, K, 4]), rows in :mod:`hwnas.heads.anchors`' layout, then clipped to the input.
    """
    k = num_classes
    boxes, scores = arch.head.decode(tuple(outputs), arch, k)
    if scores.shape[-1] != k:
        raise HwnasError(f"outputs hold {scores.shape[-1]} classes, expected num_classes={k}")
    return clip_boxes(boxes, arch.input_hw), scores


def _check_select_args(score_thresh: float, nms_thresh: float, max_dets: int, pre_nms_topk: int) -> None:
    if not 0 <= score_thresh < 1 or not 0 < nms_thresh <= 1 or max_dets < 1 or pre_nms_topk < 1:
        raise HwnasError(f"postprocess: need 0 <= score_thresh < 1, 0 < nms_thresh <= 1, max_dets >= 1, "
                         f"pre_nms_topk >= 1; got {score_thresh}, {nms_thresh}, {max_dets}, {pre_nms_topk}")


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, num_classes: int, *,
                      score_thresh: float = 0.05, nms_thresh: float = 0.5, max_dets: int = 100,
                      pre_nms_topk: int = 1000) -> list[dict[str, torch.Tensor]]:
    """Detections per image from *decoded* outputs (:func:`decode_outputs`, or an exported graph's
    decoded ``boxes``/``scores``): boxes [B, P, 4] shared by every class, or class-specific
    [B, N, K, 4]; scores [B, P, K]. Returns ``dict(boxes [M, 4], scores [M] descending,
    labels [M] int64 in 0..K-1)`` per image with M <= ``max_dets``.

    Keeps (position, class) pairs scoring above ``score_thresh``, the best ``pre_nms_topk`` of
    them, drops empty boxes, then per-class NMS at IoU ``nms_thresh`` and the top ``max_dets``.
    """
    _check_select_args(score_thresh, nms_thresh, max_dets, pre_nms_topk)
    if scores.dim() != 3 or scores.shape[-1] != num_classes:
        raise HwnasError(f"select_detections: scores must be [B, P, {num_classes}], got {list(scores.shape)}")
    if boxes.shape[:2] != scores.shape[:2] or boxes.shape[-1] != 4 or boxes.dim() not in (3, 4) \
            or (boxes.dim() == 4 and boxes.shape[2] != num_classes):
        raise HwnasError(f"select_detections: boxes must be [B, P, 4] or [B, P, {num_classes}, 4] with "
                         f"scores [B, P, {num_classes}]; got boxes {list(boxes.shape)}, scores {list(scores.shape)}")
    results = []
    for bx, sc in zip(boxes, scores):
        flat = sc.flatten()
        idx = (flat > score_thresh).nonzero().squeeze(1)
        s = flat[idx]
        if len(s) > pre_nms_topk:
            s, top = s.topk(pre_nms_topk)
            idx = idx[top]
        pos, labels = idx // num_classes, idx % num_classes
        b = bx[pos, labels] if bx.dim() == 3 else bx[pos]
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, labels = b[ok], s[ok], labels[ok]
        keep = batched_nms(b, s, labels, nms_thresh)[:max_dets]  # sorted by descending score
        results.append({"boxes": b[keep], "scores": s[keep], "labels": labels[keep]})
    return results


def postprocess(outputs: tuple[torch.Tensor, ...], arch: "Arch", num_classes: int, *,
                score_thresh: float = 0.05, nms_thresh: float = 0.5, max_dets: int = 100,
                pre_nms_topk: int = 1000) -> list[dict[str, torch.Tensor]]:
    """Detections per image from raw detector outputs: :func:`decode_outputs` then
    :func:`select_detections` (see there for the result and the selection rule)."""
    _check_select_args(score_thresh, nms_thresh, max_dets, pre_nms_topk)  # before any work
    with torch.no_grad():
        # fp32 decode: half-precision pixel coordinates are off by whole pixels at 512 px.
        boxes, scores = decode_outputs(tuple(o.float() for o in outputs), arch, num_classes)
        return select_detections(boxes, scores, num_classes, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                 max_dets=max_dets, pre_nms_topk=pre_nms_topk)
