"""Box voting: merge overlapping detections into score-weighted averages (S3FD / PyramidBox test time).

Used to fuse the detections of several test scales (:mod:`hwnas.evaluate.multiscale`): each scale's NMS
output holds one box per face, and the copies of a face from different scales are averaged into
one box that is better placed than any single copy.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from hwnas.errors import HwnasError

__all__ = ["box_vote"]

_IOU_ROWS = 1024  # IoU rows per block: bounds the float temporaries at N x 1024


def box_vote(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None = None,
             iou_thresh: float = 0.5, max_dets: int | None = None) -> dict[str, torch.Tensor]:
    """Greedy voting over ``boxes`` [N, 4] xyxy with ``scores`` [N] (and ``labels`` [N], optional).

    Repeatedly the highest-scoring remaining box gathers every remaining box (of its label, when
    labels are given) with IoU >= ``iou_thresh`` with it, itself included; the group is replaced by
    one box whose coordinates are the score-weighted mean of the group's and whose score is the
    group's *maximum* (the leader's): a face confirmed by several scales keeps the confidence of
    its best view instead of being pulled down by weaker copies (a mean) or pushed past 1 (a sum),
    the choice S3FD's and PyramidBox's voting made too. A box that overlaps nothing is kept as it
    is; the original S3FD / PyramidBox code drops such singletons, which throws away faces that only
    one scale finds (the point of scale-specific ranges).

    Returns ``dict(boxes [M, 4], scores [M], labels [M] int64)`` sorted by descending score, at most
    ``max_dets`` of them; labels are all 0 when none were given. Scores are used as weights after
    clamping at a tiny positive value, so zero-score groups average evenly.
    """
    n = _check(boxes, scores, labels, iou_thresh, max_dets)
    device = boxes.device
    if labels is None:
        labels = torch.zeros(n, dtype=torch.int64, device=device)
    if n == 0:
        return {"boxes": boxes.new_zeros((0, 4)), "scores": scores.new_zeros(0), "labels": labels.long()}
    order = torch.argsort(scores, descending=True, stable=True)
    b, s, lab = boxes[order], scores[order], labels[order].long()
    near = _overlaps(b, lab, iou_thresh)

    # Greedy grouping in score order; a numpy row per leader is cheap next to the IoU matrix.
    group = np.full(n, -1, dtype=np.int64)
    leaders = []
    for i in range(n):
        if group[i] >= 0:
            continue
        members = near[i] & (group < 0)
        members[i] = True  # a zero-area box has a NaN IoU with itself and must still lead its group
        group[members] = len(leaders)
        leaders.append(i)

    g = torch.from_numpy(group).to(device)
    weight = s.clamp_min(1e-12).to(b.dtype)
    total = torch.zeros(len(leaders), dtype=b.dtype, device=device).index_add_(0, g, weight)
    summed = torch.zeros((len(leaders), 4), dtype=b.dtype, device=device).index_add_(0, g, b * weight[:, None])
    lead = torch.tensor(leaders, dtype=torch.int64, device=device)
    keep = slice(None) if max_dets is None else slice(0, max_dets)
    # Leaders were visited in descending score order, so the groups already are sorted.
    return {"boxes": (summed / total[:, None])[keep], "scores": s[lead][keep], "labels": lab[lead][keep]}


def _check(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None,
           iou_thresh: float, max_dets: int | None) -> int:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise HwnasError(f"box_vote: boxes must be [N, 4] (x1, y1, x2, y2), got {list(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,):
        raise HwnasError(f"box_vote: scores must be [N] = [{n}] like the boxes, got {list(scores.shape)}")
    if labels is not None and labels.shape != (n,):
        raise HwnasError(f"box_vote: labels must be [N] = [{n}] like the boxes, got {list(labels.shape)}")
    if not 0.0 < iou_thresh <= 1.0:
        raise HwnasError(f"box_vote: iou_thresh {iou_thresh} must lie in (0, 1]")
    if max_dets is not None and max_dets < 1:
        raise HwnasError(f"box_vote: max_dets {max_dets} must be >= 1, or None for no limit")
    return n


def _overlaps(boxes: torch.Tensor, labels: torch.Tensor, iou_thresh: float) -> np.ndarray:
    """[N, N] bool: IoU >= thresh and the same label. Computed in row blocks so a few thousand boxes
    never hold an N x N float matrix at once; the bool result is a quarter of that memory."""
    boxes = boxes.float()
    out = np.empty((len(boxes), len(boxes)), dtype=bool)
    for start in range(0, len(boxes), _IOU_ROWS):
        rows = slice(start, start + _IOU_ROWS)
        close = (box_iou(boxes[rows], boxes) >= iou_thresh) & (labels[rows, None] == labels[None, :])
        out[rows] = close.cpu().numpy()
    return out
