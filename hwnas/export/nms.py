"""NMS as graph pieces: the candidate step every form shares, then one NMS per deployment form.

All forms work on the same *candidates*: the best ``pre_nms_topk`` (position, class) pairs of the
decoded scores, sorted by descending score (exactly the pairs
:func:`hwnas.heads.postprocess.select_detections` keeps before its NMS), with a ``valid`` mask for
pairs above the score threshold and with a non-empty box. Only the suppression differs:

* :class:`OnnxNMS`: the standard ONNX ``NonMaxSuppression`` op (one call, per class). Exact.
* :func:`cluster_nms_keep`: plain MatMul / compare arithmetic on the class-aware IoU matrix, static
  shapes, for engines without an NMS op (TensorRT-RTX). Cluster-NMS (Zheng et al., 2020):
  iterating "kept = valid and no kept higher-scoring box of its class overlaps it" from
  "all valid" reaches greedy NMS exactly once it stops changing; each odd iterate is a *subset* of
  greedy NMS (iterate 1 is YOLACT's Fast NMS). A fixed, odd iteration count therefore gives the
  exact greedy result whenever the suppression chains are shorter than the count, and otherwise a
  subset of it: it may drop a box greedy NMS keeps, never keeps a box greedy NMS suppresses.
* :class:`EfficientNMS`: TensorRT's ``EfficientNMS_TRT`` plugin node (full TensorRT only).

Each op is an ``autograd.Function`` whose eager ``forward`` computes what the ONNX node computes
(with torchvision's NMS), so a :class:`~hwnas.export.deploy.DeployModel` also runs in PyTorch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchvision.ops import nms

from hwnas.heads.anchors import take_rows

__all__ = ["EfficientNMS", "OnnxNMS", "candidates", "class_scores", "cluster_nms_keep", "greedy_keep",
           "keep_from_selected", "pack", "separate_classes", "suppression_chain"]

# TensorRT's plugins live in this ONNX domain; its parser finds them by op name.
TRT_DOMAIN = "TRT"


def candidates(boxes: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor, num_classes: int,
               topk: int, score_thresh: float, ordered: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``topk`` (position, class) pairs of each image, by descending score.

    boxes [B, P, 4] (shared by classes), [B, P, K, 4] (class-specific), or a function of the chosen
    positions [B, M] giving their shared boxes [B, M, 4] (so that only those get decoded); scores [B, P, K];
    ``topk`` <= P * K. Returns (boxes [B, M, 4], scores [B, M], labels [B, M] int64, valid [B, M]
    bool: above ``score_thresh`` and non-empty). Taking the top-k first and the threshold second
    keeps the same pairs as thresholding first (the set above the threshold is either inside the
    top-k or larger than it), and keeps every shape static. Sizes come in as Python ints, not from
    ``.shape``: traced shapes would put Shape arithmetic in the graph. ``ordered=False`` leaves the
    candidates in any order (a cheaper TopK), for suppression that sorts by score itself.
    """
    k = num_classes
    top_s, top_i = scores.flatten(1).topk(topk, dim=1, sorted=ordered)
    labels = top_i % k
    if not callable(boxes) and boxes.dim() == 4:  # class-specific: row p*K + k of the flattened boxes is pair (p, k)
        cand = take_rows(boxes.flatten(1, 2), top_i)
    else:
        pos = torch.div(top_i, k, rounding_mode="floor")
        cand = boxes(pos) if callable(boxes) else take_rows(boxes, pos)
    nonempty = (cand[..., 2] > cand[..., 0]) & (cand[..., 3] > cand[..., 1])
    return cand, top_s, labels, (top_s > score_thresh) & nonempty


def separate_classes(boxes: torch.Tensor, labels: torch.Tensor, extent: float) -> torch.Tensor:
    """Boxes [B, M, 4] moved by ``label * extent`` on both axes, so that with ``extent`` past every
    coordinate (boxes clipped to [0, extent)) two classes never overlap: one single-class NMS then
    keeps exactly what per-class NMS keeps (the trick of torchvision's batched_nms)."""
    return boxes + (labels.to(boxes.dtype) * extent).unsqueeze(-1)


def class_scores(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Candidate scores spread to their class: [B, M] -> [B, M, K], zero off-class and where not valid
    (the per-class score layout NMS ops take; each candidate competes in its own class only)."""
    onehot = labels.unsqueeze(-1) == torch.arange(num_classes, device=labels.device)
    return (scores * valid).unsqueeze(-1) * onehot


# ----------------------------------------------------------------------------- the exact reference
def greedy_keep(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                iou_thresh: float, max_per_class: int | None = None) -> torch.Tensor:
    """Greedy per-class NMS of the candidates: keep mask [B, M] bool (eager only: data-dependent).
    ``max_per_class``: keep at most this many per class (the ONNX op's max_output_boxes_per_class)."""
    keep = torch.zeros_like(valid)
    for b in range(boxes.shape[0]):
        for c in labels[b][valid[b]].unique().tolist():
            idx = (valid[b] & (labels[b] == c)).nonzero().squeeze(1)
            kept = nms(boxes[b, idx], scores[b, idx], iou_thresh)
            keep[b, idx[kept[:max_per_class]]] = True
    return keep


# ----------------------------------------------------------------------------- "onnx": NonMaxSuppression
class OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (center_point_box=0): boxes [B, M, 4], scores [B, K, M] ->
    selected_indices [S, 3] int64 rows (batch, class, box), boxes scoring above ``score_thresh``
    only, at most ``max_per_class`` per (image, class).

    Eager: :func:`greedy_keep`, for scores as :func:`class_scores` lays them out (each candidate
    scores in one class only); the rows come in (batch, box) order, not the op's (batch, class,
    score) order, which :func:`keep_from_selected` does not depend on.
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_thresh: float,
                score_thresh: float) -> torch.Tensor:
        best, labels = scores.max(1)
        keep = greedy_keep(boxes, best, labels, best > score_thresh, iou_thresh, max_per_class)
        b, m = keep.nonzero(as_tuple=True)
        return torch.stack((b, labels[b, m], m), 1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_thresh: float, score_thresh: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_thresh], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_thresh], dtype=torch.float32)))


def keep_from_selected(selected: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """selected_indices [S, 3] -> keep mask shaped like ``like`` [B, M] (float 0/1; a ScatterND)."""
    ones = torch.ones_like(selected[:, 0], dtype=like.dtype)
    return torch.zeros_like(like).index_put((selected[:, 0], selected[:, 2]), ones)


# ----------------------------------------------------------------------------- "ops": Cluster-NMS
def class_aware_iou(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IoU of every candidate pair [B, M, M], zero across classes. Plain broadcast arithmetic."""
    a, b = boxes.unsqueeze(2), boxes.unsqueeze(1)
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    union = area.unsqueeze(2) + area.unsqueeze(1) - inter
    iou = inter / union.clamp(min=1e-9)
    return iou * (labels.unsqueeze(2) == labels.unsqueeze(1))


def _suppressors(boxes: torch.Tensor, labels: torch.Tensor, iou_thresh: float, m: int) -> torch.Tensor:
    """S [B, M, M] float 0/1: S[i, j] = 1 when candidate i (higher score: lower index) would suppress
    j if i is kept. Candidates come sorted by score, so "higher" is the strict upper triangle
    (``m`` = M, a Python int so the triangle is a constant in the graph)."""
    upper = torch.ones(m, m, device=boxes.device).triu(1)
    return (class_aware_iou(boxes, labels) > iou_thresh).to(boxes.dtype) * upper


def _cluster_step(keep: torch.Tensor, valid: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One Cluster-NMS iteration: valid and overlapped by no kept higher box (one [B, 1, M] x
    [B, M, M] MatMul and a compare)."""
    hits = torch.matmul(keep.unsqueeze(1), s).squeeze(1)  # kept higher boxes overlapping each one
    return valid * (hits < 0.5)


def cluster_nms_keep(boxes: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, iou_thresh: float,
                     num: int, iters: int) -> torch.Tensor:
    """Keep mask [B, M] (float 0/1) after ``iters`` Cluster-NMS iterations (see the module docstring),
    unrolled in the graph. ``iters`` should be odd: odd iterates never keep a box greedy NMS
    suppresses. ``num`` = M.
    """
    s = _suppressors(boxes, labels, iou_thresh, num)
    v = keep = valid.to(boxes.dtype)
    for _ in range(iters):
        keep = _cluster_step(keep, v, s)
    return keep


def suppression_chain(boxes: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, iou_thresh: float,
                      limit: int = 10_000) -> int:
    """Iterations Cluster-NMS needs to reach greedy NMS on these candidates (eager; for choosing
    and checking ``iters``): the first t with iterate t == iterate t + 1."""
    s = _suppressors(boxes, labels, iou_thresh, boxes.shape[1])
    v = keep = valid.to(boxes.dtype)
    for t in range(limit):
        nxt = _cluster_step(keep, v, s)
        if torch.equal(nxt, keep):
            return t
        keep = nxt
    return limit


# ----------------------------------------------------------------------------- fixed-size outputs
def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append ``rows`` zero rows along dim 1. A tiled zero slice rather than F.pad: torch.onnx
    computes F.pad's amounts with Shape arithmetic, which onnxslim 0.1.98 folded wrongly (padding
    at the start)."""
    zero = t[:, :1] * 0
    return torch.cat((t, zero.repeat(1, rows, *([1] * (t.dim() - 2)))), dim=1)


def pack(keep: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num: int,
         max_dets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept candidates, best first, in fixed-size outputs: num_dets [B, 1] int32, boxes
    [B, max_dets, 4], scores [B, max_dets], classes [B, max_dets] int32; rows past num_dets are 0.

    keep [B, M] 0/1 (any dtype), ``num`` = M (static). Kept scores are > 0 (they passed a threshold
    >= 0), so the top-k of ``scores * keep`` lists the kept ones first, in score order.
    """
    d = min(max_dets, num)
    keep = keep.to(scores.dtype)
    top_s, order = (scores * keep).topk(d, dim=1)
    count = keep.sum(1, keepdim=True).clamp(max=d)
    row = (torch.arange(d, device=scores.device).unsqueeze(0) < count).to(scores.dtype)
    out_boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4)) * row.unsqueeze(-1)
    out_classes = torch.gather(labels, 1, order).to(torch.int32) * row.to(torch.int32)
    out_scores = top_s * row
    if d < max_dets:  # fewer candidates than output rows
        out_boxes, out_scores, out_classes = (_pad_rows(t, max_dets - d) for t in (out_boxes, out_scores, out_classes))
    return count.to(torch.int32), out_boxes, out_scores, out_classes


# ----------------------------------------------------------------------------- "efficient": TensorRT plugin
class EfficientNMS(torch.autograd.Function):
    """TensorRT's ``EfficientNMS_TRT`` plugin (plugin_version 1, corner boxes, no background class,
    scores already activated): boxes [B, M, 4], scores [B, M, K] -> num_detections [B, 1] int32,
    detection_boxes [B, D, 4], detection_scores [B, D], detection_classes [B, D] int32.

    Only full TensorRT runs the node (onnxruntime has no kernel for it). Eager: greedy per-class
    NMS keeping boxes scoring above ``score_thresh``, best ``max_dets`` overall (the plugin's
    documented behaviour), so the graph and PyTorch agree up to the plugin's own numerics.
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_dets: int, iou_thresh: float,
                score_thresh: float):
        best, labels = scores.max(-1)  # each candidate scores in one class only (class_scores)
        valid = best > score_thresh
        keep = greedy_keep(boxes, best, labels, valid, iou_thresh)
        return pack(keep, boxes, best, labels, boxes.shape[1], max_dets)

    @staticmethod
    def symbolic(g, boxes, scores, max_dets: int, iou_thresh: float, score_thresh: float):
        # The plugin keeps scores >= its threshold; the next float32 up makes that "> score_thresh"
        # as everywhere else (and keeps the zero scores of off-class and invalid candidates out).
        above = float(np.nextafter(np.float32(score_thresh), np.float32(1)))
        outs = g.op(f"{TRT_DOMAIN}::EfficientNMS_TRT", boxes, scores, outputs=4,
                    background_class_i=-1, box_coding_i=0, iou_threshold_f=float(iou_thresh),
                    max_output_boxes_i=int(max_dets), plugin_version_s="1", score_activation_i=0,
                    score_threshold_f=above)
        # Declare the outputs' types and sizes (ONNX cannot infer a plugin's), batch from the boxes.
        batch = boxes.type().sizes()[0] if boxes.type().sizes() else None
        shapes = ([batch, 1], [batch, max_dets, 4], [batch, max_dets], [batch, max_dets])
        dtypes = (torch.int32, torch.float32, torch.float32, torch.int32)
        for out, shape, dtype in zip(outs, shapes, dtypes):
            out.setType(boxes.type().with_dtype(dtype).with_sizes(shape))
        return outs
