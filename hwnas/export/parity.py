"""Parity of a deployed model with its reference: the same images, scored the same way.

:func:`parity` runs two runners (anything with ``detect(images) -> [dict(boxes, scores, labels)]``,
e.g. :class:`~hwnas.export.deploy.TorchDetector` and :class:`~hwnas.export.deploy.OnnxDetector`,
or such a callable) over one dataset, scores both with pycocotools and measures how many of the
reference's confident boxes the candidate reproduces.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torchvision.ops import box_iou

from hwnas.errors import HwnasError

__all__ = ["box_agreement", "parity"]

AGREE_SCORE = 0.3  # reference boxes at least this confident are the ones that must be reproduced
AGREE_IOU = 0.9  # a candidate box of the same class this close counts as the same detection


def _detect_fn(runner: Any):
    fn = getattr(runner, "detect", runner)
    if not callable(fn):
        raise HwnasError(f"parity: {type(runner).__name__} has no detect(images) method and is not callable")
    return fn


def _xyxy_by_key(results: list[dict], min_score: float = 0.0) -> dict[tuple[int, int], torch.Tensor]:
    """COCO results -> {(image_id, category_id): boxes [n, 4] x1y1x2y2}, scores >= ``min_score``."""
    grouped: dict[tuple[int, int], list[list[float]]] = defaultdict(list)
    for r in results:
        if r["score"] >= min_score:
            x, y, w, h = r["bbox"]
            grouped[(r["image_id"], r["category_id"])].append([x, y, x + w, y + h])
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in grouped.items()}


def box_agreement(reference: list[dict], candidate: list[dict], *, min_score: float = AGREE_SCORE,
                  min_iou: float = AGREE_IOU) -> tuple[int, int]:
    """(matched, total): of the reference's boxes scoring >= ``min_score`` (COCO results format),
    how many a candidate box of the same image and class (any score) overlaps at IoU >= ``min_iou``."""
    ref = _xyxy_by_key(reference, min_score)
    cand = _xyxy_by_key(candidate)
    matched = total = 0
    for key, rb in ref.items():
        total += len(rb)
        cb = cand.get(key)
        if cb is not None:
            matched += int((box_iou(rb, cb).amax(1) >= min_iou).sum())
    return matched, total


def parity(reference: Any, candidate: Any, dataset, *, batch_size: int = 8, agree_score: float = AGREE_SCORE,
           agree_iou: float = AGREE_IOU, progress=None) -> dict:
    """Score ``reference`` and ``candidate`` on every image of ``dataset`` (a CocoDetection with
    ``EvalTransform`` at the models' input size) and compare.

    Returns: ``map_ref``, ``map`` (pycocotools AP@[.5:.95] as fractions in [0, 1]),
    ``delta_map`` = map - map_ref (same unit) and ``delta_map_points`` = 100 x delta_map (mAP
    points, as papers print mAP); ``map50_ref``, ``map50``; ``agreement`` = matched / total
    reference boxes (see :func:`box_agreement`; None when the reference has no box scoring
    >= ``agree_score``) with ``n_ref_boxes`` and ``n_matched``; detection counts and images/s of both.
    """
    from hwnas.evaluate.coco import coco_score, coco_truth, detect_dataset

    if len(dataset) == 0:
        raise HwnasError(f"parity: no images in {getattr(dataset, 'json_path', 'the dataset')}")
    runs = {}
    for name, runner in (("ref", reference), ("cand", candidate)):
        results, ips = detect_dataset(_detect_fn(runner), dataset, batch_size=batch_size, progress=progress)
        runs[name] = (results, ips, coco_score(coco_truth(dataset), results, image_ids=dataset.image_ids))
    (ref, ref_ips, ref_m), (cand, cand_ips, cand_m) = runs["ref"], runs["cand"]
    matched, total = box_agreement(ref, cand, min_score=agree_score, min_iou=agree_iou)
    delta = cand_m["map"] - ref_m["map"]
    return {
        "map_ref": ref_m["map"], "map": cand_m["map"], "delta_map": delta, "delta_map_points": 100.0 * delta,
        "map50_ref": ref_m["map50"], "map50": cand_m["map50"],
        "agreement": matched / total if total else None, "n_ref_boxes": total, "n_matched": matched,
        "agree_score": agree_score, "agree_iou": agree_iou,
        "n_images": len(dataset), "n_detections_ref": len(ref), "n_detections": len(cand),
        "images_per_s_ref": ref_ips, "images_per_s": cand_ips,
    }
