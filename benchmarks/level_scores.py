"""What a trained face detector scores its own positives at, pyramid level by level, in eval mode
(running BatchNorm statistics) and with batch statistics: the measurement behind docs/training.md
section 3 (one BatchNorm shared across levels scored the upper levels' positives at the prior).

The images are the split's, letterboxed (no augmentation); the positives and negatives are the
second step's match codes (``FaceHead.assign``, what the loss trains the classifier on). For the
faces of at least ``--face-px`` (square root of the area), per level: the best final box's IoU
and its score.

    python benchmarks/level_scores.py --weights runs/bench/learning/batch8/faces/last.pt \
        --data runs/bench/learning/data/faces --images 80
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from torchvision.ops import box_iou

from hwnas.data.transforms import EvalTransform, collate, normalize
from hwnas.data.wider import open_dataset
from hwnas.heads.face import decode
from hwnas.heads.losses import DetectionLoss, level_rows
from hwnas.train.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="a face-head checkpoint")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--face-px", type=float, default=70.0)
    ap.add_argument("--faces", type=int, default=6, help="large faces to list")
    args = ap.parse_args()
    loaded = load_model(args.weights)
    model, arch = loaded.model, loaded.arch
    if arch.head.kind != "face":
        raise SystemExit(f"{args.weights} has a {arch.head.kind} head; this measures the face head's two steps")
    k = len(loaded.class_names)
    ds = open_dataset(args.data, args.split, EvalTransform(arch.input_hw))
    loss = DetectionLoss.for_arch(arch, k)
    bounds = [0]
    for rows in level_rows(arch):
        bounds.append(bounds[-1] + rows)
    levels = arch.out_levels
    n = min(args.images, len(ds))
    batches = [collate([ds[j] for j in range(i, min(i + 8, n))]) for i in range(0, n, 8)]

    print(f"{args.weights}: {arch}, {n} {args.split} images")
    print("| mode | " + " | ".join(f"P{lv} positives: median score (n) / negatives p99" for lv in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for mode in ("eval", "train"):  # train: each level normalised with its own batch statistics
        # a copy: a train-mode forward updates the running statistics even without gradients
        net = copy.deepcopy(model).train(mode == "train")
        pos, neg = [[] for _ in levels], [[] for _ in levels]
        for images, targets in batches:
            with torch.no_grad():
                out = net(normalize(images))
                codes = arch.head.assign(loss, out, targets).step2
                scores = decode(out, arch, k)[1].amax(-1)
            for b, m in enumerate(codes):
                for li in range(len(levels)):
                    sl = slice(bounds[li], bounds[li + 1])
                    pos[li] += scores[b, sl][m[sl] >= 0].tolist()
                    neg[li] += scores[b, sl][m[sl] == -1].tolist()
        cells = []
        for p, q in zip(pos, neg):
            p99 = sorted(q)[int(0.99 * len(q))] if q else float("nan")
            cells.append(f"{statistics.median(p):.3f} ({len(p)}) / {p99:.3f}" if p else f"- / {p99:.3f}")
        print(f"| {mode} | " + " | ".join(cells) + " |")

    model.eval()
    print("\n| face (px, w x h) | " + " | ".join(f"P{lv} best IoU / its score" for lv in levels) + " |")
    print("|---|" + "---|" * len(levels))
    shown = 0
    for images, targets in batches:
        with torch.no_grad():
            boxes, scores = decode(model(normalize(images)), arch, k)
        for b, t in enumerate(targets):
            wh = t["boxes"][:, 2:] - t["boxes"][:, :2]
            for g in t["boxes"][wh.prod(1).sqrt() >= args.face_px]:
                if shown == args.faces:
                    return
                iou = box_iou(g[None], boxes[b])[0]
                cells = []
                for li in range(len(levels)):
                    sl = slice(bounds[li], bounds[li + 1])
                    j = int(iou[sl].argmax())
                    cells.append(f"{iou[sl][j]:.2f} / {scores[b, sl][j].max():.2f}")
                w, h = (g[2:] - g[:2]).tolist()
                print(f"| {w:.0f}x{h:.0f} | " + " | ".join(cells) + " |")
                shown += 1


if __name__ == "__main__":
    main()
