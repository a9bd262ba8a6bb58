"""Recall and localisation by object size, from a run's detections (no model needed).

For each ground-truth box of a COCO split, binned by size (square root of its area, in image
pixels), the share found at IoU >= 0.5 by a detection of the same class scoring at least
``--score``, and the median of the best IoU any detection of its class reaches (whatever its
score): low recall with a high best IoU points at scores, a low best IoU at localisation.

    python benchmarks/recall_by_size.py --gt DATA/val.json --detections RUN/detections.json
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

BINS = (0, 16, 32, 64, 128, float("inf"))


def xyxy(boxes: list) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def recall_by_size(gt: dict, dets: list, score: float) -> list[dict]:
    truth, found = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            truth[a["image_id"], a["category_id"]].append(a["bbox"])
    for d in dets:
        found[d["image_id"], d["category_id"]].append((d["score"], d["bbox"]))
    hits = defaultdict(list)  # bin -> [(found at the score, best IoU at any score)]
    for key, boxes in truth.items():
        g = xyxy(boxes)
        cand = found.get(key, [])
        iou = box_iou(g, xyxy([b for _, b in cand])) if cand else torch.zeros(len(boxes), 0, dtype=torch.float64)
        kept = torch.tensor([s >= score for s, _ in cand], dtype=torch.bool)
        for i, b in enumerate(boxes):
            size = float(np.sqrt(b[2] * b[3]))
            k = int(np.searchsorted(BINS, size, side="right")) - 1
            best = float(iou[i].max()) if iou.shape[1] else 0.0
            hit = bool((iou[i][kept] >= 0.5).any()) if iou.shape[1] else False
            hits[k].append((hit, best))
    rows = []
    for k in range(len(BINS) - 1):
        h = hits.get(k, [])
        rows.append({"size": f"{BINS[k]:g}-{BINS[k + 1]:g}", "boxes": len(h),
                     "recall": float(np.mean([x for x, _ in h])) if h else None,
                     "median_best_iou": float(np.median([y for _, y in h])) if h else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", required=True, help="COCO json of the split (DATA/val.json)")
    ap.add_argument("--detections", required=True, nargs="+", help="COCO results json(s) (RUN/detections.json)")
    ap.add_argument("--score", type=float, default=0.3, help="score a detection needs to count as found")
    args = ap.parse_args()
    gt = json.loads(Path(args.gt).read_text())
    print(f"| detections | size (px) | boxes | recall@0.5 (score >= {args.score:g}) | median best IoU |")
    print("|---|---|---|---|---|")
    for path in args.detections:
        for r in recall_by_size(gt, json.loads(Path(path).read_text()), args.score):
            rec = "-" if r["recall"] is None else f"{r['recall']:.2f}"
            iou = "-" if r["median_best_iou"] is None else f"{r['median_best_iou']:.2f}"
            print(f"| {path} | {r['size']} | {r['boxes']} | {rec} | {iou} |")


if __name__ == "__main__":
    main()
